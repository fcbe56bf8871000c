# SPDX-License-Identifier: GPL-2.0-or-later
#
# trace replay: replay a block trace (a fio iolog version 3, as trace
# convert writes) against stock QEMU and sQemu (ours) on the same backing
# chain, and report what each served, side by side (issue 21, item 5).
#
#   trace replay IOLOG --chain TOP [--stock-chain TOP] [--pace
#                recorded|max|both] [--iodepth N] [--rounds K]
#                [--builds stock,ours] [--skip-trims] [--json FILE]
#                [--workdir DIR] [--keep]
#
# --stock-chain gives stock a chain of its own (e.g. the plain overlays
# stock QEMU makes, where ours replays the indexed chain of the same
# layout); the two must be disks of the same size.
#
# Each build's qemu-storage-daemon serves the chain over NBD on a unix
# socket, and fio's nbd engine replays the log against that export: at the
# recorded pace (fio keeps the log's times, one operation in flight) and/or
# as fast as possible (replay_no_stall, at most --iodepth in flight).  The
# file names in the log do not matter: fio's nbd engine serves every file
# of a job through its one connection, whatever it is called, and only
# needs names its iolog parser takes (no space, at most 256 bytes).  The
# log is therefore rewritten into the work directory with one file,
# "nbd", added and opened before the first operation and closed after the
# last; the operations keep their order, times, offsets and lengths.
#
# Two things fio 3.33 does with an iolog and an asynchronous engine (nbd,
# libaio and io_uring alike) decide how it is run:
#   - completions it reaps after the log has run out are not counted: at
#     iodepth 16 a log of 5 reads reports them issued but 0 bytes read (and
#     trailing syncs as padding only help by luck).  So fio gets a
#     thinktime of 1 us after as many operations as the log holds
#     (thinktime_blocks_type=issue): fio waits for everything in flight
#     before it, right after issuing the last operation, and counts it all;
#   - it reaps completions only when its queue is full, never while it
#     sleeps until the next operation's time: at the recorded pace with
#     iodepth 16, reads of a few ms showed 300 ms latencies (the gap to the
#     next operation).  So the recorded pace runs at iodepth 1, where fio
#     waits for each completion and then sleeps what is left of the gap
#     (the replay keeps the recorded times while each operation takes less
#     than its gap, and falls behind in bursts); --iodepth is the as fast
#     as possible pace's.
#
# Writes must not change the operator's chain.  Each replay runs on a
# throwaway copy of the top layer, made next to the top (so that relative
# backing file names resolve as they do for the top) and named
# .TOP.replay-PID-BUILD-PACE; the layers below are opened read-only, as
# backing files always are.  A copy, not a new overlay: an overlay would
# add a layer to the chain the builds are compared on, and for ours a
# `qemu-img create -b` of an indexed chain copies the L2 tables into it
# (see "What a snapshot with L2 copy costs"), which is not what the
# operator's chain reads like.  A fresh copy for every replay: the writes
# of one replay must not be in the next one's chain, and stock's
# read-write open clears the backing index's valid bit of the image it
# opens (an autoclear bit it does not know), which would make ours read a
# copy that stock had opened the vanilla way.  A copy costs the top
# layer's size in time and space (checked before starting); a top in use
# by a writer (a QEMU image lock) is refused, since its copy would not be
# consistent.  The copies and the work directory are removed when the
# command ends, also on SIGTERM, SIGHUP or ^C.
#
# The files are opened with O_DIRECT (cache.direct, as bench does), so
# that the page cache does not favour the build that runs second.  Both
# builds replay the same chain one after the other, for each pace; with
# --rounds K the order alternates (stock first in odd rounds, ours first
# in even ones), since this machine's timings drift by 20% over minutes,
# and the medians over the rounds are reported.
#
# The report: per pace and build, the operations fio issued (reads,
# writes, trims and their bytes, from fio's JSON), throughput (IOPS, MB/s
# of reads and writes) and completion latency percentiles over all
# operations (p50, p90, p99, p99.9, max), and the ratio ours/stock of each;
# ours' backing index counters (direct reads, vanilla fallbacks) from
# query-blockstats, which say whether ours read through the index.  Every
# replay must issue, and see completed, exactly the log's operations
# (reads, writes, trims, their bytes, and syncs, which fio's nbd engine
# sends as flushes); the report says so, and a mismatch is an error
# (exit status 1, after the table and the JSON).  fio 3.33 (Debian 12)
# does not replay trims from an iolog (it skips them: "bad ddir: 2"); a
# log with trims is then refused unless --skip-trims, which leaves them
# out of the replay and of the counts it is checked against.

