/*
 * cmocka tests of the sQemu backing index header extension and of the
 * rules that decide whether a chain's index may be used
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

#define MAX_LAYERS 8

static const char *const names[MAX_LAYERS] = {
    "l0", "l1", "l2", "l3", "l4", "l5", "l6", "l7",
};

/*
 * A valid chain of @n qcow2 layers, top first: layer i has depth n - i,
 * identity { depth, ... } and was indexed over its parent as it is.
 */
static void make_chain(Qcow2BiLayer *layers, unsigned n)
{
    unsigned i;

    for (i = 0; i < n; i++) {
        Qcow2BiLayer *l = &layers[i];

        *l = (Qcow2BiLayer) {
            .name = names[i],
            .driver = "qcow2",
            .is_qcow2 = true,
            .has_ext = true,
            .valid_bit = true,
            .size = 1 << 30,
            .ext.depth = n - i,
        };
        memset(l->ext.layer_id, n - i, QCOW2_BI_ID_SIZE);
    }
    for (i = 0; i + 1 < n; i++) {
        memcpy(layers[i].ext.parent_id, layers[i + 1].ext.layer_id,
               QCOW2_BI_ID_SIZE);
        layers[i].ext.parent_size = layers[i + 1].size;
    }
}

/* The chain is refused, and the reason names @what */
static void assert_refused(Qcow2BiLayer *layers, unsigned n, const char *what)
{
    g_autofree char *reason = qcow2_bi_chain_invalid_reason(layers, n);

    assert_non_null(reason);
    if (!strstr(reason, what)) {
        fail_msg("reason '%s' does not say '%s'", reason, what);
    }
}

static void test_ext_round_trip(void **state)
{
    Qcow2BackingIndexExt ext = { .depth = 1234, .parent_size = 1ULL << 40 };
    Qcow2BackingIndexExt back;
    uint8_t buf[QCOW2_BI_EXT_SIZE];
    const char *reason = "unset";

    memset(ext.layer_id, 0xab, QCOW2_BI_ID_SIZE);
    memset(ext.parent_id, 0xcd, QCOW2_BI_ID_SIZE);
    qcow2_bi_ext_serialize(&ext, buf);
    /* Big-endian version 1, then the depth */
    assert_int_equal(buf[3], 1);
    assert_int_equal(buf[0] | buf[1] | buf[2], 0);
    assert_int_equal((buf[6] << 8) | buf[7], 1234);
    assert_int_equal(qcow2_bi_ext_parse(buf, sizeof(buf), &back, &reason), 0);
    assert_null(reason);
    assert_memory_equal(&ext, &back, sizeof(ext));
}

static void test_ext_bad(void **state)
{
    Qcow2BackingIndexExt ext = { .depth = 3 };
    Qcow2BackingIndexExt back;
    uint8_t buf[QCOW2_BI_EXT_SIZE + 8] = { 0 };
    const char *reason;

    qcow2_bi_ext_serialize(&ext, buf);
    assert_true(qcow2_bi_ext_parse(buf, QCOW2_BI_EXT_SIZE - 1, &back,
                                   &reason) < 0);
    assert_string_equal(reason, "header extension truncated");
    assert_true(qcow2_bi_ext_parse(buf, 0, &back, &reason) < 0);
    assert_true(qcow2_bi_ext_parse(buf, sizeof(buf), &back, &reason) < 0);
    assert_string_equal(reason, "header extension oversized");

    buf[3] = 2;
    assert_true(qcow2_bi_ext_parse(buf, QCOW2_BI_EXT_SIZE, &back,
                                   &reason) < 0);
    assert_string_equal(reason, "unsupported header extension version");

    ext.depth = QCOW2_BI_MAX_DEPTH + 1;
    qcow2_bi_ext_serialize(&ext, buf);
    assert_true(qcow2_bi_ext_parse(buf, QCOW2_BI_EXT_SIZE, &back,
                                   &reason) < 0);
    ext.depth = QCOW2_BI_MAX_DEPTH;
    qcow2_bi_ext_serialize(&ext, buf);
    assert_int_equal(qcow2_bi_ext_parse(buf, QCOW2_BI_EXT_SIZE, &back,
                                        &reason), 0);
}

static void test_valid_chains(void **state)
{
    Qcow2BiLayer layers[MAX_LAYERS];
    unsigned n;

    for (n = 1; n <= MAX_LAYERS; n++) {
        make_chain(layers, n);
        assert_null(qcow2_bi_chain_invalid_reason(layers, n));
    }
}

static void test_raw_base(void **state)
{
    Qcow2BiLayer layers[3];

    make_chain(layers, 3);
    layers[2] = (Qcow2BiLayer) {
        .name = "raw", .driver = "raw", .size = 12345,
    };
    memset(layers[1].ext.parent_id, 0, QCOW2_BI_ID_SIZE);
    layers[1].ext.parent_size = 12345;
    assert_null(qcow2_bi_chain_invalid_reason(layers, 3));

    /* Same raw base, other size: swapped */
    layers[2].size = 4096;
    assert_refused(layers, 3, "another state of its backing file 'raw'");
    /* A raw image alone has no index to use */
    assert_refused(&layers[2], 1, "only the base may be other than qcow2");
}

