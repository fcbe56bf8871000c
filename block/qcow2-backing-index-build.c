/*
 * sQemu: computing, writing, stripping and checking the backing index of
 * a qcow2 layer
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The index of a layer is computed from the chain below it, one L2 slice
 * range at a time: when the parent's own index validates, the parent's
 * entries alone give the answer (an L2 copy); otherwise the chain is walked
 * down, layer by layer, until every cluster of the range is resolved.  The
 * caller must keep the chain quiescent (drained, or not in use), except
 * for the online build (x-blockdev-amend), which takes each layer's lock
 * for each L2 slice it reads or writes, so that guest requests run in
 * between.
 */

#include "qemu/osdep.h"
#include "qemu/cutils.h"
#include "qapi/error.h"
#include "qapi/qmp/qdict.h"
#include "qapi/util.h"
#include "qemu/error-report.h"
#include "qemu/memalign.h"
#include "sysemu/block-backend.h"
#include "qcow2.h"
#include "qcow2-backing-index.h"
#include "qcow2-table-read-ahead.h"
#include "trace.h"

/* The chain below a layer, gathered and checked once per operation */
typedef struct BiChain {
    BlockDriverState *top;
    BlockDriverState **layer;   /* layer[0] = top, layer[n - 1] = base */
    unsigned n;
    bool parent_trusted;        /* layer[1]'s own index validates */
    /* The online build: each layer's lock is taken per L2 slice */
    bool online;
    Qcow2BiSliceDone *slice_done;   /* called after every slice, if set */
    void *opaque;
} BiChain;

static void bi_chain_free(BiChain *c)
{
    g_free(c->layer);
    c->layer = NULL;
}

/*
 * Gather the chain of @bs and refuse what the index cannot describe:
 * too many layers, a non-qcow2 layer above the base, another cluster size,
 * subclusters, or a qcow2 layer whose size is not a multiple of the
 * cluster size.  With @check_parent, c->parent_trusted says whether the
 * parent's own index validates (a walk of the whole chain below).
 */
static int bi_chain_get(BlockDriverState *bs, BiChain *c, bool check_parent,
                        Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    BlockDriverState *l;
    unsigned i = 0;

    *c = (BiChain) { .top = bs };
    if (bs->backing_file[0] && !bs->backing) {
        error_setg(errp, "The backing chain of '%s' is not open; the backing "
                   "index is computed from it", bs->filename);
        return -EINVAL;
    }
    c->n = qcow2_bi_chain_length(bs);
    if (c->n > QCOW2_BI_MAX_DEPTH) {
        error_setg(errp, "The backing chain has %u layers; the backing index "
                   "can name at most %u", c->n, QCOW2_BI_MAX_DEPTH);
        error_append_hint(errp, "Use backing-index=off for deeper chains, "
                          "or shorten the chain with qemu-img commit.\n");
        return -EINVAL;
    }
    c->layer = g_new(BlockDriverState *, c->n);
    for (l = bs; l; l = qcow2_bi_next_layer(l)) {
        unsigned depth = c->n - i;
        BDRVQcow2State *ls = l->opaque;

        c->layer[i++] = l;
        if (l == bs) {
            continue;   /* the layer being indexed: checked by the caller */
        }
        if (!qcow2_bi_is_qcow2(l)) {
            if (depth == 1) {
                continue;
            }
            error_setg(errp, "Layer '%s' at depth %u is a '%s' node; the "
                       "backing index needs qcow2 layers over an optional "
                       "raw base", l->filename, depth,
                       l->drv ? l->drv->format_name : "(no medium)");
            goto fail;
        }
        if (ls->cluster_size != s->cluster_size) {
            error_setg(errp, "Layer '%s' has %d-byte clusters and '%s' "
                       "%d-byte ones; the backing index needs one cluster "
                       "size along the chain", l->filename, ls->cluster_size,
                       bs->filename, s->cluster_size);
            goto fail;
        }
        if (has_subclusters(ls)) {
            error_setg(errp, "Layer '%s' uses extended L2 entries, which the "
                       "backing index does not support", l->filename);
            goto fail;
        }
        if (!QEMU_IS_ALIGNED(qcow2_bi_layer_size(l), s->cluster_size)) {
            error_setg(errp, "The size of layer '%s' is not a multiple of "
                       "the cluster size, which the backing index does not "
                       "support", l->filename);
            goto fail;
        }
    }
    if (check_parent && c->n > 1 && qcow2_bi_is_qcow2(c->layer[1])) {
        g_autofree char *reason = qcow2_bi_chain_check(c->layer[1]);

        c->parent_trusted = !reason;
    }
    return 0;

fail:
    bi_chain_free(c);
    return -EINVAL;
}

/*
 * Whether the chain below @bs is one an index of @bs can describe (depth,
 * formats, cluster size, layer sizes), without building anything.
 */
int qcow2_bi_chain_supported(BlockDriverState *bs, Error **errp)
{
    BiChain c;
    int ret = bi_chain_get(bs, &c, false, errp);

    if (ret == 0) {
        bi_chain_free(&c);
    }
    return ret;
}

/* bi_read_entries with @l's lock held, or @l not in use */
static int bi_read_entries_locked(BlockDriverState *l, uint64_t first,
                                  unsigned n, uint64_t *e, Error **errp)
{
    BDRVQcow2State *ls = l->opaque;
    unsigned i = 0, k;
    int ret;

    /* One L2 slice (or unmapped stretch of one) per iteration */
    while (i < n) {
        uint64_t cluster = first + i;
        uint64_t l1_index = cluster >> ls->l2_bits;
        unsigned l2_index = cluster & (ls->l2_size - 1);
        unsigned in_slice = l2_index % ls->l2_slice_size;
        unsigned run = MIN(n - i, ls->l2_slice_size - in_slice);
        uint64_t l2_offset = 0;
        uint64_t *slice;

        if (l1_index < ls->l1_size) {
            l2_offset = ls->l1_table[l1_index] & L1E_OFFSET_MASK;
        }
        if (!l2_offset) {
            memset(&e[i], 0, run * sizeof(e[0]));
            i += run;
            continue;
        }
        if (offset_into_cluster(ls, l2_offset)) {
            error_setg(errp, "Layer '%s': L2 table offset 0x%" PRIx64
                       " unaligned (L1 index 0x%" PRIx64 ")", l->filename,
                       l2_offset, l1_index);
            return -EIO;
        }
        ret = qcow2_cache_get(l, ls->l2_table_cache,
                              l2_offset + (uint64_t)(l2_index - in_slice) *
                              l2_entry_size(ls), (void **)&slice);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not read an L2 table of '%s'",
                             l->filename);
            return ret;
        }
        for (k = 0; k < run; k++) {
            e[i + k] = get_l2_entry(ls, slice, in_slice + k);
        }
        qcow2_cache_put(ls->l2_table_cache, (void **)&slice);
        i += run;
    }
    return 0;
}

