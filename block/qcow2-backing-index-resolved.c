/*
 * sQemu: the resolved L2 tables of a qcow2 layer
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * The backing index says which layer holds a cluster; the host offset is
 * in that layer's L2 entry, which a read of the top would have to fetch
 * from the layer's file ("cache correction", qcow2-direct-access.c).  On a
 * chain whose clusters are spread over hundreds of layers, that is one L2
 * read per layer and L2 slice.  The resolved L2 tables keep those entries
 * in the layer itself: parallel to its L2 tables, one 64-bit entry per
 * cluster, holding the L2 entry of the layer that holds the cluster (host
 * offset and zero flag) with that layer's depth in the index bits, or 0
 * where nothing is known.  They cover only the clusters of the layers
 * between the base and the parent: the parent's and the base's entries
 * are one L2 read of one layer each per slice, whatever the depth, and
 * leaving them out keeps a snapshot of a full base as cheap as before.
 *
 * A header extension names the resolved L1 table and the identity of the
 * chain below at the time the tables were written; autoclear bit 17 says
 * the tables are the image's own (a QEMU that does not know the bit
 * clears it on a read-write open, after which it may have freed or reused
 * the clusters: the tables are then forgotten, never freed or used).
 * A read uses an entry only if the chain below is still the one recorded
 * and the entry names the very layer that the top's index names.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "qemu/memalign.h"
#include "block/aio_task.h"
#include "qcow2.h"
#include "qcow2-backing-index.h"
#include "qcow2-table-read-ahead.h"
#include "trace.h"

/*
 * On-disk layout of the header extension (big-endian):
 *
 *   bytes  0- 3  version (QCOW2_BIR_EXT_VERSION)
 *   bytes  4- 7  depth of this layer when the tables were written
 *   bytes  8-15  offset of the resolved L1 table
 *   bytes 16-19  entries of the resolved L1 table
 *   bytes 20-23  reserved, zero
 *   bytes 24-39  identity of the chain below (qcow2_bir_chain_id)
 */
int qcow2_bir_ext_parse(const void *buf, size_t len, Qcow2BiResolvedExt *ext,
                        const char **reason)
{
    const uint8_t *p = buf;

    memset(ext, 0, sizeof(*ext));
    if (len != QCOW2_BIR_EXT_SIZE) {
        *reason = len < QCOW2_BIR_EXT_SIZE ? "header extension truncated"
                                           : "header extension oversized";
        return -EINVAL;
    }
    if (ldl_be_p(p) != QCOW2_BIR_EXT_VERSION) {
        *reason = "unsupported header extension version";
        return -ENOTSUP;
    }
    ext->depth = ldl_be_p(p + 4);
    ext->l1_offset = ldq_be_p(p + 8);
    ext->l1_size = ldl_be_p(p + 16);
    if (ext->depth < 2 || ext->depth > QCOW2_BI_MAX_DEPTH) {
        *reason = "recorded depth out of range";
        return -EINVAL;
    }
    if (!ext->l1_size || ext->l1_size > QCOW_MAX_L1_SIZE / L1E_SIZE ||
        !ext->l1_offset) {
        *reason = "resolved L1 table out of range";
        return -EINVAL;
    }
    memcpy(ext->chain_id, p + 24, QCOW2_BI_ID_SIZE);
    *reason = NULL;
    return 0;
}

void qcow2_bir_ext_serialize(const Qcow2BiResolvedExt *ext,
                             uint8_t buf[QCOW2_BIR_EXT_SIZE])
{
    memset(buf, 0, QCOW2_BIR_EXT_SIZE);
    stl_be_p(buf, QCOW2_BIR_EXT_VERSION);
    stl_be_p(buf + 4, ext->depth);
    stq_be_p(buf + 8, ext->l1_offset);
    stl_be_p(buf + 16, ext->l1_size);
    memcpy(buf + 24, ext->chain_id, QCOW2_BI_ID_SIZE);
}

void qcow2_bir_chain_id(BlockDriverState *const *layer, unsigned depth,
                        uint8_t id[QCOW2_BI_ID_SIZE])
{
    static const uint8_t zero[QCOW2_BI_ID_SIZE];
    GChecksum *sum = g_checksum_new(G_CHECKSUM_SHA256);
    uint8_t digest[32], d_be[4];
    gsize len = sizeof(digest);
    unsigned d;

    stl_be_p(d_be, depth);
    g_checksum_update(sum, d_be, sizeof(d_be));
    for (d = 1; d < depth; d++) {
        const uint8_t *layer_id = zero;

        if (qcow2_bi_is_qcow2(layer[d])) {
            layer_id = ((BDRVQcow2State *)layer[d]->opaque)->bi_ext.layer_id;
        }
        g_checksum_update(sum, layer_id, QCOW2_BI_ID_SIZE);
    }
    g_checksum_get_digest(sum, digest, &len);
    g_checksum_free(sum);
    memcpy(id, digest, QCOW2_BI_ID_SIZE);
}

