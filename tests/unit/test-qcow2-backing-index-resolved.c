/*
 * cmocka tests of the sQemu resolved L2 tables' header extension ("sQRL"):
 * its byte layout, and every way a stored extension is refused
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include <setjmp.h>
#include <cmocka.h>
#include "qemu/bswap.h"
#include "block/qcow2.h"
#include "block/qcow2-backing-index.h"

static void make_ext(Qcow2BiResolvedExt *ext, uint8_t *buf)
{
    *ext = (Qcow2BiResolvedExt) {
        .depth = 1000, .l1_size = 16, .l1_offset = 0x50000,
    };
    memset(ext->chain_id, 0x5a, QCOW2_BI_ID_SIZE);
    ext->chain_id[0] = 0x01;
    qcow2_bir_ext_serialize(ext, buf);
}

/* @buf taken; the parsed extension in *@back */
static void assert_taken(const uint8_t *buf, Qcow2BiResolvedExt *back)
{
    const char *reason = "unset";

    assert_int_equal(qcow2_bir_ext_parse(buf, QCOW2_BIR_EXT_SIZE, back,
                                         &reason), 0);
    assert_null(reason);
}

static void test_layout(void **state)
{
    Qcow2BiResolvedExt ext;
    uint8_t buf[QCOW2_BIR_EXT_SIZE];
    unsigned i;

    make_ext(&ext, buf);
    /* version, depth, L1 offset, L1 size: big-endian */
    assert_int_equal(ldl_be_p(buf), QCOW2_BIR_EXT_VERSION);
    assert_int_equal(ldl_be_p(buf + 4), 1000);
    assert_int_equal(ldq_be_p(buf + 8), 0x50000);
    assert_int_equal(ldl_be_p(buf + 16), 16);
    /* reserved, zero */
    for (i = 20; i < 24; i++) {
        assert_int_equal(buf[i], 0);
    }
    /* the chain's identity, as it is */
    assert_memory_equal(buf + 24, ext.chain_id, QCOW2_BI_ID_SIZE);
}

static void test_round_trip(void **state)
{
    Qcow2BiResolvedExt ext, back;
    uint8_t buf[QCOW2_BIR_EXT_SIZE];

    make_ext(&ext, buf);
    assert_taken(buf, &back);
    assert_int_equal(back.depth, ext.depth);
    assert_int_equal(back.l1_size, ext.l1_size);
    assert_int_equal(back.l1_offset, ext.l1_offset);
    assert_memory_equal(back.chain_id, ext.chain_id, QCOW2_BI_ID_SIZE);
}

/* @buf refused with -@err and @why, leaving *@back all zero */
static void assert_refused(const uint8_t *buf, size_t len, int err,
                           const char *why)
{
    static const Qcow2BiResolvedExt zero;
    Qcow2BiResolvedExt back;
    const char *reason = NULL;

    memset(&back, 0xff, sizeof(back));
    assert_int_equal(qcow2_bir_ext_parse(buf, len, &back, &reason), -err);
    assert_non_null(reason);
    assert_string_equal(reason, why);
    if (err == ENOTSUP || !strcmp(why, "header extension truncated") ||
        !strcmp(why, "header extension oversized")) {
        assert_memory_equal(&back, &zero, sizeof(back));
    }
}

static void test_length(void **state)
{
    Qcow2BiResolvedExt ext;
    uint8_t buf[QCOW2_BIR_EXT_SIZE + 8] = { 0 };

    make_ext(&ext, buf);
    assert_refused(buf, 0, EINVAL, "header extension truncated");
    assert_refused(buf, QCOW2_BIR_EXT_SIZE - 1, EINVAL,
                   "header extension truncated");
    assert_refused(buf, QCOW2_BIR_EXT_SIZE + 8, EINVAL,
                   "header extension oversized");
}

static void test_version(void **state)
{
    Qcow2BiResolvedExt ext;
    uint8_t buf[QCOW2_BIR_EXT_SIZE];

    make_ext(&ext, buf);
    stl_be_p(buf, QCOW2_BIR_EXT_VERSION + 1);
    assert_refused(buf, sizeof(buf), ENOTSUP,
                   "unsupported header extension version");
    stl_be_p(buf, 0);
    assert_refused(buf, sizeof(buf), ENOTSUP,
                   "unsupported header extension version");
}

static void test_depth(void **state)
{
    Qcow2BiResolvedExt ext, back;
    uint8_t buf[QCOW2_BIR_EXT_SIZE];

    make_ext(&ext, buf);
    /* the tables belong to a layer with a chain below it */
    stl_be_p(buf + 4, 0);
    assert_refused(buf, sizeof(buf), EINVAL, "recorded depth out of range");
    stl_be_p(buf + 4, 1);
    assert_refused(buf, sizeof(buf), EINVAL, "recorded depth out of range");
    stl_be_p(buf + 4, QCOW2_BI_MAX_DEPTH + 1);
    assert_refused(buf, sizeof(buf), EINVAL, "recorded depth out of range");
    stl_be_p(buf + 4, 0xffffffff);
    assert_refused(buf, sizeof(buf), EINVAL, "recorded depth out of range");

    /* both ends of the range are taken */
    stl_be_p(buf + 4, 2);
    assert_taken(buf, &back);
    stl_be_p(buf + 4, QCOW2_BI_MAX_DEPTH);
    assert_taken(buf, &back);
    assert_int_equal(back.depth, QCOW2_BI_MAX_DEPTH);
}

static void test_l1(void **state)
{
    Qcow2BiResolvedExt ext, back;
    uint8_t buf[QCOW2_BIR_EXT_SIZE];

    make_ext(&ext, buf);
    stl_be_p(buf + 16, 0);
    assert_refused(buf, sizeof(buf), EINVAL,
                   "resolved L1 table out of range");
    stl_be_p(buf + 16, QCOW_MAX_L1_SIZE / L1E_SIZE + 1);
    assert_refused(buf, sizeof(buf), EINVAL,
                   "resolved L1 table out of range");
    stl_be_p(buf + 16, QCOW_MAX_L1_SIZE / L1E_SIZE);
    assert_taken(buf, &back);
    assert_int_equal(back.l1_size, QCOW_MAX_L1_SIZE / L1E_SIZE);

    make_ext(&ext, buf);
    stq_be_p(buf + 8, 0);
    assert_refused(buf, sizeof(buf), EINVAL,
                   "resolved L1 table out of range");
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_length),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_l1),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