/*
 * Fill @e[0..n) with the standard L2 entries of qcow2 layer @l for the
 * clusters from @first on (0 where @l has no L2 table).  With @lock (in
 * coroutine context), under @l's lock, which its guest requests take too.
 */
static int bi_read_entries(BlockDriverState *l, uint64_t first, unsigned n,
                           uint64_t *e, bool lock, Error **errp)
{
    BDRVQcow2State *ls = l->opaque;
    int ret;

    if (!lock) {
        return bi_read_entries_locked(l, first, n, e, errp);
    }
    qemu_co_mutex_lock(&ls->lock);
    ret = bi_read_entries_locked(l, first, n, e, errp);
    qemu_co_mutex_unlock(&ls->lock);
    return ret;
}

/* A depth not resolved yet; no layer can have it */
#define BI_UNRESOLVED UINT16_MAX

/*
 * For the @n clusters of the top from @first on, set @depth[i] to the depth
 * of the lower layer that holds the cluster, or QCOW2_BI_NONE.
 * @scratch holds @n entries.
 */
static int bi_resolve(BiChain *c, uint64_t first, unsigned n,
                      uint16_t *depth, uint64_t *scratch, Error **errp)
{
    BDRVQcow2State *s = c->top->opaque;
    unsigned left = n;
    unsigned j, i;
    int ret;

    QEMU_BUILD_BUG_ON(QCOW2_BI_MAX_DEPTH >= BI_UNRESOLVED);
    for (i = 0; i < n; i++) {
        depth[i] = BI_UNRESOLVED;
    }
    for (j = 1; j < c->n && left; j++) {
        BlockDriverState *l = c->layer[j];
        unsigned d = c->n - j;
        /* A layer holds no cluster that starts at or past its end */
        uint64_t end = DIV_ROUND_UP(qcow2_bi_layer_size(l), s->cluster_size);
        bool trusted = j == 1 && c->parent_trusted;
        bool raw = !qcow2_bi_is_qcow2(l);

        if (!raw) {
            ret = bi_read_entries(l, first, n, scratch, c->online, errp);
            if (ret < 0) {
                return ret;
            }
        }
        for (i = 0; i < n; i++) {
            if (depth[i] != BI_UNRESOLVED) {
                continue;
            }
            if (first + i >= end) {
                /* Reads beyond a layer's end give zeroes: nothing below */
                depth[i] = QCOW2_BI_NONE;
            } else if (raw || qcow2_get_cluster_type(l, scratch[i]) !=
                              QCOW2_CLUSTER_UNALLOCATED) {
                /* A raw base holds every cluster that starts inside it */
                depth[i] = d;
            } else if (trusted && qcow2_bi_get(scratch[i]) < d) {
                depth[i] = qcow2_bi_get(scratch[i]);
            } else {
                /* Not resolved here (an impossible index is not trusted) */
                continue;
            }
            left--;
        }
    }
    for (i = 0; i < n; i++) {
        if (depth[i] == BI_UNRESOLVED) {
            depth[i] = QCOW2_BI_NONE;
        }
    }
    return 0;
}

/* The entry @e of the top with index @depth where the format allows one */
static uint64_t bi_entry_with(BlockDriverState *bs, uint64_t e, unsigned depth)
{
    switch (qcow2_get_cluster_type(bs, e)) {
    case QCOW2_CLUSTER_COMPRESSED:
        return e;
    case QCOW2_CLUSTER_UNALLOCATED:
        return qcow2_bi_set(e, depth);
    default:
        return qcow2_bi_set(e, QCOW2_BI_NONE);
    }
}

typedef enum BiWalkMode {
    BI_WRITE,       /* make every entry carry the index the chain gives */
    BI_STRIP,       /* clear every entry's index bits */
    BI_COMPARE,     /* count entries that differ from what the chain gives */
} BiWalkMode;

typedef struct BiWalkStats {
    uint64_t slices_written;
    uint64_t entries_changed;
    uint64_t mismatches;
    uint64_t first_mismatch;    /* guest offset */
    unsigned first_has, first_want;
} BiWalkStats;

