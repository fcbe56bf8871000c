/*
 * libFuzzer harness for the sQemu backing index: the header extension
 * parser, the L2 entry codec and the chain validation rules
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Every input is read three ways, each checked against what
 * block/qcow2-backing-index.h promises:
 *
 * 1. as a header extension, whatever its length: qcow2_bi_ext_parse()
 *    accepts exactly the 48-byte, version 1 blobs with a depth the index
 *    can name, and what it accepts survives qcow2_bi_ext_serialize() byte
 *    for byte;
 * 2. as up to FUZZ_MAX_LAYERS records of FUZZ_LAYER_SIZE bytes, each
 *    describing one layer of a chain (top first): the verdict of
 *    qcow2_bi_chain_invalid_reason() must be exactly the documented rules;
 * 3. as little-endian 64-bit L2 entries: qcow2_bi_set() and qcow2_bi_get()
 *    round-trip every depth and touch only the index bits, and
 *    qcow2_bi_entry_is_valid() follows the documented rules (in
 *    particular, never accepts on an unallocated entry an index at or
 *    above the entry's own layer).
 *
 * A broken rule prints what broke and calls FUZZ_ABORT() (abort() unless
 * the includer defines it), which libFuzzer reports as a crash.
 * scripts/sqemu/fuzz builds this file with clang and libFuzzer;
 * tests/unit/test-qcow2-backing-index-fuzz-corpus.c includes it to replay
 * the corpus and the crash inputs without libFuzzer.
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "block/qcow2.h"
#include "block/qcow2-backing-index.h"
#include "fuzz-qcow2-backing-index.h"

#ifndef FUZZ_ABORT
#define FUZZ_ABORT() abort()
#endif

#define FUZZ_CHECK(cond, ...)                                            \
    do {                                                                 \
        if (!(cond)) {                                                   \
            fprintf(stderr, "fuzz-qcow2-backing-index: %s:%d: %s: ",     \
                    __FILE__, __LINE__, #cond);                          \
            fprintf(stderr, __VA_ARGS__);                                \
            fputc('\n', stderr);                                         \
            FUZZ_ABORT();                                                \
        }                                                                \
    } while (0)

/* ------------------------------------------------------------------ */
/* 1. The header extension */

static bool ext_equal(const Qcow2BackingIndexExt *a,
                      const Qcow2BackingIndexExt *b)
{
    return a->depth == b->depth &&
           !memcmp(a->layer_id, b->layer_id, QCOW2_BI_ID_SIZE) &&
           !memcmp(a->parent_id, b->parent_id, QCOW2_BI_ID_SIZE) &&
           a->parent_size == b->parent_size;
}

/* ldl_*_p() return int: read the unsigned value */
static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)ldl_be_p(p);
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)ldl_le_p(p);
}

/* Byte @i of the input, or 0 past its end */
static uint8_t byte_at(const uint8_t *data, size_t size, size_t i)
{
    return i < size ? data[i] : 0;
}

