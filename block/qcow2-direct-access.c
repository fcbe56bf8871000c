/*
 * sQemu: direct access to the layer holding a cluster
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A read of a cluster the top does not hold goes, on a chain whose
 * backing index validates, straight to the layer the index names: the
 * layer's host offset comes from the top's unified cache
 * (qcow2-unified-cache.c), and the data is read from that layer's file
 * with the layer's own read task (so compressed clusters and encrypted
 * layers work as they do for the layer itself).  Nothing goes through
 * the block layer of the layers in between, and nothing costs more at
 * depth 1000 than at depth 1.
 *
 * The chain view (which node is at which depth) is built the first time
 * it is needed and again whenever the graph or any layer's index state
 * changed; a chain that does not validate is read the vanilla way.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/atomic.h"
#include "qemu/memalign.h"
#include "block/aio_task.h"
#include "qcow2.h"
#include "qcow2-backing-index.h"
#include "qcow2-unified-cache.h"
#include "qcow2-direct-access.h"
#include "trace.h"

/* Lower L2 entries are read in blocks of this many bytes */
#define DA_L2_READ_ALIGN 4096

/* Lower layers' L2 entries read at the same time by a cache correction */
#define DA_CORRECT_WORKERS 16

/* Lower layers whose metadata preallocation is found out at the same time */
#define DA_DETECT_WORKERS 16

/* The entries of one slice that the top's index gives to one layer */
typedef struct DaLayerSpan {
    unsigned lo, hi;            /* from the first to the last: [lo, hi) */
    bool stale;                 /* some of them are not resolved */
} DaLayerSpan;

struct Qcow2DirectAccess {
    /* The chain view, and the generations it was built at */
    bool built;
    uint64_t graph_gen;
    uint64_t bi_gen;
    char *reason;               /* why the chain does not validate */
    unsigned depth;             /* the top's depth; 0 if not valid */
    BlockDriverState **layer;   /* [1..depth - 1]: the node at that depth */
    uint64_t min_lower_size;    /* the smallest lower layer, in bytes */

    Qcow2UnifiedCache *cache;
    uint64_t cache_size;        /* bytes the cache was sized for */

    uint16_t *want;             /* the top's index for one slice */
    DaLayerSpan *span;          /* [1..depth - 1]: per layer, one slice */
    bool detected;              /* every layer's preallocation is known */
    bool resolved;              /* the top's resolved L2 tables are true */
    uint64_t *resolved_e;       /* its resolved entries for one slice */

    uint64_t direct_reads;      /* runs read straight from a lower layer */
    uint64_t vanilla_fallbacks; /* runs read through the backing chain */
    uint64_t validations;       /* times the chain view was built */
};

static void da_drop_view(Qcow2DirectAccess *da)
{
    g_free(da->layer);
    da->layer = NULL;
    g_free(da->span);
    da->span = NULL;
    g_free(da->reason);
    da->reason = NULL;
    da->depth = 0;
    da->detected = false;
    da->resolved = false;
    da->built = false;
    if (da->cache) {
        qcow2_uc_clear(da->cache);
    }
}

void qcow2_da_free(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2DirectAccess *da = s->bi_da;

    if (!da) {
        return;
    }
    da_drop_view(da);
    qcow2_uc_free(da->cache);
    g_free(da->want);
    g_free(da->resolved_e);
    g_free(da);
    s->bi_da = NULL;
}

void qcow2_da_clean_unused(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;

    if (s->bi_da && s->bi_da->cache) {
        qcow2_uc_clean_unused(s->bi_da->cache);
    }
}

uint64_t qcow2_da_cache_size(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t clusters = DIV_ROUND_UP(qcow2_bi_layer_size(bs),
                                     s->cluster_size);

    if (s->bi_uc_size) {
        return s->bi_uc_size;
    }
    return qcow2_uc_default_size(clusters, s->l2_slice_size,
                                 DEFAULT_L2_CACHE_MAX_SIZE);
}

