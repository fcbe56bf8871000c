/*
 * sQemu: recording the block I/O a device sends to its disk
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * See block-io-trace.h for what a trace records and its file format.
 *
 * A request that starts while its BlockBackend has a trace takes a reference
 * to it and appends its record when it completes, wherever it runs (main
 * loop or an iothread), under the trace's lock.  Records fill buffers in
 * memory; a writer thread writes full buffers to the file, and every second
 * a partly filled one.  A request never waits for the file: when every
 * buffer is waiting for the writer, its record is counted as dropped.
 *
 * Stopping detaches the trace from its BlockBackend and drains it; the file
 * is completed (the last records written, the header's counts and complete
 * flag set) once the last request holding the trace has recorded, which
 * after the drain is at once unless another drained section holds requests
 * back, and then in a bottom half of the main loop when they complete.
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "qemu/error-report.h"
#include "qemu/main-loop.h"
#include "qemu/queue.h"
#include "qemu/thread.h"
#include "qemu/timer.h"
#include "qapi/error.h"
#include "sysemu/block-backend.h"
#include "block/block-io-trace.h"
#include "trace.h"

#define BLOCK_IO_TRACE_BUFFERS 4
#define BLOCK_IO_TRACE_BUFFER_RECORDS 8192
#define BLOCK_IO_TRACE_FLUSH_MS 1000

typedef struct QEMU_PACKED BlockIOTraceRecord {
    uint64_t issued;
    uint64_t completed;
    uint64_t offset;
    uint64_t bytes;
    uint8_t op;
    uint8_t flags;
    uint16_t reserved;
    int32_t ret;
} BlockIOTraceRecord;

QEMU_BUILD_BUG_ON(sizeof(BlockIOTraceRecord) != BLOCK_IO_TRACE_RECORD_SIZE);

typedef struct QEMU_PACKED BlockIOTraceHeader {
    char magic[8];
    uint32_t version;
    uint32_t header_size;
    uint32_t record_size;
    uint32_t flags;
    uint64_t disk_length;
    uint64_t records;
    uint64_t dropped;
    uint8_t reserved[16];
} BlockIOTraceHeader;

QEMU_BUILD_BUG_ON(sizeof(BlockIOTraceHeader) != BLOCK_IO_TRACE_HEADER_SIZE);

struct BlockIOTrace {
    BlockBackend *blk;          /* referenced until the trace is stopped */
    char *target;               /* @blk as the operator named it */
    char *filename;
    int fd;
    int64_t start;              /* get_clock() when the trace started */
    uint64_t disk_length;

    /* Under block_io_trace_attach_lock: the slot, and requests holding us */
    unsigned refcnt;

    /* Under @lock: the buffers, the counters, the writer's state */
    QemuMutex lock;
    QemuCond wake;              /* a buffer is full, or the trace ends */
    BlockIOTraceRecord *buffer[BLOCK_IO_TRACE_BUFFERS];
    unsigned fill[BLOCK_IO_TRACE_BUFFERS];
    unsigned head;              /* the buffer records go to */
    unsigned full;              /* buffers before @head waiting for writing */
    bool stopping;
    uint64_t records;           /* recorded: in the file or waiting for it */
    uint64_t dropped;           /* requests that are not in the file */
    int write_error;            /* the first errno writing the file gave */

    /* The writer thread's, and block_io_trace_finish()'s after it */
    uint64_t written;           /* records in the file */

    QemuThread writer;
    QLIST_ENTRY(BlockIOTrace) next;
};

/* Makes a trace slot's value and the trace's refcnt change together */
static QemuMutex block_io_trace_attach_lock;

/* The traces that are on (main loop) */
static QLIST_HEAD(, BlockIOTrace) block_io_traces =
    QLIST_HEAD_INITIALIZER(block_io_traces);

static void __attribute__((__constructor__)) block_io_trace_init(void)
{
    qemu_mutex_init(&block_io_trace_attach_lock);
}

/* Write @len bytes at @offset of the trace file; 0 or a negative errno */
static int block_io_trace_pwrite(BlockIOTrace *t, const void *buf,
                                 size_t len, off_t offset)
{
    ssize_t done;

    while (len) {
        done = pwrite(t->fd, buf, len, offset);
        if (done < 0 && errno == EINTR) {
            continue;
        }
        if (done <= 0) {
            return done < 0 ? -errno : -ENOSPC;
        }
        buf = (const uint8_t *)buf + done;
        len -= done;
        offset += done;
    }
    return 0;
}

