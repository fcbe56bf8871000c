# SPDX-License-Identifier: GPL-2.0-or-later
#
# trace convert: public block I/O traces as fio iolog version 3 (issue 21,
# the conversion part of the trace tools).
#
#   trace convert --from sqemu|alibaba|tencent [--volume ID] IN OUT
#                 --target FILE
#
# reads a trace recorded by sQemu (block-io-trace-start, trace record) or
# in one of the public CSV formats and writes the same operations as a fio
# iolog (version 3) that replays them against FILE (a disk, or an NBD
# export through fio's nbd engine: any name fio opens):
#
#   sqemu     sQemu's I/O trace files (python/sqemu/trace_file.py): reads,
#             writes (write zeroes too), discards as trims, flushes as
#             syncs, at the time each was issued; the recorded latencies
#             are summed up
#   alibaba   Alibaba's block traces (2020): device_id,opcode,offset,
#             length,timestamp; opcode R or W, offset and length in bytes,
#             timestamp in microseconds
#   tencent   Tencent's CBS traces (2018): Timestamp,Offset,Size,IOType,
#             VolumeID; timestamp in seconds, offset and size in 512-byte
#             sectors, IOType 0 read and 1 write
#
# A trace holds many volumes; --volume keeps one (its device_id or
# VolumeID), else all are replayed against FILE.  Timestamps become
# microseconds from the first operation kept (fio's unit: its own iolog
# writer uses microseconds since the job started).  Lines that are not
# operations (a header, a blank line) are skipped; a malformed operation
# is an error that names its line.  What a trace records is kept as it
# is: the operation, offset, length and time, nothing else.

from sqemu import trace_file

FORMATS = ('sqemu', 'alibaba', 'tencent')
# sQemu's operations as fio iolog actions
SQEMU_ACTIONS = {'read': 'read', 'write': 'write', 'discard': 'trim',
                 'flush': 'sync'}
SECTOR = 512


class TraceError(Exception):
    pass


def _ops_from(lines, parse, volume):
    ops = []
    for number, line in enumerate(lines, 1):
        fields = [f.strip() for f in line.strip().split(',')]
        if not line.strip() or not fields[0][:1].isdigit():
            continue            # a header or a blank line
        try:
            vol, op = parse(fields)
        except (ValueError, IndexError) as e:
            raise TraceError('line %d: not an operation of this format '
                             '(%s): %r' % (number, e, line.strip()))
        if volume is not None and vol != volume:
            continue
        if op[2] < 0 or op[3] <= 0:
            raise TraceError('line %d: offset %d, length %d' %
                             (number, op[2], op[3]))
        ops.append(op)
    return ops


def _alibaba(fields):
    device, opcode, offset, length, ts = fields[:5]
    kind = {'R': 'read', 'W': 'write'}.get(opcode.upper())
    if kind is None:
        raise ValueError('opcode %r' % opcode)
    return device, (int(ts), kind, int(offset), int(length))


def _tencent(fields):
    ts, offset, size, iotype, volume = fields[:5]
    kind = {'0': 'read', '1': 'write'}.get(iotype)
    if kind is None:
        raise ValueError('IOType %r' % iotype)
    return volume, (int(float(ts) * 1000000), kind, int(offset) * SECTOR,
                    int(size) * SECTOR)


def read_trace(lines, fmt, volume=None):
    """The operations (time in us, 'read' or 'write', offset, length) of
    trace @lines in format @fmt, volume @volume only if given"""
    parse = {'alibaba': _alibaba, 'tencent': _tencent}[fmt]
    return _ops_from(lines, parse, volume)


def read_sqemu(path):
    """The operations of sQemu trace file @path as read_trace gives them
    (sync operations have offset and length 0), and the trace"""
    trace = trace_file.Trace(path)
    ops = [(issued // 1000, SQEMU_ACTIONS[op], offset, length)
           for issued, _, offset, length, op, _, _ in trace.requests]
    return ops, trace


def fio_iolog(ops, target):
    """fio iolog version 3 lines that replay @ops against @target, at the
    recorded pace (timestamps from the first operation)"""
    ops = sorted(ops, key=lambda o: o[0])
    t0 = ops[0][0] if ops else 0
    lines = ['fio version 3 iolog', '0 %s add' % target,
             '0 %s open' % target]
    lines += ['%d %s %s %d %d' % (t - t0, target, kind, offset, length)
              for t, kind, offset, length in ops]
    lines.append('%d %s close' % ((ops[-1][0] - t0) if ops else 0, target))
    return '\n'.join(lines) + '\n'


def cmd_convert(args):
    trace = None
    if args.format == 'sqemu':
        if args.volume:
            raise TraceError('--volume: an sQemu trace records one disk')
        ops, trace = read_sqemu(args.input)
        for warning in trace.warnings():
            print('trace convert: warning: %s: %s' % (args.input, warning))
    else:
        with open(args.input) as f:
            ops = read_trace(f, args.format, args.volume)
    if not ops:
        raise TraceError('%s holds no operation%s' % (
            args.input, ' of volume %s' % args.volume if args.volume else ''))
    with open(args.output, 'w') as f:
        f.write(fio_iolog(ops, args.target))
    print('trace convert: %d operations (%d reads), %.1f s, into %s' %
          (len(ops), sum(1 for o in ops if o[1] == 'read'),
           (max(o[0] for o in ops) - min(o[0] for o in ops)) / 1e6,
           args.output))
    if trace:
        for op, (n, p50, p99, top) in sorted(
                trace_file.latency_summary(trace.requests).items()):
            print('trace convert: recorded %s latency: n=%d  p50 %.0f us  '
                  'p99 %.0f us  max %.0f us' % (op, n, p50, p99, top))


def add_parser(sub):
    """trace convert's parser, under @sub (trace's subcommands)"""
    conv = sub.add_parser('convert', help='a block trace as a fio '
                          'iolog (version 3)', description='Write the '
                          'operations of a block trace (sQemu\'s I/O '
                          'trace files, Alibaba 2020 or Tencent CBS 2018 '
                          'CSV) as a fio iolog version 3 replaying them '
                          'against --target.')
    conv.add_argument('--from', dest='format', choices=FORMATS,
                      required=True, help='the trace\'s format')
    conv.add_argument('--volume', help='keep this volume only (alibaba '
                      'device_id, tencent VolumeID)')
    conv.add_argument('--target', required=True,
                      help='the file name fio replays the operations on')
    conv.add_argument('input', metavar='IN')
    conv.add_argument('output', metavar='OUT')
    conv.set_defaults(run=cmd_convert, errors=(
        TraceError, trace_file.TraceFileError, OSError))
