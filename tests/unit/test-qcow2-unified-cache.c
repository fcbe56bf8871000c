/*
 * cmocka tests of the sQemu unified L2 cache data structure
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
#include "block/qcow2-unified-cache.h"

#define CLUSTER_BITS    16
#define OFFSET_64K(n)   ((uint64_t)(n) << 16)
/* Clusters per slice in these tests: small, so the arrays stay readable */
#define SC              8
/* The first cluster of slice @n */
#define SLICE(n)        ((uint64_t)(n) * SC)

/* Get the slice holding @cluster, check @missed, and put it back */
static Qcow2UcSlice *get_put(Qcow2UnifiedCache *c, uint64_t cluster,
                             bool expect_missed)
{
    bool missed = !expect_missed;
    Qcow2UcSlice *slice = qcow2_uc_get(c, cluster, &missed);

    assert_non_null(slice);
    assert_int_equal(missed, expect_missed);
    assert_int_equal(slice->first, cluster - cluster % SC);
    qcow2_uc_put(slice);
    return slice;
}

static void assert_all_unresolved(const Qcow2UcSlice *slice)
{
    unsigned i;

    for (i = 0; i < SC; i++) {
        assert_int_equal(slice->e[i].type, QCOW2_UC_UNRESOLVED);
        assert_int_equal(slice->e[i].layer, 0);
        assert_int_equal(slice->e[i].host, 0);
    }
}

static void assert_entry(Qcow2UcEntry e, Qcow2UcType type, unsigned layer,
                         uint64_t host)
{
    assert_int_equal(e.type, type);
    assert_int_equal(e.layer, layer);
    assert_int_equal(e.host, host);
}

/*
 * A slice is keyed on its first cluster, reported missed only when it is
 * created, and created with every entry unresolved.
 */
static void test_get_slices_and_missed(void **state)
{
    Qcow2UnifiedCache *c = qcow2_uc_new(SC, 4);
    Qcow2UcSlice *a, *b;

    assert_int_equal(qcow2_uc_nb_slices(c), 0);
    a = get_put(c, SLICE(0) + 5, true);
    assert_int_equal(a->first, 0);
    assert_all_unresolved(a);
    assert_int_equal(a->ref, 0);
    /* Any cluster of the same slice finds it */
    assert_ptr_equal(get_put(c, SLICE(0), false), a);
    assert_ptr_equal(get_put(c, SLICE(0) + SC - 1, false), a);
    assert_int_equal(qcow2_uc_nb_slices(c), 1);
    /* The next cluster starts the next slice */
    b = get_put(c, SLICE(1), true);
    assert_ptr_not_equal(a, b);
    assert_int_equal(b->first, SC);
    assert_all_unresolved(b);
    assert_int_equal(qcow2_uc_nb_slices(c), 2);
    /* Far away slices too */
    assert_int_equal(get_put(c, SLICE(1000000) + 3, true)->first,
                     SLICE(1000000));
    assert_int_equal(qcow2_uc_nb_slices(c), 3);
    assert_int_equal(c->stats.evictions, 0);
    qcow2_uc_free(c);
}

/* A new slice in a full cache evicts the least recently used one */
static void test_lru_eviction(void **state)
{
    Qcow2UnifiedCache *c = qcow2_uc_new(SC, 3);

    get_put(c, SLICE(0), true);     /* A */
    get_put(c, SLICE(1), true);     /* B */
    get_put(c, SLICE(2), true);     /* C */
    assert_int_equal(qcow2_uc_nb_slices(c), 3);
    assert_int_equal(c->stats.evictions, 0);

    /* A is the oldest by insertion, but was used last: B goes */
    get_put(c, SLICE(0) + 1, false);
    get_put(c, SLICE(3), true);     /* D */
    assert_int_equal(qcow2_uc_nb_slices(c), 3);
    assert_int_equal(c->stats.evictions, 1);
    assert_null(qcow2_uc_peek(c, SLICE(1)));
    assert_non_null(qcow2_uc_peek(c, SLICE(0)));
    assert_non_null(qcow2_uc_peek(c, SLICE(2)));
    assert_non_null(qcow2_uc_peek(c, SLICE(3)));

    /* Uses: A 4, C 3, D 5.  Touch C: A is now the least recent */
    get_put(c, SLICE(2), false);
    get_put(c, SLICE(4), true);     /* E */
    assert_int_equal(c->stats.evictions, 2);
    assert_null(qcow2_uc_peek(c, SLICE(0)));
    assert_non_null(qcow2_uc_peek(c, SLICE(2)));
    assert_non_null(qcow2_uc_peek(c, SLICE(3)));
    assert_non_null(qcow2_uc_peek(c, SLICE(4)));

    /* The evicted B comes back as a miss, evicting D */
    get_put(c, SLICE(1), true);
    assert_int_equal(c->stats.evictions, 3);
    assert_null(qcow2_uc_peek(c, SLICE(3)));
    assert_int_equal(qcow2_uc_nb_slices(c), 3);
    qcow2_uc_free(c);
}