import argparse
import os
import shutil
import signal
import statistics
import struct
import subprocess
import time

from sqemu import paths, util
from sqemu.pool_index import lock_holder
from sqemu.qsd import Daemon

BUILDS = ('stock', 'ours')
PACES = ('recorded', 'max')
KINDS = ('read', 'write', 'trim')           # what the report counts
IO_ACTIONS = KINDS + ('sync', 'datasync')   # an iolog's operations
FILE_ACTIONS = ('add', 'open', 'close')
IOLOG_V3 = 'fio version 3 iolog'
# the one file of the rewritten log: the name fio's nbd engine gives its
# file when a job has none
FIO_FILE = 'nbd'
PERCENTILES = (50, 90, 99, 99.9)
DEFAULT_IODEPTH = 16
QCOW2_MAGIC = b'QFI\xfb'
INDEX_VALID = 1 << 16           # autoclear bit: the backing index is valid
MAX_LAYERS = 65536
DAEMON_STOP_TIMEOUT = 120


class ReplayError(Exception):
    pass


progress = util.printer('trace replay', stderr=True)


# The iolog.

class Op:
    """One operation of an iolog: its @line number in the file, @time
    (microseconds, as written), @action, @offset and @length in bytes"""

    def __init__(self, line, time_us, action, offset, length):
        self.line = line
        self.time = time_us
        self.action = action
        self.offset = offset
        self.length = length

    def __repr__(self):
        return 'Op(%d, %d, %s, %d, %d)' % (self.line, self.time, self.action,
                                           self.offset, self.length)


def parse_iolog(lines, name='IOLOG'):
    """The operations of fio iolog version 3 @lines (file @name, for
    errors), and the file names it holds; file actions (add, open, close)
    are checked, not kept"""
    lines = iter(lines)
    first = next(lines, '').rstrip('\n')
    if not first.startswith(IOLOG_V3):
        raise ReplayError('%s is not a fio iolog version 3 (its first line '
                          'is %r, not %r)' % (name, first[:60], IOLOG_V3))
    ops, names = [], []
    for number, line in enumerate(lines, 2):
        fields = line.split()
        if not fields:
            continue
        where = '%s line %d' % (name, number)
        try:
            time_us = int(fields[0])
            if time_us < 0:
                raise ValueError
        except ValueError:
            raise ReplayError('%s: bad time %r: %r' %
                              (where, fields[0], line.strip()))
        if len(fields) == 3 and fields[2] in FILE_ACTIONS:
            if fields[1] not in names:
                names.append(fields[1])
            continue
        if len(fields) != 5 or fields[2] not in IO_ACTIONS:
            raise ReplayError('%s: not an operation of a version 3 iolog '
                              '(TIME FILE %s OFFSET LENGTH, or TIME FILE '
                              '%s): %r' % (where, '|'.join(IO_ACTIONS),
                                           '|'.join(FILE_ACTIONS),
                                           line.strip()))
        try:
            offset, length = int(fields[3]), int(fields[4])
            if offset < 0 or length < 0:
                raise ValueError
        except ValueError:
            raise ReplayError('%s: bad offset or length: %r' %
                              (where, line.strip()))
        if fields[2] in KINDS and not length:
            raise ReplayError('%s: %s of 0 bytes' % (where, fields[2]))
        if fields[1] not in names:
            names.append(fields[1])
        ops.append(Op(number, time_us, fields[2], offset, length))
    if not ops:
        raise ReplayError('%s holds no operation' % name)
    return ops, names


def read_iolog(path):
    """parse_iolog of file @path"""
    try:
        with open(path) as f:
            return parse_iolog(f, path)
    except UnicodeDecodeError:
        raise ReplayError('%s is not a fio iolog version 3 (not text)' %
                          path)
    except OSError as e:
        raise ReplayError('iolog %s: %s' % (path, e.strerror or e))


def count(ops):
    """{kind: {'ios': n, 'bytes': b}} of @ops for reads, writes and trims,
    and 'sync' (sync and datasync, no bytes)"""
    counts = {kind: {'ios': 0, 'bytes': 0} for kind in KINDS + ('sync',)}
    for op in ops:
        if op.action in KINDS:
            counts[op.action]['ios'] += 1
            counts[op.action]['bytes'] += op.length
        else:
            counts['sync']['ios'] += 1
    return counts


def span_s(ops):
    """Seconds from the first operation to the last, as recorded"""
    return (max(o.time for o in ops) - min(o.time for o in ops)) / 1e6