int qcow2_da_check_cache_size(uint64_t size, unsigned l2_slice_size,
                              Error **errp)
{
    if (size && !qcow2_uc_slices_for_size(size, l2_slice_size)) {
        error_setg(errp, QCOW2_OPT_UNIFIED_CACHE_SIZE " must be at least "
                   "%zu bytes (two slices of %u clusters)",
                   2 * qcow2_uc_slice_bytes(l2_slice_size), l2_slice_size);
        return -EINVAL;
    }
    return 0;
}

/* Build the chain view of @bs if the graph or an index changed since */
static Qcow2DirectAccess *da_view(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2DirectAccess *da = s->bi_da;
    uint64_t graph_gen = qatomic_read(&bdrv_graph_generation);
    uint64_t bi_gen = qatomic_read(&qcow2_bi_generation);
    uint64_t cache_size = qcow2_da_cache_size(bs);
    BlockDriverState *l;
    unsigned d;

    if (!da) {
        da = s->bi_da = g_new0(Qcow2DirectAccess, 1);
        da->want = g_new(uint16_t, s->l2_slice_size);
    }
    if (da->built && da->graph_gen == graph_gen && da->bi_gen == bi_gen &&
        da->cache_size == cache_size) {
        return da;
    }

    da_drop_view(da);
    da->built = true;
    da->graph_gen = graph_gen;
    da->bi_gen = bi_gen;
    da->validations++;
    if (da->cache_size != cache_size) {
        qcow2_uc_free(da->cache);
        da->cache = NULL;
        da->cache_size = cache_size;
    }

    da->reason = qcow2_bi_chain_check(bs);
    if (!da->reason) {
        /* Same cluster size is a rule of the format; do not trust it */
        for (l = qcow2_bi_next_layer(bs); l; l = qcow2_bi_next_layer(l)) {
            if (qcow2_bi_is_qcow2(l) &&
                ((BDRVQcow2State *)l->opaque)->cluster_bits !=
                s->cluster_bits) {
                da->reason = g_strdup_printf("layer '%s' has another cluster "
                                             "size", l->filename);
                break;
            }
        }
    }
    if (da->reason) {
        trace_qcow2_da_view(bs, 0, da->reason);
        return da;
    }

    da->depth = s->bi_ext.depth;
    da->layer = g_new0(BlockDriverState *, da->depth);
    da->span = g_new(DaLayerSpan, da->depth);
    d = da->depth;
    da->min_lower_size = UINT64_MAX;
    for (l = qcow2_bi_next_layer(bs); l; l = qcow2_bi_next_layer(l)) {
        assert(d > 1);
        da->layer[--d] = l;
        da->min_lower_size = MIN(da->min_lower_size, qcow2_bi_layer_size(l));
    }
    assert(d == 1);
    da->resolved = qcow2_bir_matches(bs, da->layer, da->depth);
    if (da->resolved && !da->resolved_e) {
        da->resolved_e = g_new(uint64_t, s->l2_slice_size);
    }
    if (!da->cache) {
        da->cache = qcow2_uc_new(s->l2_slice_size,
                                 qcow2_uc_slices_for_size(cache_size,
                                                          s->l2_slice_size));
    }
    trace_qcow2_da_view(bs, da->depth, da->resolved ?
                        "valid, with resolved L2 tables" : "valid");
    return da;
}

/* Where @s keeps the L2 table for L1 entry @l1_index (0: nowhere) */
static uint64_t da_l2_table(BDRVQcow2State *s, uint64_t l1_index)
{
    return l1_index < s->l1_size ? s->l1_table[l1_index] & L1E_OFFSET_MASK
                                 : 0;
}

/*
 * The top's L2 slice holding @offset, from its L2 cache (put it back with
 * qcow2_cache_put()), or NULL if the top has no L2 table there.
 */
static int coroutine_fn da_top_slice(BlockDriverState *bs, uint64_t offset,
                                     uint64_t **l2_slice)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t l2_offset = da_l2_table(s, offset_to_l1_index(s, offset));

    *l2_slice = NULL;
    if (!l2_offset) {
        return 0;
    }
    return qcow2_cache_get(bs, s->l2_table_cache,
                           l2_offset + (offset_to_l2_index(s, offset) -
                                        offset_to_l2_slice_index(s, offset)) *
                           l2_entry_size(s), (void **)l2_slice);
}