/* Read the extension at @offset (@len bytes) of @bs's header */
int qcow2_bir_load_ext(BlockDriverState *bs, uint64_t offset, uint32_t len,
                       Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    g_autofree uint8_t *buf = qcow2_bi_read_ext(bs, offset, len,
                                                "resolved L2 tables", errp);
    const char *reason;

    if (!buf) {
        return -EIO;
    }
    qcow2_bir_close(bs);
    s->bir_present = true;
    if (qcow2_bir_ext_parse(buf, len, &s->bir_ext, &reason) == 0 &&
        offset_into_cluster(s, s->bir_ext.l1_offset)) {
        reason = "resolved L1 table not aligned to a cluster";
    }
    if (reason) {
        s->bir_error = g_strdup(reason);
        trace_qcow2_bir_ext_bad(bs, reason);
    }
    return 0;
}

/* Forget the tables (in memory only) */
void qcow2_bir_close(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;

    s->bir_present = false;
    g_free(s->bir_error);
    s->bir_error = NULL;
    g_free(s->bir_l1);
    s->bir_l1 = NULL;
    memset(&s->bir_ext, 0, sizeof(s->bir_ext));
}

/* Whether @bs has resolved tables that are its own: usable, or freeable */
bool qcow2_bir_own(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;

    return s->bir_present && !s->bir_error &&
           (s->autoclear_features & QCOW2_AUTOCLEAR_BI_RESOLVED);
}

/*
 * @bs was opened writable (not inactive): tables that are not its own any
 * more (a QEMU that does not know them opened it read-write, or the
 * extension is unreadable) are forgotten, and so is a bit 17 without
 * tables.  Returns whether the header must be written.
 */
bool qcow2_bir_open_writable(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    bool bit = s->autoclear_features & QCOW2_AUTOCLEAR_BI_RESOLVED;

    if (qcow2_bir_own(bs) || (!s->bir_present && !bit)) {
        return false;
    }
    trace_qcow2_bir_forget(bs, s->bir_error ? s->bir_error
                               : "not this image's own any more");
    qcow2_bir_close(bs);
    s->autoclear_features &= ~QCOW2_AUTOCLEAR_BI_RESOLVED;
    return true;
}

/* The resolved L1 table of @bs, read once (host byte order) */
static int bir_load_l1(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    uint32_t i, n = s->bir_ext.l1_size;
    uint64_t *l1;
    int ret;

    if (s->bir_l1) {
        return 0;
    }
    l1 = g_try_new(uint64_t, n);
    if (!l1) {
        return -ENOMEM;
    }
    ret = bdrv_pread(bs->file, s->bir_ext.l1_offset, n * L1E_SIZE, l1, 0);
    if (ret < 0) {
        g_free(l1);
        return ret;
    }
    for (i = 0; i < n; i++) {
        l1[i] = be64_to_cpu(l1[i]);
    }
    s->bir_l1 = l1;
    return 0;
}

/* Where @bs keeps the resolved table for L1 index @t: 0 if nowhere */
static uint64_t bir_table(BDRVQcow2State *s, uint64_t t)
{
    uint64_t offset;

    if (t >= s->bir_ext.l1_size) {
        return 0;
    }
    offset = s->bir_l1[t] & L1E_OFFSET_MASK;
    return offset_into_cluster(s, offset) ? 0 : offset;
}

int qcow2_bir_drop(BlockDriverState *bs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    bool own = qcow2_bir_own(bs);
    Qcow2BiResolvedExt ext = s->bir_ext;
    g_autofree uint64_t *l1 = NULL;
    uint32_t i;
    int ret;

    if (!s->bir_present &&
        !(s->autoclear_features & QCOW2_AUTOCLEAR_BI_RESOLVED)) {
        return 0;
    }
    if (own && bir_load_l1(bs) == 0) {
        l1 = s->bir_l1;
        s->bir_l1 = NULL;
    }
    qcow2_bir_close(bs);
    s->autoclear_features &= ~QCOW2_AUTOCLEAR_BI_RESOLVED;
    ret = qcow2_bi_write_header(bs, errp);
    if (ret < 0) {
        return ret;
    }
    /* No longer named by the header: a failure from here on only leaks */
    if (l1) {
        for (i = 0; i < ext.l1_size; i++) {
            uint64_t offset = l1[i] & L1E_OFFSET_MASK;

            if (offset && !offset_into_cluster(s, offset)) {
                qcow2_free_clusters(bs, offset, s->cluster_size,
                                    QCOW2_DISCARD_OTHER);
            }
        }
        qcow2_free_clusters(bs, ext.l1_offset,
                            (uint64_t)ext.l1_size * L1E_SIZE,
                            QCOW2_DISCARD_OTHER);
    } else if (own) {
        warn_report("'%s': the resolved L2 tables could not be read; their "
                    "clusters leak (qemu-img check -r leaks reclaims them)",
                    bs->filename);
    }
    trace_qcow2_bir_drop(bs, own, l1 ? ext.l1_size : 0);
    return 0;
}

/*
 * Read the whole L2 table @t of layer @l into @e (big-endian, as on disk):
 * 1 if read, 0 if @l has none there, or -errno
 */
static int bir_read_l2_be(BlockDriverState *l, uint64_t t, uint64_t *e,
                          Error **errp)
{
    BDRVQcow2State *ls = l->opaque;
    uint64_t offset = t < ls->l1_size ? ls->l1_table[t] & L1E_OFFSET_MASK : 0;
    int ret;

    if (!offset || offset_into_cluster(ls, offset)) {
        return 0;
    }
    ret = bdrv_pread(l->file, offset, ls->cluster_size, e, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read an L2 table of '%s'",
                         l->filename);
        return ret;
    }
    return 1;
}

