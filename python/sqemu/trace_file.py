# SPDX-License-Identifier: GPL-2.0-or-later
#
# sQemu's I/O trace files: what block-io-trace-start records (see
# block/block-io-trace.h for the format).  A 64-byte header, then one
# 40-byte record per completed request, in completion order: issue and
# completion times in ns from the start of the trace, offset, length,
# operation, flags, result.  No data and no names are in the file.

import struct

MAGIC = b'SQIOTRAC'
HEADER = struct.Struct('<8sIIIIQQQ16x')
RECORD = struct.Struct('<QQQQBBHi')
COMPLETE = 1
OPS = ('read', 'write', 'discard', 'flush')
FLAGS = ((1, 'fua'), (2, 'zeroes'), (4, 'unmap'), (8, 'prefetch'))


class TraceFileError(Exception):
    pass


class Trace:
    """The trace in file @path: its header's fields (disk_length,
    complete, records, dropped) and its requests, each a tuple (issued_ns,
    completed_ns, offset, length, operation name, flags, result)"""

    def __init__(self, path):
        with open(path, 'rb') as f:
            data = f.read()
        if len(data) < HEADER.size or data[:8] != MAGIC:
            raise TraceFileError('%s is not an sQemu I/O trace (no %s '
                                 'header)' % (path, MAGIC.decode()))
        (_, version, header_size, record_size, flags, self.disk_length,
         self.records, self.dropped) = HEADER.unpack_from(data)
        if (version != 1 or header_size != HEADER.size or
                record_size != RECORD.size):
            raise TraceFileError('%s: I/O trace version %d (header %d, '
                                 'record %d bytes) is not known here' %
                                 (path, version, header_size, record_size))
        self.complete = bool(flags & COMPLETE)
        body = data[HEADER.size:]
        whole = len(body) - len(body) % RECORD.size
        self.excess = 0
        if self.complete and whole > self.records * RECORD.size:
            # a write that failed part-way left records the header does
            # not count: they are not read
            self.excess = whole // RECORD.size - self.records
            whole = self.records * RECORD.size
        self.requests = []
        for issued, completed, offset, length, op, fl, _, ret in \
                RECORD.iter_unpack(body[:whole]):
            if op >= len(OPS):
                raise TraceFileError('%s: record %d has operation %d' %
                                     (path, len(self.requests), op))
            self.requests.append((issued, completed, offset, length,
                                  OPS[op], fl, ret))
        if self.complete and len(self.requests) < self.records:
            raise TraceFileError('%s: the header says %d records, the file '
                                 'holds %d' % (path, self.records,
                                               len(self.requests)))

    def warnings(self):
        """What the reader of this trace must know, in words"""
        said = []
        if not self.complete:
            said.append('the trace was not stopped (QEMU was killed, or it '
                        'is still on): %d whole records read' %
                        len(self.requests))
        if self.excess:
            said.append('%d records past the %d the header counts were not '
                        'read (a write of the trace failed part-way)' %
                        (self.excess, self.records))
        if self.dropped:
            said.append('%d requests were not recorded (its writer could '
                        'not keep up, or writing the file failed)' %
                        self.dropped)
        return said


def flag_names(flags):
    """The names of record flags @flags"""
    return [name for bit, name in FLAGS if flags & bit]


def latency_summary(requests):
    """{operation: (count, p50 us, p99 us, max us)} of @requests' issue
    to completion times"""
    by_op = {}
    for issued, completed, _, _, op, _, _ in requests:
        by_op.setdefault(op, []).append((completed - issued) / 1000)
    summary = {}
    for op, lat in by_op.items():
        lat.sort()
        summary[op] = (len(lat), lat[len(lat) // 2],
                       lat[min(len(lat) - 1, int(len(lat) * 0.99))], lat[-1])
    return summary