/* How many of the @nb entries from @i0 are unallocated with index @k */
static unsigned da_index_run(BlockDriverState *bs, uint64_t *l2_slice,
                             unsigned i0, unsigned nb, unsigned k)
{
    BDRVQcow2State *s = bs->opaque;
    unsigned run;

    for (run = 0; run < nb; run++) {
        uint64_t e = get_l2_entry(s, l2_slice, i0 + run);

        if (qcow2_get_cluster_type(bs, e) != QCOW2_CLUSTER_UNALLOCATED ||
            qcow2_bi_get(e) != k) {
            break;
        }
    }
    return run;
}

/* One layer's part of a cache correction: read its L2 entries [lo, hi) */
typedef struct DaCorrectTask {
    AioTask task;
    BlockDriverState *bs;
    Qcow2DirectAccess *da;
    Qcow2UcSlice *slice;
    unsigned k, lo, hi;
    uint64_t l2_offset;         /* where layer k keeps the slice's entries */
} DaCorrectTask;

static int coroutine_fn da_correct_task(AioTask *task)
{
    DaCorrectTask *t = container_of(task, DaCorrectTask, task);
    BDRVQcow2State *s = t->bs->opaque;
    BlockDriverState *l = t->da->layer[t->k];
    uint64_t bytes = (t->hi - t->lo) * sizeof(uint64_t);
    uint64_t *l2e;
    unsigned i;
    int ret;

    l2e = qemu_try_blockalign(l->file->bs,
                              s->l2_slice_size * sizeof(uint64_t));
    if (!l2e) {
        return -ENOMEM;
    }
    trace_qcow2_da_lower_slice_read(t->bs, t->k, t->l2_offset +
                                    t->lo * sizeof(uint64_t), bytes);
    t->da->cache->stats.lower_slice_reads++;
    ret = bdrv_co_pread(l->file, t->l2_offset + t->lo * sizeof(uint64_t),
                        bytes, l2e + t->lo, 0);
    if (ret >= 0) {
        for (i = t->lo; i < t->hi; i++) {
            l2e[i] = be64_to_cpu(l2e[i]);
        }
        qcow2_uc_correct(t->da->cache, t->slice, t->k, t->da->want, l2e,
                         s->l2_slice_size, s->cluster_bits);
    }
    qemu_vfree(l2e);
    return ret < 0 ? ret : 0;
}

/*
 * Cache correction of @slice, which missed an entry: resolve every entry
 * of the slice that the top's index gives to a layer, first from the
 * top's resolved L2 tables if it has true ones (one read of its own file),
 * then, for each layer with an entry of the slice still not resolved,
 * from that layer's L2 entries for the slice, read once.  The reads go out in
 * parallel: on a long chain with clusters spread over the layers, a
 * slice names hundreds of layers, and one read after the other, each
 * waiting for the disk, would cost a full read of the disk about a tenth
 * of its time.  Of a layer's entries, only those from the first to the
 * last the index gives to it are read, in whole DA_L2_READ_ALIGN blocks
 * (so that a read with O_DIRECT needs no bounce buffer): with 64 KiB
 * slices a layer holds a few clusters of each.
 */