/* Walk every L2 slice range of the top's active L1 table */
static int bi_walk(BiChain *c, BiWalkMode mode, BiWalkStats *st,
                   Error **errp)
{
    BlockDriverState *bs = c->top;
    BDRVQcow2State *s = bs->opaque;
    uint64_t nb_clusters = DIV_ROUND_UP(qcow2_bi_layer_size(bs),
                                        s->cluster_size);
    unsigned slice = s->l2_slice_size;
    g_autofree uint16_t *depth = g_new(uint16_t, slice);
    g_autofree uint64_t *scratch = g_new(uint64_t, slice);
    g_autofree uint64_t *own = g_new(uint64_t, slice);
    uint64_t first;
    int ret;

    memset(st, 0, sizeof(*st));
    for (first = 0; first < nb_clusters; first += slice) {
        unsigned n = MIN(slice, nb_clusters - first);
        uint64_t l1_index = first >> s->l2_bits;
        bool has_l2 = l1_index < s->l1_size &&
                      (s->l1_table[l1_index] & L1E_OFFSET_MASK);
        bool any = false, change = false;
        uint64_t *l2_slice;
        int l2_index;
        unsigned i;

        if (mode == BI_STRIP) {
            memset(depth, 0, n * sizeof(depth[0]));
        } else {
            ret = bi_resolve(c, first, n, depth, scratch, errp);
            if (ret < 0) {
                return ret;
            }
        }
        for (i = 0; i < n; i++) {
            any |= depth[i] != QCOW2_BI_NONE;
        }
        if (!has_l2 && !any) {
            goto next;
        }
        if (has_l2) {
            ret = bi_read_entries(bs, first, n, own, c->online, errp);
            if (ret < 0) {
                return ret;
            }
        } else {
            memset(own, 0, n * sizeof(own[0]));
        }
        for (i = 0; i < n; i++) {
            uint64_t want = bi_entry_with(bs, own[i], depth[i]);

            if (want == own[i]) {
                continue;
            }
            if (mode == BI_COMPARE &&
                qcow2_get_cluster_type(bs, own[i]) !=
                QCOW2_CLUSTER_UNALLOCATED) {
                /* Readers ignore the index of a cluster a layer holds */
                continue;
            }
            change = true;
            if (mode == BI_COMPARE) {
                if (!st->mismatches++) {
                    st->first_mismatch = (first + i) << s->cluster_bits;
                    st->first_has = qcow2_bi_get(own[i]);
                    st->first_want = qcow2_bi_get(want);
                }
                trace_qcow2_bi_check_mismatch(bs, (first + i) <<
                                              s->cluster_bits,
                                              qcow2_bi_get(own[i]),
                                              qcow2_bi_get(want));
            }
        }
        if (!change || mode == BI_COMPARE) {
            goto next;
        }

        /*
         * Online, guest requests may have changed the slice since it was
         * read: each entry's index is set from its current value, under
         * the lock (a cluster the guest allocated meanwhile keeps index 0)
         */
        if (c->online) {
            qemu_co_mutex_lock(&s->lock);
        }
        /* Allocates the L2 table, or copies a shared one, as writes do */
        ret = qcow2_get_cluster_table(bs, first << s->cluster_bits,
                                      &l2_slice, &l2_index);
        if (ret < 0) {
            if (c->online) {
                qemu_co_mutex_unlock(&s->lock);
            }
            error_setg_errno(errp, -ret, "Could not get an L2 table of '%s' "
                             "for writing", bs->filename);
            return ret;
        }
        assert(l2_index == 0);
        for (i = 0; i < n; i++) {
            uint64_t old = get_l2_entry(s, l2_slice, i);
            uint64_t want = bi_entry_with(bs, old, depth[i]);

            if (want != old) {
                set_l2_entry(s, l2_slice, i, want);
                st->entries_changed++;
            }
        }
        qcow2_cache_entry_mark_dirty(s->l2_table_cache, l2_slice);
        qcow2_cache_put(s->l2_table_cache, (void **)&l2_slice);
        if (c->online) {
            qemu_co_mutex_unlock(&s->lock);
        }
        st->slices_written++;
next:
        if (c->slice_done) {
            /* The L2 bytes read (own and parent's) and written */
            ret = c->slice_done(c->opaque, (uint64_t)n * sizeof(uint64_t) *
                                (2 + change), errp);
            if (ret < 0) {
                return ret;
            }
        }
    }
    return 0;
}

static int bi_flush_l2(BlockDriverState *bs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int ret = qcow2_cache_flush(bs, s->l2_table_cache);

    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write the L2 tables of '%s'",
                         bs->filename);
    }
    return ret;
}

/*
 * What the index of @bs needs of @bs and of its chain, gathered in @c;
 * with @check_parent, whether the parent's own index validates
 */
static int bi_prepare(BlockDriverState *bs, BiChain *c, bool check_parent,
                      Error **errp)
{
    int ret = qcow2_bi_check_supported(bs, errp);

    return ret < 0 ? ret : bi_chain_get(bs, c, check_parent, errp);
}

/*
 * Start (re)building the index of @bs: the extension present, a layer
 * identity, and the valid bit clear on disk while entries change (a crash
 * leaves an unused index)
 */
static int bi_begin(BlockDriverState *bs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    /* Resolved tables of the old index would outlive it: give them back */
    ret = qcow2_bir_drop(bs, errp);
    if (ret < 0) {
        return ret;
    }

    if (!s->bi_enabled) {
        s->bi_enabled = true;
        memset(&s->bi_ext, 0, sizeof(s->bi_ext));
    }
    if (buffer_is_zero(s->bi_ext.layer_id, QCOW2_BI_ID_SIZE)) {
        qcow2_bi_new_layer_id(bs);
    }
    s->autoclear_features &= ~QCOW2_AUTOCLEAR_BACKING_INDEX;
    return qcow2_bi_write_header(bs, errp);
}

/*
 * The entries of @c's top are on disk: record the chain they were computed
 * from in the extension and set the valid bit
 */
static int bi_finish(BiChain *c, Error **errp)
{
    BlockDriverState *bs = c->top;
    BDRVQcow2State *s = bs->opaque;
    BlockDriverState *parent = c->n > 1 ? c->layer[1] : NULL;
    int ret;

    s->bi_ext.depth = c->n;
    memset(s->bi_ext.parent_id, 0, QCOW2_BI_ID_SIZE);
    s->bi_ext.parent_size = parent ? qcow2_bi_layer_size(parent) : 0;
    if (parent && qcow2_bi_is_qcow2(parent)) {
        BDRVQcow2State *ps = parent->opaque;

        if (ps->bi_enabled && !ps->bi_ext_error) {
            memcpy(s->bi_ext.parent_id, ps->bi_ext.layer_id,
                   QCOW2_BI_ID_SIZE);
        }
    }
    s->autoclear_features |= QCOW2_AUTOCLEAR_BACKING_INDEX;
    ret = qcow2_bi_write_header(bs, errp);
    if (ret < 0) {
        s->autoclear_features &= ~QCOW2_AUTOCLEAR_BACKING_INDEX;
    }
    return ret;
}

