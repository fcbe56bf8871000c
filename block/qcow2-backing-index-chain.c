/*
 * sQemu: the backing index header extension, its valid bit, and validating
 * the chain a qcow2 node was opened with
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * An indexed layer carries a header extension (QCOW2_EXT_MAGIC_BACKING_INDEX)
 * with its depth, its identity and its parent's identity, and the autoclear
 * bit QCOW2_AUTOCLEAR_BACKING_INDEX while its index is true.  A QEMU that
 * does not know the bit clears it on a read-write open; sQemu renews the
 * identity on a read-write open, so an overlay indexed over an older state
 * of its parent no longer validates.  docs/sqemu.md has the rules.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qmp/qdict.h"
#include "qemu/error-report.h"
#include "qemu/uuid.h"
#include "qcow2.h"
#include "qcow2-backing-index.h"
#include "qcow2-direct-access.h"
#include "trace.h"

uint64_t qcow2_bi_generation;

/*
 * The index state of @bs (extension, valid bit, identity) changed: every
 * chain view that includes @bs must be rebuilt before its next read.
 */
void qcow2_bi_changed(BlockDriverState *bs)
{
    trace_qcow2_bi_changed(bs);
    qatomic_inc(&qcow2_bi_generation);
    qcow2_bi_rebuild_kick();
}

/*
 * The @len bytes of the header extension at @offset of @bs (g_free them),
 * or NULL with @errp set, naming the extension as @what
 */
uint8_t *qcow2_bi_read_ext(BlockDriverState *bs, uint64_t offset,
                           uint32_t len, const char *what, Error **errp)
{
    g_autofree uint8_t *buf = g_malloc0(MAX(len, 1));
    int ret = qcow2_pread_header(bs, offset, len, buf);

    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read the %s header "
                         "extension", what);
        return NULL;
    }
    return g_steal_pointer(&buf);
}

/* Write @bs's header after a change of its index state */
int qcow2_bi_write_header(BlockDriverState *bs, Error **errp)
{
    int ret;

    qcow2_bi_changed(bs);
    ret = qcow2_update_header(bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not update the header of '%s'",
                         bs->filename);
    }
    return ret;
}

/* Write back @bs's refcount blocks, before a table that they count is used */
int qcow2_bi_flush_refcounts(BlockDriverState *bs, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    int ret = qcow2_cache_flush(bs, s->refcount_block_cache);

    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write refcounts of '%s'",
                         bs->filename);
    }
    return ret;
}

/* Read the extension at @offset (@len bytes) of @bs's header */
int qcow2_bi_load_ext(BlockDriverState *bs, uint64_t offset, uint32_t len,
                      Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    g_autofree uint8_t *buf = qcow2_bi_read_ext(bs, offset, len,
                                                "backing index", errp);
    const char *reason;

    if (!buf) {
        return -EIO;
    }
    qcow2_bi_changed(bs);
    s->bi_enabled = true;
    g_free(s->bi_ext_error);
    s->bi_ext_error = NULL;
    if (qcow2_bi_ext_parse(buf, len, &s->bi_ext, &reason) < 0) {
        s->bi_ext_error = g_strdup(reason);
        trace_qcow2_bi_ext_bad(bs, reason);
    }
    return 0;
}

/* Give @bs a new layer identity (in memory; the caller writes the header) */
void qcow2_bi_new_layer_id(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    QemuUUID id;

    qcow2_bi_changed(bs);
    qemu_uuid_generate(&id);
    QEMU_BUILD_BUG_ON(sizeof(id.data) != QCOW2_BI_ID_SIZE);
    memcpy(s->bi_ext.layer_id, id.data, QCOW2_BI_ID_SIZE);
    trace_qcow2_bi_new_layer_id(bs);
}

/*
 * Called when @bs was opened writable, before its header is rewritten.
 * Drops a valid bit without an extension, turns an unreadable extension
 * into a well-formed one that is not valid, and renews the layer identity.
 * Returns whether the header must be written.
 */
bool qcow2_bi_open_writable(BlockDriverState *bs, int flags)
{
    BDRVQcow2State *s = bs->opaque;
    bool valid = s->autoclear_features & QCOW2_AUTOCLEAR_BACKING_INDEX;
    bool update = !(flags & BDRV_O_INACTIVE) && qcow2_bir_open_writable(bs);

    if (!s->bi_enabled) {
        s->autoclear_features &= ~QCOW2_AUTOCLEAR_BACKING_INDEX;
        return valid || update;
    }
    if (s->bi_ext_error) {
        trace_qcow2_bi_invalidate(bs, s->bi_ext_error);
        g_free(s->bi_ext_error);
        s->bi_ext_error = NULL;
        memset(&s->bi_ext, 0, sizeof(s->bi_ext));
        s->autoclear_features &= ~QCOW2_AUTOCLEAR_BACKING_INDEX;
    }
    if (flags & BDRV_O_INACTIVE) {
        return update;
    }
    qcow2_bi_new_layer_id(bs);
    return true;
}