/*
 * Write the @n records of buffer @i after the records in the file.
 * Called with @t->lock not held; a failure counts the records as dropped.
 */
static void block_io_trace_write(BlockIOTrace *t, unsigned i, unsigned n)
{
    int ret = -EIO;

    if (!t->write_error) {
        ret = block_io_trace_pwrite(t, t->buffer[i],
                                    (size_t)n * sizeof(BlockIOTraceRecord),
                                    BLOCK_IO_TRACE_HEADER_SIZE +
                                    t->written * sizeof(BlockIOTraceRecord));
    }
    if (ret == 0) {
        t->written += n;
        return;
    }
    qemu_mutex_lock(&t->lock);
    if (!t->write_error) {
        t->write_error = -ret;
        trace_block_io_trace_write_error(t, t->filename, -ret);
    }
    t->records -= n;
    t->dropped += n;
    qemu_mutex_unlock(&t->lock);
}

/* Hand the buffer being filled to the writer; called with @t->lock held */
static void block_io_trace_seal(BlockIOTrace *t)
{
    t->full++;
    t->head = (t->head + 1) % BLOCK_IO_TRACE_BUFFERS;
    assert(t->fill[t->head] == 0);
    qemu_cond_signal(&t->wake);
}

static void *block_io_trace_writer(void *opaque)
{
    BlockIOTrace *t = opaque;
    unsigned i, n;

    qemu_mutex_lock(&t->lock);
    for (;;) {
        while (!t->full && !t->stopping) {
            if (!qemu_cond_timedwait(&t->wake, &t->lock,
                                     BLOCK_IO_TRACE_FLUSH_MS) &&
                !t->full && t->fill[t->head]) {
                /* A second without a full buffer: write what there is */
                block_io_trace_seal(t);
            }
        }
        if (!t->full) {
            break;          /* stopping; the caller writes the last buffer */
        }
        i = (t->head + BLOCK_IO_TRACE_BUFFERS - t->full) %
            BLOCK_IO_TRACE_BUFFERS;
        n = t->fill[i];
        qemu_mutex_unlock(&t->lock);
        block_io_trace_write(t, i, n);
        qemu_mutex_lock(&t->lock);
        t->fill[i] = 0;
        t->full--;
    }
    qemu_mutex_unlock(&t->lock);
    return NULL;
}

/* Free @t: its file closed, its writer thread joined or never started */
static void block_io_trace_free(BlockIOTrace *t)
{
    for (int i = 0; i < BLOCK_IO_TRACE_BUFFERS; i++) {
        g_free(t->buffer[i]);
    }
    qemu_cond_destroy(&t->wake);
    qemu_mutex_destroy(&t->lock);
    g_free(t->target);
    g_free(t->filename);
    g_free(t);
}

/* The header of @t's file, complete if @complete */
static void block_io_trace_header(BlockIOTrace *t, BlockIOTraceHeader *h,
                                  bool complete)
{
    memset(h, 0, sizeof(*h));
    memcpy(h->magic, BLOCK_IO_TRACE_MAGIC, sizeof(h->magic));
    h->version = cpu_to_le32(BLOCK_IO_TRACE_VERSION);
    h->header_size = cpu_to_le32(BLOCK_IO_TRACE_HEADER_SIZE);
    h->record_size = cpu_to_le32(BLOCK_IO_TRACE_RECORD_SIZE);
    h->flags = cpu_to_le32(complete ? BLOCK_IO_TRACE_COMPLETE : 0);
    h->disk_length = cpu_to_le64(t->disk_length);
    h->records = cpu_to_le64(t->written);
    h->dropped = cpu_to_le64(t->dropped);
}

/*
 * The last reference to @t is gone: stop the writer, write the last records
 * and the complete header, and free @t (main loop)
 */