/* Whether @bs has no L2 table at all (a new image) */
static bool bi_has_no_l2_tables(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    int i;

    for (i = 0; i < s->l1_size; i++) {
        if (s->l1_table[i] & L1E_OFFSET_MASK) {
            return false;
        }
    }
    return true;
}

/* Allocate and write the @nb L2 tables in @buf for L1 entries @l1_index */
static int bi_write_tables(BlockDriverState *bs, uint8_t *buf,
                           const uint64_t *l1_index, unsigned nb,
                           Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int64_t offset;
    unsigned i;
    int ret;

    offset = qcow2_alloc_clusters(bs, (uint64_t)nb * s->cluster_size);
    if (offset < 0) {
        error_setg_errno(errp, -offset, "Could not allocate L2 tables in "
                         "'%s'", bs->filename);
        return offset;
    }
    ret = qcow2_pre_write_overlap_check(bs, 0, offset,
                                        (uint64_t)nb * s->cluster_size, false);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "L2 tables of '%s' would overlap other "
                         "metadata", bs->filename);
        return ret;
    }
    ret = bdrv_pwrite(bs->file, offset, (int64_t)nb * s->cluster_size, buf,
                      0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write L2 tables of '%s'",
                         bs->filename);
        return ret;
    }
    for (i = 0; i < nb; i++) {
        s->l1_table[l1_index[i]] = (offset + (uint64_t)i * s->cluster_size) |
                                   QCOW_OFLAG_COPIED;
    }
    return 0;
}

/*
 * L2 copy proper: when the parent's own index is trusted, the new top's
 * entries for the @n clusters from @first on (one whole L2 table) follow
 * from the parent's entries alone: a cluster the parent holds is at the
 * parent's depth, any other carries the parent's index.  Read the parent's
 * table through @ra (from its file, bypassing its L2 cache, which the
 * caller wrote back) and turn it into the new top's table.  Returns 1 if
 * done, 0 if this table needs the generic walk (no trusted qcow2 parent,
 * or an entry whose index the parent could not carry), or -errno.
 */
static int bi_copy_parent_table(BiChain *c, Qcow2TableReadAhead *ra,
                                uint64_t first, unsigned n, uint64_t *table,
                                bool *any, Error **errp)
{
    BDRVQcow2State *s = c->top->opaque;
    BlockDriverState *parent = c->layer[1];
    BDRVQcow2State *ps = parent->opaque;
    unsigned pdepth = c->n - 1;
    uint64_t pend = qcow2_bi_layer_size(parent) >> s->cluster_bits;
    uint64_t l1_index = first >> s->l2_bits;
    uint64_t l2_offset, held, held_entry;
    const uint64_t *src;
    unsigned i, inside;
    int ret;

    l2_offset = l1_index < ps->l1_size ?
                ps->l1_table[l1_index] & L1E_OFFSET_MASK : 0;
    if (!l2_offset) {
        /* An indexed layer has an L2 table wherever a lower layer holds */
        *any = false;
        return 1;
    }
    if (offset_into_cluster(ps, l2_offset)) {
        return 0;   /* let the generic path report it */
    }
    ret = qcow2_table_read_ahead_get(ra, l1_index, &src, errp);
    if (ret <= 0) {
        return ret;
    }
    /*
     * One pass over the big-endian entries; a 50 GiB disk has 819200 of
     * them, so the common case (the parent holds the cluster) is one test
     * and one store.
     */
    held = cpu_to_be64(QCOW_OFLAG_COMPRESSED | QCOW_OFLAG_ZERO |
                       L2E_OFFSET_MASK);
    held_entry = cpu_to_be64(qcow2_bi_set(0, pdepth));
    inside = first >= pend ? 0 : MIN(n, pend - first);
    *any = false;
    for (i = 0; i < inside; i++) {
        unsigned d;

        if (src[i] & held) {
            table[i] = held_entry;  /* compressed, zero or data */
            *any = true;
            continue;
        }
        d = qcow2_bi_get(be64_to_cpu(src[i]));
        if (d >= pdepth) {
            return 0;   /* not an index the parent can carry */
        }
        *any |= d != QCOW2_BI_NONE;
        table[i] = cpu_to_be64(qcow2_bi_set(0, d));
    }
    /* A layer holds no cluster that starts at or past its end */
    memset(table + inside, 0, (n - inside) * sizeof(table[0]));
    return 1;
}

/*
 * Resolved tables could not be made: reads are right without them, only
 * slower, so it is a warning and the index goes on
 */
static void bi_resolved_failed(BlockDriverState *bs, Qcow2BirBuild **resolved,
                               Error *err)
{
    warn_reportf_err(err, "'%s' has no resolved L2 tables: ", bs->filename);
    qcow2_bir_build_free(*resolved, false);
    *resolved = NULL;
}

/*
 * The fast path of an L2 copy into a new image (no L2 tables yet): compute
 * whole L2 tables in memory, allocate them in batches of contiguous
 * clusters, write each batch with one request, then write the L1 table
 * once and flush once.  The generic path allocates table by table, with
 * three flushes each.  The image is not valid until the caller sets the
 * bit, so a crash halfway leaves an unused index (and leaked clusters).
 * The resolved tables are computed from the new tables as they are made,
 * written in batches too, and put on disk with them: *@resolved is for
 * the caller to end (qcow2_bir_build_free) once the header names them;
 * on failure it is ended here and NULL.
 */
