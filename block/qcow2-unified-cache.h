/*
 * sQemu: the unified L2 cache of a qcow2 chain top
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * One cache per chain top.  It holds, for the clusters of the top's L2
 * slices whose backing index names a lower layer, where that layer keeps
 * the cluster: the layer's depth, the type of its entry and its host
 * offset.  Lower layers keep no L2 cache of their own for reads; a
 * lower layer's L2 slice is read once, when an entry first points into
 * it, and every entry of the cached slice that points into the same
 * layer is resolved from it ("cache correction").
 *
 * The cache is derived state: nothing in it is ever dirty.  An entry is
 * used only while the top's own L2 entry still names the layer the entry
 * was resolved in, so writes to the top never see a stale entry; a
 * change of the chain clears the whole cache.  docs/sqemu.md has the
 * design and its limits.
 */

#ifndef BLOCK_QCOW2_UNIFIED_CACHE_H
#define BLOCK_QCOW2_UNIFIED_CACHE_H

/* What the layer named by an entry's backing index keeps there */
typedef enum Qcow2UcType {
    QCOW2_UC_UNRESOLVED = 0,    /* not looked up in that layer yet */
    QCOW2_UC_DATA,              /* an allocated cluster at host */
    QCOW2_UC_COMPRESSED,        /* a compressed cluster; host = its L2 entry */
    QCOW2_UC_ZERO,              /* a zero cluster: reads as zeroes */
    QCOW2_UC_RAW,               /* a raw base: read it at the guest offset */
    QCOW2_UC_BAD,               /* the layer does not hold it: read the
                                   vanilla way (the index is not true) */
} Qcow2UcType;

typedef struct Qcow2UcEntry {
    uint64_t host;
    uint16_t layer;             /* depth of the layer, 0 while unresolved */
    uint8_t type;               /* Qcow2UcType */
} Qcow2UcEntry;

typedef struct Qcow2UcSlice {
    uint64_t first;             /* first cluster of the slice */
    uint64_t lru;               /* last use, in cache clock ticks */
    bool used;                  /* used since the last clean */
    unsigned ref;               /* held by a request (qcow2_uc_put) */
    Qcow2UcEntry e[];           /* slice_clusters entries */
} Qcow2UcSlice;

typedef struct Qcow2UcStats {
    uint64_t lookups;           /* clusters looked up */
    uint64_t hits;              /* ... found resolved */
    uint64_t misses;            /* ... not cached or not resolved yet */
    uint64_t hit_unallocated;   /* ... no layer holds: zeroes, no lookup */
    uint64_t corrections;       /* cached slices resolved against a layer */
    uint64_t lower_slice_reads; /* L2 slices read from lower layers */
    uint64_t evictions;         /* slices dropped to make room */
} Qcow2UcStats;

typedef struct Qcow2UnifiedCache {
    GHashTable *slices;         /* first cluster -> Qcow2UcSlice */
    unsigned slice_clusters;
    unsigned max_slices;
    uint64_t clock;
    Qcow2UcStats stats;
} Qcow2UnifiedCache;

/* Memory of one slice of @slice_clusters clusters */
size_t qcow2_uc_slice_bytes(unsigned slice_clusters);
/*
 * The default size: enough for @disk_clusters, at most @cap bytes and at
 * least two slices.
 */
uint64_t qcow2_uc_default_size(uint64_t disk_clusters,
                               unsigned slice_clusters, uint64_t cap);
/* How many slices @size bytes hold; 0 if fewer than two (too small) */
unsigned qcow2_uc_slices_for_size(uint64_t size, unsigned slice_clusters);

Qcow2UnifiedCache *qcow2_uc_new(unsigned slice_clusters, unsigned max_slices);
void qcow2_uc_free(Qcow2UnifiedCache *c);
/* Drop every slice (the chain changed); the counters stay */
void qcow2_uc_clear(Qcow2UnifiedCache *c);
/* Drop the slices not used since the previous call (cache-clean-interval) */
unsigned qcow2_uc_clean_unused(Qcow2UnifiedCache *c);
unsigned qcow2_uc_nb_slices(Qcow2UnifiedCache *c);

/*
 * The slice holding @cluster, allocated (evicting the least recently used
 * one) if absent; held until qcow2_uc_put(), so that cleaning cannot free
 * it while the request that holds it waits for I/O.
 */
Qcow2UcSlice *qcow2_uc_get(Qcow2UnifiedCache *c, uint64_t cluster,
                           bool *missed);
void qcow2_uc_put(Qcow2UcSlice *slice);
/* The slice holding @cluster if it is cached, without touching its LRU */
Qcow2UcSlice *qcow2_uc_peek(Qcow2UnifiedCache *c, uint64_t cluster);

/*
 * What a lower layer's standard L2 entry @l2e says about a cluster the
 * index says that layer holds (clusters of 1 << @cluster_bits bytes).
 */
Qcow2UcEntry qcow2_uc_decode(uint64_t l2e, unsigned layer,
                             unsigned cluster_bits);

/*
 * Cache correction: resolve against layer @layer every entry of @slice
 * whose backing index @want[i] (for the @n clusters from the slice's
 * first on) names @layer.  @l2e holds that layer's L2 entries for the
 * same clusters, or is NULL if the layer has no L2 table there.  Returns
 * how many entries were resolved.
 */
unsigned qcow2_uc_correct(Qcow2UnifiedCache *c, Qcow2UcSlice *slice,
                          unsigned layer, const uint16_t *want,
                          const uint64_t *l2e, unsigned n,
                          unsigned cluster_bits);
/* The same for a raw base at depth @layer: it holds what the index says */
unsigned qcow2_uc_correct_raw(Qcow2UnifiedCache *c, Qcow2UcSlice *slice,
                              unsigned layer, const uint16_t *want,
                              unsigned n);

#endif
