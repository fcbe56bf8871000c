/*
 * sQemu: recording the block I/O a device sends to its disk
 *
 * Copyright (c) 2026 The sQemu authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * A trace records, for every request a BlockBackend (a guest device's disk,
 * or an export's) receives, what was asked and when: the operation, its
 * offset and length, its flags, when it was issued and when it completed,
 * and its result.  It records no data, no file or node name, no wall clock
 * time: timestamps count nanoseconds from the start of the trace.  QMP
 * switches it on and off while the guest runs (block-io-trace-start and
 * -stop); the records go to a file through a writer thread, so a request
 * only appends 40 bytes to a buffer in memory.
 *
 * File format (little endian): a 64-byte header, then one 40-byte record per
 * completed request, in the order the records were appended (which is the
 * order of completion, but for requests completing at once in different
 * threads).
 *
 *   header   0  magic "SQIOTRAC"
 *            8  u32 version (1)
 *           12  u32 header size (64)
 *           16  u32 record size (40)
 *           20  u32 flags: bit 0 set once the trace was stopped and the file
 *               is complete
 *           24  u64 length of the disk in bytes when the trace started
 *           32  u64 records in the file (set when complete)
 *           40  u64 requests that were not recorded (the writer could not
 *               keep up, or writing the file failed)
 *           48  16 bytes reserved (zero)
 *   record   0  u64 issued: ns since the trace started
 *            8  u64 completed: ns since the trace started
 *           16  u64 offset in bytes
 *           24  u64 length in bytes (0 for a flush)
 *           32  u8  operation: 0 read, 1 write, 2 discard, 3 flush
 *           33  u8  flags: bit 0 FUA, bit 1 write zeroes, bit 2 may unmap,
 *               bit 3 prefetch (an NBD client's CACHE request)
 *           34  u16 reserved (zero)
 *           36  s32 result: 0, or a negative errno
 */

#ifndef BLOCK_BLOCK_IO_TRACE_H
#define BLOCK_BLOCK_IO_TRACE_H

#include "block/block-common.h"
#include "qapi/qapi-types-block-core.h"

typedef struct BlockIOTrace BlockIOTrace;

typedef enum BlockIOTraceOp {
    BLOCK_IO_TRACE_READ = 0,
    BLOCK_IO_TRACE_WRITE = 1,
    BLOCK_IO_TRACE_DISCARD = 2,
    BLOCK_IO_TRACE_FLUSH = 3,
} BlockIOTraceOp;

#define BLOCK_IO_TRACE_MAGIC "SQIOTRAC"
#define BLOCK_IO_TRACE_VERSION 1
#define BLOCK_IO_TRACE_HEADER_SIZE 64
#define BLOCK_IO_TRACE_RECORD_SIZE 40
#define BLOCK_IO_TRACE_COMPLETE 1

#define BLOCK_IO_TRACE_FUA 1
#define BLOCK_IO_TRACE_ZEROES 2
#define BLOCK_IO_TRACE_UNMAP 4
#define BLOCK_IO_TRACE_PREFETCH 8

/* One request being traced, on its coroutine's stack */
typedef struct BlockIOTraceRequest {
    BlockIOTrace *trace;        /* NULL: the request is not traced */
    int64_t issued;
} BlockIOTraceRequest;

/* The trace slot of @blk (block-backend.c: the BlockBackend is opaque) */
BlockIOTrace **blk_io_trace_slot(BlockBackend *blk);

void block_io_trace_begin_traced(BlockIOTrace **slot,
                                 BlockIOTraceRequest *req);
void block_io_trace_end_traced(BlockIOTraceRequest *req, BlockIOTraceOp op,
                               BdrvRequestFlags flags, int64_t offset,
                               int64_t bytes, int ret);

/*
 * A request of a BlockBackend starts (@slot is its trace slot): the only
 * cost while no trace is on is this test.
 */
static inline void block_io_trace_begin(BlockIOTrace **slot,
                                        BlockIOTraceRequest *req)
{
    req->trace = NULL;
    if (unlikely(qatomic_read(slot))) {
        block_io_trace_begin_traced(slot, req);
    }
}

/* The request that block_io_trace_begin() saw start completed with @ret */
static inline void block_io_trace_end(BlockIOTraceRequest *req,
                                      BlockIOTraceOp op,
                                      BdrvRequestFlags flags,
                                      int64_t offset, int64_t bytes, int ret)
{
    if (unlikely(req->trace)) {
        block_io_trace_end_traced(req, op, flags, offset, bytes, ret);
    }
}

/*
 * Start tracing the requests of @blk into a new file @filename; @target is
 * how the operator named @blk (for query and errors).
 */
bool block_io_trace_start(BlockBackend *blk, const char *target,
                          const char *filename, Error **errp);

/*
 * Stop tracing @blk (named @target by the operator); the trace's counters,
 * or NULL if it had none
 */
BlockIOTraceInfo *block_io_trace_stop(BlockBackend *blk, const char *target,
                                      Error **errp);

/*
 * Stop the trace that was started for @target (as named then), if there is
 * one: the trace of a device or export that is gone; its counters, or NULL
 */
BlockIOTraceInfo *block_io_trace_stop_target(const char *target);

/* The traces that are on */
BlockIOTraceInfoList *block_io_trace_query(void);

/* Stop every trace and complete its file (before the block layer closes) */
void block_io_trace_stop_all(void);

#endif