static int bi_write_fresh(BiChain *c, BiWalkStats *st,
                          Qcow2BirBuild **resolved, Error **errp)
{
    BlockDriverState *bs = c->top;
    BDRVQcow2State *s = bs->opaque;
    uint64_t nb_clusters = DIV_ROUND_UP(qcow2_bi_layer_size(bs),
                                        s->cluster_size);
    unsigned per_table = s->l2_size;
    /* Small enough to stay in the CPU cache and be reused, not faulted in */
    unsigned batch_max = MAX(1, (2 * MiB) / s->cluster_size);
    g_autofree uint16_t *depth = g_new(uint16_t, per_table);
    g_autofree uint64_t *scratch = g_new(uint64_t, per_table);
    g_autofree uint64_t *l1_index = g_new(uint64_t, batch_max);
    g_autofree uint64_t *l1_be = NULL;
    uint8_t *buf = qemu_blockalign(bs, (size_t)batch_max * s->cluster_size);
    bool copy = c->parent_trusted && c->n > 1 &&
                qcow2_bi_is_qcow2(c->layer[1]);
    Qcow2TableReadAhead ra = { 0 };
    unsigned nb = 0, i;
    uint64_t first;
    Error *local_err = NULL;
    int ret = 0;

    memset(st, 0, sizeof(*st));
    *resolved = qcow2_bir_build_start(bs, c->n);
    if (copy) {
        BDRVQcow2State *ps = c->layer[1]->opaque;

        /* The parent's tables are read from its file, not its cache */
        qcow2_table_read_ahead_init(&ra, c->layer[1], c->layer[1]->file,
                                    ps->l1_table, ps->l1_size, batch_max);
        ret = qcow2_cache_write(c->layer[1], ps->l2_table_cache);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not write back the L2 "
                             "tables of '%s'", c->layer[1]->filename);
            goto out;
        }
    }
    for (first = 0; first < nb_clusters; first += per_table) {
        unsigned n = MIN(per_table, nb_clusters - first);
        uint64_t *table = (uint64_t *)(buf + (size_t)nb * s->cluster_size);
        bool any = false;

        ret = copy ? bi_copy_parent_table(c, &ra, first, n, table, &any,
                                          errp)
                   : 0;
        if (ret < 0) {
            goto out;
        }
        if (ret == 0) {
            ret = bi_resolve(c, first, n, depth, scratch, errp);
            if (ret < 0) {
                goto out;
            }
            for (i = 0; i < n; i++) {
                any |= depth[i] != QCOW2_BI_NONE;
                table[i] = cpu_to_be64(qcow2_bi_set(0, depth[i]));
            }
        }
        if (!any) {
            continue;
        }
        memset(table + n, 0, s->cluster_size - n * sizeof(table[0]));
        for (i = 0; i < n; i++) {
            st->entries_changed += table[i] != 0;
        }
        if (*resolved &&
            qcow2_bir_build_add(*resolved, first / per_table, table, n,
                                &local_err) < 0) {
            bi_resolved_failed(bs, resolved, local_err);
        }
        l1_index[nb++] = first / per_table;
        st->slices_written++;
        if (nb == batch_max) {
            ret = bi_write_tables(bs, buf, l1_index, nb, errp);
            if (ret < 0) {
                goto out;
            }
            nb = 0;
        }
    }
    if (nb) {
        ret = bi_write_tables(bs, buf, l1_index, nb, errp);
        if (ret < 0) {
            goto out;
        }
    }
    if (!st->slices_written) {
        goto out;
    }
    if (*resolved && qcow2_bir_build_finish(*resolved, &local_err) < 0) {
        bi_resolved_failed(bs, resolved, local_err);
    }

    /* The refcounts of the new tables before the L1 table that uses them */
    ret = qcow2_bi_flush_refcounts(bs, errp);
    if (ret < 0) {
        goto out;
    }
    l1_be = g_new(uint64_t, s->l1_size);
    for (i = 0; i < s->l1_size; i++) {
        l1_be[i] = cpu_to_be64(s->l1_table[i]);
    }
    ret = qcow2_pre_write_overlap_check(bs, QCOW2_OL_ACTIVE_L1,
                                        s->l1_table_offset,
                                        (int64_t)s->l1_size * L1E_SIZE, false);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "L1 table of '%s' would overlap other "
                         "metadata", bs->filename);
        goto out;
    }
    ret = bdrv_pwrite_sync(bs->file, s->l1_table_offset,
                           (int64_t)s->l1_size * L1E_SIZE, l1_be, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write the L1 table of '%s'",
                         bs->filename);
    }
out:
    if (ret < 0) {
        qcow2_bir_build_free(*resolved, false);
        *resolved = NULL;
    }
    qcow2_table_read_ahead_destroy(&ra);
    qemu_vfree(buf);
    return ret;
}

/* Refusals shared by create, amend and snapshot: what the bits cannot do */
int qcow2_bi_check_supported(BlockDriverState *bs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;

    if (s->qcow_version < 3) {
        error_setg(errp, "backing-index requires compat=1.1 or later");
        return -ENOTSUP;
    }
    if (has_subclusters(s)) {
        error_setg(errp, "backing-index cannot be used with extended_l2=on: "
                   "extended L2 entries have no reserved bits to carry it");
        return -ENOTSUP;
    }
    if (has_data_file(bs)) {
        error_setg(errp, "backing-index cannot be used with an external data "
                   "file");
        return -ENOTSUP;
    }
    return 0;
}

/*
 * Whether the index can be stripped from @bs: an internal snapshot's L2
 * tables would keep their index bits (writing the active tables copies the
 * ones a snapshot shares), so stock QEMU's check would still report them.
 * Turning the index on is fine with snapshots: the active tables are
 * copied before they change, and applying a snapshot computes the index
 * again.
 */
int qcow2_bi_check_strippable(BlockDriverState *bs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;

    if (s->nb_snapshots &&
        (s->bi_enabled ||
         (s->autoclear_features & QCOW2_AUTOCLEAR_BACKING_INDEX))) {
        error_setg(errp, "backing-index=off cannot be used on an image with "
                   "internal snapshots: their L2 tables keep the index");
        error_append_hint(errp, "Delete them with 'qemu-img snapshot -d' "
                          "first.\n");
        return -ENOTSUP;
    }
    return 0;
}

/*
 * The resolved L2 tables of @bs, whose index was just built: without them
 * reads are right, only slower, so a failure is a warning
 */