/* @bs was reopened read-write: its content may change from now on */
void qcow2_bi_reopen_rw(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    if (!s->bi_enabled) {
        return;
    }
    qcow2_bi_new_layer_id(bs);
    ret = qcow2_update_header(bs);
    if (ret < 0) {
        /*
         * The old identity stays on disk, so overlays indexed over it
         * would still validate although this layer may now change: say so.
         */
        error_report("%s: could not renew the backing index identity: %s",
                     bdrv_get_node_name(bs), strerror(-ret));
    }
}

/*
 * Clear the valid bit of @bs on disk, because @why: the index may no
 * longer be true.  The index bits stay; they are no longer used.
 */
int qcow2_bi_invalidate(BlockDriverState *bs, const char *why)
{
    BDRVQcow2State *s = bs->opaque;
    int ret;

    /* An online build running now must not set the bit at its end */
    s->bi_invalidations++;
    /*
     * The resolved L2 tables are of no use without the index, and the
     * callers may be about to reset every cluster (qcow2_make_empty): give
     * them back while they are still the image's own
     */
    ret = qcow2_bir_drop(bs, NULL);
    if (ret < 0) {
        return ret;
    }
    if (!(s->autoclear_features & QCOW2_AUTOCLEAR_BACKING_INDEX)) {
        return 0;
    }
    trace_qcow2_bi_invalidate(bs, why);
    qcow2_bi_changed(bs);
    s->autoclear_features &= ~QCOW2_AUTOCLEAR_BACKING_INDEX;
    ret = qcow2_update_header(bs);
    if (ret < 0) {
        s->autoclear_features |= QCOW2_AUTOCLEAR_BACKING_INDEX;
    }
    return ret;
}

void qcow2_bi_close(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;

    g_free(s->bi_ext_error);
    s->bi_ext_error = NULL;
    qcow2_bir_close(bs);
    qcow2_da_free(bs);
    qcow2_bi_rebuild_forget(bs);
    qcow2_bi_changed(bs);
}

/* The next layer down from @bs: its COW (backing) child, if any */
BlockDriverState *qcow2_bi_next_layer(BlockDriverState *bs)
{
    return bdrv_cow_bs(bs);
}

/* How many layers the chain from @bs down has (0 for NULL) */
unsigned qcow2_bi_chain_length(BlockDriverState *bs)
{
    unsigned n = 0;

    for (; bs; bs = qcow2_bi_next_layer(bs)) {
        n++;
    }
    return n;
}

bool qcow2_bi_is_qcow2(BlockDriverState *bs)
{
    return bs->drv && !strcmp(bs->drv->format_name, "qcow2");
}

uint64_t qcow2_bi_layer_size(BlockDriverState *bs)
{
    return (uint64_t)bs->total_sectors * BDRV_SECTOR_SIZE;
}

static void bi_describe_layer(BlockDriverState *bs, Qcow2BiLayer *l)
{
    *l = (Qcow2BiLayer) {
        .name = bs->filename,
        .driver = bs->drv ? bs->drv->format_name : "(no medium)",
        .is_qcow2 = qcow2_bi_is_qcow2(bs),
        .size = qcow2_bi_layer_size(bs),
    };
    if (l->is_qcow2) {
        BDRVQcow2State *s = bs->opaque;

        l->has_ext = s->bi_enabled;
        l->ext_error = s->bi_ext_error;
        l->valid_bit = s->autoclear_features & QCOW2_AUTOCLEAR_BACKING_INDEX;
        l->ext = s->bi_ext;
    }
}

/* Whether the index of @bs validates over the chain from @below down */
static char *bi_chain_check_over(BlockDriverState *bs,
                                 BlockDriverState *below)
{
    g_autofree Qcow2BiLayer *layers = NULL;
    BlockDriverState *l;
    unsigned n = 1 + qcow2_bi_chain_length(below), i = 1;
    char *reason;

    if (n > QCOW2_BI_MAX_DEPTH) {
        /* The rules refuse it without looking at the layers */
        reason = qcow2_bi_chain_invalid_reason(NULL, n);
        trace_qcow2_bi_validate(bs, n, reason);
        return reason;
    }
    layers = g_new(Qcow2BiLayer, n);
    bi_describe_layer(bs, &layers[0]);
    for (l = below; l; l = qcow2_bi_next_layer(l)) {
        bi_describe_layer(l, &layers[i++]);
    }
    reason = qcow2_bi_chain_invalid_reason(layers, n);
    trace_qcow2_bi_validate(bs, n, reason ? reason : "valid");
    return reason;
}