static int coroutine_fn da_correct(BlockDriverState *bs, Qcow2DirectAccess *da,
                                   Qcow2UcSlice *slice, uint64_t *l2_slice)
{
    BDRVQcow2State *s = bs->opaque;
    unsigned n = s->l2_slice_size, align = DA_L2_READ_ALIGN / sizeof(uint64_t);
    unsigned i, j;
    AioTaskPool *pool = NULL;
    int ret = 0;

    for (j = 1; j < da->depth; j++) {
        da->span[j].lo = n;
        da->span[j].hi = 0;
        da->span[j].stale = false;
    }
    for (i = 0; i < n; i++) {
        uint64_t e = get_l2_entry(s, l2_slice, i);

        da->want[i] = qcow2_get_cluster_type(bs, e) ==
                      QCOW2_CLUSTER_UNALLOCATED ? qcow2_bi_get(e) : 0;
    }
    if (da->resolved) {
        /* The top's own resolved entries first: one read of its file */
        ret = qcow2_bir_co_read(bs, slice->first, n, da->resolved_e);
        if (ret < 0) {
            /* Only a shortcut: correct from the layers, as without them */
            trace_qcow2_da_view(bs, da->depth, "resolved L2 tables "
                                "unreadable: not used");
            da->resolved = false;
            ret = 0;
        }
        for (i = 0; ret > 0 && i < n; i++) {
            uint64_t e = da->resolved_e[i];

            j = da->want[i];
            if (j && j < da->depth && qcow2_bi_get(e) == j &&
                (slice->e[i].type == QCOW2_UC_UNRESOLVED ||
                 slice->e[i].layer != j)) {
                slice->e[i] = qcow2_uc_decode(e & ~QCOW2_BI_MASK, j,
                                              s->cluster_bits);
            }
        }
        ret = 0;
    }
    for (i = 0; i < n; i++) {
        j = da->want[i];
        if (j == 0 || j >= da->depth) {
            continue;
        }
        da->span[j].lo = MIN(da->span[j].lo, i);
        da->span[j].hi = i + 1;
        if (slice->e[i].type == QCOW2_UC_UNRESOLVED ||
            slice->e[i].layer != j) {
            da->span[j].stale = true;
        }
    }

    for (j = 1; j < da->depth && ret == 0; j++) {
        BlockDriverState *l = da->layer[j];
        BDRVQcow2State *ls;
        uint64_t l2_offset;
        DaCorrectTask *t;

        if (!da->span[j].stale) {
            continue;
        }
        if (!qcow2_bi_is_qcow2(l)) {
            qcow2_uc_correct_raw(da->cache, slice, j, da->want, n);
            continue;
        }
        ls = l->opaque;
        l2_offset = da_l2_table(ls, slice->first >> ls->l2_bits);
        if (!l2_offset || offset_into_cluster(ls, l2_offset)) {
            /* Nothing there: every such entry is read the vanilla way */
            qcow2_uc_correct(da->cache, slice, j, da->want, NULL, n,
                             s->cluster_bits);
            continue;
        }
        if (!pool) {
            pool = aio_task_pool_new(DA_CORRECT_WORKERS);
        }
        t = g_new(DaCorrectTask, 1);
        *t = (DaCorrectTask) {
            .task.func = da_correct_task,
            .bs = bs,
            .da = da,
            .slice = slice,
            .k = j,
            .lo = QEMU_ALIGN_DOWN(da->span[j].lo, align),
            .hi = MIN(QEMU_ALIGN_UP(da->span[j].hi, align), n),
            .l2_offset = l2_offset +
                         (slice->first & (ls->l2_size - 1)) * sizeof(uint64_t),
        };
        aio_task_pool_start_task(pool, &t->task);
        ret = aio_task_pool_status(pool);
    }
    if (pool) {
        aio_task_pool_wait_all(pool);
        ret = aio_task_pool_status(pool);
        aio_task_pool_free(pool);
    }
    return ret;
}

/* Whether @b continues the run that @a starts, @i clusters further */
static bool da_continues(const Qcow2UcEntry *a, const Qcow2UcEntry *b,
                         unsigned i, unsigned cluster_bits)
{
    if (a->type != b->type || a->layer != b->layer) {
        return false;
    }
    switch (a->type) {
    case QCOW2_UC_DATA:
        return b->host == a->host + ((uint64_t)i << cluster_bits);
    case QCOW2_UC_COMPRESSED:
    case QCOW2_UC_UNRESOLVED:
        return false;
    default:
        return true;
    }
}

/*
 * What the top's index and the unified cache say about the @nb clusters
 * from @offset (within the top's L2 slice @l2_slice), which the top
 * leaves unallocated: the layer *@k and the entry *@e of the first
 * cluster.  Returns how many of the clusters (at least one) the same
 * read can serve, or a negative errno if a lower layer's L2 entries could
 * not be read.  Call with the top's lock held.
 */