/* Peeking neither creates a slice nor refreshes its LRU or use */
static void test_peek_keeps_lru(void **state)
{
    Qcow2UnifiedCache *c = qcow2_uc_new(SC, 2);
    Qcow2UcSlice *a, *b;
    uint64_t lru;

    a = get_put(c, SLICE(0), true);
    b = get_put(c, SLICE(1), true);
    assert_null(qcow2_uc_peek(c, SLICE(2)));
    assert_int_equal(qcow2_uc_nb_slices(c), 2);

    lru = a->lru;
    assert_ptr_equal(qcow2_uc_peek(c, SLICE(0) + 7), a);
    assert_ptr_equal(qcow2_uc_peek(c, SLICE(1)), b);
    assert_ptr_equal(qcow2_uc_peek(c, SLICE(0)), a);
    assert_int_equal(a->lru, lru);
    assert_int_equal(a->ref, 0);

    /* A was peeked last but got first: it is the one evicted */
    get_put(c, SLICE(2), true);
    assert_int_equal(c->stats.evictions, 1);
    assert_null(qcow2_uc_peek(c, SLICE(0)));
    assert_ptr_equal(qcow2_uc_peek(c, SLICE(1)), b);

    /* Nor does a peek count as a use for cleaning */
    assert_int_equal(qcow2_uc_clean_unused(c), 0);
    assert_ptr_equal(qcow2_uc_peek(c, SLICE(1)), b);
    assert_int_equal(qcow2_uc_clean_unused(c), 2);
    assert_int_equal(qcow2_uc_nb_slices(c), 0);
    qcow2_uc_free(c);
}

/* A held slice is never evicted, however old; once put, it can be */
static void test_held_slice_not_evicted(void **state)
{
    Qcow2UnifiedCache *c = qcow2_uc_new(SC, 2);
    Qcow2UcSlice *a;
    bool missed;

    a = qcow2_uc_get(c, SLICE(0), &missed);     /* held */
    assert_true(missed);
    assert_int_equal(a->ref, 1);
    get_put(c, SLICE(1), true);

    /* A is the least recent, but held: the others go, one by one */
    get_put(c, SLICE(2), true);
    assert_int_equal(c->stats.evictions, 1);
    assert_ptr_equal(qcow2_uc_peek(c, SLICE(0)), a);
    assert_null(qcow2_uc_peek(c, SLICE(1)));
    get_put(c, SLICE(3), true);
    assert_int_equal(c->stats.evictions, 2);
    assert_ptr_equal(qcow2_uc_peek(c, SLICE(0)), a);
    assert_null(qcow2_uc_peek(c, SLICE(2)));
    assert_int_equal(qcow2_uc_nb_slices(c), 2);

    /* Held twice, it needs two puts */
    assert_ptr_equal(qcow2_uc_get(c, SLICE(0) + 1, &missed), a);
    assert_false(missed);
    assert_int_equal(a->ref, 2);
    qcow2_uc_put(a);
    assert_int_equal(a->ref, 1);
    get_put(c, SLICE(3), false);    /* A is the least recent again */
    get_put(c, SLICE(4), true);
    assert_int_equal(c->stats.evictions, 3);
    assert_ptr_equal(qcow2_uc_peek(c, SLICE(0)), a);
    assert_null(qcow2_uc_peek(c, SLICE(3)));

    /* Once put, A is evicted like any other */
    qcow2_uc_put(a);
    assert_int_equal(a->ref, 0);
    get_put(c, SLICE(5), true);
    assert_int_equal(c->stats.evictions, 4);
    assert_null(qcow2_uc_peek(c, SLICE(0)));
    assert_non_null(qcow2_uc_peek(c, SLICE(4)));
    assert_non_null(qcow2_uc_peek(c, SLICE(5)));
    qcow2_uc_free(c);
}

/*
 * A cache that grew past max_slices while everything was held returns to
 * its size once the slices are put: the size option bounds its memory.
 */