static void fuzz_ext(const uint8_t *data, size_t size)
{
    Qcow2BackingIndexExt ext, again, made;
    uint8_t buf[QCOW2_BI_EXT_SIZE];
    const char *reason = "(not set)";
    bool acceptable;
    size_t i;
    int ret;

    acceptable = size == QCOW2_BI_EXT_SIZE &&
                 be32(data) == QCOW2_BI_EXT_VERSION &&
                 be32(data + 4) <= QCOW2_BI_MAX_DEPTH;
    ret = qcow2_bi_ext_parse(data, size, &ext, &reason);
    FUZZ_CHECK(ret <= 0, "parse returned %d", ret);
    FUZZ_CHECK((ret == 0) == acceptable,
               "parse returned %d on %zu bytes (expected %s)", ret, size,
               acceptable ? "success" : "failure");
    if (ret < 0) {
        FUZZ_CHECK(reason && *reason, "failure without a reason");
    } else {
        FUZZ_CHECK(reason == NULL, "success with reason '%s'", reason);
        FUZZ_CHECK(ext.depth == be32(data + 4), "depth %u", ext.depth);
        FUZZ_CHECK(!memcmp(ext.layer_id, data + 8, QCOW2_BI_ID_SIZE),
                   "layer identity");
        FUZZ_CHECK(!memcmp(ext.parent_id, data + 24, QCOW2_BI_ID_SIZE),
                   "parent identity");
        FUZZ_CHECK(ext.parent_size == ldq_be_p(data + 40),
                   "parent size %" PRIu64, ext.parent_size);

        /* What was accepted is written back byte for byte */
        memset(buf, 0xa5, sizeof(buf));
        qcow2_bi_ext_serialize(&ext, buf);
        FUZZ_CHECK(!memcmp(buf, data, QCOW2_BI_EXT_SIZE),
                   "serialize does not give back the parsed bytes");
        reason = "(not set)";
        ret = qcow2_bi_ext_parse(buf, sizeof(buf), &again, &reason);
        FUZZ_CHECK(ret == 0 && ext_equal(&ext, &again),
                   "re-parse of the serialized extension: %d (%s)", ret,
                   reason ? reason : "equal fields expected");
    }

    /*
     * The other direction: any extension built from the input's bytes
     * serializes to a blob that parses back to it, unless its depth is
     * beyond what the index can name.
     */
    memset(&made, 0, sizeof(made));
    for (i = 0; i < 4; i++) {
        made.depth |= (uint32_t)byte_at(data, size, i) << (8 * i);
    }
    if (byte_at(data, size, 4) & 1) {
        made.depth &= 0x3fff;   /* mostly in range */
    }
    for (i = 0; i < QCOW2_BI_ID_SIZE; i++) {
        made.layer_id[i] = byte_at(data, size, size - 1 - i);
        made.parent_id[i] = byte_at(data, size, i + 5);
    }
    made.parent_size = (uint64_t)size * 0x9e3779b97f4a7c15ULL;
    qcow2_bi_ext_serialize(&made, buf);
    FUZZ_CHECK(be32(buf) == QCOW2_BI_EXT_VERSION,
               "serialized version %u", be32(buf));
    reason = "(not set)";
    ret = qcow2_bi_ext_parse(buf, sizeof(buf), &again, &reason);
    if (made.depth <= QCOW2_BI_MAX_DEPTH) {
        FUZZ_CHECK(ret == 0 && ext_equal(&made, &again),
                   "serialized extension of depth %u: %d (%s)", made.depth,
                   ret, reason ? reason : "equal fields expected");
    } else {
        FUZZ_CHECK(ret < 0 && reason && *reason,
                   "depth %u accepted", made.depth);
    }
}

/* ------------------------------------------------------------------ */
/* 2. The chain validation rules */

/*
 * One layer record, FUZZ_LAYER_SIZE bytes:
 *
 *   byte   0     flags (FL_*); all clear: a qcow2 layer with a readable
 *                extension and the valid bit, that records its depth in
 *                this chain and the identity and size of its parent
 *   byte   1     name (bits 0-3) and driver (bits 4-7), from fixed tables
 *   bytes  2- 3  recorded depth if FL_RAW_DEPTH (little-endian)
 *   byte   4     layer identity: 16 times this byte (0: the zero identity)
 *   byte   5     recorded parent identity if FL_RAW_PARENT_ID: 16 times
 *                this byte
 *   byte   6     which byte of the recorded parent identity FL_FLIP_PARENT
 *                changes (bits 0-3)
 *   byte   7     the extension error if FL_EXT_ERROR (from a fixed table)
 *   bytes  8-11  virtual size in 512-byte units (little-endian)
 *   bytes 12-15  recorded parent size in 512-byte units if
 *                FL_RAW_PARENT_SIZE (little-endian)
 */
#define FUZZ_LAYER_SIZE         16
#define FUZZ_MAX_LAYERS         64

#define FL_NOT_QCOW2            0x01
#define FL_NO_EXT               0x02
#define FL_EXT_ERROR            0x04
#define FL_NO_VALID_BIT         0x08
#define FL_RAW_DEPTH            0x10
#define FL_RAW_PARENT_ID        0x20
#define FL_RAW_PARENT_SIZE      0x40
#define FL_FLIP_PARENT_ID       0x80

