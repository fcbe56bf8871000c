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

#include "block/block_int.h"
#include "qemu/job.h"

/* Create and amend option */
#define BLOCK_OPT_BACKING_INDEX "backing-index"

/* Runtime options: building the index again in the background */
#define QCOW2_OPT_BACKING_INDEX_REBUILD "backing-index-rebuild"
#define QCOW2_OPT_BACKING_INDEX_REBUILD_SPEED "backing-index-rebuild-speed"

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
    uint64_t high = (uint64_t)((depth >> 8) & 0x3f) << QCOW2_BI_HIGH_SHIFT;

    assert(depth <= QCOW2_BI_MAX_DEPTH);

    return (l2_entry & ~QCOW2_BI_MASK) | low | high;
}

bool qcow2_bi_entry_is_valid(uint64_t l2_entry, unsigned own_depth);

/*
 * The header extension that says what the index was computed against.
 * All fields are big-endian on disk; see docs/sqemu.md.
 */
#define QCOW2_EXT_MAGIC_BACKING_INDEX   0x73514249  /* "sQBI" */
#define QCOW2_BI_EXT_VERSION            1
#define QCOW2_BI_EXT_SIZE               48
#define QCOW2_BI_ID_SIZE                16

/* Autoclear feature bit: set while every index entry of the layer is true */
#define QCOW2_AUTOCLEAR_BACKING_INDEX_BITNR 16
#define QCOW2_AUTOCLEAR_BACKING_INDEX \
    (1ULL << QCOW2_AUTOCLEAR_BACKING_INDEX_BITNR)

typedef struct Qcow2BackingIndexExt {
    /* Depth of this layer (base = 1); 0 while the index is not built yet */
    uint32_t depth;
    /* Identity of this layer's content, renewed on every read-write open */
    uint8_t layer_id[QCOW2_BI_ID_SIZE];
    /* The parent's layer_id when the index was computed (zero: no parent,
     * or a parent that is not qcow2) */
    uint8_t parent_id[QCOW2_BI_ID_SIZE];
    /* The parent's virtual size in bytes when the index was computed */
    uint64_t parent_size;
} Qcow2BackingIndexExt;

int qcow2_bi_ext_parse(const void *buf, size_t len, Qcow2BackingIndexExt *ext,
                       const char **reason);
void qcow2_bi_ext_serialize(const Qcow2BackingIndexExt *ext,
                            uint8_t buf[QCOW2_BI_EXT_SIZE]);

/* One layer of an opened chain, as the validation rules see it */
typedef struct Qcow2BiLayer {
    const char *name;           /* file name, for messages */
    const char *driver;         /* format driver name */
    bool is_qcow2;
    bool has_ext;               /* the header extension is present */
    const char *ext_error;      /* why it could not be parsed, or NULL */
    bool valid_bit;             /* QCOW2_AUTOCLEAR_BACKING_INDEX is set */
    Qcow2BackingIndexExt ext;
    uint64_t size;              /* virtual size in bytes */
} Qcow2BiLayer;

char *qcow2_bi_layer_invalid_reason(const Qcow2BiLayer *l, unsigned depth,
                                    bool may_be_other);
char *qcow2_bi_chain_invalid_reason(const Qcow2BiLayer *layers, unsigned n);
char *qcow2_bi_link_invalid_reason(const Qcow2BiLayer *layer,
                                   const Qcow2BiLayer *parent);

/* qcow2-backing-index-chain.c: the extension, the valid bit, validation */
/* Bumped whenever any layer's index state changes (qcow2_bi_changed) */
extern uint64_t qcow2_bi_generation;
void qcow2_bi_changed(BlockDriverState *bs);
uint8_t *qcow2_bi_read_ext(BlockDriverState *bs, uint64_t offset,
                           uint32_t len, const char *what, Error **errp);
int qcow2_bi_flush_refcounts(BlockDriverState *bs, Error **errp);
int qcow2_bi_write_header(BlockDriverState *bs, Error **errp);
int qcow2_bi_load_ext(BlockDriverState *bs, uint64_t offset, uint32_t len,
                      Error **errp);
bool qcow2_bi_open_writable(BlockDriverState *bs, int flags);
void qcow2_bi_reopen_rw(BlockDriverState *bs);
int qcow2_bi_invalidate(BlockDriverState *bs, const char *why);
void qcow2_bi_close(BlockDriverState *bs);
void qcow2_bi_new_layer_id(BlockDriverState *bs);
BlockDriverState *qcow2_bi_next_layer(BlockDriverState *bs);
unsigned qcow2_bi_chain_length(BlockDriverState *bs);
bool qcow2_bi_is_qcow2(BlockDriverState *bs);
uint64_t qcow2_bi_layer_size(BlockDriverState *bs);
char *qcow2_bi_chain_check(BlockDriverState *bs);
Qcow2BackingIndexInfo *qcow2_bi_get_info(BlockDriverState *bs);

/* qcow2-backing-index-build.c: computing, writing, stripping, checking */
int qcow2_bi_check_supported(BlockDriverState *bs, Error **errp);
int qcow2_bi_chain_supported(BlockDriverState *bs, Error **errp);
int qcow2_bi_check_strippable(BlockDriverState *bs, Error **errp);
int qcow2_bi_build(BlockDriverState *bs, Error **errp);
/* Called after each L2 slice of an online build; < 0 stops it */
typedef int coroutine_fn Qcow2BiSliceDone(void *opaque, uint64_t bytes,
                                          Error **errp);
int coroutine_fn qcow2_bi_co_build_online(BlockDriverState *bs,
                                          Qcow2BiSliceDone *slice_done,
                                          void *opaque, Error **errp);
