/*
 * sQemu: indexing a chain again in the background after a chain change
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Most chain operations keep the backing index true themselves (a stream
 * or commit into the top computes the top's index again over its new
 * chain, qcow2-backing-index-reindex.c).  Some leave the top of a running
 * chain without one that validates: a block-commit deeper down (every
 * layer above the commit's overlay now sits lower in the chain, and their
 * entries name layers by their old depths), a stream into a layer below
 * the top, a mirror's pivot onto a target whose index was never built
 * (sync=none), blockdev-reopen with another backing file.  The index
 * must then be built again, which is what x-blockdev-amend does on
 * request (qcow2-backing-index-online.c).
 *
 * Here it is started without a request.  Every graph change, and every
 * change of a layer's index state, schedules a scan from the main loop
 * (never from a nested event loop, where a QMP command or a job may be
 * half way through changing the graph).  The scan looks for the writable
 * qcow2 tops in use in the main AioContext (and not under a device with
 * an I/O thread, which moves it there when the guest's driver starts)
 * whose image has the index on
 * and whose chain does not validate, and starts on each a job of type
 * "amend" named "sqemu-index-<node>", which indexes the chain exactly as
 * x-blockdev-amend does: the same rules on the guest's pauses, on
 * progress, on cancellation, and on what a failure or a crash leaves
 * behind.  While another operation is running on the chain (its layers
 * have op blockers: a job that has not been dismissed yet, say), the
 * scan tries again every BI_REBUILD_RETRY_MS.  While a migration runs
 * (which the job blocks while it runs), none is started.
 *
 * A job that an operator cancelled, that failed, or that could not start
 * (a migration) is not started again for that node until the graph
 * changes or the node is reopened; a failure is reported once per
 * distinct error.  Only programs that allow
 * background jobs (the system emulator and the storage daemon) ever run
 * it; qemu-img and qemu-io never do.
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/error-report.h"
#include "qemu/job.h"
#include "qemu/main-loop.h"
#include "qemu/module.h"
#include "qemu/timer.h"
#include "sysemu/block-backend.h"
#include "hw/qdev-core.h"
#include "qom/object.h"
#include "qcow2.h"
#include "qcow2-backing-index.h"
#include "trace.h"

/* How often the scan looks again at a chain another operation holds */
#define BI_REBUILD_RETRY_MS 100

typedef struct BiRebuildJob {
    Job common;
    BlockDriverState *bs;
    int ret;
    bool gave_way;              /* cancelled for an operation on the chain */
    bool started;
} BiRebuildJob;

/*
 * Why a node's job is not started again, until the graph changes
 * (@graph_gen) or the node is reopened.  Not on index state changes:
 * every indexing job makes some, and two tops whose jobs fail would start
 * each other's again forever.
 */
typedef struct BiRebuildMark {
    uint64_t graph_gen;
    char *error;                /* NULL: cancelled by an operator */
} BiRebuildMark;

static GHashTable *bi_rebuild_marks;    /* BlockDriverState * -> mark */
static bool bi_rebuild_scheduled;
static QEMUTimer *bi_rebuild_retry_timer;     /* made on first use */
static Notifier bi_rebuild_graph_notifier;

static void bi_rebuild_mark_free(gpointer p)
{
    BiRebuildMark *m = p;

    g_free(m->error);
    g_free(m);
}

/* Whether @bs's last job ended the way it would end again now */
static bool bi_rebuild_marked(BlockDriverState *bs)
{
    BiRebuildMark *m = bi_rebuild_marks ?
                       g_hash_table_lookup(bi_rebuild_marks, bs) : NULL;

    return m && m->graph_gen == qatomic_read(&bdrv_graph_generation);
}

/*
 * Remember that @bs's job was cancelled (@err NULL) or failed with @err;
 * if @report, a failure is reported unless it is the one reported last
 * for @bs
 */
static void bi_rebuild_mark(BlockDriverState *bs, Error *err, bool report)
{
    BiRebuildMark *m;
    if (!bi_rebuild_marks) {
        bi_rebuild_marks = g_hash_table_new_full(NULL, NULL, NULL,
                                                 bi_rebuild_mark_free);
    }
    m = g_hash_table_lookup(bi_rebuild_marks, bs);
    if (!m) {
        m = g_new0(BiRebuildMark, 1);
        g_hash_table_insert(bi_rebuild_marks, bs, m);
    }
    report = report && err && g_strcmp0(m->error, error_get_pretty(err));
    g_free(m->error);
    m->error = err ? g_strdup(error_get_pretty(err)) : NULL;
    m->graph_gen = qatomic_read(&bdrv_graph_generation);
    if (report) {
        warn_report("%s: the backing index of its chain could not be built "
                    "in the background, reads of the chain go layer by "
                    "layer: %s", bs->filename, m->error);
        error_printf("x-blockdev-amend with \"backing-index\": true, or "
                     "qemu-img amend -o backing-index=on offline, builds "
                     "it once the cause is gone.\n");
    }
}

/* @bs is closed: drop what is remembered of it */
void qcow2_bi_rebuild_forget(BlockDriverState *bs)
{
    if (bi_rebuild_marks) {
        g_hash_table_remove(bi_rebuild_marks, bs);
    }
}