static const char *const fuzz_names[16] = {
    "base.raw", "layer-0001.qcow2", "layer-0002.qcow2", "layer-0003.qcow2",
    "top.qcow2", "", "a", "/dev/sdz", "nbd://localhost/x", "%s%n%p",
    "layer with spaces", "json:{}", "\xc3\xa9t\xc3\xa9.qcow2", "..", ".",
    "a-rather-long-file-name-for-a-layer-of-a-long-chain.qcow2",
};

static const char *const fuzz_drivers[16] = {
    "qcow2", "raw", "file", "vmdk", "qcow", "vdi", "vpc", "luks",
    "nbd", "null-co", "throttle", "copy-on-read", "(no medium)", "", "%s",
    "blkdebug",
};

static const char *const fuzz_ext_errors[4] = {
    "header extension truncated",
    "header extension oversized",
    "unsupported header extension version",
    "recorded depth beyond the deepest layer the index can name",
};

static bool id_is_zero(const uint8_t *id)
{
    static const uint8_t zero[QCOW2_BI_ID_SIZE];

    return !memcmp(id, zero, QCOW2_BI_ID_SIZE);
}

/*
 * The rules as the comment on qcow2_bi_chain_invalid_reason() states
 * them: every layer is a qcow2 image with a readable extension and the
 * valid bit, records the depth it has in this chain (n - i), and was
 * indexed over the parent it has now: a qcow2 parent's (non-zero)
 * identity, or no identity for a non-qcow2 base, or none at all for the
 * base itself; and the parent's size.  Only the base (of a chain of two
 * layers or more) may be other than qcow2.
 */
static bool chain_is_valid(const Qcow2BiLayer *layers, unsigned n)
{
    unsigned i;

    if (n == 0 || n > QCOW2_BI_MAX_DEPTH) {
        return false;
    }
    for (i = 0; i < n; i++) {
        const Qcow2BiLayer *l = &layers[i];

        if (!l->is_qcow2) {
            if (i == n - 1 && n > 1) {
                continue;
            }
            return false;
        }
        if (!l->has_ext || l->ext_error || !l->valid_bit ||
            l->ext.depth != n - i) {
            return false;
        }
        if (i == n - 1) {
            if (!id_is_zero(l->ext.parent_id)) {
                return false;
            }
            continue;
        }
        if (layers[i + 1].is_qcow2) {
            if (id_is_zero(l->ext.parent_id) ||
                memcmp(l->ext.parent_id, layers[i + 1].ext.layer_id,
                       QCOW2_BI_ID_SIZE)) {
                return false;
            }
        } else if (!id_is_zero(l->ext.parent_id)) {
            return false;
        }
        if (l->ext.parent_size != layers[i + 1].size) {
            return false;
        }
    }
    return true;
}

static void check_chain(const Qcow2BiLayer *layers, unsigned n)
{
    bool valid = chain_is_valid(layers, n);
    char *reason = qcow2_bi_chain_invalid_reason(layers, n);

    FUZZ_CHECK(!reason == valid, "a chain of %u layers that is %s: %s", n,
               valid ? "valid" : "invalid", reason ? reason : "accepted");
    if (reason) {
        FUZZ_CHECK(*reason && g_utf8_validate(reason, -1, NULL),
                   "reason '%s'", reason);
    }
    g_free(reason);
}