static void bi_build_resolved(BlockDriverState *bs)
{
    Error *local_err = NULL;

    if (qcow2_bir_build(bs, &local_err) < 0) {
        warn_reportf_err(local_err, "'%s' has no resolved L2 tables: ",
                         bs->filename);
    }
}

/*
 * Compute the index of @bs from the chain it has in the graph, write it
 * into every L2 entry, and mark it valid.  @bs must be writable and its
 * chain quiescent.
 */
int qcow2_bi_build(BlockDriverState *bs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2BirBuild *resolved = NULL;
    bool fresh, kept = false;
    BiChain c;
    BiWalkStats st;
    int ret;

    ret = bi_prepare(bs, &c, true, errp);
    if (ret < 0) {
        return ret;
    }

    /* Not valid while entries change: a crash leaves an unused index */
    ret = bi_begin(bs, errp);
    if (ret < 0) {
        goto out;
    }

    fresh = bi_has_no_l2_tables(bs) && !has_subclusters(s);
    if (fresh) {
        ret = bi_write_fresh(&c, &st, &resolved, errp);
    } else {
        ret = bi_walk(&c, BI_WRITE, &st, errp);
    }
    if (ret < 0) {
        goto out;
    }
    ret = bi_flush_l2(bs, errp);
    if (ret < 0) {
        goto out;
    }

    /* The header names the resolved tables of a fresh build too */
    ret = bi_finish(&c, errp);
    if (ret < 0) {
        goto out;
    }
    kept = true;
    trace_qcow2_bi_build(bs, c.n, c.parent_trusted, st.slices_written,
                         st.entries_changed);
    if (!fresh) {
        bi_build_resolved(bs);
    }
out:
    qcow2_bir_build_free(resolved, kept);
    bi_chain_free(&c);
    return ret;
}

/* The number of L2 slices an index build of @bs walks */
uint64_t qcow2_bi_slices(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t nb_clusters = DIV_ROUND_UP(qcow2_bi_layer_size(bs),
                                        s->cluster_size);

    return DIV_ROUND_UP(nb_clusters, s->l2_slice_size);
}

/*
 * qcow2_bi_build for a layer in use: guest requests keep running.  Each
 * L2 slice is read and written under the lock of its layer (what the
 * guest changed meanwhile is taken into account, see bi_walk), and
 * @slice_done runs after each, without any lock: it may sleep, and stop
 * the build by returning an error.  The valid bit is cleared first and
 * set last, once the tables are on disk, and only if the chain below is
 * still the one the index was computed from and nothing invalidated the
 * image meanwhile: stopped or failed at any point, the layer is left
 * without a valid index, never with a wrong one.  @bs must be writable,
 * and the chain below it must validate (the caller has checked it or just
 * indexed it, from the base up): its entries are an L2 copy.
 */
int coroutine_fn qcow2_bi_co_build_online(BlockDriverState *bs,
                                          Qcow2BiSliceDone *slice_done,
                                          void *opaque, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint8_t parent_id[QCOW2_BI_ID_SIZE] = { 0 };
    BlockDriverState *l, *parent;
    uint64_t invalidations;
    BiWalkStats st;
    BiChain c;
    unsigned i;
    int ret;

    /* The caller knows: a chain check walks every layer below */
    ret = bi_prepare(bs, &c, false, errp);
    if (ret < 0) {
        return ret;
    }
    c.parent_trusted = c.n > 1 && qcow2_bi_is_qcow2(c.layer[1]);
    c.online = true;
    c.slice_done = slice_done;
    c.opaque = opaque;
    parent = c.n > 1 ? c.layer[1] : NULL;
    if (parent && qcow2_bi_is_qcow2(parent)) {
        BDRVQcow2State *ps = parent->opaque;

        memcpy(parent_id, ps->bi_ext.layer_id, QCOW2_BI_ID_SIZE);
    }

    qemu_co_mutex_lock(&s->lock);
    ret = bi_begin(bs, errp);
    invalidations = s->bi_invalidations;
    qemu_co_mutex_unlock(&s->lock);
    if (ret < 0) {
        goto out;
    }

    ret = bi_walk(&c, BI_WRITE, &st, errp);
    if (ret < 0) {
        goto out;
    }
    /* Like a guest's flush: the tables written under the lock, then sync */
    ret = bdrv_co_flush(bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write the L2 tables of '%s'",
                         bs->filename);
        goto out;
    }

    qemu_co_mutex_lock(&s->lock);
    i = 0;
    for (l = bs; l && i < c.n && l == c.layer[i]; l = qcow2_bi_next_layer(l)) {
        i++;
    }
    if (l || i != c.n || s->bi_invalidations != invalidations ||
        (parent && qcow2_bi_is_qcow2(parent) &&
         memcmp(parent_id, ((BDRVQcow2State *)parent->opaque)->bi_ext.layer_id,
                QCOW2_BI_ID_SIZE))) {
        qemu_co_mutex_unlock(&s->lock);
        error_setg(errp, "The chain of '%s' or the image itself changed while "
                   "its backing index was built; its index is not used",
                   bs->filename);
        error_append_hint(errp, "Run the amendment again.\n");
        ret = -EBUSY;
        goto out;
    }
    ret = bi_finish(&c, errp);
    if (ret == 0) {
        /* The chain below is the one just checked, under the top's lock */
        bi_build_resolved(bs);
    }
    qemu_co_mutex_unlock(&s->lock);
    if (ret == 0) {
        trace_qcow2_bi_build_online(bs, c.n, c.parent_trusted,
                                    st.slices_written, st.entries_changed);
    }
out:
    bi_chain_free(&c);
    return ret;
}