static void test_each_layer_must_claim(void **state)
{
    Qcow2BiLayer layers[4];

    make_chain(layers, 4);
    layers[2].has_ext = false;
    assert_refused(layers, 4, "layer 'l2' at depth 2 has no backing index");

    make_chain(layers, 4);
    layers[1].valid_bit = false;
    assert_refused(layers, 4, "'l1' at depth 3: the valid bit is clear");

    make_chain(layers, 4);
    layers[3].ext_error = "header extension truncated";
    assert_refused(layers, 4, "header extension truncated");

    make_chain(layers, 4);
    layers[1] = (Qcow2BiLayer) {
        .name = "mid", .driver = "throttle", .size = 1 << 30,
    };
    assert_refused(layers, 4, "'mid' at depth 3 is a 'throttle' node");
}

static void test_base_problem_reported_first(void **state)
{
    Qcow2BiLayer layers[3];

    /* An index over a stock chain: the stock base is the reason given */
    make_chain(layers, 3);
    layers[2].has_ext = false;
    memset(layers[1].ext.parent_id, 0, QCOW2_BI_ID_SIZE);
    assert_refused(layers, 3, "layer 'l2' at depth 1 has no backing index");
}

static void test_chain_changes(void **state)
{
    Qcow2BiLayer layers[4];

    /* A layer inserted or dropped shifts every depth above it */
    make_chain(layers, 4);
    layers[0].ext.depth = 5;
    assert_refused(layers, 4, "indexed at depth 5 but is at depth 4");

    /* The parent was opened read-write since: new identity */
    make_chain(layers, 4);
    layers[2].ext.layer_id[0] ^= 1;
    assert_refused(layers, 4, "'l1' was indexed over another state of its "
                   "backing file 'l2'");

    /* The parent was resized */
    make_chain(layers, 4);
    layers[3].size *= 2;
    assert_refused(layers, 4, "'l2' was indexed over another state");

    /* A base that was indexed over a parent it no longer has */
    make_chain(layers, 4);
    memset(layers[3].ext.parent_id, 7, QCOW2_BI_ID_SIZE);
    assert_refused(layers, 4, "'l3' was indexed over a backing file but has "
                   "none now");

    /* A parent without identity never matches */
    make_chain(layers, 2);
    memset(layers[1].ext.layer_id, 0, QCOW2_BI_ID_SIZE);
    memset(layers[0].ext.parent_id, 0, QCOW2_BI_ID_SIZE);
    assert_refused(layers, 2, "another state");
}

static void test_too_deep(void **state)
{
    Qcow2BiLayer layer;
    g_autofree char *reason = NULL;

    make_chain(&layer, 1);
    reason = qcow2_bi_chain_invalid_reason(&layer, QCOW2_BI_MAX_DEPTH + 1);
    assert_non_null(reason);
    assert_non_null(strstr(reason, "can name at most 16383"));
    g_free(reason);
    /* No layers is no chain */
    reason = qcow2_bi_chain_invalid_reason(NULL, 0);
    assert_non_null(reason);
}

static void test_links(void **state)
{
    Qcow2BiLayer layers[4];
    Qcow2BiLayer raw = { .name = "raw", .driver = "raw", .size = 1 << 30 };
    g_autofree char *r1 = NULL, *r2 = NULL, *r3 = NULL, *r4 = NULL;
    unsigned i;

    /* Every link of a valid chain passes, the base alone too */
    make_chain(layers, 4);
    for (i = 0; i < 3; i++) {
        g_autofree char *r = qcow2_bi_link_invalid_reason(&layers[i],
                                                          &layers[i + 1]);
        assert_null(r);
    }
    assert_null(qcow2_bi_link_invalid_reason(&layers[3], NULL));

    /* Depth is judged against the parent's recorded depth */
    layers[0].ext.depth = 7;
    r1 = qcow2_bi_link_invalid_reason(&layers[0], &layers[1]);
    assert_non_null(r1);
    assert_non_null(strstr(r1, "indexed at depth 7 but is at depth 4"));

    /* Identity */
    make_chain(layers, 4);
    layers[1].ext.layer_id[3] ^= 0x10;
    r2 = qcow2_bi_link_invalid_reason(&layers[0], &layers[1]);
    assert_non_null(r2);

    /* A parent without index */
    make_chain(layers, 4);
    layers[1].has_ext = false;
    r3 = qcow2_bi_link_invalid_reason(&layers[0], &layers[1]);
    assert_non_null(r3);
    assert_non_null(strstr(r3, "'l1' has no backing index"));

    /* Over a raw base: depth 2, no parent identity, same size */
    make_chain(layers, 2);
    memset(layers[0].ext.parent_id, 0, QCOW2_BI_ID_SIZE);
    assert_null(qcow2_bi_link_invalid_reason(&layers[0], &raw));
    raw.size = 512;
    r4 = qcow2_bi_link_invalid_reason(&layers[0], &raw);
    assert_non_null(r4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ext_round_trip),
        cmocka_unit_test(test_ext_bad),
        cmocka_unit_test(test_valid_chains),
        cmocka_unit_test(test_raw_base),
        cmocka_unit_test(test_each_layer_must_claim),
        cmocka_unit_test(test_base_problem_reported_first),
        cmocka_unit_test(test_chain_changes),
        cmocka_unit_test(test_too_deep),
        cmocka_unit_test(test_links),
    };

    return cmocka_run_group_tests_name("qcow2-backing-index-rules", tests,
                                       NULL, NULL);
}