/* The same in host byte order */
static int bir_read_l2(BlockDriverState *l, uint64_t t, uint64_t *e,
                       Error **errp)
{
    BDRVQcow2State *ls = l->opaque;
    int ret = bir_read_l2_be(l, t, e, errp);
    unsigned i;

    for (i = 0; ret > 0 && i < ls->l2_size; i++) {
        e[i] = be64_to_cpu(e[i]);
    }
    return ret;
}

/* Whether layer @l has an L2 table for L1 index @t */
static bool bir_has_l2(BlockDriverState *l, uint64_t t)
{
    BDRVQcow2State *ls = l->opaque;

    return t < ls->l1_size && (ls->l1_table[t] & L1E_OFFSET_MASK);
}

/* What a resolved table keeps of the L2 entry @e of the layer at @depth */
static inline uint64_t bir_entry(BlockDriverState *l, uint64_t e,
                                 unsigned depth)
{
    BDRVQcow2State *ls = l->opaque;

    if (e & QCOW_OFLAG_COMPRESSED) {
        return 0;   /* no reserved bits to carry a depth: left to a read */
    }
    if (e & QCOW_OFLAG_ZERO) {
        return qcow2_bi_set(QCOW_OFLAG_ZERO, depth);
    }
    e &= L2E_OFFSET_MASK;
    if (!e || offset_into_cluster(ls, e)) {
        return 0;
    }
    return qcow2_bi_set(e, depth);
}

/* Layers whose L2 tables bir_from_layers() reads at once */
#define BIR_READ_WORKERS 4

/* Buffers for the tables that bir_from_layers() reads at once */
typedef struct BirScratch {
    uint64_t *buf[BIR_READ_WORKERS];    /* one cluster each */
} BirScratch;

static void bir_scratch_init(BirScratch *sc, BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    unsigned i;

    for (i = 0; i < BIR_READ_WORKERS; i++) {
        sc->buf[i] = qemu_blockalign(bs, s->cluster_size);
    }
}

static void bir_scratch_destroy(BirScratch *sc)
{
    unsigned i;

    for (i = 0; i < BIR_READ_WORKERS; i++) {
        qemu_vfree(sc->buf[i]);
        sc->buf[i] = NULL;
    }
}

/* One layer's L2 table @t, read into @buf or through @ra */
typedef struct BirRead {
    BlockDriverState *l;
    Qcow2TableReadAhead *ra;
    uint64_t t;
    uint64_t *buf;
    const uint64_t *be;         /* the table read (big-endian), or NULL */
    int ret;                    /* 1 read, 0 none there, -errno */
    Error *err;
} BirRead;

static void bir_read(BirRead *r)
{
    r->be = r->buf;
    if (r->ra) {
        r->ret = qcow2_table_read_ahead_get(r->ra, r->t, &r->be, &r->err);
    } else {
        r->ret = bir_read_l2_be(r->l, r->t, r->buf, &r->err);
    }
}

typedef struct BirReadTask {
    AioTask task;
    BirRead *r;
} BirReadTask;

static int coroutine_fn bir_read_task(AioTask *task)
{
    BirRead *r = container_of(task, BirReadTask, task)->r;

    bir_read(r);
    return r->ret < 0 ? r->ret : 0;
}

/*
 * Read the tables of @r[0 .. @n - 1]: at once in a coroutine (the reads
 * wait for the storage, not for each other), else one after the other
 */
static void bir_read_all(BirRead *r, unsigned n)
{
    AioTaskPool *pool;
    unsigned i;

    if (n < 2 || !qemu_in_coroutine()) {
        for (i = 0; i < n; i++) {
            bir_read(&r[i]);
        }
        return;
    }
    pool = aio_task_pool_new(n);
    for (i = 0; i < n; i++) {
        BirReadTask *task = g_new(BirReadTask, 1);

        *task = (BirReadTask) { .task.func = bir_read_task, .r = &r[i] };
        aio_task_pool_start_task(pool, &task->task);
    }
    aio_task_pool_wait_all(pool);
    aio_task_pool_free(pool);
}

/*
 * For each of the @n clusters of L1 index @t whose @want[i] names a layer
 * (else 0), set @out[i] from that layer's L2 table: what a resolved table
 * keeps of it.  Each layer named is read once, up to BIR_READ_WORKERS at
 * a time, into @sc.  The grandparent's tables (depth - 2) are read
 * through @gp if given.
 */
