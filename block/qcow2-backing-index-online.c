/*
 * sQemu: indexing the backing chain of an image in use (x-blockdev-amend)
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * x-blockdev-amend with "backing-index": true on a running top does what
 * "qemu-img amend -o backing-index=on" does offline
 * (qcow2-backing-index-convert.c), while the guest runs: every layer below
 * the top whose index does not validate gets one, from the lowest such
 * layer up, then the top.  It runs as QEMU's amend job: progress in L2
 * slices, pause, cancel, and a rate limit (the job's speed, in bytes of L2
 * tables read and written per second).
 *
 * The layers below the top are read-only in the graph: each is reopened
 * read-write for its build and read-only again afterwards, as block-commit
 * does with its base.  A reopen drains the layer and its parents, so the
 * guest waits for it (measured in docs/sqemu.md).  Each build takes the
 * layer's lock per L2 slice only (qcow2_bi_co_build_online), so guest
 * requests run between slices, and the guest's own writes to the top
 * keep its entries true meanwhile (a cluster it allocates reads from the
 * top, index 0).  A layer's valid bit is clear while it is built and set
 * once its tables are on disk: cancelled, failed or killed at any point,
 * the chain reads the vanilla way, never through a wrong index.
 *
 * While the job runs, every layer of the chain is blocked for other
 * operations (stream, commit, mirror, snapshots, resize), which would
 * change the chain under it; a change that gets through anyway (a
 * blockdev-reopen) makes the build of the layer refuse to set its bit.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/main-loop.h"
#include "qemu/ratelimit.h"
#include "migration/blocker.h"
#include "qcow2.h"
#include "qcow2-backing-index.h"
#include "trace.h"

/*
 * What the amend jobs of a node have blocked.  A second job may be
 * created while one runs (it fails when it starts): the blockers stay
 * until the last job is gone.
 */
typedef struct Qcow2BiAmend {
    Error *blocker;
    GSList *nodes;              /* each referenced and blocked */
    unsigned jobs;              /* amend jobs of the node that exist */
    bool running;               /* one of them is indexing */
    void (*give_way)(void *opaque);     /* a background job's; or NULL */
    void *opaque;
} Qcow2BiAmend;

/* The state of one x-blockdev-amend indexing run */
typedef struct BiAmendRun {
    Job *job;
    int64_t speed;
    RateLimit limit;
    BlockDriverState *top;
} BiAmendRun;

/* Rate limit slices, as block jobs use */
#define BI_AMEND_SLICE_NS (100 * SCALE_MS)

/*
 * Before an indexing job starts, under the BQL: keep every layer of @bs's
 * chain from being changed by other operations until the job is gone;
 * they are refused with "Node ... is busy: " and @why, or, with
 * @give_way, call it first (it ends the job: bdrv_op_block_giving_way).
 * Migration is refused with @why too: the job writes the layers, which
 * the end of a migration hands over to the destination (inactivates).
 * Fails only if a migration is running already.
 */
int qcow2_bi_hold_chain(BlockDriverState *bs, const char *why,
                        void (*give_way)(void *opaque), void *opaque,
                        Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2BiAmend *a;
    BlockDriverState *l;

    if (s->bi_amend && s->bi_amend->give_way) {
        /*
         * The background job does what this one is asked to: it gives
         * way to it (synchronously: not from a coroutine)
         */
        assert(!give_way && !qemu_in_coroutine());
        s->bi_amend->give_way(s->bi_amend->opaque);
    }
    if (s->bi_amend) {
        /* x-blockdev-amend's second job (it fails when it starts) */
        assert(!give_way && !s->bi_amend->give_way);
        s->bi_amend->jobs++;
        return 0;
    }
    a = g_new0(Qcow2BiAmend, 1);
    a->jobs = 1;
    a->give_way = give_way;
    a->opaque = opaque;
    error_setg(&a->blocker, "%s", why);
    /*
     * Not subject to --only-migratable: the job is temporary, and fails to
     * start only while a migration runs
     */
    if (migrate_add_blocker_internal(a->blocker, errp) < 0) {
        error_free(a->blocker);
        g_free(a);
        return -EBUSY;
    }
    for (l = bs; l; l = qcow2_bi_next_layer(l)) {
        BlockOpType op;

        bdrv_ref(l);
        for (op = 0; op < BLOCK_OP_TYPE_MAX; op++) {
            if (op != BLOCK_OP_TYPE_DATAPLANE) {
                bdrv_op_block_giving_way(l, op, a->blocker, give_way, opaque);
            }
        }
        a->nodes = g_slist_prepend(a->nodes, l);
    }
    s->bi_amend = a;
    return 0;
}

/* x-blockdev-amend's hook before its job starts */
int qcow2_bi_amend_pre_run(BlockDriverState *bs, Error **errp)
{
    g_autofree char *why = g_strdup_printf("the chain of node '%s' is being "
                                           "amended (x-blockdev-amend)",
                                           bdrv_get_device_or_node_name(bs));

    return qcow2_bi_hold_chain(bs, why, NULL, NULL, errp);
}