static void test_grown_cache_shrinks_back(void **state)
{
    Qcow2UnifiedCache *c = qcow2_uc_new(SC, 2);
    Qcow2UcSlice *held[4];
    bool missed;
    unsigned i;

    for (i = 0; i < ARRAY_SIZE(held); i++) {
        held[i] = qcow2_uc_get(c, SLICE(i), &missed);
        assert_true(missed);
    }
    assert_int_equal(qcow2_uc_nb_slices(c), 4);
    assert_int_equal(c->stats.evictions, 0);
    for (i = 0; i < ARRAY_SIZE(held); i++) {
        qcow2_uc_put(held[i]);
    }

    /* The three least recent go, the most recent and the new one stay */
    get_put(c, SLICE(10), true);
    assert_int_equal(qcow2_uc_nb_slices(c), 2);
    assert_int_equal(c->stats.evictions, 3);
    assert_non_null(qcow2_uc_peek(c, SLICE(3)));
    assert_non_null(qcow2_uc_peek(c, SLICE(10)));

    /* And it stays within its size */
    get_put(c, SLICE(11), true);
    assert_int_equal(qcow2_uc_nb_slices(c), 2);
    assert_int_equal(c->stats.evictions, 4);
    assert_null(qcow2_uc_peek(c, SLICE(3)));

    /* Hits do not evict */
    get_put(c, SLICE(10), false);
    assert_int_equal(c->stats.evictions, 4);
    qcow2_uc_free(c);
}

/*
 * cache-clean-interval: a slice not used since the previous clean goes;
 * one used since stays the first time, and goes the next time if it was
 * not used in between.
 */
static void test_clean_unused(void **state)
{
    Qcow2UnifiedCache *c = qcow2_uc_new(SC, 8);

    assert_int_equal(qcow2_uc_clean_unused(c), 0);
    get_put(c, SLICE(0), true);     /* A */
    get_put(c, SLICE(1), true);     /* B */
    get_put(c, SLICE(2), true);     /* C */

    /* All used since the (first) clean */
    assert_int_equal(qcow2_uc_clean_unused(c), 0);
    assert_int_equal(qcow2_uc_nb_slices(c), 3);

    /* Only A is used in between: B and C go */
    get_put(c, SLICE(0) + 3, false);
    assert_int_equal(qcow2_uc_clean_unused(c), 2);
    assert_int_equal(qcow2_uc_nb_slices(c), 1);
    assert_non_null(qcow2_uc_peek(c, SLICE(0)));
    assert_null(qcow2_uc_peek(c, SLICE(1)));
    assert_null(qcow2_uc_peek(c, SLICE(2)));

    /* Untouched since: A goes too */
    assert_int_equal(qcow2_uc_clean_unused(c), 1);
    assert_int_equal(qcow2_uc_nb_slices(c), 0);

    /* A slice created after a clean survives the next one */
    get_put(c, SLICE(0), true);
    assert_int_equal(qcow2_uc_clean_unused(c), 0);
    assert_int_equal(qcow2_uc_clean_unused(c), 1);
    assert_int_equal(c->stats.evictions, 0);
    qcow2_uc_free(c);
}

/* A held slice is never cleaned, however long unused; once put, it is */
static void test_held_slice_not_cleaned(void **state)
{
    Qcow2UnifiedCache *c = qcow2_uc_new(SC, 8);
    Qcow2UcSlice *a;
    bool missed;

    a = qcow2_uc_get(c, SLICE(0), &missed);     /* held */
    get_put(c, SLICE(1), true);
    assert_int_equal(qcow2_uc_clean_unused(c), 0);

    /* Neither was used since: only the one that is not held goes */
    assert_int_equal(qcow2_uc_clean_unused(c), 1);
    assert_ptr_equal(qcow2_uc_peek(c, SLICE(0)), a);
    assert_null(qcow2_uc_peek(c, SLICE(1)));
    assert_int_equal(qcow2_uc_clean_unused(c), 0);
    assert_ptr_equal(qcow2_uc_peek(c, SLICE(0)), a);
    assert_int_equal(a->ref, 1);

    qcow2_uc_put(a);
    assert_int_equal(qcow2_uc_clean_unused(c), 1);
    assert_int_equal(qcow2_uc_nb_slices(c), 0);
    qcow2_uc_free(c);
}

/*
 * Decoding a lower layer's standard L2 entry: the index bits and COPIED
 * are ignored, compressed entries are kept whole, zero clusters read as
 * zeroes and anything the layer's own read path would not read as data
 * is BAD.
 */