/* Clear every index bit of @bs and drop the extension and the valid bit */
int qcow2_bi_strip(BlockDriverState *bs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    BiChain c = { .top = bs, .n = 1 };
    BiWalkStats st;
    int ret;

    if (!s->bi_enabled &&
        !(s->autoclear_features & QCOW2_AUTOCLEAR_BACKING_INDEX)) {
        return 0;
    }
    ret = qcow2_bi_check_strippable(bs, errp);
    if (ret < 0) {
        return ret;
    }
    ret = qcow2_bir_drop(bs, errp);
    if (ret < 0) {
        return ret;
    }
    s->autoclear_features &= ~QCOW2_AUTOCLEAR_BACKING_INDEX;
    ret = qcow2_bi_write_header(bs, errp);
    if (ret < 0) {
        return ret;
    }
    ret = bi_walk(&c, BI_STRIP, &st, errp);
    if (ret < 0) {
        return ret;
    }
    ret = bi_flush_l2(bs, errp);
    if (ret < 0) {
        return ret;
    }
    s->bi_enabled = false;
    g_free(s->bi_ext_error);
    s->bi_ext_error = NULL;
    memset(&s->bi_ext, 0, sizeof(s->bi_ext));
    ret = qcow2_bi_write_header(bs, errp);
    if (ret < 0) {
        return ret;
    }
    trace_qcow2_bi_strip(bs, st.entries_changed);
    return 0;
}

/*
 * qemu-img check: if the index of @bs would be used with its chain, compare
 * every entry with what the chain gives; wrong entries are corruption, and
 * with BDRV_FIX_ERRORS the index is recomputed.  An index that does not
 * validate is not used, so it is not checked (qemu-img info says why).
 */
int qcow2_bi_check(BlockDriverState *bs, BdrvCheckResult *res,
                   BdrvCheckMode fix)
{
    BDRVQcow2State *s = bs->opaque;
    g_autofree char *reason = NULL;
    Error *local_err = NULL;
    BiWalkStats st;
    BiChain c;
    int ret;

    /*
     * A repairing check opens the image without the usual header update
     * (its snapshot table is read only now): renew the layer identity
     * here, since the check may change the layer.
     */
    if ((fix & BDRV_FIX_ERRORS) && bdrv_is_writable(bs) &&
        qcow2_bi_open_writable(bs, 0)) {
        ret = qcow2_update_header(bs);
        if (ret < 0) {
            fprintf(stderr, "Could not update the header: %s\n",
                    strerror(-ret));
            res->check_errors++;
            return 0;
        }
    }
    if (!s->bi_enabled) {
        return 0;
    }
    reason = qcow2_bi_chain_check(bs);
    if (reason) {
        return 0;
    }
    ret = bi_chain_get(bs, &c, true, &local_err);
    if (ret == 0) {
        ret = bi_walk(&c, BI_COMPARE, &st, &local_err);
        bi_chain_free(&c);
    }
    if (ret < 0) {
        fprintf(stderr, "Backing index not checked: %s\n",
                error_get_pretty(local_err));
        error_free(local_err);
        res->check_errors++;
        return 0;
    }
    if (!st.mismatches) {
        return qcow2_bir_check(bs, res, fix);
    }

    fprintf(stderr, "%s %" PRIu64 " backing index entries differ from the "
            "chain (first: offset 0x%" PRIx64 " names layer %u, the chain "
            "puts it in layer %u)\n",
            fix & BDRV_FIX_ERRORS ? "Repairing" : "ERROR", st.mismatches,
            st.first_mismatch, st.first_has, st.first_want);
    res->corruptions += st.mismatches;
    if (!(fix & BDRV_FIX_ERRORS)) {
        return 0;
    }
    if (res->corruptions > st.mismatches || res->check_errors) {
        fprintf(stderr, "Backing index not rebuilt: the image has other "
                "errors left\n");
        return 0;
    }
    ret = qcow2_bi_build(bs, &local_err);
    if (ret < 0) {
        fprintf(stderr, "Could not rebuild the backing index: %s\n",
                error_get_pretty(local_err));
        error_free(local_err);
        res->check_errors++;
        return 0;
    }
    res->corruptions -= st.mismatches;
    res->corruptions_fixed += st.mismatches;
    return 0;
}

/*
 * @bs was just put over its backing as an external snapshot overlay
 * (blockdev-snapshot, blockdev-snapshot-sync).  If it has the feature on
 * (created with backing-index=on, or by default over an indexed top) and
 * its index does not validate over the chain it has now, build it here,
 * where the old top's metadata is current.
 */
int qcow2_bi_snapshot_attached(BlockDriverState *bs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    g_autofree char *reason = NULL;

    if (!s->bi_enabled) {
        return 0;
    }
    if (!bdrv_is_writable(bs)) {
        return 0;
    }
    if (qcow2_bi_chain_length(bs) > QCOW2_BI_MAX_DEPTH) {
        /* Past the limit the overlay is read the vanilla way */
        warn_report("'%s' gets no backing index: its backing chain is deeper "
                    "than the %u layers the index can name", bs->filename,
                    QCOW2_BI_MAX_DEPTH);
        return qcow2_bi_strip(bs, errp);
    }
    reason = qcow2_bi_chain_check(bs);
    if (!reason) {
        return 0;
    }
    return qcow2_bi_build(bs, errp);
}

/* Open the qcow2 image being created on @file_bs, for metadata only */
static BlockBackend *bi_open_new_image(BlockDriverState *file_bs, int flags,
                                       Error **errp)
{
    QDict *options = qdict_new();

    qdict_put_str(options, "driver", "qcow2");
    qdict_put_str(options, "file", file_bs->node_name);
    return blk_new_open(NULL, NULL, options,
                        flags | BDRV_O_NO_FLUSH | BDRV_O_NO_IO, errp);
}

/* A writable node of this process that has @filename open, if any */
static BlockDriverState *bi_find_writable_node(const char *filename)
{
    BlockDriverState *bs = NULL;

    while ((bs = bdrv_next_all_states(bs))) {
        if (bs->drv && !bs->drv->protocol_name &&
            !strcmp(bs->filename, filename) && bdrv_is_writable(bs)) {
            return bs;
        }
    }
    return NULL;
}