/* After the job, under the BQL: undo qcow2_bi_hold_chain */
void qcow2_bi_release_chain(BlockDriverState *bs)
{
    BDRVQcow2State *s = bs->opaque;
    Qcow2BiAmend *a = s->bi_amend;
    GSList *it;

    if (!a || --a->jobs) {
        return;
    }
    for (it = a->nodes; it; it = it->next) {
        BlockDriverState *l = it->data;

        bdrv_op_unblock_all(l, a->blocker);
        bdrv_unref(l);
    }
    g_slist_free(a->nodes);
    migrate_del_blocker(a->blocker);
    error_free(a->blocker);
    g_free(a);
    s->bi_amend = NULL;
}

/* x-blockdev-amend's hook when its job is gone */
void qcow2_bi_amend_clean(BlockDriverState *bs)
{
    qcow2_bi_release_chain(bs);
}

/* After each L2 slice: progress, the rate limit, pause and cancel */
static int coroutine_fn bi_amend_slice_done(void *opaque, uint64_t bytes,
                                            Error **errp)
{
    BiAmendRun *r = opaque;
    int64_t delay = 0;

    job_progress_update(r->job, 1);
    if (bdrv_get_aio_context(r->top) != qemu_get_aio_context()) {
        /* A device moved the disk to its I/O thread meanwhile */
        error_setg(errp, "Node '%s' moved to an I/O thread; its backing "
                   "index was not built", bdrv_get_device_or_node_name(r->top));
        return -ENOTSUP;
    }
    if (r->speed) {
        delay = ratelimit_calculate_delay(&r->limit, bytes);
    }
    /* Also a pause point, and it lets the guest's requests in */
    job_sleep_ns(r->job, delay);
    if (job_is_cancelled(r->job)) {
        error_setg(errp, "The amendment of '%s' was cancelled",
                   r->top->filename);
        return -ECANCELED;
    }
    return 0;
}

typedef struct BiReopen {
    BlockDriverState *bs;
    bool read_only;
    Coroutine *co;
    Error *err;
    int ret;
} BiReopen;

static void bi_reopen_bh(void *opaque)
{
    BiReopen *r = opaque;
    int64_t start = qemu_clock_get_ns(QEMU_CLOCK_REALTIME);

    /*
     * The reopen drains the layer, the layers above it and its file: the
     * guest's requests wait from its start to its end
     */
    r->ret = bdrv_reopen_set_read_only(r->bs, r->read_only, &r->err);
    trace_qcow2_bi_amend_reopen(r->bs, r->read_only,
                                qemu_clock_get_ns(QEMU_CLOCK_REALTIME) -
                                start);
    aio_co_wake(r->co);
}

/*
 * Reopen layer @l read-only or read-write from the main loop (a reopen
 * drains the graph around it, which is not done from the job's coroutine)
 */
static int coroutine_fn bi_co_reopen(BlockDriverState *l, bool read_only,
                                     Error **errp)
{
    BiReopen r = {
        .bs = l, .read_only = read_only, .co = qemu_coroutine_self(),
    };

    aio_bh_schedule_oneshot(qemu_get_aio_context(), bi_reopen_bh, &r);
    qemu_coroutine_yield();
    error_propagate(errp, r.err);
    return r.ret;
}

/* Index layer @l at @depth, below the top: reopened read-write for it */
static int coroutine_fn bi_amend_lower_layer(BiAmendRun *r,
                                             BlockDriverState *l,
                                             unsigned depth, Error **errp)
{
    Error *local_err = NULL;
    int ret, ret2;

    ret = bi_co_reopen(l, false, &local_err);
    if (ret < 0) {
        error_propagate_prepend(errp, local_err, "Could not reopen layer "
                                "'%s' at depth %u for writing: ",
                                l->filename, depth);
        return ret;
    }
    ret = qcow2_bi_co_build_online(l, bi_amend_slice_done, r, &local_err);
    if (ret < 0) {
        error_propagate_prepend(errp, local_err, "Could not index layer "
                                "'%s' at depth %u: ", l->filename, depth);
    } else {
        /*
         * The header with the valid bit on disk now, while the guest runs:
         * the read-only reopen flushes too, with the guest waiting
         */
        ret = bdrv_co_flush(l);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not write the header of "
                             "layer '%s' at depth %u", l->filename, depth);
        }
    }
    ret2 = bi_co_reopen(l, true, ret < 0 ? NULL : &local_err);
    if (ret == 0 && ret2 < 0) {
        error_propagate_prepend(errp, local_err, "Could not reopen layer "
                                "'%s' at depth %u read-only: ", l->filename,
                                depth);
        ret = ret2;
    }
    if (ret == 0) {
        trace_qcow2_bi_amend_layer(l, depth);
    }
    return ret;
}