static void test_decode(void **state)
{
    const uint64_t top = OFFSET_64K(0xffffffffffULL);  /* highest offset */
    const uint64_t comp = QCOW_OFLAG_COMPRESSED | 0x3fffffffffffffffULL;
    uint64_t l2e;

    assert_int_equal(top & ~L2E_OFFSET_MASK, 0);

    assert_entry(qcow2_uc_decode(OFFSET_64K(5), 3, CLUSTER_BITS),
                 QCOW2_UC_DATA, 3, OFFSET_64K(5));
    assert_entry(qcow2_uc_decode(top, 3, CLUSTER_BITS),
                 QCOW2_UC_DATA, 3, top);
    assert_entry(qcow2_uc_decode(OFFSET_64K(5) | QCOW_OFLAG_COPIED, 1,
                                 CLUSTER_BITS),
                 QCOW2_UC_DATA, 1, OFFSET_64K(5));

    /* Every index bit (1-8, 56-61) set, and COPIED: still just the offset */
    l2e = qcow2_bi_set(OFFSET_64K(5) | QCOW_OFLAG_COPIED, QCOW2_BI_MAX_DEPTH);
    assert_int_equal(l2e & 0x1fe, 0x1fe);
    assert_int_equal(l2e & (0x3fULL << 56), 0x3fULL << 56);
    assert_entry(qcow2_uc_decode(l2e, 7, CLUSTER_BITS),
                 QCOW2_UC_DATA, 7, OFFSET_64K(5));
    l2e = qcow2_bi_set(top, 0x101);
    assert_entry(qcow2_uc_decode(l2e, 7, CLUSTER_BITS),
                 QCOW2_UC_DATA, 7, top);

    /* Compressed: the whole entry, whatever its low bits say */
    l2e = QCOW_OFLAG_COMPRESSED | (OFFSET_64K(9) + 0x1234);
    assert_entry(qcow2_uc_decode(l2e, 2, CLUSTER_BITS),
                 QCOW2_UC_COMPRESSED, 2, l2e);
    /* Bit 0 is part of a compressed entry's offset, not the zero flag */
    l2e = QCOW_OFLAG_COMPRESSED | QCOW_OFLAG_ZERO | 0x4000;
    assert_entry(qcow2_uc_decode(l2e, 2, CLUSTER_BITS),
                 QCOW2_UC_COMPRESSED, 2, l2e);
    assert_entry(qcow2_uc_decode(comp, 2, CLUSTER_BITS),
                 QCOW2_UC_COMPRESSED, 2, comp);
    assert_entry(qcow2_uc_decode(comp | QCOW_OFLAG_COPIED, 2, CLUSTER_BITS),
                 QCOW2_UC_COMPRESSED, 2, comp | QCOW_OFLAG_COPIED);

    /* Zero clusters, allocated or not */
    assert_entry(qcow2_uc_decode(QCOW_OFLAG_ZERO, 4, CLUSTER_BITS),
                 QCOW2_UC_ZERO, 4, 0);
    assert_entry(qcow2_uc_decode(OFFSET_64K(5) | QCOW_OFLAG_ZERO |
                                 QCOW_OFLAG_COPIED, 4, CLUSTER_BITS),
                 QCOW2_UC_ZERO, 4, 0);
    assert_entry(qcow2_uc_decode(qcow2_bi_set(QCOW_OFLAG_ZERO, 3), 4,
                                 CLUSTER_BITS),
                 QCOW2_UC_ZERO, 4, 0);

    /* No offset: the layer does not hold the cluster after all */
    assert_entry(qcow2_uc_decode(0, 5, CLUSTER_BITS), QCOW2_UC_BAD, 5, 0);
    assert_entry(qcow2_uc_decode(QCOW_OFLAG_COPIED, 5, CLUSTER_BITS),
                 QCOW2_UC_BAD, 5, 0);
    assert_entry(qcow2_uc_decode(qcow2_bi_set(0, 4), 5, CLUSTER_BITS),
                 QCOW2_UC_BAD, 5, 0);

    /* Unaligned offsets: BAD, depending on the cluster size */
    l2e = OFFSET_64K(5) | 0x200;
    assert_entry(qcow2_uc_decode(l2e, 6, CLUSTER_BITS), QCOW2_UC_BAD, 6, 0);
    assert_entry(qcow2_uc_decode(OFFSET_64K(5) | 0x8000, 6, CLUSTER_BITS),
                 QCOW2_UC_BAD, 6, 0);
    assert_entry(qcow2_uc_decode(l2e, 6, 9), QCOW2_UC_DATA, 6, l2e);
    /* ... zero clusters too, as qcow2_get_host_offset() reports them */
    assert_entry(qcow2_uc_decode(l2e | QCOW_OFLAG_ZERO, 6, CLUSTER_BITS),
                 QCOW2_UC_BAD, 6, 0);
    assert_entry(qcow2_uc_decode(OFFSET_64K(33), 6, 21), QCOW2_UC_BAD, 6, 0);
    assert_entry(qcow2_uc_decode(OFFSET_64K(32), 6, 21),
                 QCOW2_UC_DATA, 6, OFFSET_64K(32));
}

/*
 * Cache correction resolves exactly the entries whose index names the
 * layer, and leaves the others as they were.
 */