static int coroutine_fn da_lookup(BlockDriverState *bs, Qcow2DirectAccess *da,
                                  uint64_t offset, unsigned nb,
                                  uint64_t *l2_slice, unsigned *k,
                                  Qcow2UcEntry *e)
{
    BDRVQcow2State *s = bs->opaque;
    unsigned i0 = offset_to_l2_slice_index(s, offset), run;
    Qcow2UcSlice *slice;
    bool missed;
    int ret;

    *k = qcow2_bi_get(get_l2_entry(s, l2_slice, i0));
    if (*k == QCOW2_BI_NONE) {
        /* The caller's run is unallocated in the top: at least one */
        run = da_index_run(bs, l2_slice, i0, nb, QCOW2_BI_NONE);
        da->cache->stats.hit_unallocated += run;
        *e = (Qcow2UcEntry) { .type = QCOW2_UC_ZERO };
        return run;
    }
    if (*k >= da->depth) {
        /* Not a layer below the top: impossible in a valid index */
        *e = (Qcow2UcEntry) { .type = QCOW2_UC_BAD };
        return 1;
    }

    da->cache->stats.lookups++;
    slice = qcow2_uc_get(da->cache, offset >> s->cluster_bits, &missed);
    *e = slice->e[i0];
    if (e->type == QCOW2_UC_UNRESOLVED || e->layer != *k) {
        da->cache->stats.misses++;
        trace_qcow2_da_miss(bs, offset, *k, missed);
        ret = da_correct(bs, da, slice, l2_slice);
        if (ret < 0) {
            qcow2_uc_put(slice);
            return ret;
        }
        *e = slice->e[i0];
        assert(e->layer == *k && e->type != QCOW2_UC_UNRESOLVED);
    } else {
        da->cache->stats.hits++;
    }
    for (run = 1; run < nb; run++) {
        uint64_t next = get_l2_entry(s, l2_slice, i0 + run);

        if (qcow2_bi_get(next) != *k ||
            !da_continues(e, &slice->e[i0 + run], run, s->cluster_bits)) {
            break;
        }
        da->cache->stats.lookups++;
        da->cache->stats.hits++;
    }
    qcow2_uc_put(slice);
    return run;
}

int coroutine_fn qcow2_da_resolve(BlockDriverState *bs, uint64_t offset,
                                  unsigned int *bytes,
                                  BlockDriverState **task_bs,
                                  uint64_t *host_offset,
                                  QCow2SubclusterType *type)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2DirectAccess *da;
    unsigned in_cluster = offset_into_cluster(s, offset);
    unsigned nb = size_to_clusters(s, in_cluster + (uint64_t)*bytes);
    uint64_t *l2_slice;
    unsigned k;
    Qcow2UcEntry e;
    int run;

    *task_bs = bs;
    if (!s->bi_enabled || !bs->backing || s->bi_da_held) {
        return 0;
    }
    da = da_view(bs);
    if (!da->depth) {
        da->vanilla_fallbacks++;
        trace_qcow2_da_vanilla(bs, offset, *bytes, da->reason);
        return 0;
    }
    /* The caller's run of unallocated clusters ends within one L2 slice */
    assert(offset_to_l2_slice_index(s, offset) + nb <= s->l2_slice_size);

    run = da_top_slice(bs, offset, &l2_slice);
    if (run < 0) {
        return run;
    }
    if (!l2_slice) {
        /* An indexed top has an L2 table wherever a lower layer holds */
        da->cache->stats.hit_unallocated += nb;
        *type = QCOW2_SUBCLUSTER_ZERO_PLAIN;
        return 0;
    }
    run = da_lookup(bs, da, offset, nb, l2_slice, &k, &e);
    qcow2_cache_put(s->l2_table_cache, (void **)&l2_slice);
    if (run < 0) {
        return run;
    }
    if (e.type == QCOW2_UC_DATA && da->layer[k]->encrypted) {
        run = MIN(run, QCOW_MAX_CRYPT_CLUSTERS);
    }

    *bytes = MIN(*bytes, ((uint64_t)run << s->cluster_bits) - in_cluster);
    switch (e.type) {
    case QCOW2_UC_DATA:
        if (da->layer[k]->encrypted &&
            (!QEMU_IS_ALIGNED(offset, BDRV_SECTOR_SIZE) ||
             !QEMU_IS_ALIGNED(*bytes, BDRV_SECTOR_SIZE))) {
            /*
             * Decryption works on whole sectors, and only the block layer
             * pads a request to them: let the node right above the layer
             * read it, one hop, as for a raw base.
             */
            *task_bs = k + 1 < da->depth ? da->layer[k + 1] : bs;
            *type = QCOW2_SUBCLUSTER_UNALLOCATED_PLAIN;
            break;
        }
        *task_bs = da->layer[k];
        *type = QCOW2_SUBCLUSTER_NORMAL;
        *host_offset = e.host + in_cluster;
        break;
    case QCOW2_UC_COMPRESSED:
        *task_bs = da->layer[k];
        *type = QCOW2_SUBCLUSTER_COMPRESSED;
        *host_offset = e.host;
        break;
    case QCOW2_UC_ZERO:
        *type = QCOW2_SUBCLUSTER_ZERO_PLAIN;
        return 0;
    case QCOW2_UC_RAW:
        /* The node right above the raw base reads it: one hop */
        *task_bs = k + 1 < da->depth ? da->layer[k + 1] : bs;
        *type = QCOW2_SUBCLUSTER_UNALLOCATED_PLAIN;
        break;
    case QCOW2_UC_BAD:
        da->vanilla_fallbacks++;
        trace_qcow2_da_vanilla(bs, offset, *bytes,
                               "the index names a layer that does not hold "
                               "the cluster");
        *type = QCOW2_SUBCLUSTER_UNALLOCATED_PLAIN;
        return 0;
    default:
        g_assert_not_reached();
    }
    da->direct_reads++;
    trace_qcow2_da_direct(bs, offset, *bytes, k, *host_offset);
    return 0;
}