static int bir_from_layers(BlockDriverState *const *layer, unsigned depth,
                           uint64_t t, unsigned n, const uint16_t *want,
                           uint64_t *out, BirScratch *sc,
                           Qcow2TableReadAhead *gp, Error **errp)
{
    g_autofree unsigned *lo = g_new(unsigned, depth);
    g_autofree unsigned *hi = g_new0(unsigned, depth);
    g_autofree unsigned *touched = g_new(unsigned, depth);
    BirRead r[BIR_READ_WORKERS];
    unsigned i, j, k, d, m, nb_touched = 0;
    int ret = 0;

    for (i = 0; i < n; i++) {
        d = want[i];
        if (!d) {
            continue;
        }
        assert(d < depth);
        if (!hi[d]) {
            touched[nb_touched++] = d;
            lo[d] = i;
        }
        hi[d] = i + 1;
    }
    for (j = 0; j < nb_touched; j += m) {
        m = MIN(BIR_READ_WORKERS, nb_touched - j);
        for (k = 0; k < m; k++) {
            d = touched[j + k];
            r[k] = (BirRead) {
                .l = layer[d],
                .ra = gp && d == depth - 2 ? gp : NULL,
                .t = t,
                .buf = sc->buf[k],
            };
        }
        bir_read_all(r, m);
        for (k = 0; k < m; k++) {
            if (r[k].ret < 0 && ret == 0) {
                error_propagate(errp, r[k].err);
                ret = r[k].ret;
            } else {
                error_free(r[k].err);
            }
        }
        if (ret < 0) {
            return ret;
        }
        for (k = 0; k < m; k++) {
            const uint64_t *be = r[k].be;

            d = touched[j + k];
            for (i = lo[d]; i < hi[d]; i++) {
                if (want[i] == d) {
                    out[i] = r[k].ret ?
                             bir_entry(layer[d], be64_to_cpu(be[i]), d) : 0;
                }
            }
        }
    }
    return 0;
}

/*
 * The layers below @bs by depth (@layer[d], d = 1 .. @depth - 1), or NULL
 * if the chain does not have @depth layers or a layer in the middle is not
 * qcow2 with @bs's cluster size
 */
static BlockDriverState **bir_layers(BlockDriverState *bs, unsigned depth)
{
    BDRVQcow2State *s = bs->opaque;
    g_autofree BlockDriverState **layer = g_new0(BlockDriverState *, depth);
    BlockDriverState *l;
    unsigned d = depth;

    for (l = qcow2_bi_next_layer(bs); l && d > 1; l = qcow2_bi_next_layer(l)) {
        layer[--d] = l;
    }
    if (l || d != 1) {
        return NULL;
    }
    for (d = 2; d < depth; d++) {
        if (!qcow2_bi_is_qcow2(layer[d]) ||
            ((BDRVQcow2State *)layer[d]->opaque)->cluster_bits !=
            s->cluster_bits) {
            return NULL;
        }
    }
    return g_steal_pointer(&layer);
}

/* Whether the resolved tables of @p can give those of its overlay */
static bool bir_reusable(BlockDriverState *p, BlockDriverState *const *layer,
                         unsigned pdepth)
{
    BDRVQcow2State *ps = p->opaque;
    uint8_t id[QCOW2_BI_ID_SIZE];

    if (!qcow2_bir_own(p) || ps->bir_ext.depth != pdepth ||
        !(ps->autoclear_features & QCOW2_AUTOCLEAR_BACKING_INDEX) ||
        bir_load_l1(p) < 0) {
        return false;
    }
    qcow2_bir_chain_id(layer, pdepth, id);
    return !memcmp(id, ps->bir_ext.chain_id, QCOW2_BI_ID_SIZE);
}

/* Allocate clusters of @bs for @len bytes and write @buf there */
static int64_t bir_write_new(BlockDriverState *bs, const void *buf,
                             uint64_t len, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int64_t offset = qcow2_alloc_clusters(bs, len);
    int ret;

    if (offset < 0) {
        error_setg_errno(errp, -offset, "Could not allocate resolved L2 "
                         "tables in '%s'", bs->filename);
        return offset;
    }
    ret = qcow2_pre_write_overlap_check(bs, 0, offset,
                                        ROUND_UP(len, s->cluster_size), false);
    if (ret >= 0) {
        ret = bdrv_pwrite(bs->file, offset, len, buf, 0);
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write resolved L2 tables of "
                         "'%s'", bs->filename);
        qcow2_free_clusters(bs, offset, len, QCOW2_DISCARD_OTHER);
        return ret;
    }
    return offset;
}

/*
 * Resolved tables being computed, table by table, for a layer whose index
 * entries are known (qcow2_bir_build, or an L2 copy that hands over each
 * new L2 table as it computes it).  Tables are written in batches of
 * contiguous clusters, as the L2 copy writes its own.
 */
struct Qcow2BirBuild {
    BlockDriverState *bs;
    unsigned depth;
    BlockDriverState **layer;   /* layer[d]: the layer at depth d */
    bool reuse;                 /* the parent's own tables describe it */
    bool covered;               /* see qcow2_bir_build_needs() */
    uint64_t n_l1;
    uint64_t *rl1;              /* host order: each table written, or 0 */
    uint16_t *want;             /* per entry: depth to resolve, or 0 */
    BirScratch scratch;
    Qcow2TableReadAhead parent; /* the parent's resolved tables, if reuse */
    Qcow2TableReadAhead gp;     /* the grandparent's L2 tables */
    uint8_t *batch;             /* tables not written yet, big-endian */
    uint64_t *batch_t;          /* their L1 indexes */
    unsigned nb, batch_max;
    int64_t l1_offset;          /* the resolved L1 table, once written */
    bool done;                  /* finished: @bs names them in memory */
    unsigned n_tables;
    unsigned few;               /* tables left to the few layers named */
    uint64_t entries, reused;
};