def check_bounds(ops, size, name):
    """Exception if one of @ops goes past the disk's @size bytes"""
    for op in ops:
        if op.action in KINDS and op.offset + op.length > size:
            raise ReplayError('%s line %d: %s of %d bytes at %d goes past '
                              'the end of the disk (%d bytes)' %
                              (name, op.line, op.action, op.length,
                               op.offset, size))


def replay_log(ops, target=FIO_FILE):
    """Iolog version 3 text that replays @ops in their order and at their
    times against one file named @target"""
    first, last = ops[0].time, ops[-1].time
    lines = [IOLOG_V3, '%d %s add' % (first, target),
             '%d %s open' % (first, target)]
    lines += ['%d %s %s %d %d' % (o.time, target, o.action, o.offset,
                                  o.length) for o in ops]
    lines.append('%d %s close' % (max(first, last), target))
    return '\n'.join(lines) + '\n'


# The chain.

def read_header(path):
    """(virtual size, backing file name or None, autoclear bits) of qcow2
    image @path; None if @path is not a qcow2 image"""
    with open(path, 'rb') as f:
        head = f.read(104)
        if len(head) < 72 or head[:4] != QCOW2_MAGIC:
            return None
        version, backing_offset, backing_len = struct.unpack(
            '>IQI', head[4:20])
        size = struct.unpack('>Q', head[24:32])[0]
        autoclear = 0
        if version >= 3 and len(head) >= 96:
            autoclear = struct.unpack('>Q', head[88:96])[0]
        name = None
        if backing_offset and backing_len:
            f.seek(backing_offset)
            name = f.read(backing_len).decode('utf-8', 'replace')
    return size, name, autoclear


def chain_layers(top):
    """The local files of the chain of qcow2 image @top, top first (a
    backing file that is not a local path, e.g. a URL, ends the walk);
    exception naming the layer if a file is missing or not qcow2"""
    if not os.path.isfile(top):
        raise ReplayError('chain %s: no such file' % top)
    layers = []
    path = os.path.abspath(top)
    while path:
        if path in layers or len(layers) >= MAX_LAYERS:
            raise ReplayError('chain %s: backing files loop at %s' %
                              (top, path))
        try:
            header = read_header(path)
        except OSError as e:
            raise ReplayError('chain %s: %s: %s' % (top, path, e.strerror))
        if header is None:
            if not layers:
                raise ReplayError('chain %s is not a qcow2 image' % top)
            layers.append(path)     # a raw base
            break
        layers.append(path)
        name = header[1]
        if name is None or name.startswith('json:') or '://' in name:
            break
        below = os.path.join(os.path.dirname(path), name)
        if not os.path.exists(below):
            raise ReplayError('chain %s is broken: the backing file %s of '
                              '%s does not exist' % (top, below, path))
        path = os.path.abspath(below)
    return layers


def copy_name(top, tag):
    """The throwaway copy of @top for replay @tag, next to it"""
    return os.path.join(os.path.dirname(os.path.abspath(top)),
                        '.%s.replay-%d-%s' % (os.path.basename(top),
                                              os.getpid(), tag))


class Throwaway:
    """A copy of chain top @top at @path (next to @top), made on entering
    a with block and removed on leaving it, whatever ends it.

    The copy is written to disk (fsync) before it is used: otherwise the
    replay's first flush that reaches the file (an fdatasync) writes back
    the whole copy from the page cache, hundreds of ms for a large top,
    and only for a build that wrote to the image since its open: ours and
    stock both write the header when they open an image with the backing
    index's autoclear bit read-write (a plain image's flush finds nothing
    written and is skipped), so a 1-layer indexed chain of 800 MiB made
    ours' p99 60x stock's at the max pace of a trace with one sync."""

    def __init__(self, top, path):
        self.top = top
        self.path = path

    def __enter__(self):
        try:
            res = subprocess.run(['cp', '--reflink=auto', self.top,
                                  self.path], stdin=subprocess.DEVNULL,
                                 capture_output=True, text=True)
        except BaseException:
            self.remove()
            raise
        if res.returncode:
            self.remove()
            raise ReplayError('cannot copy the chain\'s top next to it '
                              '(the copy keeps its relative backing '
                              'names): %s' % util.tail(res.stderr, 1))
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            self.remove()
            raise
        return self.path

    def __exit__(self, *exc):
        self.remove()

    def remove(self):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def check_space(top, write_bytes, cluster=2 << 20):
    """Exception if the top's directory has no room for its copy and the
    writes (each rounded up to a large cluster, with a margin)"""
    need = os.path.getsize(top) + write_bytes + cluster + (64 << 20)
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(top))).free
    if free < need:
        raise ReplayError('no room next to %s for its throwaway copy: %d '
                          'MiB free, %d MiB needed' %
                          (top, free >> 20, need >> 20))