static void fuzz_chain(const uint8_t *data, size_t size)
{
    Qcow2BiLayer layers[FUZZ_MAX_LAYERS];
    unsigned n = MIN(size / FUZZ_LAYER_SIZE, FUZZ_MAX_LAYERS);
    unsigned i;

    memset(layers, 0, sizeof(layers));
    /* What each layer is on its own */
    for (i = 0; i < n; i++) {
        const uint8_t *r = data + i * FUZZ_LAYER_SIZE;
        Qcow2BiLayer *l = &layers[i];
        uint8_t flags = r[0];

        l->name = fuzz_names[r[1] & 15];
        l->is_qcow2 = !(flags & FL_NOT_QCOW2);
        l->driver = l->is_qcow2 ? "qcow2" : fuzz_drivers[r[1] >> 4];
        l->has_ext = !(flags & FL_NO_EXT);
        l->ext_error = flags & FL_EXT_ERROR ? fuzz_ext_errors[r[7] & 3]
                                            : NULL;
        l->valid_bit = !(flags & FL_NO_VALID_BIT);
        l->ext.depth = flags & FL_RAW_DEPTH ? lduw_le_p(r + 2) : n - i;
        memset(l->ext.layer_id, r[4], QCOW2_BI_ID_SIZE);
        l->size = (uint64_t)le32(r + 8) * BDRV_SECTOR_SIZE;
    }
    /* What each layer recorded of its parent */
    for (i = 0; i < n; i++) {
        const uint8_t *r = data + i * FUZZ_LAYER_SIZE;
        Qcow2BiLayer *l = &layers[i];
        const Qcow2BiLayer *parent = i + 1 < n ? &layers[i + 1] : NULL;
        uint8_t flags = r[0];

        if (flags & FL_RAW_PARENT_ID) {
            memset(l->ext.parent_id, r[5], QCOW2_BI_ID_SIZE);
        } else if (parent && parent->is_qcow2) {
            memcpy(l->ext.parent_id, parent->ext.layer_id, QCOW2_BI_ID_SIZE);
        }
        if (flags & FL_FLIP_PARENT_ID) {
            l->ext.parent_id[r[6] & 15] ^= 1;
        }
        if (flags & FL_RAW_PARENT_SIZE) {
            l->ext.parent_size = (uint64_t)le32(r + 12) *
                                 BDRV_SECTOR_SIZE;
        } else if (parent) {
            l->ext.parent_size = parent->size;
        }
    }
    check_chain(layers, n);
    /* Every tail of the chain is a chain of its own */
    for (i = 1; i < n; i++) {
        check_chain(layers + i, n - i);
    }
}

/*
 * The limits, checked once per process: a valid chain of the deepest
 * depth the index can name validates, one layer more does not.
 */
static void check_chain_limits(void)
{
    unsigned n = QCOW2_BI_MAX_DEPTH + 1;
    Qcow2BiLayer *layers = g_new0(Qcow2BiLayer, n);
    unsigned i;

    for (i = 0; i < n; i++) {
        Qcow2BiLayer *l = &layers[i];

        l->name = fuzz_names[i & 15];
        l->driver = "qcow2";
        l->is_qcow2 = l->has_ext = l->valid_bit = true;
        stl_be_p(l->ext.layer_id, i + 1);
        l->size = (uint64_t)(i + 1) << 16;
    }
    for (i = 0; i + 1 < n; i++) {
        memcpy(layers[i].ext.parent_id, layers[i + 1].ext.layer_id,
               QCOW2_BI_ID_SIZE);
        layers[i].ext.parent_size = layers[i + 1].size;
    }

    /* Depths for a chain of QCOW2_BI_MAX_DEPTH layers from layers[1] */
    for (i = 1; i < n; i++) {
        layers[i].ext.depth = n - i;
    }
    check_chain(layers + 1, QCOW2_BI_MAX_DEPTH);
    FUZZ_CHECK(chain_is_valid(layers + 1, QCOW2_BI_MAX_DEPTH),
               "the limit chain is not valid");

    /* One layer more: every depth in step, but too deep to name */
    for (i = 0; i < n; i++) {
        layers[i].ext.depth = n - i;
    }
    check_chain(layers, n);
    check_chain(layers, 0);
    g_free(layers);
}

/* ------------------------------------------------------------------ */
/* 3. The L2 entry codec */

#define FUZZ_MAX_ENTRIES        256

/* The rules for an L2 entry as qcow2_bi_entry_is_valid() documents them */
static bool entry_is_valid(uint64_t e, unsigned own_depth)
{
    if (own_depth < 1 || own_depth > QCOW2_BI_MAX_DEPTH) {
        return false;
    }
    if (e & QCOW_OFLAG_COMPRESSED) {
        return true;
    }
    if ((e & L2E_OFFSET_MASK) || (e & QCOW_OFLAG_ZERO)) {
        return qcow2_bi_get(e) == QCOW2_BI_NONE;
    }
    return qcow2_bi_get(e) < own_depth;
}