/*
 * Start the resolved tables of @bs, a layer at @depth in its chain, which
 * has none (any old ones were dropped).  NULL if the chain needs none:
 * fewer than four layers, or one the tables cannot describe.
 */
Qcow2BirBuild *qcow2_bir_build_start(BlockDriverState *bs, unsigned depth)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2BirBuild *b;
    BlockDriverState **layer;

    if (depth < 4) {
        return NULL;
    }
    layer = bir_layers(bs, depth);
    if (!layer) {
        return NULL;
    }
    b = g_new0(Qcow2BirBuild, 1);
    b->bs = bs;
    b->depth = depth;
    b->layer = layer;
    b->reuse = bir_reusable(layer[depth - 1], layer, depth - 1);
    /*
     * The parent's own resolved entries cover its middle layers (2 to
     * depth - 3) when it has them, and there are none when it is at depth
     * 3: then only a table that the parent's tables or the grandparent's
     * L2 tables name can hold anything.
     */
    b->covered = b->reuse || depth - 1 < 4;
    b->n_l1 = DIV_ROUND_UP(DIV_ROUND_UP(qcow2_bi_layer_size(bs),
                                        s->cluster_size), s->l2_size);
    b->rl1 = g_new0(uint64_t, b->n_l1);
    b->want = g_new(uint16_t, s->l2_size);
    bir_scratch_init(&b->scratch, bs);
    /* As the L2 copy: small enough to be reused from the CPU cache */
    b->batch_max = MAX(1, (2 * MiB) / s->cluster_size);
    b->batch = qemu_blockalign(bs, (size_t)b->batch_max * s->cluster_size);
    b->batch_t = g_new(uint64_t, b->batch_max);
    b->l1_offset = -1;
    if (b->reuse) {
        BDRVQcow2State *ps = layer[depth - 1]->opaque;

        qcow2_table_read_ahead_init(&b->parent, layer[depth - 1],
                                    layer[depth - 1]->file, ps->bir_l1,
                                    ps->bir_ext.l1_size, b->batch_max);
    }
    if (qcow2_bi_is_qcow2(layer[depth - 2])) {
        BDRVQcow2State *gs = layer[depth - 2]->opaque;

        qcow2_table_read_ahead_init(&b->gp, layer[depth - 2],
                                    layer[depth - 2]->file, gs->l1_table,
                                    gs->l1_size, b->batch_max);
    }
    return b;
}

/*
 * Whether the table for L1 index @t can hold anything; when not, the
 * layer's own L2 table there need not even be read
 */
static bool bir_build_needs(Qcow2BirBuild *b, uint64_t t)
{
    unsigned depth = b->depth;

    return !b->covered ||
           (b->reuse && bir_table(b->layer[depth - 1]->opaque, t)) ||
           (depth - 2 >= 2 && bir_has_l2(b->layer[depth - 2], t));
}

/* Write the tables of the batch into new clusters */
static int bir_write_batch(Qcow2BirBuild *b, Error **errp)
{
    BDRVQcow2State *s = b->bs->opaque;
    int64_t offset;
    unsigned i;

    if (!b->nb) {
        return 0;
    }
    offset = bir_write_new(b->bs, b->batch,
                           (uint64_t)b->nb * s->cluster_size, errp);
    if (offset < 0) {
        return offset;
    }
    for (i = 0; i < b->nb; i++) {
        b->rl1[b->batch_t[i]] = offset + (uint64_t)i * s->cluster_size;
    }
    b->nb = 0;
    return 0;
}

/*
 * A table whose entries to resolve name at most this many middle layers
 * is not kept: a read that misses a slice of it corrects from those
 * layers, the parent and the base, at most BIR_FEW_LAYERS + 2 L2 reads
 * that go out together (qcow2-direct-access.c runs 16 at once), where a
 * resolved table costs one read of the top and then one of the parent
 * and the base: one round of reads instead of two, a few more requests.
 * Tables that name more layers are the ones a deep chain needs resolved:
 * without them a slice miss reads one L2 slice per layer named.
 */
#define BIR_FEW_LAYERS 4

/*
 * The resolved table for L1 index @t, given the layer's own L2 entries of
 * its @n clusters there (@own, big-endian, as on disk).  Where the entries
 * to resolve name few layers (BIR_FEW_LAYERS), no table is kept.
 * Otherwise entries come from the parent's own resolved table where it
 * still describes this chain, else from the L2 tables of the layers that
 * hold the clusters (for a snapshot: the grandparent's only).  Nothing is
 * kept where a table would hold nothing.
 */