# fio.

def fio_version():
    try:
        return subprocess.run(['fio', '--version'], capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        raise ReplayError('fio is missing (apt-get install fio)')


def fio_replays_trims(workdir):
    """Whether this fio replays a trim of an iolog (fio 3.33 skips them)"""
    log = os.path.join(workdir, 'trim-probe.iolog')
    with open(log, 'w') as f:
        # fio 3.33 refuses a log without a read or a write
        f.write(replay_log([Op(2, 0, 'read', 0, 4096),
                            Op(3, 0, 'trim', 0, 4096)], 'probe'))
    res = subprocess.run(['fio', '--name=probe', '--ioengine=null',
                          '--size=1M', '--read_iolog=' + log,
                          '--output-format=json'],
                         stdin=subprocess.DEVNULL, capture_output=True,
                         text=True)
    os.unlink(log)
    if res.returncode:
        raise ReplayError('fio failed on a one-trim iolog: %s' %
                          util.tail(res.stderr + res.stdout, 2))
    return util.fio_job(res.stdout, ReplayError)['trim']['total_ios'] == 1


def pace_iodepth(pace, iodepth):
    """The iodepth fio runs at @pace (see the header)"""
    return 1 if pace == 'recorded' else iodepth


def fio_command(uri, log, pace, iodepth, transfers):
    """fio replaying iolog @log against NBD export @uri at @pace; the log
    holds @transfers reads, writes and trims"""
    cmd = ['fio', '--name=replay', '--ioengine=nbd', '--uri=' + uri,
           '--read_iolog=' + log,
           '--iodepth=%d' % pace_iodepth(pace, iodepth),
           # wait for all in flight right after the last one is issued
           '--thinktime=1', '--thinktime_blocks=%d' % transfers,
           '--thinktime_blocks_type=issue',
           '--unified_rw_reporting=both',
           '--percentile_list=' + ':'.join('%g' % p for p in PERCENTILES),
           '--output-format=json']
    if pace == 'max':
        cmd.append('--replay_no_stall=1')
    return cmd


def run_fio(cmd, output):
    """fio's job of @cmd (JSON), its output kept in file @output; the
    process is killed if anything interrupts it"""
    with open(output, 'w+') as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        text = out.read()
    if code:
        raise ReplayError('fio failed (%s): %s' %
                          (util.describe_status(code), util.tail(text, 3)))
    job = util.fio_job(text, ReplayError)
    if job.get('error'):
        raise ReplayError('fio\'s job failed with error %d: %s' %
                          (job['error'], util.tail(text, 3)))
    if 'mixed' not in job:
        raise ReplayError('fio printed no "mixed" statistics (fio older '
                          'than 3.26?)')
    return job


def _ms(ns):
    return ns / 1e6


def latency(stats):
    """Completion latency of fio's @stats for one direction (or 'mixed'):
    {'p50': ms, ..., 'max': ms, 'mean': ms}; None without operations"""
    clat = stats.get('clat_ns', {})
    if not clat.get('N') or 'percentile' not in clat:
        return None
    lat = {'p%g' % p: _ms(clat['percentile']['%f' % p])
           for p in PERCENTILES}
    lat['max'] = _ms(clat['max'])
    lat['mean'] = _ms(clat['mean'])
    return lat


def summarize(job):
    """What a replay's fio @job says: operations issued by kind, IOPS,
    MB/s, elapsed seconds and completion latencies (all operations, and
    by kind)"""
    issued = {kind: {'ios': job[kind]['total_ios'],
                     'bytes': job[kind]['io_bytes'],
                     'completed': job[kind].get('clat_ns', {}).get('N', 0)}
              for kind in KINDS}
    issued['sync'] = {'ios': job.get('sync', {}).get('total_ios', 0),
                      'bytes': 0}
    mixed = job['mixed']
    return {'issued': issued,
            'iops': mixed['iops'],
            'mb_s': (job['read']['bw_bytes'] + job['write']['bw_bytes'])
            / 1e6,
            'runtime_s': job.get('job_runtime', mixed['runtime']) / 1e3,
            'clat_ms': latency(mixed),
            'clat_ms_by_kind': {kind: latency(job[kind]) for kind in KINDS}}


def mismatches(expected, issued):
    """What differs between the @expected counts (count()) and the
    @issued ones (summarize()), in words"""
    wrong = []
    for kind in KINDS + ('sync',):
        for what in ('ios', 'bytes'):
            want, got = expected[kind][what], issued[kind][what]
            if want != got:
                wrong.append('%s %s: %d in the trace, %d replayed' %
                             (kind, 'operations' if what == 'ios'
                              else 'bytes', want, got))
        if kind in KINDS and issued[kind]['completed'] != \
                issued[kind]['ios']:
            wrong.append('%s operations: %d issued, %d completed' %
                         (kind, issued[kind]['ios'],
                          issued[kind]['completed']))
    return wrong


# One replay.

def index_counters(daemon, node='disk'):
    """Ours' backing index counters of the top node (query-blockstats), or
    None (stock, or a chain without the index)"""
    mon = daemon.monitor(wait=10, timeout=60)
    try:
        stats = mon.cmd('query-blockstats', **{'query-nodes': True})
    finally:
        mon.close()
    for entry in stats:
        if entry.get('node-name') == node:
            return (entry.get('driver-specific') or {}).get('backing-index')
    return None


def transfers(counts):
    """Reads, writes and trims of @counts (count())"""
    return sum(counts[kind]['ios'] for kind in KINDS)


def replay(binary, top, log, pace, iodepth, transfers, rundir, tag):
    """Replay iolog file @log with fio at @pace through @binary (a
    qemu-storage-daemon) serving a throwaway copy of chain top @top; the
    summary of fio's job, with the daemon's index counters"""
    os.makedirs(rundir)
    with Throwaway(top, copy_name(top, tag)) as copy:
        # cache.direct on the qcow2 node, which the backing layers
        # inherit: on the file node alone only the top was read O_DIRECT
        blockdev = {'driver': 'qcow2', 'node-name': 'disk',
                    'discard': 'unmap', 'cache': {'direct': True},
                    'file': {'driver': 'file', 'filename': copy,
                             'cache': {'direct': True}}}
        with Daemon(binary, blockdev, rundir, ReplayError,
                    writable=True) as daemon:
            started = time.monotonic()
            job = run_fio(fio_command(daemon.uri, log, pace, iodepth,
                                      transfers),
                          os.path.join(rundir, 'fio.json'))
            wall = time.monotonic() - started
            if not daemon.alive():
                raise daemon.failed()
            counters = index_counters(daemon)
            daemon.stop(DAEMON_STOP_TIMEOUT)
    result = summarize(job)
    result['wall_s'] = wall
    result['index_counters'] = counters
    return result


# The report.

METRICS = ('iops', 'mb_s', 'p50', 'p90', 'p99', 'p99.9', 'max')


def metrics(result):
    """The numbers of @result the table shows, {metric: value or None}"""
    lat = result['clat_ms'] or {}
    row = {'iops': result['iops'], 'mb_s': result['mb_s']}
    row.update({m: lat.get(m) for m in METRICS[2:]})
    return row


def aggregate(runs, builds, paces):
    """{pace: {build: {metric: median over the rounds}, 'ours/stock':
    {metric: ratio}}} of @runs"""
    summary = {}
    for pace in paces:
        summary[pace] = {}
        for build in builds:
            rows = [metrics(r) for r in runs
                    if r['pace'] == pace and r['build'] == build]
            if not rows:
                continue
            summary[pace][build] = {
                m: (statistics.median(r[m] for r in rows)
                    if all(r[m] is not None for r in rows) else None)
                for m in METRICS}
        if 'stock' in summary[pace] and 'ours' in summary[pace]:
            summary[pace]['ours/stock'] = {
                m: ratio(summary[pace]['ours'][m], summary[pace]['stock'][m])
                for m in METRICS}
    return summary


def ratio(a, b):
    if a is None or b is None or not b:
        return None
    return a / b


def _cell(value, fmt, width):
    return ('%' + str(width) + 's') % ('-' if value is None else fmt % value)


def format_table(summary, runs):
    """The table of @summary (aggregate()): a row per pace and build with
    the operations replayed, and a row of ratios ours/stock"""
    head = ('%-9s %-10s %7s %7s %6s %10s %8s %8s %8s %8s %8s %8s' %
            ('pace', 'build', 'reads', 'writes', 'trims', 'IOPS', 'MB/s',
             'p50 ms', 'p90 ms', 'p99 ms', 'p99.9 ms', 'max ms'))
    lines = [head]
    for pace, builds in summary.items():
        for build, row in builds.items():
            if build == 'ours/stock':
                ops = ('', '', '')
                nums = [_cell(row['iops'], '%.2f', 10),
                        _cell(row['mb_s'], '%.2f', 8)]
                nums += [_cell(row[m], '%.2f', 8) for m in METRICS[2:]]
            else:
                issued = next(r['issued'] for r in runs
                              if r['pace'] == pace and r['build'] == build)
                ops = tuple(issued[k]['ios'] for k in KINDS)
                nums = [_cell(row['iops'], '%.0f', 10),
                        _cell(row['mb_s'], '%.2f', 8)]
                nums += [_cell(row[m], '%.3f', 8) for m in METRICS[2:]]
            lines.append('%-9s %-10s %7s %7s %6s %s' %
                         ((pace, build) + ops + (' '.join(nums),)))
    return '\n'.join(lines)


def plural(n, word):
    return '%d %s%s' % (n, word, '' if n == 1 else 's')


def format_counts(counts):
    """@counts (count()) in words"""
    return ', '.join('%s (%s)' % (plural(counts[k]['ios'], k),
                                  format_bytes(counts[k]['bytes']))
                     for k in KINDS) + (
        ', ' + plural(counts['sync']['ios'], 'sync')
        if counts['sync']['ios'] else '')


def format_bytes(n):
    if n >= 1 << 20:
        return '%.1f MiB' % (n / (1 << 20))
    if n >= 1 << 10:
        return '%.1f KiB' % (n / (1 << 10))
    return '%d bytes' % n


def format_counters(runs):
    """A line per pace about ours' reads through the backing index"""
    lines = []
    for r in runs:
        c = r.get('index_counters')
        if r['build'] != 'ours' or r['round'] != 1:
            continue
        if not c:
            lines.append('ours, %s pace: no backing index counters (the '
                         'chain has no index)' % r['pace'])
        else:
            lines.append('ours, %s pace: direct access %s, %d direct reads,'
                         ' %d vanilla fallbacks' % (
                             r['pace'], 'yes' if c.get('direct-access')
                             else 'no (%s)' % c.get('reason', '?'),
                             c.get('direct-reads', 0),
                             c.get('vanilla-fallbacks', 0)))
    return lines


# The command.

def parse_builds(text):
    builds = [b.strip() for b in text.split(',') if b.strip()]
    bad = [b for b in builds if b not in BUILDS]
    if bad or not builds or len(set(builds)) != len(builds):
        raise argparse.ArgumentTypeError(
            'bad builds %r (stock, ours or stock,ours)' % text)
    return [b for b in BUILDS if b in builds]


def positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError('%r is not a positive integer' %
                                         text)
    return value


def find_binaries(args):
    """{build: its qemu-storage-daemon}, for the builds of --builds"""
    dirs = []
    for build in args.builds:
        if build == 'stock':
            dirs.append(('stock', args.stock or
                         paths.stock_dir(ReplayError)))
        else:
            dirs.append(('ours', args.ours))
    found = paths.find_builds(dirs, ('qemu-storage-daemon',), ReplayError)
    return {b: tools['qemu-storage-daemon'] for b, tools in found.items()}


def version(binary):
    out = subprocess.run([binary, '--version'], capture_output=True,
                         text=True).stdout
    return out.splitlines()[0] if out else '?'


def schedule(builds, paces, rounds):
    """(round, pace, build) in the order they run: per round and pace the
    builds back to back, stock first in odd rounds, ours in even ones"""
    order = []
    for rnd in range(1, rounds + 1):
        turn = builds if rnd % 2 else builds[::-1]
        order += [(rnd, pace, build) for pace in paces for build in turn]
    return order


def cmd_replay(args):
    util.exit_on(signal.SIGTERM, signal.SIGHUP)
    ops, names = read_iolog(args.iolog)
    layers = chain_layers(args.chain)
    top = layers[0]
    size, _, autoclear = read_header(top)
    check_bounds(ops, size, args.iolog)
    tops = {build: top for build in BUILDS}
    stock_layers = None
    if args.stock_chain:
        stock_layers = chain_layers(args.stock_chain)
        tops['stock'] = stock_layers[0]
        stock_size = read_header(tops['stock'])[0]
        if stock_size != size:
            raise ReplayError('--stock-chain %s is a disk of %d bytes, '
                              '--chain %s one of %d' % (
                                  args.stock_chain, stock_size, args.chain,
                                  size))
    for chain in {tops[build] for build in args.builds}:
        if lock_holder(chain) == 'write':
            raise ReplayError('chain %s: its top is in use by a writer (a '
                              'QEMU image lock): a copy of it would not be '
                              'consistent' % chain)
    fio = fio_version()
    binaries = find_binaries(args)
    workdir = util.make_workdir(args.workdir, 'sqemu-trace-replay-',
                                ReplayError)
    try:
        trace = count(ops)
        skipped = 0
        if trace['trim']['ios']:
            if args.skip_trims:
                skipped = trace['trim']['ios']
                ops = [o for o in ops if o.action != 'trim']
            elif not fio_replays_trims(workdir):
                raise ReplayError(
                    '%s holds %s, which %s does not replay from an iolog '
                    '(it skips them: "bad ddir: 2"); --skip-trims replays '
                    'the other operations' %
                    (args.iolog, plural(trace['trim']['ios'], 'trim'), fio))
        expected = count(ops)
        if not expected['read']['ios'] + expected['write']['ios']:
            raise ReplayError('%s holds no read or write to replay' %
                              args.iolog)
        for chain in {tops[build] for build in args.builds}:
            check_space(chain, expected['write']['bytes'])
        log = os.path.join(workdir, 'replay.iolog')
        with open(log, 'w') as f:
            f.write(replay_log(ops))
        report = {
            'iolog': os.path.abspath(args.iolog), 'file_names': names,
            'trace': {'operations': len(ops) + skipped, 'counts': trace,
                      'span_s': span_s(ops), 'trims_skipped': skipped},
            'expected': expected,
            'chain': {'top': top, 'layers': len(layers), 'size': size,
                      'index_valid_on_top': bool(autoclear & INDEX_VALID)},
            'stock_chain': stock_layers and {
                'top': tops['stock'], 'layers': len(stock_layers),
                'size': size, 'index_valid_on_top': bool(
                    read_header(tops['stock'])[2] & INDEX_VALID)},
            'builds': {b: {'qemu-storage-daemon': path,
                           'version': version(path)}
                       for b, path in binaries.items()},
            'parameters': {'paces': args.paces,
                           'iodepth': {p: pace_iodepth(p, args.iodepth)
                                       for p in args.paces},
                           'rounds': args.rounds, 'fio': fio,
                           'cache': 'direct (O_DIRECT)'},
            'runs': []}
        progress('%s: %d operations over %.1f s (%s); chain %s, %d layers'
                 % (args.iolog, len(ops), span_s(ops), format_counts(
                     expected), top, len(layers)))
        for rnd, pace, build in schedule(args.builds, args.paces,
                                         args.rounds):
            progress('round %d/%d, %s pace, %s: replaying%s...' % (
                rnd, args.rounds, pace, build,
                ' (about %.0f s)' % span_s(ops) if pace == 'recorded'
                else ''))
            tag = '%s-%s-%d' % (build, pace, rnd)
            try:
                result = replay(binaries[build], tops[build], log, pace,
                                args.iodepth, transfers(expected),
                                os.path.join(workdir, tag), tag)
            except ReplayError as e:
                raise ReplayError('%s, %s pace: %s' % (build, pace, e))
            result.update(round=rnd, pace=pace, build=build,
                          mismatches=mismatches(expected, result['issued']))
            report['runs'].append(result)
            progress('%s, %s pace: %.0f IOPS, p99 %s ms, %.1f s' % (
                build, pace, result['iops'],
                '%.3f' % result['clat_ms']['p99'] if result['clat_ms']
                else '-', result['wall_s']))
    finally:
        if args.keep:
            progress('kept %s' % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return finish(args, report)


def finish(args, report):
    """Print the report, write its JSON; exception if a replay did not
    issue exactly the trace's operations"""
    runs = report['runs']
    report['summary'] = aggregate(runs, args.builds, args.paces)
    wrong = ['%s, %s pace, round %d: %s' % (r['build'], r['pace'],
                                            r['round'], m)
             for r in runs for m in r['mismatches']]
    report['operations_match'] = not wrong
    chain = report['chain']
    print('trace %s: %d operations over %.1f s recorded' %
          (report['iolog'], report['trace']['operations'],
           report['trace']['span_s']))
    for what, chain in (('chain', chain),
                        ('stock\'s chain', report.get('stock_chain'))):
        if chain:
            print('%s %s: %d layers, %d MiB, backing index %s on the top' %
                  (what, chain['top'], chain['layers'], chain['size'] >> 20,
                   'valid' if chain['index_valid_on_top'] else 'not valid'))
    for build, info in report['builds'].items():
        print('%-5s: %s' % (build, info['version']))
    print('%s, nbd engine, iodepth %s, O_DIRECT, %d round%s, each replay '
          'on a fresh copy of the top' %
          (report['parameters']['fio'], ', '.join(
              '%d at the %s pace' % (depth, pace) for pace, depth in
              report['parameters']['iodepth'].items()),
           args.rounds, 's (medians)' if args.rounds > 1 else ''))
    print()
    print(format_table(report['summary'], runs))
    print('ratios ours/stock: above 1 is better for IOPS and MB/s, below 1 '
          'for latencies (completion latency, all operations)')
    for line in format_counters(runs):
        print(line)
    skipped = report['trace']['trims_skipped']
    if wrong:
        print('replayed operations DIFFER from the trace\'s:')
        for line in wrong:
            print('  ' + line)
    else:
        print('replayed operations equal the trace\'s in all %d replays: '
              '%s%s' % (len(runs), format_counts(report['expected']),
                        '; %s of the trace skipped (--skip-trims)' %
                        plural(skipped, 'trim') if skipped else ''))
    if args.json:
        util.write_json(args.json, report)
        progress('wrote %s' % args.json)
    if wrong:
        raise ReplayError('%d replays did not issue the trace\'s '
                          'operations (see above)' %
                          len({(r['build'], r['pace'], r['round'])
                               for r in runs if r['mismatches']}))


def check_args(args):
    args.paces = list(PACES) if args.pace == 'both' else [args.pace]
    return args


def add_parser(sub):
    """trace replay's parser, under @sub (trace's subcommands)"""
    rep = sub.add_parser(
        'replay', help='replay a fio iolog against stock and ours on one '
        'chain', description='Replay a fio iolog (version 3, e.g. from '
        'trace convert) with fio\'s nbd engine against stock QEMU\'s and '
        'ours\' qemu-storage-daemon serving the same chain, at the '
        'recorded pace and/or as fast as possible, and report operations, '
        'throughput and latency percentiles side by side.  Writes go to a '
        'throwaway copy of the top made next to it; the chain is not '
        'changed.', epilog='Needs fio (apt-get install fio).  Exit status '
        '1 on an error, also when a replay did not issue exactly the '
        'trace\'s operations.')
    rep.add_argument('iolog', metavar='IOLOG',
                     help='fio iolog version 3 (its file names do not '
                     'matter)')
    rep.add_argument('--stock-chain', metavar='TOP',
                     help='a chain of its own for stock, of the same disk '
                     'size (default: --chain for both builds)')
    rep.add_argument('--chain', required=True, metavar='TOP',
                     help='top layer (qcow2) of the chain to replay on')
    rep.add_argument('--pace', choices=PACES + ('both',), default='both',
                     help='recorded: at the log\'s times; max: as fast as '
                     'possible (default %(default)s)')
    rep.add_argument('--iodepth', type=positive, default=DEFAULT_IODEPTH,
                     metavar='N', help='operations in flight at most at the '
                     'max pace (default %(default)s; the recorded pace runs '
                     'at 1: fio 3.33 reaps no completion while it waits '
                     'for the next operation\'s time)')
    rep.add_argument('--rounds', type=positive, default=1, metavar='K',
                     help='replays per build and pace, alternating which '
                     'build goes first; medians reported (default '
                     '%(default)s)')
    rep.add_argument('--builds', type=parse_builds, default='stock,ours',
                     metavar='B,B', help='stock, ours or both (default '
                     '%(default)s)')
    rep.add_argument('--stock', metavar='DIR',
                     help='directory of the stock build\'s binaries '
                     '(default: Debian\'s packages, unpacked by '
                     'scripts/sqemu/stock-qemu)')
    rep.add_argument('--ours', default=paths.BUILD, metavar='DIR',
                     help='directory of our build\'s binaries, also '
                     'searched in DIR/storage-daemon (default '
                     '%(default)s)')
    rep.add_argument('--skip-trims', action='store_true',
                     help='leave the trace\'s trims out of the replay (fio '
                     '3.33 does not replay trims from an iolog)')
    rep.add_argument('--json', metavar='FILE',
                     help='write every number (each replay, the medians, '
                     'the ratios) to FILE')
    rep.add_argument('--workdir', metavar='DIR',
                     help='new directory for the rewritten log, sockets, '
                     'daemon logs and fio output (default a new one under '
                     '/var/tmp); removed at the end unless --keep')
    rep.add_argument('--keep', action='store_true',
                     help='keep the work directory (never the copies of '
                     'the top)')
    rep.set_defaults(run=lambda args: cmd_replay(check_args(args)),
                     errors=(ReplayError, OSError))