uint64_t qcow2_bi_slices(BlockDriverState *bs);
int qcow2_bi_strip(BlockDriverState *bs, Error **errp);
int qcow2_bi_check(BlockDriverState *bs, BdrvCheckResult *res,
                   BdrvCheckMode fix);
int qcow2_bi_snapshot_attached(BlockDriverState *bs, Error **errp);
void qcow2_bi_default_cluster_size(const char *filename, QDict *qdict);
int coroutine_fn qcow2_bi_co_create(BlockDriverState *file_bs,
                                    BlockdevCreateOptionsQcow2 *opts,
                                    Error **errp);

/* qcow2-backing-index-reindex.c: when the chain or the content changes */
bool qcow2_bi_backing_follows_graph(BlockDriverState *bs,
                                    const char *backing_file);
void qcow2_bi_reindex(BlockDriverState *bs, const char *why);

/* qcow2-backing-index-convert.c: indexing a whole chain */
BlockDriverState **qcow2_bi_chain_to_index(BlockDriverState *l, unsigned *n,
                                           unsigned *first);
int qcow2_bi_convert_chain(BlockDriverState *bs,
                           BlockDriverAmendStatusCB *status_cb,
                           void *cb_opaque, Error **errp);

/* qcow2-backing-index-online.c: x-blockdev-amend on a chain in use */
int coroutine_fn qcow2_bi_co_amend(BlockDriverState *bs, bool on, Job *job,
                                   int64_t speed, Error **errp);
int qcow2_bi_amend_pre_run(BlockDriverState *bs, Error **errp);
void qcow2_bi_amend_clean(BlockDriverState *bs);
int qcow2_bi_hold_chain(BlockDriverState *bs, const char *why,
                        void (*give_way)(void *opaque), void *opaque,
                        Error **errp);
void qcow2_bi_release_chain(BlockDriverState *bs);
int coroutine_fn qcow2_bi_co_index_chain(BlockDriverState *bs, Job *job,
                                         int64_t speed, Error **errp);

/*
 * qcow2-backing-index-resolved.c: the resolved L2 tables of a layer.  For
 * the clusters whose index names a layer other than the base and the
 * parent, the L2 entry of the layer that holds them (host offset and zero
 * flag) with that layer's depth in the index bits, so that a read of such
 * a cluster needs no L2 entry of that layer.  See docs/sqemu.md.
 */
#define QCOW2_EXT_MAGIC_BI_RESOLVED     0x7351524c  /* "sQRL" */
#define QCOW2_BIR_EXT_VERSION           1
#define QCOW2_BIR_EXT_SIZE              40

/* Autoclear feature bit: set while the tables are this image's own */
#define QCOW2_AUTOCLEAR_BI_RESOLVED_BITNR 17
#define QCOW2_AUTOCLEAR_BI_RESOLVED \
    (1ULL << QCOW2_AUTOCLEAR_BI_RESOLVED_BITNR)

typedef struct Qcow2BiResolvedExt {
    uint32_t depth;             /* the layer's depth when they were written */
    uint32_t l1_size;           /* entries of the resolved L1 table */
    uint64_t l1_offset;         /* where the resolved L1 table is */
    /* What the chain below was: see qcow2_bir_chain_id() */
    uint8_t chain_id[QCOW2_BI_ID_SIZE];
} Qcow2BiResolvedExt;

int qcow2_bir_ext_parse(const void *buf, size_t len, Qcow2BiResolvedExt *ext,
                        const char **reason);
void qcow2_bir_ext_serialize(const Qcow2BiResolvedExt *ext,
                             uint8_t buf[QCOW2_BIR_EXT_SIZE]);
/*
 * The identity of a chain below a layer: a hash of the layer identities
 * of @layer[1..@depth - 1] (@layer[d] is the layer at depth d; a raw base
 * counts as an all-zero identity)
 */
void qcow2_bir_chain_id(BlockDriverState *const *layer, unsigned depth,
                        uint8_t id[QCOW2_BI_ID_SIZE]);
int qcow2_bir_load_ext(BlockDriverState *bs, uint64_t offset, uint32_t len,
                       Error **errp);
bool qcow2_bir_open_writable(BlockDriverState *bs);
void qcow2_bir_close(BlockDriverState *bs);
bool qcow2_bir_own(BlockDriverState *bs);
int qcow2_bir_drop(BlockDriverState *bs, Error **errp);
int qcow2_bir_build(BlockDriverState *bs, Error **errp);
/* Resolved tables computed table by table alongside an index build */
typedef struct Qcow2BirBuild Qcow2BirBuild;
Qcow2BirBuild *qcow2_bir_build_start(BlockDriverState *bs, unsigned depth);
int qcow2_bir_build_add(Qcow2BirBuild *b, uint64_t t, const uint64_t *own,
                        unsigned n, Error **errp);
int qcow2_bir_build_finish(Qcow2BirBuild *b, Error **errp);
void qcow2_bir_build_free(Qcow2BirBuild *b, bool kept);
bool qcow2_bir_matches(BlockDriverState *bs, BlockDriverState *const *layer,
                       unsigned depth);
int coroutine_fn qcow2_bir_co_read(BlockDriverState *bs, uint64_t first,
                                   unsigned n, uint64_t *e);
int qcow2_bir_check(BlockDriverState *bs, BdrvCheckResult *res,
                    BdrvCheckMode fix);
int qcow2_bir_check_refs(BlockDriverState *bs, BdrvCheckResult *res,
                         void **refcount_table,
                         int64_t *refcount_table_size);

/* qcow2-backing-index-rebuild.c: indexing a chain again in the background */
void qcow2_bi_rebuild_kick(void);
void qcow2_bi_rebuild_forget(BlockDriverState *bs);
void qcow2_bi_rebuild_job_ended(BlockDriverState *bs, Job *job, int ret,
                                Error *err, bool report);

#endif
