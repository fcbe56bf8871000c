/*
 * sQemu: the backing index carried in the reserved bits of qcow2 L2 entries
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A standard (non-extended) L2 entry has 14 reserved bits: bits 1-8 and
 * bits 56-61 (L2E_STD_RESERVED_MASK).  sQemu stores in them the depth of
 * the layer that holds the cluster's valid version, so a read can go
 * straight to that layer.  Index bits 0-7 live in entry bits 1-8, index
 * bits 8-13 in entry bits 56-61.  See docs/sqemu.md for the format.
 */

#ifndef BLOCK_QCOW2_BACKING_INDEX_H
#define BLOCK_QCOW2_BACKING_INDEX_H

/* Entry bits 1-8 carry index bits 0-7 */
#define QCOW2_BI_LOW_SHIFT      1
#define QCOW2_BI_LOW_MASK       0x00000000000001feULL
/* Entry bits 56-61 carry index bits 8-13 */
#define QCOW2_BI_HIGH_SHIFT     56
#define QCOW2_BI_HIGH_MASK      0x3f00000000000000ULL
#define QCOW2_BI_MASK           (QCOW2_BI_LOW_MASK | QCOW2_BI_HIGH_MASK)

/* Index value of an entry whose cluster no layer below holds */
#define QCOW2_BI_NONE           0
/* Deepest layer the 14 bits can name (layers are numbered from 1) */
#define QCOW2_BI_MAX_DEPTH      16383

/* The backing index stored in @l2_entry */
static inline unsigned qcow2_bi_get(uint64_t l2_entry)
{
    return ((l2_entry & QCOW2_BI_LOW_MASK) >> QCOW2_BI_LOW_SHIFT) |
           ((l2_entry & QCOW2_BI_HIGH_MASK) >> (QCOW2_BI_HIGH_SHIFT - 8));
}

/* @l2_entry with its backing index replaced by @depth */
static inline uint64_t qcow2_bi_set(uint64_t l2_entry, unsigned depth)
{
    uint64_t low = (uint64_t)(depth & 0xff) << QCOW2_BI_LOW_SHIFT;
    uint64_t high = (uint64_t)(depth >> 8) << QCOW2_BI_HIGH_SHIFT;

    return (l2_entry & ~QCOW2_BI_MASK) | low | high;
}

bool qcow2_bi_entry_is_valid(uint64_t l2_entry, unsigned own_depth);

#endif