static int coroutine_fn bi_amend_run(BiAmendRun *r, Error **errp)
{
    BlockDriverState *bs = r->top;
    g_autofree BlockDriverState **node = NULL;    /* node[d - 1]: depth d */
    uint64_t slices;
    unsigned n, first, d;
    int ret;

    if (bdrv_is_read_only(bs)) {
        error_setg(errp, "Node '%s' ('%s') is read-only; its backing index "
                   "is built by amending the node that writes it",
                   bdrv_get_device_or_node_name(bs), bs->filename);
        return -EPERM;
    }
    if (bdrv_get_aio_context(bs) != qemu_get_aio_context()) {
        error_setg(errp, "Node '%s' runs in an I/O thread; its backing "
                   "index cannot be built while it is in use",
                   bdrv_get_device_or_node_name(bs));
        return -ENOTSUP;
    }
    /* What the index cannot describe anywhere in the chain */
    ret = qcow2_bi_check_supported(bs, errp);
    if (ret < 0) {
        return ret;
    }
    ret = qcow2_bi_chain_supported(bs, errp);
    if (ret < 0) {
        return ret;
    }
    /* The lowest layer that does not validate; all above it follow it */
    node = qcow2_bi_chain_to_index(bs, &n, &first);
    trace_qcow2_bi_amend_start(bs, n, first + 1, r->speed);
    if (first == n) {
        return 0;       /* the whole chain validates already */
    }
    slices = 0;
    for (d = first; d < n; d++) {
        ret = qcow2_bi_check_supported(node[d], errp);
        if (ret < 0) {
            error_prepend(errp, "Layer '%s' at depth %u: ",
                          node[d]->filename, d + 1);
            return ret;
        }
        slices += qcow2_bi_slices(node[d]);
    }
    /* The amend job adds one when the driver returns */
    job_progress_set_remaining(r->job, slices + 1);

    /*
     * A read that reaches a layer indexed by now (through the layers above
     * it, not indexed yet) would go direct from there, with a view and a
     * cache built anew after each layer the job finishes: each such read
     * would reread the L2 tables of every layer below.  Until the top is
     * done, reads go layer by layer, as before the job.
     */
    for (d = first; d < n - 1; d++) {
        ((BDRVQcow2State *)node[d]->opaque)->bi_da_held++;
    }
    ret = 0;
    for (d = first; d < n - 1 && ret == 0; d++) {
        ret = bi_amend_lower_layer(r, node[d], d + 1, errp);
    }
    if (ret == 0) {
        ret = qcow2_bi_co_build_online(bs, bi_amend_slice_done, r, errp);
    }
    for (d = first; d < n - 1; d++) {
        ((BDRVQcow2State *)node[d]->opaque)->bi_da_held--;
    }
    return ret;
}

/*
 * Index @bs's whole chain while it is in use, as @job (which holds the
 * chain: qcow2_bi_hold_chain), at most @speed bytes of L2 tables per
 * second (0: no limit)
 */
int coroutine_fn qcow2_bi_co_index_chain(BlockDriverState *bs, Job *job,
                                         int64_t speed, Error **errp)
{
    BDRVQcow2State *s = bs->opaque;
    BiAmendRun r = { .job = job, .speed = speed, .top = bs };
    int ret;

    assert(s->bi_amend);
    if (s->bi_amend->running) {
        error_setg(errp, "Node '%s' is being amended by another job",
                   bdrv_get_device_or_node_name(bs));
        return -EBUSY;
    }
    s->bi_amend->running = true;
    ratelimit_init(&r.limit);
    if (speed) {
        ratelimit_set_speed(&r.limit, speed, BI_AMEND_SLICE_NS);
    }
    ret = bi_amend_run(&r, errp);
    ratelimit_destroy(&r.limit);
    s->bi_amend->running = false;
    trace_qcow2_bi_amend_end(bs, ret);
    return ret;
}

/*
 * x-blockdev-amend "backing-index": @on builds the index of @bs's whole
 * chain while it is in use; off is refused (stripping rewrites every
 * entry a guest may be writing: qemu-img amend does it offline).
 */
int coroutine_fn qcow2_bi_co_amend(BlockDriverState *bs, bool on, Job *job,
                                   int64_t speed, Error **errp)
{
    int ret;

    if (!on) {
        error_setg(errp, "backing-index=false cannot be amended on an image "
                   "in use");
        error_append_hint(errp, "Stop its users and run 'qemu-img amend -o "
                          "backing-index=off' on it.\n");
        return -ENOTSUP;
    }
    ret = qcow2_bi_co_index_chain(bs, job, speed, errp);
    /* Not started again on its own if it was cancelled or failed */
    qcow2_bi_rebuild_job_ended(bs, job, ret, ret < 0 ? *errp : NULL, false);
    return ret;
}
