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
}

/* Read the extension at @offset (@len bytes) of @bs's header */
int qcow2_bi_load_ext(BlockDriverState *bs, uint64_t offset, uint32_t len,
                      Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    g_autofree uint8_t *buf = g_malloc0(MAX(len, 1));
    const char *reason;
    int ret;

    ret = bdrv_pread(bs->file, offset, len, buf, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read the backing index "
                         "header extension");
        return ret;
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

    if (!s->bi_enabled) {
        s->autoclear_features &= ~QCOW2_AUTOCLEAR_BACKING_INDEX;
        return valid;
    }
    if (s->bi_ext_error) {
        trace_qcow2_bi_invalidate(bs, s->bi_ext_error);
        g_free(s->bi_ext_error);
        s->bi_ext_error = NULL;
        memset(&s->bi_ext, 0, sizeof(s->bi_ext));
        s->autoclear_features &= ~QCOW2_AUTOCLEAR_BACKING_INDEX;
    }
    if (flags & BDRV_O_INACTIVE) {
        return false;
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
    qcow2_da_free(bs);
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
 * For a node opened without its backing chain (qemu-img info): open its
 * parent alone, read-only and sharing it with any writer, and judge the
 * link between the two.  Every layer of a chain passing this (qemu-img
 * info --backing-chain) is the same as the chain validating, and costs
 * one open per layer instead of a whole chain per layer.
 */
static char *bi_link_check_detached(BlockDriverState *bs)
{
    g_autofree char *backing = NULL;
    Qcow2BiLayer layer, parent_layer;
    BlockDriverState *parent;
    Error *local_err = NULL;
    QDict *options;
    char *reason;

    backing = bdrv_get_full_backing_filename(bs, &local_err);
    if (!backing) {
        reason = g_strdup_printf("the backing file could not be opened: %s",
                                 error_get_pretty(local_err));
        error_free(local_err);
        return reason;
    }
    options = qdict_new();
    if (bs->backing_format[0]) {
        qdict_put_str(options, "driver", bs->backing_format);
    }
    qdict_put_bool(options, BDRV_OPT_FORCE_SHARE, true);
    parent = bdrv_open(backing, NULL, options,
                       BDRV_O_NO_IO | BDRV_O_NO_BACKING, &local_err);
    if (!parent) {
        reason = g_strdup_printf("the backing file could not be opened: %s",
                                 error_get_pretty(local_err));
        error_free(local_err);
        return reason;
    }
    bi_describe_layer(bs, &layer);
    bi_describe_layer(parent, &parent_layer);
    if (!parent_layer.is_qcow2 && parent->backing_file[0]) {
        reason = g_strdup_printf("layer '%s' is a '%s' node; only the base "
                                 "may be other than qcow2", parent->filename,
                                 parent_layer.driver);
    } else {
        reason = qcow2_bi_link_invalid_reason(&layer, &parent_layer);
    }
    trace_qcow2_bi_validate(bs, 2, reason ? reason : "valid link");
    bdrv_unref(parent);
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
    if (!reason && bs->backing_file[0] && !bs->backing) {
        /* qemu-img info: judge the link to the parent alone */
        reason = bi_link_check_detached(bs);
    }
    info->valid = !reason;
    if (!bs->backing_file[0] || bs->backing) {
        char *chain_reason = qcow2_bi_chain_check(bs);

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