/*
 * qcow2_detect_metadata_preallocation() for lower layer @l, with the same
 * answer, but reading the layer's refcount blocks into a scratch buffer
 * instead of through its refcount cache, which would otherwise cost every
 * layer of the chain a cluster of memory.  Call with @l's lock held.
 */
static int coroutine_fn da_detect_preallocation(BlockDriverState *l)
{
    BDRVQcow2State *ls = l->opaque;
    int64_t end, threshold, i, count = 0;
    void *block;
    int ret;

    /*
     * A layer whose file is not sparse is answered without reading its
     * refcounts: on a chain over NFS, two round trips less for each
     * layer a read first reaches.
     */
    ret = qcow2_metadata_preallocation_bounds(l, &end, &threshold);
    if (ret <= 0) {
        return ret;
    }

    /* a read-only layer reads its refcount table when first needed */
    ret = qcow2_refcount_table_load_rest(l);
    if (ret < 0) {
        return ret;
    }
    block = qemu_try_blockalign(l->file->bs, ls->cluster_size);
    if (!block) {
        return -ENOMEM;
    }
    for (i = 0; i < end && count < threshold; ) {
        uint64_t table_index = i >> ls->refcount_block_bits;
        uint64_t first = i & (ls->refcount_block_size - 1);
        uint64_t n = MIN(end - i, ls->refcount_block_size - first), j;
        uint64_t block_offset = table_index < ls->refcount_table_size ?
            ls->refcount_table[table_index] & REFT_OFFSET_MASK : 0;

        i += n;
        if (!block_offset) {
            continue;
        }
        if (offset_into_cluster(ls, block_offset)) {
            ret = -EIO;
            break;
        }
        ret = bdrv_co_pread(l->file, block_offset, ls->cluster_size, block,
                            0);
        if (ret < 0) {
            break;
        }
        for (j = first; j < first + n && count < threshold; j++) {
            count += !!ls->get_refcount(block, j);
        }
    }
    qemu_vfree(block);
    if (ret < 0) {
        return ret;
    }
    trace_qcow2_metadata_preallocation(l, end, threshold, true,
                                       count >= threshold);
    return count >= threshold;
}

/*
 * Whether the status of lower layer @l for a run of data clusters is
 * known without asking it: what qcow2_co_block_status() says of plain
 * data in an unencrypted layer, unless the layer is metadata-preallocated
 * (it then asks its file where the holes are, BDRV_BLOCK_RECURSE).  That
 * is found out once per layer, as qcow2_co_block_status() does.
 */
