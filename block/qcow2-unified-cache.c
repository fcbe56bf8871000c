/*
 * sQemu: the unified L2 cache of a qcow2 chain top
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The data structure only: slices of resolved entries keyed on the top's
 * L2 slice, LRU eviction, cleaning, and resolving a cached slice against
 * one lower layer's L2 entries.  Reading those entries and choosing what
 * to resolve is qcow2-direct-access.c's job.
 */

#include "qemu/osdep.h"
#include "qcow2.h"
#include "qcow2-unified-cache.h"
#include "trace.h"

size_t qcow2_uc_slice_bytes(unsigned slice_clusters)
{
    return sizeof(Qcow2UcSlice) + (size_t)slice_clusters *
           sizeof(Qcow2UcEntry);
}

uint64_t qcow2_uc_default_size(uint64_t disk_clusters,
                               unsigned slice_clusters, uint64_t cap)
{
    uint64_t slices = DIV_ROUND_UP(disk_clusters, slice_clusters);
    uint64_t slice_bytes = qcow2_uc_slice_bytes(slice_clusters);

    slices = MAX(slices, 2);
    slices = MIN(slices, MAX(cap / slice_bytes, 2));
    return slices * slice_bytes;
}

unsigned qcow2_uc_slices_for_size(uint64_t size, unsigned slice_clusters)
{
    uint64_t slices = size / qcow2_uc_slice_bytes(slice_clusters);

    if (slices < 2) {
        return 0;
    }
    return MIN(slices, UINT_MAX);
}

Qcow2UnifiedCache *qcow2_uc_new(unsigned slice_clusters, unsigned max_slices)
{
    Qcow2UnifiedCache *c = g_new0(Qcow2UnifiedCache, 1);

    assert(slice_clusters > 0 && max_slices >= 2);
    c->slices = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL,
                                      g_free);
    c->slice_clusters = slice_clusters;
    c->max_slices = max_slices;
    return c;
}

void qcow2_uc_free(Qcow2UnifiedCache *c)
{
    if (c) {
        g_hash_table_destroy(c->slices);
        g_free(c);
    }
}

static gboolean uc_drop(gpointer key, gpointer value, gpointer opaque)
{
    Qcow2UcSlice *slice = value;

    /* Callers hold the top's lock or have it quiesced: nothing is held */
    assert(!slice->ref);
    return true;
}

void qcow2_uc_clear(Qcow2UnifiedCache *c)
{
    trace_qcow2_uc_clear(c, g_hash_table_size(c->slices));
    g_hash_table_foreach_remove(c->slices, uc_drop, NULL);
}

static gboolean uc_unused(gpointer key, gpointer value, gpointer opaque)
{
    Qcow2UcSlice *slice = value;
    bool drop = !slice->used && !slice->ref;

    slice->used = false;
    return drop;
}

unsigned qcow2_uc_clean_unused(Qcow2UnifiedCache *c)
{
    unsigned n = g_hash_table_foreach_remove(c->slices, uc_unused, NULL);

    trace_qcow2_uc_clean(c, n);
    return n;
}

unsigned qcow2_uc_nb_slices(Qcow2UnifiedCache *c)
{
    return g_hash_table_size(c->slices);
}

Qcow2UcSlice *qcow2_uc_peek(Qcow2UnifiedCache *c, uint64_t cluster)
{
    uint64_t first = cluster - cluster % c->slice_clusters;

    return g_hash_table_lookup(c->slices, &first);
}

static bool uc_evict_lru(Qcow2UnifiedCache *c)
{
    GHashTableIter it;
    gpointer value;
    Qcow2UcSlice *lru = NULL;

    g_hash_table_iter_init(&it, c->slices);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
        Qcow2UcSlice *slice = value;

        if (!slice->ref && (!lru || slice->lru < lru->lru)) {
            lru = slice;
        }
    }
    if (!lru) {
        return false;   /* all held: grow by one until they are put */
    }
    trace_qcow2_uc_evict(c, lru->first);
    c->stats.evictions++;
    g_hash_table_remove(c->slices, &lru->first);
    return true;
}

Qcow2UcSlice *qcow2_uc_get(Qcow2UnifiedCache *c, uint64_t cluster,
                           bool *missed)
{
    uint64_t first = cluster - cluster % c->slice_clusters;
    Qcow2UcSlice *slice = g_hash_table_lookup(c->slices, &first);

    *missed = !slice;
    if (!slice) {
        /* Shrink back to size if the cache grew while all were held */
        while (g_hash_table_size(c->slices) >= c->max_slices &&
               uc_evict_lru(c)) {
            continue;
        }
        /* Zeroed: every entry QCOW2_UC_UNRESOLVED */
        slice = g_malloc0(qcow2_uc_slice_bytes(c->slice_clusters));
        slice->first = first;
        g_hash_table_insert(c->slices, &slice->first, slice);
        trace_qcow2_uc_slice_new(c, first);
    }
    slice->lru = ++c->clock;
    slice->used = true;
    slice->ref++;
    return slice;
}

void qcow2_uc_put(Qcow2UcSlice *slice)
{
    assert(slice->ref > 0);
    slice->ref--;
}

Qcow2UcEntry qcow2_uc_decode(uint64_t l2e, unsigned layer,
                             unsigned cluster_bits)
{
    uint64_t host = l2e & L2E_OFFSET_MASK;

    if (l2e & QCOW_OFLAG_COMPRESSED) {
        return (Qcow2UcEntry) {
            .host = l2e,
            .layer = layer, .type = QCOW2_UC_COMPRESSED,
        };
    }
    if (host & ((1ULL << cluster_bits) - 1)) {
        /* The layer's own read path reports this as corruption: let it */
        return (Qcow2UcEntry) { .layer = layer, .type = QCOW2_UC_BAD };
    }
    if (l2e & QCOW_OFLAG_ZERO) {
        return (Qcow2UcEntry) { .layer = layer, .type = QCOW2_UC_ZERO };
    }
    if (!host) {
        /* Not held here after all: the index is not true */
        return (Qcow2UcEntry) { .layer = layer, .type = QCOW2_UC_BAD };
    }
    return (Qcow2UcEntry) {
        .host = host, .layer = layer, .type = QCOW2_UC_DATA,
    };
}

unsigned qcow2_uc_correct(Qcow2UnifiedCache *c, Qcow2UcSlice *slice,
                          unsigned layer, const uint16_t *want,
                          const uint64_t *l2e, unsigned n,
                          unsigned cluster_bits)
{
    unsigned i, resolved = 0;

    assert(n <= c->slice_clusters);
    for (i = 0; i < n; i++) {
        if (want[i] != layer) {
            continue;
        }
        slice->e[i] = qcow2_uc_decode(l2e ? l2e[i] : 0, layer, cluster_bits);
        resolved++;
    }
    c->stats.corrections++;
    trace_qcow2_uc_correct(c, slice->first, layer, resolved);
    return resolved;
}

unsigned qcow2_uc_correct_raw(Qcow2UnifiedCache *c, Qcow2UcSlice *slice,
                              unsigned layer, const uint16_t *want,
                              unsigned n)
{
    unsigned i, resolved = 0;

    assert(n <= c->slice_clusters);
    for (i = 0; i < n; i++) {
        if (want[i] == layer) {
            slice->e[i] = (Qcow2UcEntry) {
                .layer = layer, .type = QCOW2_UC_RAW,
            };
            resolved++;
        }
    }
    c->stats.corrections++;
    trace_qcow2_uc_correct(c, slice->first, layer, resolved);
    return resolved;
}