static void block_io_trace_finish(void *opaque)
{
    BlockIOTrace *t = opaque;
    BlockIOTraceHeader h;
    int ret;

    qemu_mutex_lock(&t->lock);
    t->stopping = true;
    qemu_cond_signal(&t->wake);
    qemu_mutex_unlock(&t->lock);
    qemu_thread_join(&t->writer);

    /* The writer wrote every full buffer; what is left is in @head */
    if (t->fill[t->head]) {
        block_io_trace_write(t, t->head, t->fill[t->head]);
    }
    if (t->write_error) {
        /* A failed write may have left part of its records: cut them */
        if (ftruncate(t->fd, BLOCK_IO_TRACE_HEADER_SIZE +
                      t->written * sizeof(BlockIOTraceRecord)) < 0) {
            error_report("I/O trace of %s: cannot cut %s after its %" PRIu64
                         " records: %s", t->target, t->filename, t->written,
                         strerror(errno));
        }
    }
    block_io_trace_header(t, &h, true);
    ret = block_io_trace_pwrite(t, &h, sizeof(h), 0);
    if (ret < 0 && !t->write_error) {
        t->write_error = -ret;
    }
    if (t->write_error) {
        error_report("I/O trace of %s: writing %s failed: %s; %" PRIu64
                     " requests are not in it", t->target, t->filename,
                     strerror(t->write_error), t->dropped);
    }
    trace_block_io_trace_finish(t, t->written, t->dropped);
    close(t->fd);
    block_io_trace_free(t);
}

/* Drop a reference to @t; whether it was the last */
static bool block_io_trace_put(BlockIOTrace *t)
{
    bool last;

    qemu_mutex_lock(&block_io_trace_attach_lock);
    last = --t->refcnt == 0;
    qemu_mutex_unlock(&block_io_trace_attach_lock);
    return last;
}

void block_io_trace_begin_traced(BlockIOTrace **slot,
                                 BlockIOTraceRequest *req)
{
    qemu_mutex_lock(&block_io_trace_attach_lock);
    req->trace = *slot;
    if (req->trace) {
        req->trace->refcnt++;
    }
    qemu_mutex_unlock(&block_io_trace_attach_lock);
    req->issued = get_clock();
}

void block_io_trace_end_traced(BlockIOTraceRequest *req, BlockIOTraceOp op,
                               BdrvRequestFlags flags, int64_t offset,
                               int64_t bytes, int ret)
{
    BlockIOTrace *t = req->trace;
    int64_t completed = get_clock();
    BlockIOTraceRecord *r;

    qemu_mutex_lock(&t->lock);
    if (t->write_error) {
        t->dropped++;           /* the file takes no more records */
        goto out;
    }
    if (t->fill[t->head] == BLOCK_IO_TRACE_BUFFER_RECORDS) {
        if (t->full == BLOCK_IO_TRACE_BUFFERS - 1) {
            t->dropped++;       /* every other buffer waits for the writer */
            goto out;
        }
        block_io_trace_seal(t);
    }
    r = &t->buffer[t->head][t->fill[t->head]++];
    *r = (BlockIOTraceRecord) {
        .issued = cpu_to_le64(req->issued - t->start),
        .completed = cpu_to_le64(completed - t->start),
        .offset = cpu_to_le64(offset),
        .bytes = cpu_to_le64(bytes),
        .op = op,
        .flags = (flags & BDRV_REQ_FUA ? BLOCK_IO_TRACE_FUA : 0) |
                 (flags & BDRV_REQ_ZERO_WRITE ? BLOCK_IO_TRACE_ZEROES : 0) |
                 (flags & BDRV_REQ_MAY_UNMAP ? BLOCK_IO_TRACE_UNMAP : 0) |
                 (flags & BDRV_REQ_PREFETCH ? BLOCK_IO_TRACE_PREFETCH : 0),
        .ret = cpu_to_le32(ret < 0 ? ret : 0),
    };
    t->records++;
out:
    qemu_mutex_unlock(&t->lock);
    if (block_io_trace_put(t)) {
        /* stopped while we ran: the main loop completes the file */
        aio_bh_schedule_oneshot(qemu_get_aio_context(),
                                block_io_trace_finish, t);
    }
}

static BlockIOTraceInfo *block_io_trace_info(BlockIOTrace *t)
{
    BlockIOTraceInfo *info = g_new0(BlockIOTraceInfo, 1);

    info->target = g_strdup(t->target);
    info->filename = g_strdup(t->filename);
    qemu_mutex_lock(&t->lock);
    info->records = t->records;
    info->dropped = t->dropped;
    if (t->write_error) {
        info->has_write_error = true;
        info->write_error = g_strdup(strerror(t->write_error));
    }
    qemu_mutex_unlock(&t->lock);
    return info;
}