static void test_correct_only_wanted(void **state)
{
    Qcow2UnifiedCache *c = qcow2_uc_new(SC, 4);
    Qcow2UcSlice *s;
    const uint16_t want1[SC] = { 0, 0, 0, 1, 0, 0, 0, 0 };
    const uint16_t want3[SC] = { 3, 0, 3, 1, 2, 3, 0, 3 };
    const uint64_t l2e1[SC] = {
        OFFSET_64K(100), OFFSET_64K(101), OFFSET_64K(102), OFFSET_64K(103),
        OFFSET_64K(104), OFFSET_64K(105), OFFSET_64K(106), OFFSET_64K(107),
    };
    const uint64_t l2e3[SC] = {
        OFFSET_64K(7) | QCOW_OFLAG_COPIED,
        OFFSET_64K(8),
        QCOW_OFLAG_COMPRESSED | OFFSET_64K(9) | 0x100,
        OFFSET_64K(10),
        OFFSET_64K(11),
        QCOW_OFLAG_ZERO,
        OFFSET_64K(12),
        0,
    };
    bool missed;

    s = qcow2_uc_get(c, SLICE(2) + 4, &missed);
    assert_int_equal(qcow2_uc_correct(c, s, 1, want1, l2e1, SC,
                                      CLUSTER_BITS), 1);
    assert_int_equal(c->stats.corrections, 1);
    assert_entry(s->e[3], QCOW2_UC_DATA, 1, OFFSET_64K(103));

    assert_int_equal(qcow2_uc_correct(c, s, 3, want3, l2e3, SC,
                                      CLUSTER_BITS), 4);
    assert_int_equal(c->stats.corrections, 2);
    assert_entry(s->e[0], QCOW2_UC_DATA, 3, OFFSET_64K(7));
    assert_entry(s->e[2], QCOW2_UC_COMPRESSED, 3, l2e3[2]);
    assert_entry(s->e[5], QCOW2_UC_ZERO, 3, 0);
    assert_entry(s->e[7], QCOW2_UC_BAD, 3, 0);
    /* Resolved for another layer: untouched */
    assert_entry(s->e[3], QCOW2_UC_DATA, 1, OFFSET_64K(103));
    /* Held by the top or by another layer: still unresolved */
    assert_entry(s->e[1], QCOW2_UC_UNRESOLVED, 0, 0);
    assert_entry(s->e[4], QCOW2_UC_UNRESOLVED, 0, 0);
    assert_entry(s->e[6], QCOW2_UC_UNRESOLVED, 0, 0);

    /* Nothing wanted: nothing changes, but the correction is counted */
    assert_int_equal(qcow2_uc_correct(c, s, 5, want3, l2e3, SC,
                                      CLUSTER_BITS), 0);
    assert_int_equal(c->stats.corrections, 3);
    assert_entry(s->e[4], QCOW2_UC_UNRESOLVED, 0, 0);
    assert_entry(s->e[0], QCOW2_UC_DATA, 3, OFFSET_64K(7));

    /* Later corrections resolve what is left */
    assert_int_equal(qcow2_uc_correct(c, s, 2, want3, l2e1, SC,
                                      CLUSTER_BITS), 1);
    assert_entry(s->e[4], QCOW2_UC_DATA, 2, OFFSET_64K(104));
    assert_entry(s->e[3], QCOW2_UC_DATA, 1, OFFSET_64K(103));
    assert_entry(s->e[0], QCOW2_UC_DATA, 3, OFFSET_64K(7));
    qcow2_uc_put(s);
    assert_int_equal(c->stats.corrections, 4);
    qcow2_uc_free(c);
}

/* Only the @n first entries of the slice are corrected */
static void test_correct_partial(void **state)
{
    Qcow2UnifiedCache *c = qcow2_uc_new(SC, 4);
    uint16_t want[SC];
    uint64_t l2e[SC];
    Qcow2UcSlice *s;
    bool missed;
    unsigned i;

    for (i = 0; i < SC; i++) {
        want[i] = 2;
        l2e[i] = OFFSET_64K(20 + i);
    }
    s = qcow2_uc_get(c, SLICE(1), &missed);
    assert_int_equal(qcow2_uc_correct(c, s, 2, want, l2e, 3,
                                      CLUSTER_BITS), 3);
    for (i = 0; i < SC; i++) {
        if (i < 3) {
            assert_entry(s->e[i], QCOW2_UC_DATA, 2, OFFSET_64K(20 + i));
        } else {
            assert_entry(s->e[i], QCOW2_UC_UNRESOLVED, 0, 0);
        }
    }
    assert_int_equal(qcow2_uc_correct_raw(c, s, 2, want, 5), 5);
    for (i = 0; i < SC; i++) {
        assert_int_equal(s->e[i].type,
                         i < 5 ? QCOW2_UC_RAW : QCOW2_UC_UNRESOLVED);
    }
    assert_int_equal(c->stats.corrections, 2);
    qcow2_uc_put(s);
    qcow2_uc_free(c);
}