static bool da_status_askable(BlockDriverState *l)
{
    return qcow2_bi_is_qcow2(l) && !l->encrypted;
}

static bool coroutine_fn da_status_known(BlockDriverState *l)
{
    BDRVQcow2State *ls = l->opaque;
    bool known;

    if (!da_status_askable(l)) {
        return false;
    }
    if (ls->metadata_preallocation_checked) {
        /* Set once per open: no lock on every NBD read */
        return !ls->metadata_preallocation;
    }
    qemu_co_mutex_lock(&ls->lock);
    if (!ls->metadata_preallocation_checked) {
        ls->metadata_preallocation = da_detect_preallocation(l) == 1;
        ls->metadata_preallocation_checked = true;
    }
    known = !ls->metadata_preallocation;
    qemu_co_mutex_unlock(&ls->lock);
    return known;
}

typedef struct DaDetectTask {
    AioTask task;
    BlockDriverState *l;
} DaDetectTask;

static int coroutine_fn da_detect_task(AioTask *task)
{
    DaDetectTask *t = container_of(task, DaDetectTask, task);

    da_status_known(t->l);
    return 0;
}

/*
 * Find out for every lower layer of @da at once whether it is
 * metadata-preallocated, as da_status_known() would one layer at a time
 * as block status first reaches it.  Each layer needs its file's
 * allocated size: over NFS with cache.direct a round trip, which one after
 * the other cost a 1000-layer chain's first walk of block status 1000
 * round trips; DA_DETECT_WORKERS at a time, a sixteenth of that.
 *
 * Every layer is asked, also those this walk would not have reached: a
 * layer whose file looks sparse then reads its refcounts now (a read-only
 * open defers them, patch 0057), and a layer whose answer fails is taken
 * as not preallocated, as qcow2_co_block_status() takes it.
 */
static void coroutine_fn da_detect_all(BlockDriverState *bs,
                                       Qcow2DirectAccess *da)
{
    AioTaskPool *pool = NULL;
    unsigned j, n = 0;

    for (j = 1; j < da->depth; j++) {
        BlockDriverState *l = da->layer[j];
        DaDetectTask *t;

        if (!da_status_askable(l) ||
            ((BDRVQcow2State *)l->opaque)->metadata_preallocation_checked) {
            continue;
        }
        if (!pool) {
            pool = aio_task_pool_new(DA_DETECT_WORKERS);
        }
        t = g_new(DaDetectTask, 1);
        *t = (DaDetectTask) {
            .task.func = da_detect_task,
            .l = l,
        };
        aio_task_pool_start_task(pool, &t->task);
        n++;
    }
    if (pool) {
        aio_task_pool_wait_all(pool);
        aio_task_pool_free(pool);
    }
    trace_qcow2_da_detect_preallocation(bs, n);
    da->detected = true;
}

/* da_status_known() for layer @k of @da, every layer found out at once */
static bool coroutine_fn da_layer_status_known(BlockDriverState *bs,
                                               Qcow2DirectAccess *da,
                                               unsigned k)
{
    if (!da->detected) {
        da_detect_all(bs, da);
    }
    return da_status_known(da->layer[k]);
}