int qcow2_bir_build_add(Qcow2BirBuild *b, uint64_t t, const uint64_t *own,
                        unsigned n, Error **errp)
{
    BlockDriverState *bs = b->bs;
    BDRVQcow2State *s = bs->opaque;
    unsigned depth = b->depth, i, d, left = 0, written = 0;
    uint16_t *want = b->want;
    const uint64_t not_index = cpu_to_be64(~QCOW2_BI_MASK);
    unsigned named[BIR_FEW_LAYERS + 1], nb_named = 0, last = 0, k;
    uint64_t *out;
    int ret;

    assert(t < b->n_l1 && n <= s->l2_size && !b->done);
    assert(b->nb < b->batch_max);   /* a failed batch write ends the build */
    for (i = 0; i < n; i++) {
        /* A cluster left to a lower layer: nothing but index bits */
        d = own[i] & not_index ? 0 : qcow2_bi_get(be64_to_cpu(own[i]));
        want[i] = d >= 2 && d + 1 < depth ? d : 0;
        if (!want[i]) {
            continue;
        }
        left++;
        if (d == last || nb_named > BIR_FEW_LAYERS) {
            continue;
        }
        last = d;
        for (k = 0; k < nb_named && named[k] != d; k++) {
            /* nothing */
        }
        if (k == nb_named) {
            named[nb_named++] = d;
        }
    }
    if (!left) {
        return 0;
    }
    if (nb_named <= BIR_FEW_LAYERS) {
        b->few++;
        return 0;
    }
    out = (uint64_t *)(b->batch + (size_t)b->nb * s->cluster_size);
    memset(out, 0, s->cluster_size);

    if (b->reuse) {
        const uint64_t *p_table;

        ret = qcow2_table_read_ahead_get(&b->parent, t, &p_table, errp);
        if (ret < 0) {
            return ret;
        }
        if (ret) {
            for (i = 0; i < n; i++) {
                uint64_t e = be64_to_cpu(p_table[i]);

                if (want[i] && qcow2_bi_get(e) == want[i]) {
                    out[i] = e;
                    want[i] = 0;
                    left--;
                    b->reused++;
                }
            }
        }
    }

    /* The rest from the L2 tables of the layers that hold them */
    if (left) {
        ret = bir_from_layers(b->layer, depth, t, n, want, out, &b->scratch,
                              b->gp.bs ? &b->gp : NULL, errp);
        if (ret < 0) {
            return ret;
        }
    }

    for (i = 0; i < n; i++) {
        written += out[i] != 0;
        out[i] = cpu_to_be64(out[i]);
    }
    if (!written) {
        return 0;
    }
    b->batch_t[b->nb++] = t;
    b->n_tables++;
    b->entries += written;
    return b->nb == b->batch_max ? bir_write_batch(b, errp) : 0;
}

/*
 * Write what is left of the tables and the resolved L1 table, and make
 * them @bs's in memory (extension and autoclear bit 17).  The caller puts
 * them on disk (refcounts, flush) before it writes the header that names
 * them.  Nothing is named if no table holds anything.
 */
int qcow2_bir_build_finish(Qcow2BirBuild *b, Error **errp)
{
    BlockDriverState *bs = b->bs;
    BDRVQcow2State *s = bs->opaque;
    g_autofree uint64_t *rl1_be = NULL;
    uint64_t l1_bytes, t;
    int ret;

    ret = bir_write_batch(b, errp);
    if (ret < 0) {
        return ret;
    }
    if (!b->n_tables) {
        trace_qcow2_bir_build(bs, b->depth, 0, b->few, 0, 0);
        return 0;
    }
    /*
     * Whole clusters, as every other table: a file that ends in a cluster
     * written only in part looks metadata-preallocated to the block
     * status heuristics (more clusters referenced than the file holds)
     */
    l1_bytes = ROUND_UP(b->n_l1 * L1E_SIZE, s->cluster_size);
    rl1_be = g_malloc0(l1_bytes);
    for (t = 0; t < b->n_l1; t++) {
        rl1_be[t] = cpu_to_be64(b->rl1[t]);
    }
    b->l1_offset = bir_write_new(bs, rl1_be, l1_bytes, errp);
    if (b->l1_offset < 0) {
        return b->l1_offset;
    }
    assert(!s->bir_present);    /* the old tables were dropped first */
    qcow2_bir_close(bs);
    s->bir_present = true;
    s->bir_ext.depth = b->depth;
    s->bir_ext.l1_offset = b->l1_offset;
    s->bir_ext.l1_size = b->n_l1;
    qcow2_bir_chain_id(b->layer, b->depth, s->bir_ext.chain_id);
    s->bir_l1 = g_memdup2(b->rl1, b->n_l1 * sizeof(uint64_t));
    s->autoclear_features |= QCOW2_AUTOCLEAR_BI_RESOLVED;
    b->done = true;
    trace_qcow2_bir_build(bs, b->depth, b->n_tables, b->few, b->entries,
                          b->reused);
    return 0;
}

/*
 * End a build.  With @kept, the header names the tables: from now on they
 * are @bs's to drop (qcow2_bir_drop).  Otherwise @bs forgets them; their
 * clusters are given back if the build failed before it finished, and
 * leak after that (a header write that failed may still have reached the
 * disk and name them: reusing them could make a later open read other
 * data as resolved entries; qemu-img check -r leaks reclaims them).
 */