bool block_io_trace_start(BlockBackend *blk, const char *target,
                          const char *filename, Error **errp)
{
    BlockIOTrace **slot = blk_io_trace_slot(blk);
    BlockIOTrace *t = *slot;
    BlockIOTraceHeader h;
    AioContext *ctx;
    int64_t length;
    int fd, ret;

    GLOBAL_STATE_CODE();

    if (t) {
        error_setg(errp, "%s is already being traced into '%s'",
                   target, t->filename);
        return false;
    }
    ctx = blk_get_aio_context(blk);
    aio_context_acquire(ctx);
    length = blk_getlength(blk);
    aio_context_release(ctx);
    if (length < 0) {
        error_setg_errno(errp, -length, "Cannot trace %s: no disk length",
                         target);
        return false;
    }
    /* O_EXCL: a file named by mistake (the disk itself) stays intact */
    fd = qemu_create(filename, O_WRONLY | O_EXCL | O_BINARY, 0600, errp);
    if (fd < 0) {
        error_prepend(errp, "Cannot trace %s: ", target);
        return false;
    }

    t = g_new0(BlockIOTrace, 1);
    t->blk = blk;
    t->target = g_strdup(target);
    t->filename = g_strdup(filename);
    t->fd = fd;
    t->disk_length = length;
    for (int i = 0; i < BLOCK_IO_TRACE_BUFFERS; i++) {
        t->buffer[i] = g_new(BlockIOTraceRecord,
                             BLOCK_IO_TRACE_BUFFER_RECORDS);
    }
    qemu_mutex_init(&t->lock);
    qemu_cond_init(&t->wake);

    /* An incomplete header first: a trace cut short still says so */
    block_io_trace_header(t, &h, false);
    ret = block_io_trace_pwrite(t, &h, sizeof(h), 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Cannot trace %s: writing '%s' failed",
                         target, filename);
        close(fd);
        unlink(filename);
        block_io_trace_free(t);
        return false;
    }
    qemu_thread_create(&t->writer, "io-trace", block_io_trace_writer, t,
                       QEMU_THREAD_JOINABLE);

    blk_ref(blk);
    QLIST_INSERT_HEAD(&block_io_traces, t, next);
    t->start = get_clock();
    qemu_mutex_lock(&block_io_trace_attach_lock);
    t->refcnt = 1;
    qatomic_set(slot, t);
    qemu_mutex_unlock(&block_io_trace_attach_lock);
    trace_block_io_trace_start(t, blk, length);
    return true;
}

/* Detach @t from its BlockBackend, wait for its requests, drop it */
static BlockIOTraceInfo *block_io_trace_detach(BlockIOTrace *t)
{
    BlockBackend *blk = t->blk;
    AioContext *ctx = blk_get_aio_context(blk);
    BlockIOTraceInfo *info;

    qemu_mutex_lock(&block_io_trace_attach_lock);
    qatomic_set(blk_io_trace_slot(blk), NULL);
    qemu_mutex_unlock(&block_io_trace_attach_lock);
    QLIST_REMOVE(t, next);

    /* The requests that started before are recorded before we count */
    aio_context_acquire(ctx);
    blk_drain(blk);

    info = block_io_trace_info(t);
    trace_block_io_trace_stop(t, info->records, info->dropped);
    if (block_io_trace_put(t)) {
        block_io_trace_finish(t);
    }
    /* Ours may be the last reference (a device or export gone since) */
    blk_unref(blk);
    aio_context_release(ctx);
    return info;
}

BlockIOTraceInfo *block_io_trace_stop(BlockBackend *blk, const char *target,
                                      Error **errp)
{
    BlockIOTrace *t = *blk_io_trace_slot(blk);

    GLOBAL_STATE_CODE();

    if (!t) {
        error_setg(errp, "No I/O trace is on for %s", target);
        return NULL;
    }
    return block_io_trace_detach(t);
}

BlockIOTraceInfo *block_io_trace_stop_target(const char *target)
{
    BlockIOTrace *t;

    GLOBAL_STATE_CODE();

    QLIST_FOREACH(t, &block_io_traces, next) {
        if (!strcmp(t->target, target)) {
            return block_io_trace_detach(t);
        }
    }
    return NULL;
}

BlockIOTraceInfoList *block_io_trace_query(void)
{
    BlockIOTraceInfoList *list = NULL;
    BlockIOTrace *t;

    GLOBAL_STATE_CODE();

    QLIST_FOREACH(t, &block_io_traces, next) {
        QAPI_LIST_PREPEND(list, block_io_trace_info(t));
    }
    return list;
}

void block_io_trace_stop_all(void)
{
    GLOBAL_STATE_CODE();

    while (!QLIST_EMPTY(&block_io_traces)) {
        qapi_free_BlockIOTraceInfo(
            block_io_trace_detach(QLIST_FIRST(&block_io_traces)));
    }
}