/* A layer without an L2 table there holds none of the wanted clusters */
static void test_correct_without_l2(void **state)
{
    Qcow2UnifiedCache *c = qcow2_uc_new(SC, 4);
    const uint16_t want[SC] = { 4, 0, 4, 2, 4, 0, 0, 4 };
    const uint64_t l2e[SC] = {
        0, 0, 0, OFFSET_64K(3), 0, 0, 0, 0,
    };
    Qcow2UcSlice *s;
    bool missed;
    unsigned i;

    s = qcow2_uc_get(c, SLICE(0), &missed);
    assert_int_equal(qcow2_uc_correct(c, s, 2, want, l2e, SC,
                                      CLUSTER_BITS), 1);
    assert_int_equal(qcow2_uc_correct(c, s, 4, want, NULL, SC,
                                      CLUSTER_BITS), 4);
    assert_int_equal(c->stats.corrections, 2);
    for (i = 0; i < SC; i++) {
        switch (want[i]) {
        case 4:
            assert_entry(s->e[i], QCOW2_UC_BAD, 4, 0);
            break;
        case 2:
            assert_entry(s->e[i], QCOW2_UC_DATA, 2, OFFSET_64K(3));
            break;
        default:
            assert_entry(s->e[i], QCOW2_UC_UNRESOLVED, 0, 0);
        }
    }
    qcow2_uc_put(s);
    qcow2_uc_free(c);
}

/* A raw base holds whatever the index says it holds */
static void test_correct_raw(void **state)
{
    Qcow2UnifiedCache *c = qcow2_uc_new(SC, 4);
    const uint16_t want[SC] = { 1, 0, 1, 3, 1, 1, 0, 2 };
    const uint64_t l2e[SC] = {
        0, 0, 0, OFFSET_64K(3), 0, 0, 0, 0,
    };
    Qcow2UcSlice *s;
    bool missed;
    unsigned i;

    s = qcow2_uc_get(c, SLICE(3), &missed);
    assert_int_equal(qcow2_uc_correct(c, s, 3, want, l2e, SC,
                                      CLUSTER_BITS), 1);
    assert_int_equal(qcow2_uc_correct_raw(c, s, 1, want, SC), 4);
    assert_int_equal(c->stats.corrections, 2);
    for (i = 0; i < SC; i++) {
        switch (want[i]) {
        case 1:
            assert_entry(s->e[i], QCOW2_UC_RAW, 1, 0);
            break;
        case 3:
            assert_entry(s->e[i], QCOW2_UC_DATA, 3, OFFSET_64K(3));
            break;
        default:
            assert_entry(s->e[i], QCOW2_UC_UNRESOLVED, 0, 0);
        }
    }
    assert_int_equal(qcow2_uc_correct_raw(c, s, 6, want, SC), 0);
    assert_int_equal(c->stats.corrections, 3);
    qcow2_uc_put(s);
    qcow2_uc_free(c);
}

/*
 * Entries record the layer they were resolved in, so that direct access
 * (which uses an entry only if e.layer is the layer the top's index names
 * now) never serves an entry resolved for another layer; and correcting
 * against the new layer replaces it.
 */
static void test_entry_records_layer(void **state)
{
    Qcow2UnifiedCache *c = qcow2_uc_new(SC, 4);
    uint16_t want[SC] = { 2, 2, 2, 2, 2, 2, 2, 2 };
    uint64_t l2e[SC];
    Qcow2UcSlice *s;
    bool missed;
    unsigned i, k;

    for (i = 0; i < SC; i++) {
        l2e[i] = OFFSET_64K(50 + i);
    }
    s = qcow2_uc_get(c, SLICE(0), &missed);
    qcow2_uc_correct(c, s, 2, want, l2e, SC, CLUSTER_BITS);
    for (i = 0; i < SC; i++) {
        assert_int_equal(s->e[i].layer, 2);
    }

    /* The top's index now names layer 3 for clusters 1 and 6 */
    want[1] = want[6] = 3;
    for (i = 0; i < SC; i++) {
        k = want[i];
        /* The rule of qcow2_da_resolve() */
        assert_int_equal(s->e[i].type != QCOW2_UC_UNRESOLVED &&
                         s->e[i].layer == k, k == 2);
    }
    for (i = 0; i < SC; i++) {
        l2e[i] = OFFSET_64K(80 + i);
    }
    assert_int_equal(qcow2_uc_correct(c, s, 3, want, l2e, SC,
                                      CLUSTER_BITS), 2);
    for (i = 0; i < SC; i++) {
        if (want[i] == 3) {
            assert_entry(s->e[i], QCOW2_UC_DATA, 3, OFFSET_64K(80 + i));
        } else {
            assert_entry(s->e[i], QCOW2_UC_DATA, 2, OFFSET_64K(50 + i));
        }
    }
    qcow2_uc_put(s);
    qcow2_uc_free(c);
}

