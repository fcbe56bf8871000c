# SPDX-License-Identifier: GPL-2.0-or-later
#
# trace convert: public block I/O traces as fio iolog version 3 (issue 21,
# the conversion part of the trace tools).
#
#   trace convert --from alibaba|tencent [--volume ID] IN OUT --target FILE
#
# reads a trace in one of the public CSV formats and writes the same
# operations as a fio iolog (version 3) that replays them against FILE
# (a disk, or an NBD export through fio's nbd engine: any name fio opens):
#
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

FORMATS = ('alibaba', 'tencent')
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


def add_parser(sub):
    """trace convert's parser, under @sub (trace's subcommands)"""
    conv = sub.add_parser('convert', help='a public CSV trace as a fio '
                          'iolog (version 3)', description='Write the '
                          'operations of a public block trace (Alibaba '
                          '2020, Tencent CBS 2018 CSV) as a fio iolog '
                          'version 3 replaying them against --target.')
    conv.add_argument('--from', dest='format', choices=FORMATS,
                      required=True, help='the trace\'s format')
    conv.add_argument('--volume', help='keep this volume only (alibaba '
                      'device_id, tencent VolumeID)')
    conv.add_argument('--target', required=True,
                      help='the file name fio replays the operations on')
    conv.add_argument('input', metavar='IN')
    conv.add_argument('output', metavar='OUT')
    conv.set_defaults(run=cmd_convert, errors=(TraceError, OSError))
