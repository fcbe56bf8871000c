/*
 * sQemu: rules for the backing index carried in qcow2 L2 entries
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/cutils.h"
#include "qcow2.h"
#include "qcow2-backing-index.h"

/*
 * Whether @l2_entry, a standard L2 entry of the layer at depth @own_depth
 * (the base is depth 1), carries a backing index that the format allows:
 *
 * - a compressed entry has no reserved bits, so it carries nothing;
 * - an entry that the layer holds itself (a host offset, or the zero flag)
 *   carries QCOW2_BI_NONE;
 * - an unallocated entry names a layer strictly below its own, or
 *   QCOW2_BI_NONE when no layer below holds the cluster.
 */
bool qcow2_bi_entry_is_valid(uint64_t l2_entry, unsigned own_depth)
{
    unsigned depth = qcow2_bi_get(l2_entry);

    if (own_depth < 1 || own_depth > QCOW2_BI_MAX_DEPTH) {
        return false;
    }
    if (l2_entry & QCOW_OFLAG_COMPRESSED) {
        return true;
    }
    if ((l2_entry & L2E_OFFSET_MASK) || (l2_entry & QCOW_OFLAG_ZERO)) {
        return depth == QCOW2_BI_NONE;
    }
    return depth < own_depth;
}

/*
 * On-disk layout of the header extension (big-endian):
 *
 *   bytes  0- 3  version (QCOW2_BI_EXT_VERSION)
 *   bytes  4- 7  depth of this layer, 0 while the index is not built
 *   bytes  8-23  layer identity
 *   bytes 24-39  parent identity when the index was computed
 *   bytes 40-47  parent virtual size when the index was computed
 */
int qcow2_bi_ext_parse(const void *buf, size_t len, Qcow2BackingIndexExt *ext,
                       const char **reason)
{
    const uint8_t *p = buf;
    uint32_t version;

    memset(ext, 0, sizeof(*ext));
    if (len != QCOW2_BI_EXT_SIZE) {
        *reason = len < QCOW2_BI_EXT_SIZE ? "header extension truncated"
                                          : "header extension oversized";
        return -EINVAL;
    }
    version = ldl_be_p(p);
    if (version != QCOW2_BI_EXT_VERSION) {
        *reason = "unsupported header extension version";
        return -ENOTSUP;
    }
    if ((uint32_t)ldl_be_p(p + 4) > QCOW2_BI_MAX_DEPTH) {
        *reason = "recorded depth beyond the deepest layer the index can name";
        return -EINVAL;
    }
    ext->depth = ldl_be_p(p + 4);
    memcpy(ext->layer_id, p + 8, QCOW2_BI_ID_SIZE);
    memcpy(ext->parent_id, p + 24, QCOW2_BI_ID_SIZE);
    ext->parent_size = ldq_be_p(p + 40);
    *reason = NULL;
    return 0;
}

void qcow2_bi_ext_serialize(const Qcow2BackingIndexExt *ext,
                            uint8_t buf[QCOW2_BI_EXT_SIZE])
{
    stl_be_p(buf, QCOW2_BI_EXT_VERSION);
    stl_be_p(buf + 4, ext->depth);
    memcpy(buf + 8, ext->layer_id, QCOW2_BI_ID_SIZE);
    memcpy(buf + 24, ext->parent_id, QCOW2_BI_ID_SIZE);
    stq_be_p(buf + 40, ext->parent_size);
}

static bool bi_id_is_zero(const uint8_t *id)
{
    return buffer_is_zero(id, QCOW2_BI_ID_SIZE);
}

/*
 * What layer @l says of itself, as the layer at @depth of a chain: NULL if
 * that may be used, else why not (g_free it).  @may_be_other: @l is the
 * base of a chain of more than one layer, which may be another format.
 */
char *qcow2_bi_layer_invalid_reason(const Qcow2BiLayer *l, unsigned depth,
                                    bool may_be_other)
{
    if (!l->is_qcow2) {
        if (may_be_other) {
            return NULL;    /* a non-qcow2 base carries no index */
        }
        return g_strdup_printf("layer '%s' at depth %u is a '%s' node; "
                               "only the base may be other than qcow2",
                               l->name, depth, l->driver);
    }
    if (!l->has_ext) {
        return g_strdup_printf("layer '%s' at depth %u has no backing "
                               "index (index a chain from the base up)",
                               l->name, depth);
    }
    if (l->ext_error) {
        return g_strdup_printf("layer '%s' at depth %u: %s", l->name,
                               depth, l->ext_error);
    }
    if (!l->valid_bit) {
        return g_strdup_printf("layer '%s' at depth %u: the valid bit is "
                               "clear (index not built, or the image was "
                               "changed in a way that does not keep it)",
                               l->name, depth);
    }
    if (l->ext.depth != depth) {
        return g_strdup_printf("layer '%s' was indexed at depth %u but is "
                               "at depth %u in this chain", l->name,
                               l->ext.depth, depth);
    }
    return NULL;
}

