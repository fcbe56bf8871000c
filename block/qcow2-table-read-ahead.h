/*
 * sQemu: reading a layer's tables in runs of contiguous clusters
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef BLOCK_QCOW2_TABLE_READ_AHEAD_H
#define BLOCK_QCOW2_TABLE_READ_AHEAD_H

#include "block/block_int.h"

/*
 * The one-cluster tables of a layer named by an L1-like array (its L1
 * table, or its resolved L1 table), read from the layer's file (not its
 * caches) a run of up to @max contiguous tables at a time (fewer while
 * the caller does not take them in order).
 */
typedef struct Qcow2TableReadAhead {
    BlockDriverState *bs;       /* the layer, for its cluster size and name */
    BdrvChild *file;
    const uint64_t *l1;         /* host byte order; L1E_OFFSET_MASK applies */
    uint64_t l1_size;
    uint64_t cluster_size;
    unsigned max;
    unsigned run;               /* tables the next run may read */
    uint8_t *buf;               /* the run read last, big-endian as on disk */
    uint64_t t0, offset0;       /* its first L1 index and offset */
    unsigned n;                 /* its tables (0: none read) */
} Qcow2TableReadAhead;

void qcow2_table_read_ahead_init(Qcow2TableReadAhead *r, BlockDriverState *bs,
                                 BdrvChild *file, const uint64_t *l1,
                                 uint64_t l1_size, unsigned max_tables);
void qcow2_table_read_ahead_destroy(Qcow2TableReadAhead *r);
/*
 * Set *@table to the table of L1 index @t (big-endian, valid until the
 * next call): 1, or 0 if there is none (*@table NULL), or -errno
 */
int qcow2_table_read_ahead_get(Qcow2TableReadAhead *r, uint64_t t,
                               const uint64_t **table, Error **errp);

#endif