static void check_entry(uint64_t e, unsigned own_depth, unsigned d)
{
    uint64_t unalloc = e & ~(QCOW_OFLAG_COMPRESSED | QCOW_OFLAG_ZERO |
                             L2E_OFFSET_MASK);
    unsigned got = qcow2_bi_get(e);
    uint64_t f;

    /* The codec */
    FUZZ_CHECK(got <= QCOW2_BI_MAX_DEPTH, "entry 0x%" PRIx64 ": index %u",
               e, got);
    FUZZ_CHECK(qcow2_bi_set(e, got) == e, "entry 0x%" PRIx64, e);
    f = qcow2_bi_set(e, d);
    FUZZ_CHECK(qcow2_bi_get(f) == d, "entry 0x%" PRIx64 ", depth %u: %u",
               e, d, qcow2_bi_get(f));
    FUZZ_CHECK((f & ~QCOW2_BI_MASK) == (e & ~QCOW2_BI_MASK),
               "entry 0x%" PRIx64 ", depth %u: other bits changed to 0x%"
               PRIx64, e, d, f);
    FUZZ_CHECK(qcow2_bi_set(f, QCOW2_BI_NONE) == (e & ~QCOW2_BI_MASK),
               "entry 0x%" PRIx64 ", depth %u: clearing", e, d);

    /* The rules */
    FUZZ_CHECK(qcow2_bi_entry_is_valid(e, own_depth) ==
               entry_is_valid(e, own_depth),
               "entry 0x%" PRIx64 " at depth %u: %s", e, own_depth,
               entry_is_valid(e, own_depth) ? "rejected" : "accepted");
    FUZZ_CHECK(qcow2_bi_entry_is_valid(f, own_depth) ==
               entry_is_valid(f, own_depth),
               "entry 0x%" PRIx64 " at depth %u: %s", f, own_depth,
               entry_is_valid(f, own_depth) ? "rejected" : "accepted");
    if (own_depth < 1 || own_depth > QCOW2_BI_MAX_DEPTH) {
        FUZZ_CHECK(!qcow2_bi_entry_is_valid(e, own_depth),
                   "entry 0x%" PRIx64 " at depth %u accepted", e, own_depth);
        return;
    }
    /* An unallocated entry names a layer strictly below its own, or none */
    FUZZ_CHECK(!qcow2_bi_entry_is_valid(qcow2_bi_set(unalloc, own_depth),
                                        own_depth),
               "unallocated entry 0x%" PRIx64 " names its own depth %u",
               unalloc, own_depth);
    FUZZ_CHECK(qcow2_bi_entry_is_valid(qcow2_bi_set(unalloc, own_depth - 1),
                                       own_depth),
               "unallocated entry 0x%" PRIx64 " at depth %u rejected",
               unalloc, own_depth);
    FUZZ_CHECK(qcow2_bi_entry_is_valid(qcow2_bi_set(unalloc, d), own_depth) ==
               (d < own_depth),
               "unallocated entry 0x%" PRIx64 " at depth %u naming %u",
               unalloc, own_depth, d);
}

static void fuzz_entries(const uint8_t *data, size_t size)
{
    size_t n = MIN(size / 8, FUZZ_MAX_ENTRIES);
    size_t i;

    for (i = 0; i < n; i++) {
        uint64_t e = ldq_le_p(data + i * 8);
        /* The next word (or none) says at which depth, and which index */
        uint64_t aux = i + 1 < size / 8 ? ldq_le_p(data + i * 8 + 8) : i;

        check_entry(e, aux & 0x7fff, (aux >> 16) & QCOW2_BI_MAX_DEPTH);
    }
}

/* ------------------------------------------------------------------ */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool limits_checked;

    if (!limits_checked) {
        limits_checked = true;
        check_chain_limits();
    }
    fuzz_ext(data, size);
    fuzz_chain(data, size);
    fuzz_entries(data, size);
    return 0;
}