/*
 * Whether the index of @bs may be used with the chain @bs has in the graph
 * now.  Returns NULL if so, else why not (g_free it).
 */
char *qcow2_bi_chain_check(BlockDriverState *bs)
{
    char *reason;

    if (bs->backing_file[0] && !bs->backing) {
        reason = g_strdup("the backing chain is not open");
        trace_qcow2_bi_validate(bs, 1, reason);
        return reason;
    }
    return bi_chain_check_over(bs, qcow2_bi_next_layer(bs));
}

/*
 * For nodes opened without their backing chain (qemu-img info, and each
 * layer of qemu-img info --backing-chain): what is known, per file, of
 * whether the chain from that file down validates.  An entry is used only
 * while the file's identity, size and modification time are unchanged.
 */
typedef struct BiDetachedMemo {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    Qcow2BiLayer layer;     /* the file as a layer; strings owned */
    unsigned length;        /* layers from it down; 0: not known */
    char *reason;           /* NULL: its chain validates */
} BiDetachedMemo;

static GHashTable *bi_detached_memo;   /* file name -> BiDetachedMemo */

static void bi_detached_memo_free(gpointer p)
{
    BiDetachedMemo *m = p;

    g_free((char *)m->layer.name);
    g_free((char *)m->layer.driver);
    g_free((char *)m->layer.ext_error);
    g_free(m->reason);
    g_free(m);
}

static bool bi_stat(const char *filename, struct stat *st)
{
    return stat(filename, st) == 0 && S_ISREG(st->st_mode);
}

static BiDetachedMemo *bi_detached_memo_get(const char *filename)
{
    BiDetachedMemo *m;
    struct stat st;

    if (!bi_detached_memo || !bi_stat(filename, &st)) {
        return NULL;
    }
    m = g_hash_table_lookup(bi_detached_memo, filename);
    if (!m || m->dev != st.st_dev || m->ino != st.st_ino ||
        m->size != st.st_size || m->mtime.tv_sec != st.st_mtim.tv_sec ||
        m->mtime.tv_nsec != st.st_mtim.tv_nsec) {
        return NULL;
    }
    return m;
}

static void bi_detached_memo_put(const char *filename,
                                 const Qcow2BiLayer *layer, unsigned length,
                                 const char *reason)
{
    BiDetachedMemo *m;
    struct stat st;

    if (!bi_stat(filename, &st)) {
        return;
    }
    if (!bi_detached_memo) {
        bi_detached_memo = g_hash_table_new_full(g_str_hash, g_str_equal,
                                                 g_free,
                                                 bi_detached_memo_free);
    }
    m = g_new0(BiDetachedMemo, 1);
    m->dev = st.st_dev;
    m->ino = st.st_ino;
    m->size = st.st_size;
    m->mtime = st.st_mtim;
    m->layer = *layer;
    m->layer.name = g_strdup(layer->name);
    m->layer.driver = g_strdup(layer->driver);
    m->layer.ext_error = g_strdup(layer->ext_error);
    m->length = length;
    m->reason = g_strdup(reason);
    g_hash_table_replace(bi_detached_memo, g_strdup(filename), m);
}

/* One layer met on the way down */
typedef struct BiDetachedStep {
    BlockDriverState *bs;       /* opened here (NULL for the first) */
    char *filename;             /* as its overlay names it */
    Qcow2BiLayer layer;
} BiDetachedStep;

/*
 * For a node opened without its backing chain (qemu-img info): whether the
 * chain its header names validates, judged layer by layer, each layer
 * below opened alone (read-only, sharing it with any writer): a chain
 * validates if and only if every layer is valid at its depth and passes
 * with its parent (qcow2_bi_layer_invalid_reason,
 * qcow2_bi_link_invalid_reason).  Opening the chain once per layer would
 * cost a whole chain per layer of qemu-img info --backing-chain; this
 * opens each layer once and remembers the answer per file.  Returns NULL
 * if the chain from @bs down validates, else why not (g_free it).
 */
