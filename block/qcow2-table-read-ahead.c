/*
 * sQemu: reading a layer's tables in runs of contiguous clusters
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * An index build walks a layer's L2 tables (or its resolved tables) in L1
 * order, one cluster each.  Tables that an L2 copy or metadata
 * preallocation wrote lie in runs of contiguous clusters, in L1 order:
 * such a run is read with one request instead of one per table, which is
 * what a snapshot of a big disk spends most of its reads on.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/memalign.h"
#include "qcow2.h"
#include "qcow2-table-read-ahead.h"
#include "trace.h"

void qcow2_table_read_ahead_init(Qcow2TableReadAhead *r, BlockDriverState *bs,
                                 BdrvChild *file, const uint64_t *l1,
                                 uint64_t l1_size, unsigned max_tables)
{
    BDRVQcow2State *s = bs->opaque;

    memset(r, 0, sizeof(*r));
    r->bs = bs;
    r->file = file;
    r->l1 = l1;
    r->l1_size = l1_size;
    r->cluster_size = s->cluster_size;
    r->max = MAX(1, max_tables);
}

void qcow2_table_read_ahead_destroy(Qcow2TableReadAhead *r)
{
    qemu_vfree(r->buf);
    r->buf = NULL;
    r->n = 0;
}

/* Where the table for L1 index @t is (0: nowhere, or not aligned) */
static uint64_t ra_offset(Qcow2TableReadAhead *r, uint64_t t)
{
    uint64_t offset = t < r->l1_size ? r->l1[t] & L1E_OFFSET_MASK : 0;

    return offset & (r->cluster_size - 1) ? 0 : offset;
}

int qcow2_table_read_ahead_get(Qcow2TableReadAhead *r, uint64_t t,
                               const uint64_t **table, Error **errp)
{
    uint64_t offset = ra_offset(r, t);
    unsigned n;
    int ret;

    *table = NULL;
    if (!offset) {
        return 0;
    }
    if (r->n && t >= r->t0 && t - r->t0 < r->n &&
        offset == r->offset0 + (t - r->t0) * r->cluster_size) {
        *table = (const uint64_t *)(r->buf + (t - r->t0) * r->cluster_size);
        return 1;
    }

    /*
     * A new run: the tables from @t on that follow each other on disk, as
     * many as the caller took one after the other so far, doubled (a
     * caller that skips tables does not pay for reading them)
     */
    r->run = t == r->t0 + r->n && r->n ? MIN(r->max, r->run * 2) : 1;
    for (n = 1; n < r->run; n++) {
        if (ra_offset(r, t + n) != offset + (uint64_t)n * r->cluster_size) {
            break;
        }
    }
    if (!r->buf) {
        r->buf = qemu_try_blockalign(r->file->bs,
                                     (size_t)r->max * r->cluster_size);
        if (!r->buf) {
            error_setg(errp, "Could not allocate memory to read the tables "
                       "of '%s'", r->bs->filename);
            return -ENOMEM;
        }
    }
    r->n = 0;
    ret = bdrv_pread(r->file, offset, (int64_t)n * r->cluster_size, r->buf,
                     0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read tables of '%s'",
                         r->bs->filename);
        return ret;
    }
    trace_qcow2_table_read_ahead(r->bs, t, n);
    r->t0 = t;
    r->offset0 = offset;
    r->n = n;
    *table = (const uint64_t *)r->buf;
    return 1;
}