/*
 * The cache holds no dirty state: an evicted slice is simply dropped, and
 * comes back all unresolved, never with the resolution it had.
 */
static void test_evicted_slice_comes_back_unresolved(void **state)
{
    Qcow2UnifiedCache *c = qcow2_uc_new(SC, 2);
    const uint16_t want[SC] = { 1, 1, 1, 1, 1, 1, 1, 1 };
    uint64_t l2e[SC];
    Qcow2UcSlice *s;
    bool missed;
    unsigned i;

    for (i = 0; i < SC; i++) {
        l2e[i] = OFFSET_64K(60 + i);
    }
    s = qcow2_uc_get(c, SLICE(7), &missed);
    assert_int_equal(qcow2_uc_correct(c, s, 1, want, l2e, SC,
                                      CLUSTER_BITS), SC);
    qcow2_uc_put(s);
    s = qcow2_uc_get(c, SLICE(7), &missed);
    assert_false(missed);
    assert_entry(s->e[4], QCOW2_UC_DATA, 1, OFFSET_64K(64));
    qcow2_uc_put(s);

    get_put(c, SLICE(8), true);
    get_put(c, SLICE(9), true);
    assert_int_equal(c->stats.evictions, 1);
    assert_null(qcow2_uc_peek(c, SLICE(7)));

    s = get_put(c, SLICE(7) + 4, true);
    assert_all_unresolved(s);
    assert_int_equal(c->stats.evictions, 2);
    qcow2_uc_free(c);
}

/* A change of the chain drops every slice, but not the counters */
static void test_clear(void **state)
{
    Qcow2UnifiedCache *c = qcow2_uc_new(SC, 2);
    const uint16_t want[SC] = { 1, 1, 1, 1, 1, 1, 1, 1 };
    Qcow2UcSlice *s;
    Qcow2UcStats stats;
    bool missed;

    s = qcow2_uc_get(c, SLICE(0), &missed);
    qcow2_uc_correct_raw(c, s, 1, want, SC);
    qcow2_uc_put(s);
    get_put(c, SLICE(1), true);
    get_put(c, SLICE(2), true);
    s = qcow2_uc_get(c, SLICE(1), &missed);
    assert_false(missed);
    qcow2_uc_correct_raw(c, s, 1, want, SC);
    qcow2_uc_put(s);
    c->stats.lookups = 11;
    c->stats.hits = 7;
    c->stats.misses = 4;
    c->stats.lower_slice_reads = 3;
    c->stats.hit_unallocated = 2;
    stats = c->stats;
    assert_int_equal(stats.evictions, 1);
    assert_int_equal(stats.corrections, 2);
    assert_int_equal(qcow2_uc_nb_slices(c), 2);

    qcow2_uc_clear(c);
    assert_int_equal(qcow2_uc_nb_slices(c), 0);
    assert_null(qcow2_uc_peek(c, SLICE(1)));
    assert_null(qcow2_uc_peek(c, SLICE(2)));
    assert_memory_equal(&c->stats, &stats, sizeof(stats));

    /* What comes after is fresh */
    s = get_put(c, SLICE(1) + 2, true);
    assert_all_unresolved(s);
    assert_int_equal(qcow2_uc_nb_slices(c), 1);
    get_put(c, SLICE(0), true);
    assert_int_equal(c->stats.evictions, 1);

    /* Clearing an empty cache is fine */
    qcow2_uc_clear(c);
    qcow2_uc_clear(c);
    assert_int_equal(qcow2_uc_nb_slices(c), 0);
    qcow2_uc_free(c);
}

static void test_slice_bytes(void **state)
{
    const size_t entry = sizeof(Qcow2UcEntry);

    assert_int_equal(qcow2_uc_slice_bytes(0), sizeof(Qcow2UcSlice));
    assert_int_equal(qcow2_uc_slice_bytes(1), sizeof(Qcow2UcSlice) + entry);
    assert_int_equal(qcow2_uc_slice_bytes(4096) - qcow2_uc_slice_bytes(4095),
                     entry);
    assert_int_equal(qcow2_uc_slice_bytes(4096),
                     sizeof(Qcow2UcSlice) + 4096 * entry);
    /* No 32-bit overflow */
    if (sizeof(size_t) == 8) {
        assert_int_equal(qcow2_uc_slice_bytes(UINT_MAX),
                         sizeof(Qcow2UcSlice) + (uint64_t)UINT_MAX * entry);
    }
}