static char *bi_chain_check_detached(BlockDriverState *bs)
{
    g_autoptr(GArray) steps = g_array_new(false, true,
                                          sizeof(BiDetachedStep));
    BiDetachedStep first = { .filename = g_strdup(bs->filename) };
    BiDetachedMemo *memo = NULL;
    char *stop_reason = NULL;   /* why the walk could not go on */
    bool at_base = false;
    char *reason = NULL;
    unsigned n, i;

    bi_describe_layer(bs, &first.layer);
    g_array_append_val(steps, first);

    while (!memo && !at_base && !stop_reason) {
        BiDetachedStep *cur = &g_array_index(steps, BiDetachedStep,
                                             steps->len - 1);
        BlockDriverState *cur_bs = cur->bs ? cur->bs : bs;
        g_autofree char *backing = NULL;
        BiDetachedStep next = { NULL };
        Error *local_err = NULL;
        QDict *options;

        if (steps->len > QCOW2_BI_MAX_DEPTH) {
            stop_reason = qcow2_bi_chain_invalid_reason(
                NULL, QCOW2_BI_MAX_DEPTH + 1);
            break;
        }
        if (!cur_bs->backing_file[0]) {
            at_base = true;
            break;
        }
        backing = bdrv_get_full_backing_filename(cur_bs, &local_err);
        if (backing) {
            memo = bi_detached_memo_get(backing);
            if (memo) {
                break;
            }
            options = qdict_new();
            if (cur_bs->backing_format[0]) {
                qdict_put_str(options, "driver", cur_bs->backing_format);
            }
            qdict_put_bool(options, BDRV_OPT_FORCE_SHARE, true);
            next.bs = bdrv_open(backing, NULL, options,
                                BDRV_O_NO_IO | BDRV_O_NO_BACKING, &local_err);
        }
        if (!next.bs) {
            stop_reason = g_strdup_printf(
                "the backing file of '%s' could not be opened: %s",
                cur_bs->filename, error_get_pretty(local_err));
            error_free(local_err);
            break;
        }
        next.filename = g_steal_pointer(&backing);
        bi_describe_layer(next.bs, &next.layer);
        g_array_append_val(steps, next);
    }

    /*
     * From the bottom up: a chain validates if its top layer is valid at
     * its depth, passes with its parent, and the chain below validates.
     * Where the walk stopped early, the depths are not known.
     */
    n = at_base ? steps->len : memo && memo->length ?
        steps->len + memo->length : 0;
    reason = stop_reason ? stop_reason : memo ? g_strdup(memo->reason) : NULL;
    for (i = steps->len; i-- > 0;) {
        BiDetachedStep *st = &g_array_index(steps, BiDetachedStep, i);
        const Qcow2BiLayer *parent =
            i + 1 < steps->len ?
            &g_array_index(steps, BiDetachedStep, i + 1).layer :
            memo ? &memo->layer : NULL;

        if (!reason) {
            bool base = at_base && i == steps->len - 1;

            reason = n ? qcow2_bi_layer_invalid_reason(&st->layer, n - i,
                                                       base && i > 0) : NULL;
            if (!reason && parent) {
                reason = qcow2_bi_link_invalid_reason(&st->layer, parent);
            } else if (!reason && st->layer.is_qcow2) {
                reason = qcow2_bi_link_invalid_reason(&st->layer, NULL);
            }
        }
        if (i > 0) {
            /* the first is @bs itself: the caller's, maybe being written */
            bi_detached_memo_put(st->filename, &st->layer, n ? n - i : 0,
                                 reason);
        }
        trace_qcow2_bi_validate(st->bs ? st->bs : bs, n ? n - i : 0,
                                reason ? reason : "valid (detached)");
    }
    /* Only now: each layer's description points into its node */
    for (i = 0; i < steps->len; i++) {
        BiDetachedStep *st = &g_array_index(steps, BiDetachedStep, i);

        if (st->bs) {
            bdrv_unref(st->bs);
        }
        g_free(st->filename);
    }
    return reason;
}

/*
 * For qemu-img info and query-block: the layer's own claim (valid bit,
 * readable extension, built), and when its backing chain is open, whether
 * the chain validates; the first reason against either.
 */
Qcow2BackingIndexInfo *qcow2_bi_get_info(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2BackingIndexInfo *info;
    char *reason = NULL;

    if (!s->bi_enabled) {
        return NULL;
    }
    info = g_new0(Qcow2BackingIndexInfo, 1);
    info->depth = s->bi_ext.depth;
    if (s->bi_ext_error) {
        reason = g_strdup(s->bi_ext_error);
    } else if (!(s->autoclear_features & QCOW2_AUTOCLEAR_BACKING_INDEX)) {
        reason = g_strdup(s->bi_ext.depth ?
                          "the valid bit is clear: the image was changed in "
                          "a way that does not keep the index (a write by a "
                          "QEMU without it, a rebase, a commit)" :
                          "not built yet");
    }
    info->valid = !reason;
    {
        /*
         * Whether the chain validates: the one in the graph, or for an
         * image opened without it (qemu-img info), the chain its header
         * names, layer by layer
         */
        char *chain_reason = bs->backing_file[0] && !bs->backing ?
                             bi_chain_check_detached(bs) :
                             qcow2_bi_chain_check(bs);

        info->has_chain_valid = true;
        info->chain_valid = !chain_reason;
        if (!reason) {
            reason = chain_reason;
        } else {
            g_free(chain_reason);
        }
    }
    info->has_reason = !!reason;
    info->reason = reason;
    return info;
}