void qcow2_bir_build_free(Qcow2BirBuild *b, bool kept)
{
    BDRVQcow2State *s;
    uint64_t t;

    if (!b) {
        return;
    }
    s = b->bs->opaque;
    if (b->done && !kept) {
        qcow2_bir_close(b->bs);
        s->autoclear_features &= ~QCOW2_AUTOCLEAR_BI_RESOLVED;
    } else if (!b->done) {
        for (t = 0; t < b->n_l1; t++) {
            if (b->rl1[t]) {
                qcow2_free_clusters(b->bs, b->rl1[t], s->cluster_size,
                                    QCOW2_DISCARD_OTHER);
            }
        }
        if (b->l1_offset > 0) {
            qcow2_free_clusters(b->bs, b->l1_offset,
                                ROUND_UP(b->n_l1 * L1E_SIZE,
                                         s->cluster_size),
                                QCOW2_DISCARD_OTHER);
        }
    }
    qcow2_table_read_ahead_destroy(&b->parent);
    qcow2_table_read_ahead_destroy(&b->gp);
    g_free(b->layer);
    g_free(b->rl1);
    g_free(b->want);
    bir_scratch_destroy(&b->scratch);
    qemu_vfree(b->batch);
    g_free(b->batch_t);
    g_free(b);
}

/*
 * Write the resolved tables of @bs, whose index was just built and is
 * valid, with the chain below quiescent: its own L2 tables are read back,
 * those that can lead to anything only.  Nothing is written for a chain
 * of fewer than four layers, or where a table would hold nothing.
 */
int qcow2_bir_build(BlockDriverState *bs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t nb_clusters, t;
    Qcow2BirBuild *b;
    uint64_t *own;
    bool kept = false;
    int ret;

    ret = qcow2_bir_drop(bs, errp);
    if (ret < 0 ||
        !(s->autoclear_features & QCOW2_AUTOCLEAR_BACKING_INDEX)) {
        return ret;
    }
    b = qcow2_bir_build_start(bs, s->bi_ext.depth);
    if (!b) {
        return 0;   /* not a chain the tables can describe */
    }
    nb_clusters = DIV_ROUND_UP(qcow2_bi_layer_size(bs), s->cluster_size);
    own = qemu_blockalign(bs, s->cluster_size);
    for (t = 0; t < b->n_l1; t++) {
        uint64_t offset = t < s->l1_size ? s->l1_table[t] & L1E_OFFSET_MASK
                                         : 0;

        if (!bir_build_needs(b, t) || !offset ||
            offset_into_cluster(s, offset)) {
            continue;
        }
        ret = bdrv_pread(bs->file, offset, s->cluster_size, own, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not read an L2 table of "
                             "'%s'", bs->filename);
            goto out;
        }
        ret = qcow2_bir_build_add(b, t, own,
                                  MIN(s->l2_size,
                                      nb_clusters - (t << s->l2_bits)),
                                  errp);
        if (ret < 0) {
            goto out;
        }
    }
    ret = qcow2_bir_build_finish(b, errp);
    if (ret < 0 || !b->done) {
        goto out;
    }

    /* The tables and their refcounts on disk before the header names them */
    ret = qcow2_bi_flush_refcounts(bs, errp);
    if (ret < 0) {
        goto out;
    }
    ret = bdrv_flush(bs->file->bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write the resolved L2 tables "
                         "of '%s'", bs->filename);
        goto out;
    }
    ret = qcow2_bi_write_header(bs, errp);
    kept = ret >= 0;
out:
    qemu_vfree(own);
    qcow2_bir_build_free(b, kept);
    return ret;
}

/*
 * Whether the resolved tables of @bs describe the chain @layer[1..@depth-1]
 * below it (see qcow2_bir_chain_id)
 */
bool qcow2_bir_matches(BlockDriverState *bs, BlockDriverState *const *layer,
                       unsigned depth)
{
    BDRVQcow2State *s = bs->opaque;
    uint8_t id[QCOW2_BI_ID_SIZE];

    if (!qcow2_bir_own(bs) || s->bir_ext.depth != depth) {
        return false;
    }
    qcow2_bir_chain_id(layer, depth, id);
    return !memcmp(id, s->bir_ext.chain_id, QCOW2_BI_ID_SIZE);
}

/*
 * The resolved entries of @bs for the @n clusters from @first on (within
 * one L2 table) into @e, host byte order: 1 if read, 0 if @bs has none
 * there, or -errno.  The caller checked qcow2_bir_matches().
 */
int coroutine_fn qcow2_bir_co_read(BlockDriverState *bs, uint64_t first,
                                   unsigned n, uint64_t *e)
{
    BDRVQcow2State *s = bs->opaque;
    uint64_t offset;
    unsigned i;
    int ret;

    ret = bir_load_l1(bs);
    if (ret < 0) {
        return ret;
    }
    offset = bir_table(s, first >> s->l2_bits);
    if (!offset) {
        return 0;
    }
    offset += (first & (s->l2_size - 1)) * sizeof(uint64_t);
    trace_qcow2_bir_read(bs, first, n, offset);
    ret = bdrv_co_pread(bs->file, offset, n * sizeof(uint64_t), e, 0);
    if (ret < 0) {
        return ret;
    }
    for (i = 0; i < n; i++) {
        e[i] = be64_to_cpu(e[i]);
    }
    return 1;
}