BlockDriverState *coroutine_fn
qcow2_da_block_status_below(BlockDriverState *bs, bool want_zero,
                            int64_t offset, int64_t *bytes, int *skipped,
                            int *status, int64_t *map,
                            BlockDriverState **file)
{
    BDRVQcow2State *s = bs->opaque;
    BlockDriverState *below = NULL;
    Qcow2DirectAccess *da;
    unsigned in_cluster = offset_into_cluster(s, offset);
    unsigned i0 = offset_to_l2_slice_index(s, offset);
    uint64_t *l2_slice;
    unsigned nb, run, k;
    Qcow2UcEntry e;
    bool answered = false;
    int ret;

    if (!s->bi_enabled || !bs->backing || s->bi_da_held) {
        return NULL;
    }
    qemu_co_mutex_lock(&s->lock);
    da = da_view(bs);
    /*
     * A lower layer that ends inside the range would make the walk stop
     * there with synthesized zeroes: leave such ranges to the walk.
     */
    if (!da->depth || offset + *bytes > da->min_lower_size) {
        goto out;
    }
    nb = MIN(size_to_clusters(s, in_cluster + *bytes),
             s->l2_slice_size - i0);
    if (da_top_slice(bs, offset, &l2_slice) < 0) {
        goto out;
    }
    if (!l2_slice) {
        k = QCOW2_BI_NONE;
        run = nb;
    } else {
        k = qcow2_bi_get(get_l2_entry(s, l2_slice, i0));
        if (k != QCOW2_BI_NONE && k < da->depth &&
            da_layer_status_known(bs, da, k)) {
            /*
             * Answer for layer k from the unified cache, so that its own
             * L2 cache stays empty; an error leaves it to the walk.
             */
            ret = da_lookup(bs, da, offset, nb, l2_slice, &k, &e);
            if (ret > 0 && e.type == QCOW2_UC_DATA) {
                BDRVQcow2State *ls = da->layer[k]->opaque;

                *status = BDRV_BLOCK_DATA | BDRV_BLOCK_OFFSET_VALID |
                          BDRV_BLOCK_ALLOCATED;
                *map = e.host + in_cluster;
                *file = ls->data_file->bs;
                nb = ret;
                answered = true;
            }
        }
        /* An answer from the cache already counted its run */
        run = answered ? nb : da_index_run(bs, l2_slice, i0, nb, k);
        qcow2_cache_put(s->l2_table_cache, (void **)&l2_slice);
        if (!run || k >= da->depth) {
            *status = 0;
            goto out;
        }
    }
    /* The layers in between hold none of these clusters */
    below = da->layer[k ? k : 1];
    *skipped = da->depth - 1 - (k ? k : 1);
    *bytes = MIN(*bytes, ((int64_t)run << s->cluster_bits) - in_cluster);
    trace_qcow2_da_block_status_below(bs, offset, *bytes, k, *status);
out:
    qemu_co_mutex_unlock(&s->lock);
    return below;
}

static Qcow2BackingIndexStats *da_get_stats(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2DirectAccess *da;
    Qcow2BackingIndexStats *st;

    if (!s->bi_enabled) {
        return NULL;
    }
    st = g_new0(Qcow2BackingIndexStats, 1);
    st->cache_size = qcow2_da_cache_size(bs);
    da = s->bi_da;
    if (!da || !da->built ||
        da->graph_gen != qatomic_read(&bdrv_graph_generation) ||
        da->bi_gen != qatomic_read(&qcow2_bi_generation)) {
        /*
         * No read since the chain or an index changed (or none yet): say
         * what the next read will find, not what the last one did
         */
        char *reason = qcow2_bi_chain_check(bs);

        st->direct_access = !reason;
        st->depth = reason ? 0 : s->bi_ext.depth;
        st->has_reason = !!reason;
        st->reason = reason;
    } else {
        st->direct_access = da->depth;
        st->depth = da->depth;
        if (da->reason) {
            st->has_reason = true;
            st->reason = g_strdup(da->reason);
        }
    }
    if (!da) {
        return st;
    }
    st->validations = da->validations;
    st->direct_reads = da->direct_reads;
    st->vanilla_fallbacks = da->vanilla_fallbacks;
    if (da->cache) {
        Qcow2UcStats *cs = &da->cache->stats;

        st->lookups = cs->lookups;
        st->hits = cs->hits;
        st->misses = cs->misses;
        st->hit_unallocated = cs->hit_unallocated;
        st->corrections = cs->corrections;
        st->lower_slice_reads = cs->lower_slice_reads;
        st->evictions = cs->evictions;
        st->cache_slices = qcow2_uc_nb_slices(da->cache);
    }
    return st;
}

BlockStatsSpecific *qcow2_da_get_specific_stats(BlockDriverState *bs)
{
    BlockStatsSpecific *stats = g_new0(BlockStatsSpecific, 1);

    stats->driver = BLOCKDEV_DRIVER_QCOW2;
    stats->u.qcow2.backing_index = da_get_stats(bs);
    stats->u.qcow2.has_backing_index = !!stats->u.qcow2.backing_index;
    return stats;
}