/*
 * Whether the device @dev (or the controller it sits on: virtio-scsi)
 * has an I/O thread, where it moves its disk when the guest's driver
 * starts it: the job runs in the main loop and would keep doing so
 */
static bool bi_rebuild_device_iothread(DeviceState *dev)
{
    for (; dev; dev = dev->parent_bus ? dev->parent_bus->parent : NULL) {
        if (object_property_find(OBJECT(dev), "iothread") &&
            object_property_get_link(OBJECT(dev), "iothread", NULL)) {
            return true;
        }
    }
    return false;
}

/*
 * Whether @bs is in use by what an operator set up (a node they named, or
 * a node under a device or a named drive), and no device with an I/O
 * thread uses it.  Nodes that QEMU opens for a moment of its own
 * (blockdev-create formatting an image, the creation of a snapshot or
 * mirror target) have neither name nor device, and must be left alone.
 */
static bool bi_rebuild_user_node(BlockDriverState *bs)
{
    /* generated node names start with '#' */
    bool named = bs->node_name[0] && bs->node_name[0] != '#';
    BlockBackend *blk = NULL;

    while ((blk = blk_all_next(blk))) {
        DeviceState *dev;

        if (blk_bs(blk) != bs) {
            continue;
        }
        dev = blk_get_attached_dev(blk);
        if (bi_rebuild_device_iothread(dev)) {
            return false;
        }
        named = named || blk_name(blk)[0] || dev;
    }
    return named;
}

/*
 * Whether @bs is the writable top of a chain in use whose index should
 * be kept: a qcow2 image with the index on, parents none of which is an
 * overlay, set up by an operator, in the main AioContext (the job refuses
 * I/O threads), with its backing chain open if its header names one
 */
static bool bi_rebuild_candidate(BlockDriverState *bs)
{
    BDRVQcow2State *s;
    BdrvChild *c;

    if (!qcow2_bi_is_qcow2(bs)) {
        return false;
    }
    s = bs->opaque;
    if (!s->bi_enabled || s->bi_ext_error || s->bi_amend ||
        s->bi_rebuild_off || !bdrv_is_writable(bs) ||
        QLIST_EMPTY(&bs->parents) ||
        bdrv_get_aio_context(bs) != qemu_get_aio_context() ||
        (bs->backing_file[0] && !qcow2_bi_next_layer(bs))) {
        return false;
    }
    QLIST_FOREACH(c, &bs->parents, next_parent) {
        if (c->role & BDRV_CHILD_COW) {
            return false;
        }
    }
    return bi_rebuild_user_node(bs);
}

/*
 * Whether another operation (or another top's indexing job, through a
 * layer the chains share) holds a layer of @bs's chain.  A job blocks
 * every operation on the nodes it uses; a layer's overlay blocks most of
 * them too, but not commit and stream through it.  Only looked at:
 * bdrv_op_is_blocked() would make an indexing job give way.
 */
static bool bi_rebuild_chain_busy(BlockDriverState *bs)
{
    BlockDriverState *l;

    for (l = bs; l; l = qcow2_bi_next_layer(l)) {
        if (!QLIST_EMPTY(&l->op_blockers[BLOCK_OP_TYPE_COMMIT_TARGET]) ||
            !QLIST_EMPTY(&l->op_blockers[BLOCK_OP_TYPE_STREAM])) {
            return true;
        }
    }
    return false;
}

static int coroutine_fn bi_rebuild_run(Job *job, Error **errp)
{
    BiRebuildJob *j = container_of(job, BiRebuildJob, common);
    BDRVQcow2State *s = j->bs->opaque;

    /* backing-index-rebuild-speed, as the job starts */
    j->ret = qcow2_bi_co_index_chain(j->bs, job, s->bi_rebuild_speed, errp);
    /* qcow2_bi_co_index_chain leaves one step for the end */
    job_progress_update(job, 1);
    if (!j->gave_way) {
        qcow2_bi_rebuild_job_ended(j->bs, job, j->ret,
                                   j->ret < 0 ? *errp : NULL, true);
    }
    return j->ret;
}

/*
 * An indexing job of @bs's chain (this one, or x-blockdev-amend's) ended
 * with @ret (@err): do not start one on its own again until something
 * changes if an operator cancelled it or it failed.  Failures of our own
 * jobs (@report) are reported: nobody else waits for their result.
 */
void qcow2_bi_rebuild_job_ended(BlockDriverState *bs, Job *job, int ret,
                                Error *err, bool report)
{
    if (ret == 0) {
        qcow2_bi_rebuild_forget(bs);
    } else if (job_is_cancelled(job)) {
        bi_rebuild_mark(bs, NULL, false);
    } else if (ret != -EBUSY) {
        /* -EBUSY: the chain changed while it was built; look again */
        bi_rebuild_mark(bs, err, report);
    }
}