/* qemu-img check: the clusters of the resolved tables are in use */
int qcow2_bir_check_refs(BlockDriverState *bs, BdrvCheckResult *res,
                         void **refcount_table,
                         int64_t *refcount_table_size)
{
    BDRVQcow2State *s = bs->opaque;
    uint32_t t;
    int ret;

    if (!qcow2_bir_own(bs)) {
        return 0;
    }
    ret = qcow2_inc_refcounts_imrt(bs, res, refcount_table,
                                   refcount_table_size, s->bir_ext.l1_offset,
                                   (uint64_t)s->bir_ext.l1_size * L1E_SIZE);
    if (ret < 0) {
        return ret;
    }
    if (bir_load_l1(bs) < 0) {
        fprintf(stderr, "ERROR could not read the resolved L1 table\n");
        res->corruptions++;
        return 0;
    }
    for (t = 0; t < s->bir_ext.l1_size; t++) {
        uint64_t offset = s->bir_l1[t] & L1E_OFFSET_MASK;

        if (!offset) {
            continue;
        }
        if (offset_into_cluster(s, offset)) {
            fprintf(stderr, "ERROR resolved L2 table offset 0x%" PRIx64
                    " unaligned (L1 index 0x%" PRIx32 ")\n", offset, t);
            res->corruptions++;
            continue;
        }
        ret = qcow2_inc_refcounts_imrt(bs, res, refcount_table,
                                       refcount_table_size, offset,
                                       s->cluster_size);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/*
 * qemu-img check: every resolved entry that a read of @bs would use (the
 * top leaves the cluster to the layer the entry names) must be what that
 * layer's L2 table says; wrong ones are corruption, and with
 * BDRV_FIX_ERRORS the tables are written again.  Tables that do not
 * describe the chain below are not used, so they are not checked.
 */
int qcow2_bir_check(BlockDriverState *bs, BdrvCheckResult *res,
                    BdrvCheckMode fix)
{
    BDRVQcow2State *s = bs->opaque;
    unsigned depth = s->bir_ext.depth;
    g_autofree BlockDriverState **layer = NULL;
    g_autofree uint16_t *want = NULL;
    uint64_t *own = NULL, *stored = NULL, *expect = NULL;
    BirScratch scratch = { 0 };
    uint64_t t, nb_clusters, bad = 0, first_bad = 0;
    Error *local_err = NULL;
    int ret = 0;

    if (!qcow2_bir_own(bs) || depth != s->bi_ext.depth) {
        return 0;
    }
    layer = bir_layers(bs, depth);
    if (!layer || !qcow2_bir_matches(bs, layer, depth) ||
        bir_load_l1(bs) < 0) {
        return 0;
    }
    nb_clusters = DIV_ROUND_UP(qcow2_bi_layer_size(bs), s->cluster_size);
    want = g_new(uint16_t, s->l2_size);
    own = qemu_blockalign(bs, s->cluster_size);
    stored = qemu_blockalign(bs, s->cluster_size);
    expect = qemu_blockalign(bs, s->cluster_size);
    bir_scratch_init(&scratch, bs);

    for (t = 0; t < s->bir_ext.l1_size && (t << s->l2_bits) < nb_clusters;
         t++) {
        uint64_t offset = bir_table(s, t);
        unsigned n = MIN(s->l2_size, nb_clusters - (t << s->l2_bits));
        unsigned i, d;

        if (!offset) {
            continue;
        }
        ret = bdrv_pread(bs->file, offset, s->cluster_size, stored, 0);
        if (ret < 0) {
            error_setg_errno(&local_err, -ret, "Could not read a resolved L2 "
                             "table");
            goto out;
        }
        ret = bir_read_l2(bs, t, own, &local_err);
        if (ret < 0) {
            goto out;
        }
        for (i = 0; i < n; i++) {
            stored[i] = be64_to_cpu(stored[i]);
            d = ret && qcow2_get_cluster_type(bs, own[i]) ==
                QCOW2_CLUSTER_UNALLOCATED ? qcow2_bi_get(own[i]) : 0;
            /* Used only where it names the layer the top's index names */
            want[i] = stored[i] && d && d < depth &&
                      qcow2_bi_get(stored[i]) == d ? d : 0;
        }
        ret = bir_from_layers(layer, depth, t, n, want, expect, &scratch,
                              NULL, &local_err);
        if (ret < 0) {
            goto out;
        }
        for (i = 0; i < n; i++) {
            if (want[i] && expect[i] != stored[i]) {
                if (!bad++) {
                    first_bad = ((t << s->l2_bits) + i) << s->cluster_bits;
                }
            }
        }
    }
    ret = 0;
    if (!bad) {
        goto out;
    }
    fprintf(stderr, "%s %" PRIu64 " resolved L2 entries differ from the "
            "layers that hold the clusters (first: offset 0x%" PRIx64 ")\n",
            fix & BDRV_FIX_ERRORS ? "Repairing" : "ERROR", bad, first_bad);
    res->corruptions += bad;
    if (!(fix & BDRV_FIX_ERRORS)) {
        goto out;
    }
    ret = qcow2_bir_build(bs, &local_err);
    if (ret < 0) {
        goto out;
    }
    res->corruptions -= bad;
    res->corruptions_fixed += bad;
out:
    if (ret < 0) {
        fprintf(stderr, "Resolved L2 tables not %s: %s\n",
                bad ? "rewritten" : "checked", error_get_pretty(local_err));
        error_free(local_err);
        res->check_errors++;
    }
    qemu_vfree(own);
    qemu_vfree(stored);
    qemu_vfree(expect);
    bir_scratch_destroy(&scratch);
    return 0;
}
