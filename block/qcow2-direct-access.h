/*
 * sQemu: direct access to the layer holding a cluster
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef BLOCK_QCOW2_DIRECT_ACCESS_H
#define BLOCK_QCOW2_DIRECT_ACCESS_H

#include "block/block_int.h"

/* Runtime option: the unified L2 cache's size in bytes */
#define QCOW2_OPT_UNIFIED_CACHE_SIZE "unified-cache-size"

typedef struct Qcow2DirectAccess Qcow2DirectAccess;

/*
 * Where to read the start of [@offset, @offset + *@bytes) of @bs, a run
 * that qcow2_get_host_offset() found unallocated in @bs.  On return,
 * *@bytes may be shorter and *@task_bs, *@host_offset and *@type are what
 * to give the read task: @bs itself and the type unchanged for a vanilla
 * read through the backing chain, or the lower layer and its entry.
 * Called with @bs's s->lock held.
 */
int coroutine_fn qcow2_da_resolve(BlockDriverState *bs, uint64_t offset,
                                  unsigned int *bytes,
                                  BlockDriverState **task_bs,
                                  uint64_t *host_offset,
                                  QCow2SubclusterType *type);

/*
 * .bdrv_co_block_status_below: skip the layers the index says hold
 * nothing, and answer for the layer that holds a run of data from the
 * unified cache
 */
BlockDriverState *coroutine_fn
qcow2_da_block_status_below(BlockDriverState *bs, bool want_zero,
                            int64_t offset, int64_t *bytes, int *skipped,
                            int *status, int64_t *map,
                            BlockDriverState **file);

/* Forget the chain view, the unified cache and the counters */
void qcow2_da_free(BlockDriverState *bs);
/* cache-clean-interval: drop slices unused since the last call */
void qcow2_da_clean_unused(BlockDriverState *bs);

/* The unified cache size in bytes that @bs uses */
uint64_t qcow2_da_cache_size(BlockDriverState *bs);
int qcow2_da_check_cache_size(uint64_t size, unsigned l2_slice_size,
                              Error **errp);

/* .bdrv_get_specific_stats: the counters (query-blockstats, qemu-io) */
BlockStatsSpecific *qcow2_da_get_specific_stats(BlockDriverState *bs);

#endif
