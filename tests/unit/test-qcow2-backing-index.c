/*
 * cmocka tests of the sQemu backing index L2 entry codec
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <setjmp.h>
#include <cmocka.h>
#include "block/qcow2.h"
#include "block/qcow2-backing-index.h"

#define OFFSET_64K(n)   ((uint64_t)(n) << 16)

/* The index uses exactly the bits qcow2 reserves in a standard L2 entry */
static void test_mask_is_reserved_mask(void **state)
{
    assert_int_equal(QCOW2_BI_MASK, L2E_STD_RESERVED_MASK);
    assert_int_equal(QCOW2_BI_MASK & L2E_OFFSET_MASK, 0);
    assert_int_equal(QCOW2_BI_MASK & (QCOW_OFLAG_COPIED |
                                      QCOW_OFLAG_COMPRESSED |
                                      QCOW_OFLAG_ZERO), 0);
    assert_int_equal(__builtin_popcountll(QCOW2_BI_MASK), 14);
    assert_int_equal(QCOW2_BI_MAX_DEPTH, (1 << 14) - 1);
}

/* Every depth survives a round trip, whatever else the entry holds */
static void test_round_trip_every_depth(void **state)
{
    static const uint64_t others[] = {
        0,
        QCOW_OFLAG_COPIED,
        QCOW_OFLAG_ZERO,
        ~QCOW2_BI_MASK,
    };
    unsigned depth;
    size_t i;

    for (i = 0; i < ARRAY_SIZE(others); i++) {
        for (depth = 0; depth <= QCOW2_BI_MAX_DEPTH; depth++) {
            uint64_t e = qcow2_bi_set(others[i], depth);

            assert_int_equal(qcow2_bi_get(e), depth);
            assert_int_equal(e & ~QCOW2_BI_MASK, others[i] & ~QCOW2_BI_MASK);
        }
    }
}

/* Setting replaces an old index instead of merging with it */
static void test_set_replaces(void **state)
{
    uint64_t e = qcow2_bi_set(0, QCOW2_BI_MAX_DEPTH);

    assert_int_equal(e, QCOW2_BI_MASK);
    e = qcow2_bi_set(e, 0x101);
    assert_int_equal(qcow2_bi_get(e), 0x101);
    assert_int_equal(e, (1ULL << 56) | (1ULL << 1));
    assert_int_equal(qcow2_bi_set(e, QCOW2_BI_NONE), 0);
}

static void test_unallocated_entries(void **state)
{
    /* Layer 5 may point at layers 1..4, or at none */
    assert_true(qcow2_bi_entry_is_valid(qcow2_bi_set(0, QCOW2_BI_NONE), 5));
    assert_true(qcow2_bi_entry_is_valid(qcow2_bi_set(0, 1), 5));
    assert_true(qcow2_bi_entry_is_valid(qcow2_bi_set(0, 4), 5));
    /* ...but not at itself or above */
    assert_false(qcow2_bi_entry_is_valid(qcow2_bi_set(0, 5), 5));
    assert_false(qcow2_bi_entry_is_valid(qcow2_bi_set(0, 6), 5));
    /* The base has nothing below it */
    assert_false(qcow2_bi_entry_is_valid(qcow2_bi_set(0, 1), 1));
    assert_true(qcow2_bi_entry_is_valid(0, 1));
    /* The deepest layer can name its parent */
    assert_true(qcow2_bi_entry_is_valid(
        qcow2_bi_set(0, QCOW2_BI_MAX_DEPTH - 1), QCOW2_BI_MAX_DEPTH));
}

static void test_local_entries_carry_none(void **state)
{
    uint64_t data = OFFSET_64K(7) | QCOW_OFLAG_COPIED;
    uint64_t zero = QCOW_OFLAG_ZERO;

    assert_true(qcow2_bi_entry_is_valid(data, 3));
    assert_false(qcow2_bi_entry_is_valid(qcow2_bi_set(data, 1), 3));
    assert_true(qcow2_bi_entry_is_valid(zero, 3));
    assert_false(qcow2_bi_entry_is_valid(qcow2_bi_set(zero, 2), 3));
    /* Compressed entries have no reserved bits: any pattern is theirs */
    assert_true(qcow2_bi_entry_is_valid(QCOW_OFLAG_COMPRESSED | ~0ULL >> 2,
                                        3));
}

static void test_depth_out_of_range(void **state)
{
    assert_false(qcow2_bi_entry_is_valid(0, 0));
    assert_false(qcow2_bi_entry_is_valid(0, QCOW2_BI_MAX_DEPTH + 1));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mask_is_reserved_mask),
        cmocka_unit_test(test_round_trip_every_depth),
        cmocka_unit_test(test_set_replaces),
        cmocka_unit_test(test_unallocated_entries),
        cmocka_unit_test(test_local_entries_carry_none),
        cmocka_unit_test(test_depth_out_of_range),
    };

    return cmocka_run_group_tests_name("qcow2-backing-index", tests,
                                       NULL, NULL);
}