static void test_default_size(void **state)
{
    const unsigned sc = 1024;
    const uint64_t sb = qcow2_uc_slice_bytes(sc);
    const uint64_t nocap = UINT64_MAX;

    /* Enough for the whole disk, rounded up to whole slices */
    assert_int_equal(qcow2_uc_default_size(10 * sc, sc, nocap), 10 * sb);
    assert_int_equal(qcow2_uc_default_size(10 * sc + 1, sc, nocap), 11 * sb);
    assert_int_equal(qcow2_uc_default_size(11 * sc - 1, sc, nocap), 11 * sb);
    assert_int_equal(qcow2_uc_default_size(1ULL << 34, sc, nocap),
                     (1ULL << 24) * sb);
    /* At least two slices, even for a tiny disk */
    assert_int_equal(qcow2_uc_default_size(0, sc, nocap), 2 * sb);
    assert_int_equal(qcow2_uc_default_size(1, sc, nocap), 2 * sb);
    assert_int_equal(qcow2_uc_default_size(sc + 1, sc, nocap), 2 * sb);
    assert_int_equal(qcow2_uc_default_size(2 * sc + 1, sc, nocap), 3 * sb);

    /* At most the cap, in whole slices */
    assert_int_equal(qcow2_uc_default_size(10 * sc, sc, 5 * sb), 5 * sb);
    assert_int_equal(qcow2_uc_default_size(10 * sc, sc, 6 * sb - 1), 5 * sb);
    assert_int_equal(qcow2_uc_default_size(10 * sc, sc, 10 * sb), 10 * sb);
    assert_int_equal(qcow2_uc_default_size(10 * sc, sc, 100 * sb), 10 * sb);
    assert_int_equal(qcow2_uc_default_size(1ULL << 34, sc, 32 * MiB),
                     (32 * MiB / sb) * sb);
    assert_true(qcow2_uc_default_size(1ULL << 34, sc, 32 * MiB) <= 32 * MiB);
    /* ...but two slices even if the cap is smaller */
    assert_int_equal(qcow2_uc_default_size(10 * sc, sc, 2 * sb - 1), 2 * sb);
    assert_int_equal(qcow2_uc_default_size(10 * sc, sc, 0), 2 * sb);

    /* Whatever it is, the cache can be made of it */
    assert_int_equal(qcow2_uc_slices_for_size(
                         qcow2_uc_default_size(10 * sc + 1, sc, nocap), sc),
                     11);
    assert_int_equal(qcow2_uc_slices_for_size(
                         qcow2_uc_default_size(0, sc, 0), sc), 2);
}

static void test_slices_for_size(void **state)
{
    const unsigned sc = 512;
    const uint64_t sb = qcow2_uc_slice_bytes(sc);

    /* Too small for two slices */
    assert_int_equal(qcow2_uc_slices_for_size(0, sc), 0);
    assert_int_equal(qcow2_uc_slices_for_size(sb, sc), 0);
    assert_int_equal(qcow2_uc_slices_for_size(2 * sb - 1, sc), 0);
    /* Whole slices */
    assert_int_equal(qcow2_uc_slices_for_size(2 * sb, sc), 2);
    assert_int_equal(qcow2_uc_slices_for_size(3 * sb - 1, sc), 2);
    assert_int_equal(qcow2_uc_slices_for_size(3 * sb, sc), 3);
    assert_int_equal(qcow2_uc_slices_for_size(1000 * sb + sb / 2, sc), 1000);
    /* The slice size matters */
    assert_int_equal(qcow2_uc_slices_for_size(4 * sb, sc / 2),
                     4 * sb / qcow2_uc_slice_bytes(sc / 2));
    assert_true(qcow2_uc_slices_for_size(4 * sb, sc / 2) > 4);
    /* Clamped rather than truncated */
    assert_int_equal(qcow2_uc_slices_for_size(UINT64_MAX, 1), UINT_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_slices_and_missed),
        cmocka_unit_test(test_lru_eviction),
        cmocka_unit_test(test_peek_keeps_lru),
        cmocka_unit_test(test_held_slice_not_evicted),
        cmocka_unit_test(test_grown_cache_shrinks_back),
        cmocka_unit_test(test_clean_unused),
        cmocka_unit_test(test_held_slice_not_cleaned),
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_correct_only_wanted),
        cmocka_unit_test(test_correct_partial),
        cmocka_unit_test(test_correct_without_l2),
        cmocka_unit_test(test_correct_raw),
        cmocka_unit_test(test_entry_records_layer),
        cmocka_unit_test(test_evicted_slice_comes_back_unresolved),
        cmocka_unit_test(test_clear),
        cmocka_unit_test(test_slice_bytes),
        cmocka_unit_test(test_default_size),
        cmocka_unit_test(test_slices_for_size),
    };

    return cmocka_run_group_tests_name("qcow2-unified-cache", tests,
                                       NULL, NULL);
}
