/*
 * sQemu: computing a layer's backing index again when its chain or its
 * content changes under it
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * block-stream, block-commit of the layers below an image, a rebase and
 * change-backing-file all end by writing a new backing file name into the
 * image's header.  The index was computed for the old chain, so writing
 * the name clears the valid bit.  Where the new backing file is the node
 * the image already has below it in the graph (stream and commit set it
 * there first) and that node's own chain validates, the image's index is
 * computed again at once, over the new chain: its parent is trusted, so
 * that is an L2 copy, one pass over the image's and its parent's L2
 * tables, and reads stay direct.  Otherwise (a rebase that only rewrites
 * the header, a parent without a valid index) the bit stays clear and the
 * chain is read the vanilla way until the index is rebuilt.
 *
 * Applying an internal snapshot (qemu-img snapshot -a, loadvm) replaces
 * the image's L1 table with the snapshot's, whose L2 tables carry the
 * index of the time the snapshot was taken: the same, over the chain that
 * is open.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/cutils.h"
#include "qemu/error-report.h"
#include "qcow2.h"
#include "qcow2-backing-index.h"
#include "trace.h"

/* The canonical path of @filename, or NULL if it is not a local file */
static char *bi_local_path(const char *filename)
{
    struct stat st;

    if (!filename || !filename[0] || path_has_protocol(filename) ||
        stat(filename, &st) < 0) {
        return NULL;
    }
    return realpath(filename, NULL);
}

/*
 * Whether @backing_file, the name @bs's header is about to record, names
 * the node @bs has as its backing file in the graph (NULL, for no backing
 * file, names none).  Only then is an index computed over the graph the
 * index of the chain the header describes.
 */
bool qcow2_bi_backing_follows_graph(BlockDriverState *bs,
                                    const char *backing_file)
{
    BlockDriverState *below = qcow2_bi_next_layer(bs);
    g_autofree char *named = NULL;
    g_autofree char *named_path = NULL;
    g_autofree char *graph_path = NULL;

    if (!backing_file || !backing_file[0]) {
        return !below && !(bs->open_flags & BDRV_O_NO_BACKING);
    }
    if (!below) {
        return false;
    }
    /* Relative names are relative to @bs's own file */
    named = bdrv_get_full_backing_filename_from_filename(bs->filename,
                                                         backing_file,
                                                         NULL);
    named_path = bi_local_path(named ? named : backing_file);
    graph_path = bi_local_path(below->filename);
    return named_path && graph_path && !strcmp(named_path, graph_path);
}

/*
 * @bs's index is not valid any more (@why), and its header names the chain
 * it has in the graph.  If that chain validates below @bs, compute the
 * index over it now.  Failing that (or when the chain is not open, as
 * for an image opened without it) leaves the index unused, which is
 * always correct; "qemu-img amend -o backing-index=on" rebuilds it.
 */
void qcow2_bi_reindex(BlockDriverState *bs, const char *why)
{
    BDRVQcow2State *s = bs->opaque;
    BlockDriverState *below = qcow2_bi_next_layer(bs);
    g_autofree char *reason = NULL;
    Error *local_err = NULL;
    int ret;

    if (!s->bi_enabled || s->bi_ext_error || !bdrv_is_writable(bs) ||
        (bs->backing_file[0] && !below)) {
        return;     /* qemu-img without the chain: amend rebuilds it */
    }
    if (below) {
        reason = qcow2_bi_is_qcow2(below) || qcow2_bi_next_layer(below) ?
                 qcow2_bi_chain_check(below) : NULL;
        if (reason) {
            trace_qcow2_bi_reindex(bs, why, 0, reason);
            return;
        }
    }
    /*
     * Not every caller has the node drained (QMP change-backing-file does
     * not): guest requests must not touch the tables while they are
     * rewritten
     */
    bdrv_drained_begin(bs);
    ret = qcow2_bi_build(bs, &local_err);
    bdrv_drained_end(bs);
    if (ret < 0) {
        warn_report("%s: the backing index was not computed again (%s), "
                    "reads of the chain go layer by layer: %s", bs->filename,
                    why, error_get_pretty(local_err));
        error_free(local_err);
        return;
    }
    trace_qcow2_bi_reindex(bs, why, s->bi_ext.depth, "rebuilt");
}
