/*
 * sQemu: indexing a whole backing chain in one command
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * "qemu-img amend -o backing-index=on TOP" must leave TOP's whole chain
 * usable for direct access, and a layer's index can only be used when
 * every layer below it has a valid one.  So before TOP itself, every layer
 * of its chain whose index does not validate gets one, from the lowest
 * such layer up: then each layer's parent is already indexed, and its
 * index is an L2 copy of its parent's (one pass over its own and its
 * parent's L2 tables), whatever the depth.  Each of those layers is opened
 * read-write once, on top of the ones just indexed; layers that already
 * validate are not written at all.
 *
 * What this writes into lower layers, and why other users of them (chains
 * that share a base) are safe: only layers whose index does not validate
 * are written.  Whether a layer validates depends only on the layer and
 * the chain below it, which its own header names, so it is the same in
 * every chain that contains the layer: a layer that validates for one user
 * validates for all and is left alone, and no chain can validate through a
 * layer that does not (validation needs every layer below the top).  A
 * layer that is written gets index bits in entries it does not hold (what
 * it holds, and so what it reads, does not change; stock QEMU ignores the
 * bits), possibly new L2 tables of unallocated entries, and a new layer
 * identity.  The new identity means that an overlay indexed over an older
 * state of the layer (which cannot have been validating) does not start
 * validating by accident.  Opening a layer for writing takes QEMU's image
 * lock, so a layer that a running VM has open is refused, not written.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qapi/qmp/qdict.h"
#include "qemu/cutils.h"
#include "qcow2.h"
#include "qcow2-backing-index.h"
#include "trace.h"

/*
 * Refuse, before anything is written, what indexing layer @l at @depth
 * would refuse halfway.  (qcow2_bi_chain_supported has refused layers of
 * other formats already: only a raw base, never written, may be one.)
 */
static int bi_convert_check_layer(BlockDriverState *l, unsigned depth,
                                  Error **errp)
{
    Error *local_err = NULL;

    if (!l->exact_filename[0] || strstart(l->filename, "json:", NULL)) {
        error_setg(errp, "Layer '%s' at depth %u is not a plain image file "
                   "name, so it cannot be reopened for writing by name",
                   l->filename, depth);
        error_append_hint(errp, "Index its chain from the base up with "
                          "'qemu-img amend -o backing-index=on' on each "
                          "layer.\n");
        return -ENOTSUP;
    }
    if (qcow2_bi_check_supported(l, &local_err) < 0) {
        error_propagate_prepend(errp, local_err, "Layer '%s' at depth %u: ",
                                l->filename, depth);
        return -ENOTSUP;
    }
    return 0;
}

/*
 * The layers of the chain from @l down, base first, as a new array of *@n,
 * and in *@first the position of the lowest one whose index does not
 * validate (*@n if all do).  A raw base carries nothing and is skipped.
 */
BlockDriverState **qcow2_bi_chain_to_index(BlockDriverState *l, unsigned *n,
                                           unsigned *first)
{
    BlockDriverState **node;
    unsigned d, lo, hi;

    *n = qcow2_bi_chain_length(l);
    node = g_new(BlockDriverState *, *n);
    d = *n;
    for (; l; l = qcow2_bi_next_layer(l)) {
        node[--d] = l;
    }
    /*
     * A layer validates only if every layer below it does: a binary
     * search, since each check walks the chain below the layer
     */
    lo = 0;
    hi = *n;
    while (lo < hi) {
        unsigned mid = lo + (hi - lo) / 2;
        g_autofree char *reason = NULL;

        if (mid > 0 || qcow2_bi_is_qcow2(node[0])) {
            reason = qcow2_bi_chain_check(node[mid]);
        }
        if (reason) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    *first = lo;
    return node;
}

/*
 * Index every layer of the chain below @bs that does not validate, from
 * the base up, so that an index built for @bs afterwards validates.  @bs
 * is qcow2, opened read-write with its backing chain open read-only and
 * not in use (qemu-img amend).  Its chain is replaced, in the graph, by
 * the same files opened again: the layers that were indexed read-write,
 * the ones that already validated as they were.  @status_cb reports the
 * layers done.
 */
int qcow2_bi_convert_chain(BlockDriverState *bs,
                           BlockDriverAmendStatusCB *status_cb,
                           void *cb_opaque, Error **errp)
{
    BlockDriverState *below = qcow2_bi_next_layer(bs);
    g_autofree BlockDriverState **node = NULL;    /* node[d - 1]: depth d */
    g_auto(GStrv) filename = NULL;
    g_auto(GStrv) driver = NULL;
    BlockDriverState *l, *prev = NULL;
    unsigned n, first, d;
    int ret;

    if (!below) {
        return 0;
    }
    /* Refuses what the index cannot describe: depth, formats, sizes */
    ret = qcow2_bi_chain_supported(bs, errp);
    if (ret < 0) {
        return ret;
    }
    /* The lowest layer that does not validate; all above it follow it */
    node = qcow2_bi_chain_to_index(below, &n, &first);
    if (first == n) {
        return 0;
    }

    filename = g_new0(char *, n - first + 1);
    driver = g_new0(char *, n - first + 1);
    for (d = first; d < n; d++) {
        ret = bi_convert_check_layer(node[d], d + 1, errp);
        if (ret < 0) {
            return ret;
        }
        filename[d - first] = g_strdup(node[d]->filename);
        driver[d - first] = g_strdup(node[d]->drv->format_name);
    }
    trace_qcow2_bi_convert_chain(bs, n + 1, first + 1);

    /*
     * Close the read-only nodes of the layers to be written (their image
     * locks would refuse our writers), keeping the ones that validate.
     */
    if (first > 0) {
        prev = node[first - 1];
        bdrv_ref(prev);
    }
    ret = bdrv_set_backing_hd(bs, NULL, errp);
    if (ret < 0) {
        goto fail;
    }

    for (d = first; d < n; d++) {
        const char *name = filename[d - first];
        QDict *options = qdict_new();
        Error *local_err = NULL;

        qdict_put_str(options, "driver", driver[d - first]);
        l = bdrv_open(name, NULL, options, BDRV_O_RDWR | BDRV_O_NO_BACKING,
                      &local_err);
        if (!l) {
            error_propagate_prepend(errp, local_err, "Could not open layer "
                                    "'%s' at depth %u for writing: ", name,
                                    d + 1);
            ret = -EIO;
            goto fail;
        }
        if (prev) {
            ret = bdrv_set_backing_hd(l, prev, errp);
            bdrv_unref(prev);
            prev = NULL;
            if (ret < 0) {
                bdrv_unref(l);
                goto fail;
            }
        }
        prev = l;
        ret = qcow2_bi_build(l, &local_err);
        if (ret < 0) {
            error_propagate_prepend(errp, local_err, "Could not index layer "
                                    "'%s' at depth %u: ", name, d + 1);
            goto fail;
        }
        trace_qcow2_bi_convert_layer(l, d + 1);
        if (status_cb) {
            status_cb(bs, d - first + 1, n - first + 1, cb_opaque);
        }
    }

    ret = bdrv_set_backing_hd(bs, prev, errp);
fail:
    /*
     * On failure @bs is left without its chain: the layers indexed so far
     * validate on their own, the one that failed has no valid bit, and
     * nothing of @bs has changed yet.
     */
    bdrv_unref(prev);
    return ret;
}
