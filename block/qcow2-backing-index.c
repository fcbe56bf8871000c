/*
 * sQemu: rules for the backing index carried in qcow2 L2 entries
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
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