/*
 * The validation rules: the index of the chain @layers (top first, base
 * last, @n layers) may be used only if every layer is a qcow2 image with a
 * readable extension and the valid bit, records the depth it has in this
 * chain, and was indexed over the parent it has now (same identity; for a
 * non-qcow2 base, no identity and the same size).  Only the base may be a
 * non-qcow2 image.
 *
 * Returns NULL when the chain validates, else why not (g_free it).
 */
char *qcow2_bi_chain_invalid_reason(const Qcow2BiLayer *layers, unsigned n)
{
    unsigned i;

    if (n == 0) {
        return g_strdup("no layers");
    }
    if (n > QCOW2_BI_MAX_DEPTH) {
        return g_strdup_printf("the chain has %u layers, the backing index "
                               "can name at most %u", n, QCOW2_BI_MAX_DEPTH);
    }
    /* First what each layer says of itself, from the base up */
    for (i = n; i-- > 0;) {
        char *reason = qcow2_bi_layer_invalid_reason(&layers[i], n - i,
                                                     i == n - 1 && i > 0);

        if (reason) {
            return reason;
        }
    }
    /* Then whether each was indexed over the parent it has now */
    for (i = n; i-- > 0;) {
        const Qcow2BiLayer *l = &layers[i];
        const Qcow2BiLayer *parent = i + 1 < n ? &layers[i + 1] : NULL;
        bool same;

        if (!l->is_qcow2) {
            continue;
        }
        if (!parent) {
            if (!bi_id_is_zero(l->ext.parent_id)) {
                return g_strdup_printf("layer '%s' was indexed over a backing "
                                       "file but has none now", l->name);
            }
            continue;
        }
        if (parent->is_qcow2) {
            same = !bi_id_is_zero(l->ext.parent_id) &&
                   !memcmp(l->ext.parent_id, parent->ext.layer_id,
                           QCOW2_BI_ID_SIZE);
        } else {
            same = bi_id_is_zero(l->ext.parent_id);
        }
        if (!same || l->ext.parent_size != parent->size) {
            return g_strdup_printf("layer '%s' was indexed over another "
                                   "state of its backing file '%s' (changed, "
                                   "swapped or re-indexed since)",
                                   l->name, parent->name);
        }
    }
    return NULL;
}

/*
 * The rules for one qcow2 layer and its parent alone (@parent NULL for a
 * base): what qemu-img info can tell without opening the whole chain.  The chain
 * validates if and only if every layer passes this and its depth matches
 * its place.  Returns NULL if @layer passes, else why not (g_free it).
 */
char *qcow2_bi_link_invalid_reason(const Qcow2BiLayer *layer,
                                   const Qcow2BiLayer *parent)
{
    Qcow2BiLayer pair[2];
    unsigned parent_depth;

    if (!parent) {
        return qcow2_bi_chain_invalid_reason(layer, 1);
    }
    if (!parent->is_qcow2) {
        parent_depth = 1;
    } else if (parent->has_ext && !parent->ext_error && parent->ext.depth) {
        parent_depth = parent->ext.depth;
    } else {
        return g_strdup_printf("layer '%s' has no backing index",
                               parent->name);
    }
    if (parent_depth >= QCOW2_BI_MAX_DEPTH) {
        return g_strdup_printf("the chain is deeper than the %u layers the "
                               "backing index can name", QCOW2_BI_MAX_DEPTH);
    }
    /* Judge the pair as the top two layers of a chain of the right depth */
    pair[0] = *layer;
    pair[1] = *parent;
    if (parent->is_qcow2) {
        /* The parent's own bit and depth are judged on its own line */
        pair[1].valid_bit = true;
        pair[1].ext.depth = 1;
        memset(pair[1].ext.parent_id, 0, QCOW2_BI_ID_SIZE);
    }
    if (layer->is_qcow2 && layer->has_ext && !layer->ext_error &&
        layer->valid_bit && layer->ext.depth != parent_depth + 1) {
        return g_strdup_printf("layer '%s' was indexed at depth %u but is "
                               "at depth %u in this chain", layer->name,
                               layer->ext.depth, parent_depth + 1);
    }
    pair[0].ext.depth = 2;
    return qcow2_bi_chain_invalid_reason(pair, 2);
}