/* The job is gone (it concluded and is dismissed on its own) */
static void bi_rebuild_free(Job *job)
{
    BiRebuildJob *j = container_of(job, BiRebuildJob, common);
    BlockDriverState *bs = j->bs;

    if (j->started) {
        trace_qcow2_bi_rebuild_end(bs, job->id, j->ret);
    }
    qcow2_bi_release_chain(bs);
    bdrv_unref(bs);
    if (j->started) {
        qcow2_bi_rebuild_kick();
    }
}

static const JobDriver bi_rebuild_job_driver = {
    .instance_size = sizeof(BiRebuildJob),
    .job_type      = JOB_TYPE_AMEND,
    .run           = bi_rebuild_run,
    .free          = bi_rebuild_free,
};

/*
 * Another operation on the chain is starting (it found only our blockers
 * in its way): end the job now, before that operation goes ahead.  The
 * layer it was indexing is left without a valid index, as after any
 * cancellation; the scan starts a job again once the operation is done.
 */
static void bi_rebuild_give_way(void *opaque)
{
    BiRebuildJob *j = opaque;

    if (qemu_in_coroutine()) {
        /*
         * A QMP command running in a coroutine (block_resize): waiting for
         * the job from there would never end.  It stays in the way.
         */
        return;
    }
    trace_qcow2_bi_rebuild_give_way(j->bs, j->common.id);
    j->gave_way = true;
    job_cancel_sync(&j->common, true);
    qcow2_bi_rebuild_kick();
}

/* Start the job that indexes @bs's chain again (it does not validate: @why) */
static void bi_rebuild_start(BlockDriverState *bs, const char *why)
{
    const char *name = bdrv_get_node_name(bs);
    g_autofree char *id = g_strdup_printf("sqemu-index-%s",
                                          name[0] == '#' ? name + 1 : name);
    g_autofree char *blocker = NULL;
    Error *err = NULL;
    BiRebuildJob *j;

    j = job_create(id, &bi_rebuild_job_driver, NULL, qemu_get_aio_context(),
                   JOB_DEFAULT, NULL, NULL, &err);
    if (!j) {
        bi_rebuild_mark(bs, err, true);
        error_free(err);
        return;
    }
    bdrv_ref(bs);
    j->bs = bs;
    blocker = g_strdup_printf("the backing index of the chain of node '%s' "
                              "is being built in the background (job '%s')",
                              bdrv_get_device_or_node_name(bs), id);
    if (qcow2_bi_hold_chain(bs, blocker, bi_rebuild_give_way, j, &err) < 0) {
        /* A migration runs: started again once the graph changes */
        trace_qcow2_bi_rebuild_not_started(bs, error_get_pretty(err));
        bi_rebuild_mark(bs, err, false);
        error_free(err);
        job_early_fail(&j->common);
        return;
    }
    trace_qcow2_bi_rebuild_start(bs, id, why);
    j->started = true;
    job_start(&j->common);
}

static void bi_rebuild_retry(void *opaque)
{
    qcow2_bi_rebuild_kick();
}

/* From the main loop: start a job on every top that needs one */
static void bi_rebuild_scan(void *opaque)
{
    BlockDriverState *bs = NULL;
    unsigned tops = 0, busy = 0;

    qatomic_set(&bi_rebuild_scheduled, false);
    while ((bs = bdrv_next_all_states(bs))) {
        g_autofree char *why = NULL;

        if (!bi_rebuild_candidate(bs) || bi_rebuild_marked(bs)) {
            continue;
        }
        tops++;
        why = qcow2_bi_chain_check(bs);
        if (!why || qcow2_bi_check_supported(bs, NULL) < 0 ||
            qcow2_bi_chain_supported(bs, NULL) < 0) {
            continue;       /* valid, or nothing to build can fix it */
        }
        if (bi_rebuild_chain_busy(bs)) {
            busy++;
            continue;
        }
        bi_rebuild_start(bs, why);
    }
    trace_qcow2_bi_rebuild_scan(tops, busy);
    if (busy) {
        if (!bi_rebuild_retry_timer) {
            bi_rebuild_retry_timer =
                aio_timer_new(iohandler_get_aio_context(),
                              QEMU_CLOCK_REALTIME, SCALE_MS,
                              bi_rebuild_retry, NULL);
        }
        timer_mod(bi_rebuild_retry_timer,
                  qemu_clock_get_ms(QEMU_CLOCK_REALTIME) +
                  BI_REBUILD_RETRY_MS);
    }
}

/*
 * A chain may have changed (from any thread): scan once the main loop gets
 * to it, however many changes come before
 */
void qcow2_bi_rebuild_kick(void)
{
    if (!bdrv_background_jobs_allowed() ||
        qatomic_xchg(&bi_rebuild_scheduled, true)) {
        return;
    }
    aio_bh_schedule_oneshot(iohandler_get_aio_context(), bi_rebuild_scan,
                            NULL);
}

static void bi_rebuild_graph_changed(Notifier *n, void *data)
{
    qcow2_bi_rebuild_kick();
}

static void bi_rebuild_init(void)
{
    bi_rebuild_graph_notifier.notify = bi_rebuild_graph_changed;
    bdrv_add_graph_change_notifier(&bi_rebuild_graph_notifier);
}

block_init(bi_rebuild_init);