/*
 * Creating a qcow2 image over a backing file with no cluster size given: if
 * the backing file has a backing index, and the new image is not created
 * with backing-index=off, it gets the backing file's cluster size, which the
 * index needs along the chain.  Otherwise a live snapshot of a disk with
 * other than 64 KiB clusters could not keep the index.  @qdict holds the
 * creation options under their QAPI names; @filename is the new image's.
 * Nothing changes when the backing file cannot be read (creation then goes
 * on as before).
 */
void qcow2_bi_default_cluster_size(const char *filename, QDict *qdict)
{
    const char *backing = qdict_get_try_str(qdict, "backing-file");
    const char *index = qdict_get_try_str(qdict, "backing-index");
    const char *fmt = qdict_get_try_str(qdict, "backing-fmt");
    g_autofree char *full = NULL;
    BlockBackend *blk = NULL;
    BlockDriverState *bs;
    int cluster_size = 0;
    bool on = true;

    /* backing-index takes every boolean spelling: off, no, false, n */
    if (!backing || qdict_haskey(qdict, "cluster-size") ||
        (index && qapi_bool_parse("backing-index", index, &on, NULL) && !on) ||
        strstart(backing, "json:", NULL)) {
        return;
    }
    full = path_combine(filename, backing);
    bs = bi_find_writable_node(full);
    if (!bs) {
        QDict *options = qdict_new();

        if (fmt) {
            qdict_put_str(options, "driver", fmt);
        }
        qdict_put_bool(options, BDRV_OPT_FORCE_SHARE, true);
        blk = blk_new_open(full, NULL, options,
                           BDRV_O_NO_BACKING | BDRV_O_NO_IO, NULL);
        bs = blk ? blk_bs(blk) : NULL;
    }
    if (bs && qcow2_bi_is_qcow2(bs) &&
        ((BDRVQcow2State *)bs->opaque)->bi_enabled) {
        cluster_size = ((BDRVQcow2State *)bs->opaque)->cluster_size;
    }
    blk_unref(blk);
    if (cluster_size) {
        /* Creation options are strings here (a keyval visitor reads them) */
        g_autofree char *value = g_strdup_printf("%d", cluster_size);

        trace_qcow2_bi_default_cluster_size(full, cluster_size);
        qdict_put_str(qdict, "cluster-size", value);
    }
}

/*
 * The last step of creating a qcow2 image on @file_bs: give it its backing
 * index if asked to (@opts->backing_index), or by default if the backing
 * file has one.  The index is computed from the backing chain, opened
 * read-only here.  A backing file that this process has open writable
 * (blockdev-snapshot-sync, blockdev-create under a running VM) is not read
 * behind its owner's back: the image gets an index that is not built yet,
 * and the snapshot builds it when it attaches the image.
 */
int coroutine_fn qcow2_bi_co_create(BlockDriverState *file_bs,
                                    BlockdevCreateOptionsQcow2 *opts,
                                    Error **errp)
{
    bool explicit = opts->has_backing_index;
    BlockDriverState *bs, *live = NULL, *parent;
    Error *local_err = NULL;
    BlockBackend *blk;
    BDRVQcow2State *s;
    bool defer;
    int ret;

    if (explicit && !opts->backing_index) {
        return 0;
    }
    if (!explicit && !opts->has_backing_file) {
        return 0;
    }

    if (opts->has_backing_file) {
        g_autofree char *full = NULL;

        blk = bi_open_new_image(file_bs, BDRV_O_NO_BACKING, errp);
        if (!blk) {
            return -EIO;
        }
        full = bdrv_get_full_backing_filename(blk_bs(blk), NULL);
        blk_unref(blk);
        live = full ? bi_find_writable_node(full) : NULL;
    }

    defer = live;
    blk = bi_open_new_image(file_bs, BDRV_O_RDWR |
                            (live ? BDRV_O_NO_BACKING : 0), &local_err);
    if (!blk && opts->has_backing_file) {
        error_free(local_err);
        local_err = NULL;
        if (!explicit) {
            /*
             * By default the index follows the backing file's; one that
             * cannot be read (qemu-img create -u) gives no index.
             */
            return 0;
        }
        /*
         * Asked for, over a backing file that cannot be read now (locked by
         * its user, or missing as with qemu-img create -u): the index is
         * built when the image is attached as a snapshot overlay, or by
         * qemu-img amend.
         */
        defer = true;
        blk = bi_open_new_image(file_bs, BDRV_O_RDWR | BDRV_O_NO_BACKING,
                                &local_err);
    }
    if (!blk) {
        error_propagate(errp, local_err);
        return -EIO;
    }
    bs = blk_bs(blk);
    s = bs->opaque;
    parent = live ? live : (bs->backing ? bs->backing->bs : NULL);
    if (!explicit && !(parent && qcow2_bi_is_qcow2(parent) &&
                       ((BDRVQcow2State *)parent->opaque)->bi_enabled)) {
        ret = 0;
        goto out;
    }
    ret = qcow2_bi_check_supported(bs, explicit ? errp : &local_err);
    if (ret < 0 && !explicit) {
        /* By default, a chain the index cannot describe just gets none */
        warn_reportf_err(local_err, "'%s' gets no backing index: ",
                         bs->filename);
        ret = 0;
        goto out;
    }
    if (ret < 0) {
        goto out;
    }
    if (defer) {
        /* Built when the image is attached over its live backing file */
        s->bi_enabled = true;
        memset(&s->bi_ext, 0, sizeof(s->bi_ext));
        qcow2_bi_new_layer_id(bs);
        s->autoclear_features &= ~QCOW2_AUTOCLEAR_BACKING_INDEX;
        ret = qcow2_bi_write_header(bs, errp);
        goto out;
    }
    ret = qcow2_bi_build(bs, explicit ? errp : &local_err);
    if (ret < 0 && explicit) {
        error_prepend(errp, "Could not build the backing index: ");
    } else if (ret < 0) {
        /* By default, a chain the index cannot describe just gets none */
        warn_reportf_err(local_err, "'%s' gets no backing index: ",
                         bs->filename);
        ret = qcow2_bi_strip(bs, errp);
    }
out:
    blk_unref(blk);
    return ret;
}
