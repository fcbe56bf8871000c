# SPDX-License-Identifier: GPL-2.0-or-later
#
# bench: compare stock QEMU and sQemu (ours) on qcow2 backing chains of
# growing length, side by side in one run.
#
# For each chain length N it builds one chain with mkchain (using ours'
# tools); all chains exist at once.  Then it measures:
#   - sequential read of the whole disk, QD1, O_DIRECT (qemu-img bench):
#     time, throughput and peak RSS; every chain and build in turn, stock
#     first, and that --repeat times, so that the ratios compare reads made
#     minutes apart at most;
#   - with --rand-repeat K > 1, random 4 KiB reads (below) the same way:
#     K rounds, each a fresh daemon per chain and build, the median run
#     reported and every round's IOPS kept; with --rand-paired each
#     round starts every chain's and build's daemon at once and fio reads
#     from each in turn, 1 s at a time, so that a round's ratios compare
#     the same stretch of time;
# and, chain by chain, each build in turn, stock first:
#   - random 4 KiB reads, QD16 (--rand-iodepth), through
#     qemu-storage-daemon's NBD export
#     (fio): IOPS and the daemon's peak RSS (unless measured in rounds);
#   - chain open time (qemu-io -c quit, median of several runs);
#   - snapshot creation on top of the chain (qemu-img create -b): time and
#     disk growth.
# It prints one table, and writes the raw numbers as JSON and a plot as PNG.
# Everything it creates (chains, sockets, daemons) is gone when it exits.
#
# With --nfs-nodes K the chains live on K NFS storage nodes (nfs_nodes,
# optionally behind a proxy adding --nfs-latency): each chain is made and
# indexed locally, then its layers are moved onto the nodes in contiguous
# ranges (nfs_chain) and every build opens its top by nfs:// URL.  A
# measurement that fails there (stock QEMU cannot open a chain of 1000
# layers over NFS: one connection per layer) is reported as failed, and the
# run goes on.  Bytes read are not measured over NFS (no block device).

import argparse
import contextlib
import importlib.util
import json
import mmap
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time

from sqemu import nfs_chain, nfs_nodes, paths, util
from sqemu.chain import layer_name
from sqemu.proc import Process
from sqemu.qsd import Daemon

MKCHAIN = paths.script('mkchain')
BUILDS = ('stock', 'ours')
TOOLS = ('qemu-img', 'qemu-io', 'qemu-storage-daemon')

DEFAULT_LENGTHS = '1,10,100,500,1000'
QUICK_LENGTHS = '1,10,100'
DEFAULT_SIZE = '1G'
QUICK_SIZE = '256M'
DEFAULT_RUNTIME = 10
QUICK_RUNTIME = 4
DEFAULT_REPEAT = 5
QUICK_REPEAT = 5
# A sequential read slower than this is not repeated: its ratio to the
# other runs is far beyond this machine's noise, and stock's read of a
# 1000-layer chain takes about ten minutes.
SLOW_SEQ_S = 60.0
# Nor is a random read (daemon start and fio) slower than this: stock's
# daemon takes about a minute to open 1000 layers over NFS
SLOW_RAND_S = 60.0
SEED = 1
SEQ_BLOCK = 65536
SEQ_SLICES = 8          # pieces of the disk in a --seq-paired round
RAND_BLOCK = '4k'
RAND_IODEPTH = 16
OPEN_RUNS = 3
# Opening a chain of 1000 layers takes stock QEMU ~10 s on an idle machine.
DAEMON_STOP_TIMEOUT = 60

# qemu-io command that exists once sQemu reads through the backing index
SQEMU_IO_PATH_MARKER = 'sqemu-stats'
NO_EXTENSION_NOTE = ('note: ours has no sQemu I/O path yet (its qemu-io has '
                     'no ' + SQEMU_IO_PATH_MARKER + ' command): it reads '
                     'chains with stock QEMU 7.2 code, so expect ratios '
                     'near 1.0')
LEGEND = (
    'MB/s = 10^6 bytes/s.  RSS = peak resident set size of qemu-img bench '
    '(seq) and of qemu-storage-daemon (rand).',
    'vs N=1: the build\'s value / its own value at N=1 (>1 better, '
    '<1 = slower on the longer chain).',
    'ours/stock: ours / stock at the same N (MB/s and IOPS: >1 better; '
    'RSS: <1 better).')


class BenchError(Exception):
    pass


def progress(message):
    print(message, file=sys.stderr, flush=True)


def parse_lengths(text):
    try:
        lengths = sorted({int(n) for n in text.split(',')})
    except ValueError:
        lengths = []
    if not lengths or lengths[0] < 1:
        raise argparse.ArgumentTypeError(
            'bad lengths %r (e.g. 1,10,100)' % text)
    return lengths


def describe_exit(name, code, output):
    last = util.tail(output, 1)
    return '%s failed (%s)%s' % (name, util.describe_status(code),
                                 ': ' + last if last else '')


def execute(cmd):
    """Run @cmd, its stdout and stderr merged; return its output, wall
    time in seconds, peak RSS in KiB and bytes read from storage.  Raise
    BenchError if it fails."""
    with Process(cmd) as proc:
        code = proc.wait()
        elapsed = time.monotonic() - proc.started
        output = proc.read_output()
    if code != 0:
        raise BenchError(describe_exit(os.path.basename(cmd[0]), code,
                                       output))
    return output, elapsed, proc.maxrss, proc.inblock * 512


# Builds.

def find_builds(args):
    """Map build name -> {tool name -> path}; raise BenchError naming
    everything that is missing."""
    stock = args.stock or paths.stock_dir(BenchError)
    return paths.find_builds((('stock', stock), ('ours', args.ours)), TOOLS,
                             BenchError)


def describe_build(tools):
    version = execute([tools['qemu-img'], '--version'])[0]
    # The I/O path that uses the backing index comes with its qemu-io
    # counters command (issue 4); the format alone reads like stock QEMU.
    commands = execute([tools['qemu-io'], '-c', 'help'])[0]
    return {'binaries': tools,
            'version': version.splitlines()[0],
            'sqemu_extension': SQEMU_IO_PATH_MARKER in commands}


# Measurements.

def build_chain(args, info, layers, chaindir, nodes=None):
    tools = info['binaries']
    cmd = [MKCHAIN, chaindir, '-n', str(layers), '-s', str(args.size),
           '-c', str(args.cluster_size), '-f', '1.0', '-d', 'uniform',
           '--seed', str(SEED), '--qemu-img', tools['qemu-img'],
           '--qemu-io', tools['qemu-io']]
    options = args.chain_options
    if nodes:
        return build_nfs_chain(args, info, layers, chaindir, nodes, cmd)
    if info['sqemu_extension']:
        # Made as a VM makes it: live snapshots, each indexed by L2 copy.
        # Stock QEMU reads the same chain; it ignores the index.
        options = ','.join(o for o in (options, 'backing-index=on') if o)
        cmd += ['--live', '--qemu-storage-daemon',
                tools['qemu-storage-daemon']]
    if options:
        cmd += ['-o', options]
    output = execute(cmd)[0]
    sync_files(chaindir)
    return os.path.abspath(output.strip().splitlines()[-1])


def build_nfs_chain(args, info, layers, chaindir, nodes, cmd):
    """The chain made with relative names (mkchain without --live),
    indexed by ours' amend if ours has the index, then placed on @nodes;
    its top's URL"""
    if args.chain_options:
        cmd += ['-o', args.chain_options]
    top = os.path.abspath(execute(cmd)[0].strip().splitlines()[-1])
    if info['sqemu_extension']:
        execute([info['binaries']['qemu-img'], 'amend', '-o',
                 'backing-index=on', top])
    names = [layer_name(d, layers) for d in range(1, layers + 1)]
    url, ranges = nfs_chain.place(chaindir, names, nodes, 'c%d' % layers,
                                  args.nfs_names)
    for node, first, last in ranges:
        sync_files(nodes[node].directory)
        progress('N=%d: layers %d-%d on node %d (%s)' % (
            layers, first, last, node, nodes[node].address))
    return url


def sync_files(directory):
    """Write the chain back now: an O_DIRECT read of a file with dirty
    pages first waits for their writeback, which would slow down whichever
    build reads first."""
    for name in os.listdir(directory):
        fd = os.open(os.path.join(directory, name), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def seq_bench(tools, top, count):
    """qemu-img bench reading @count blocks from the start of @top"""
    return execute([tools['qemu-img'], 'bench', '-f', 'qcow2', '-t', 'none',
                    '-d', '1', '-c', str(count), '-s', str(SEQ_BLOCK),
                    '-S', str(SEQ_BLOCK), top])


def seq_read(tools, top, size):
    output, _, maxrss, read_bytes = seq_bench(tools, top, size // SEQ_BLOCK)
    if top.startswith('nfs://'):
        read_bytes = None
    m = re.search(r'Run completed in ([0-9.]+) seconds', output)
    if not m:
        raise BenchError('qemu-img bench printed no completion time')
    seconds = float(m.group(1))
    # With O_DIRECT every byte read counts: data, and metadata of the read
    # path and of opening the chain, which a read of one block measures
    open_bytes = (seq_bench(tools, top, 1)[3] - SEQ_BLOCK
                  if read_bytes is not None else None)
    return {'seq_time_s': seconds, 'seq_mbps': size / seconds / 1e6,
            'seq_rss_kib': maxrss, 'seq_data_bytes': size,
            'seq_read_bytes': read_bytes, 'seq_open_bytes': open_bytes}


def raw_read(tools, top, layers):
    """The physical limit of a sequential read of the local chain @top:
    the same clusters read straight from the layer files that hold them
    (where qemu-img map puts them), 64 KiB at a time in the guest's order,
    QD1, O_DIRECT, no QEMU on the path; its time in seconds"""
    extents = json.loads(execute([tools['qemu-img'], 'map', '--output=json',
                                  top])[0])
    chaindir = os.path.dirname(top)
    reads = []
    for e in extents:
        if not e['data'] or 'offset' not in e:
            continue        # zeroes: no read
        name = os.path.join(chaindir, layer_name(layers - e['depth'], layers))
        for pos in range(0, e['length'], SEQ_BLOCK):
            reads.append((name, e['offset'] + pos,
                          min(SEQ_BLOCK, e['length'] - pos)))
    fds = {}
    buf = mmap.mmap(-1, SEQ_BLOCK)      # page-aligned, as O_DIRECT needs
    try:
        for name, _, _ in reads:
            if name not in fds:
                fds[name] = os.open(name, os.O_RDONLY | os.O_DIRECT)
        started = time.monotonic()
        for name, offset, length in reads:
            os.preadv(fds[name], [memoryview(buf)[:length]], offset)
        return time.monotonic() - started
    finally:
        for fd in fds.values():
            os.close(fd)
        buf.close()


def read_counters(tools, top, size):
    """Read the whole disk once through ours' qemu-io and return its
    sqemu-stats counters: they show whether reads went straight to the
    layer holding each cluster."""
    output = execute(util.stats_command(tools['qemu-io'], top, size))[0]
    counters = {name: int(value) if value.isdigit() else value
                for name, value in util.parse_stats(output).items()}
    if 'direct-access' not in counters:
        raise BenchError('qemu-io sqemu-stats printed no counters: ' +
                         output[:200])
    return counters


def fio_read(sock, *options):
    """What fio's job reading the NBD export at @sock with @options read
    (its JSON 'read' part)"""
    output = execute(['fio', '--ioengine=nbd',
                      '--uri=nbd+unix:///disk?socket=' + sock, *options,
                      '--output-format=json'])[0]
    job = util.fio_job(output, BenchError, 200)
    if job['error']:
        raise BenchError('fio job failed with error %d' % job['error'])
    return job['read']


def run_fio(sock, runtime, iodepth):
    return fio_read(sock, '--name=randread', '--rw=randread',
                    '--bs=' + RAND_BLOCK, '--iodepth=%d' % iodepth,
                    '--runtime=%d' % runtime, '--time_based')['iops']


def run_fio_seq(sock, offset, length):
    """Read @length bytes from @offset of the NBD export at @sock in order,
    SEQ_BLOCK at a time, QD1; the seconds the reads took (fio's latencies
    summed: at QD1 one read follows the other)"""
    read = fio_read(sock, '--name=seqread', '--rw=read',
                    '--bs=%d' % SEQ_BLOCK, '--iodepth=1',
                    '--offset=%d' % offset, '--size=%d' % length)
    if read['io_bytes'] != length:
        raise BenchError('fio read %d of %d bytes at %d' %
                         (read['io_bytes'], length, offset))
    return read['lat_ns']['mean'] * read['lat_ns']['N'] / 1e9


def protocol_node(top):
    """The protocol node of @top (a local file, or an nfs:// URL), read
    with O_DIRECT"""
    return dict(nfs_chain.protocol_node(top), cache={'direct': True})


def daemon_command(tools, cmd):
    """@cmd, a build's qemu-storage-daemon, as it finds the block driver
    modules (nfs): ours' build keeps them next to qemu-img, not next to the
    daemon; Debian's relocatable binaries find theirs"""
    if tools.get('module_dir'):
        return ['env', 'QEMU_MODULE_DIR=' + tools['module_dir']] + cmd
    return cmd


def rand_daemon(tools, top, rundir):
    """A qemu-storage-daemon of @tools exporting @top read-only over NBD,
    a context manager that starts it.  A local chain is read with O_DIRECT
    in every layer: the backing layers inherit cache.direct from the
    qcow2 node, not from its file (given only there, the layers below the
    top were read through the page cache, which favoured long chains).
    Over NFS there is no page cache to avoid (libnfs keeps none), and
    cache.direct on a read-only nfs node makes it ask the server for its
    allocated size instead of answering from the size read at open: one
    round trip for each layer that block status first reaches (an NBD
    read asks for it), so there only the top's file has it, as before."""
    blockdev = {'driver': 'qcow2', 'node-name': 'disk', 'read-only': True,
                'file': protocol_node(top)}
    if not top.startswith('nfs://'):
        blockdev['cache'] = {'direct': True}
    # proc.Process: the daemon's own peak RSS
    return Daemon(tools['qemu-storage-daemon'], blockdev, rundir,
                  BenchError,
                  launch=lambda cmd, log: Process(
                      daemon_command(tools, cmd), log))


def rand_read(tools, top, runtime, iodepth, workdir):
    rundir = tempfile.mkdtemp(prefix='qsd-', dir=workdir)
    try:
        with rand_daemon(tools, top, rundir) as daemon:
            iops = run_fio(daemon.nbd, runtime, iodepth)
            daemon.stop(DAEMON_STOP_TIMEOUT)
            rss = daemon.proc.maxrss
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
    return {'rand_iops': iops, 'qsd_rss_kib': rss}


def open_time(tools, top):
    times = [execute([tools['qemu-io'], '-r', '-f', 'qcow2', '-c', 'quit',
                      top])[1]
             for _ in range(OPEN_RUNS)]
    return {'open_times_s': times, 'open_time_s': statistics.median(times)}


def snapshot(tools, top, snap, options):
    cmd = [tools['qemu-img'], 'create', '-f', 'qcow2', '-b', top,
           '-F', 'qcow2']
    if options:
        cmd += ['-o', options]
    try:
        seconds = execute(cmd + [snap])[1]
        growth = os.stat(snap).st_blocks * 512
    finally:
        if os.path.exists(snap):
            os.unlink(snap)
    return {'snap_time_s': seconds, 'snap_growth_bytes': growth}


class Rounds:
    """The runs of one measurement over rounds, per (length, build): a key
    is measured again in the next round unless a run of it failed or was
    too slow to repeat"""

    def __init__(self, tops):
        self.runs = {(layers, build): [] for layers in tops
                     for build in BUILDS}
        self.slow = set()

    def wanted(self, layers=None):
        """The keys to measure this round (of length @layers, if given),
        stock first"""
        return [key for key, runs in self.runs.items()
                if layers in (None, key[0]) and key not in self.slow
                and not any(r.get('error') for r in runs)]

    def add(self, key, result, slow=False):
        self.runs[key].append(result)
        if slow:
            self.slow.add(key)


def seq_reads(args, builds, tops, workdir):
    """Sequential reads of every chain in @tops (length -> top), --repeat
    times each, the lengths and the builds alternating (with --seq-paired
    in paired rounds, seq_round_paired()); return, per length and build,
    the median run (by time), with all times."""
    rounds = Rounds(tops)
    raw = {layers: [] for layers in tops}
    for i in range(args.repeat):
        for layers, top in tops.items():
            if not args.nfs_nodes:
                progress('N=%d: raw read of the same clusters %d/%d...' %
                         (layers, i + 1, args.repeat))
                raw[layers].append(raw_read(builds['ours']['binaries'], top,
                                            layers))
            if args.seq_paired:
                continue
            for key in rounds.wanted(layers):
                build = key[1]
                progress('N=%d %s: seq read %d/%d...' %
                         (layers, build, i + 1, args.repeat))
                result = tolerant(args, 'seq read', seq_read,
                                  builds[build]['binaries'], top, args.size)
                rounds.add(key, result, result.get('seq_time_s', 0) >
                           SLOW_SEQ_S)
        if args.seq_paired:
            keys = rounds.wanted()
            progress('seq read round %d/%d: %d daemons side by side, fio '
                     'reading %d pieces of the disk from each in turn...' %
                     (i + 1, args.repeat, len(keys),
                      len(seq_slices(args.size))))
            results, started_slowly = seq_round_paired(args, builds, tops,
                                                       workdir, keys)
            for key, result in results.items():
                rounds.add(key, result, key in started_slowly or
                           result.get('seq_time_s', 0) > SLOW_SEQ_S)
    result = {layers: {} for layers in tops}
    for (layers, build), results in rounds.runs.items():
        failed = [r for r in results if r.get('error')]
        if failed:
            # a round that failed fails the measurement (it says why)
            result[layers][build] = {'error': failed[0]['error']}
            continue
        times = [r['seq_time_s'] for r in results]
        results.sort(key=lambda r: r['seq_time_s'])
        result[layers][build] = dict(results[len(results) // 2],
                                     seq_times_s=times)
        if raw[layers]:
            result[layers][build]['raw_times_s'] = raw[layers]
            result[layers][build]['raw_time_s'] = statistics.median(
                raw[layers])
    return result


def rand_reads(args, builds, tops, workdir):
    """Random reads of every chain in @tops, --rand-repeat rounds, the
    lengths and the builds alternating as seq_reads() does; per length and
    build, the median run (by IOPS) with every round's IOPS
    (rand_iops_all), or {'error': ...}."""
    rounds = Rounds(tops)
    for i in range(args.rand_repeat):
        if args.rand_paired:
            keys = rounds.wanted()
            progress('rand read round %d/%d: %d daemons side by side, fio '
                     '1 s at a time, %d s each, QD%d...' %
                     (i + 1, args.rand_repeat, len(keys), args.runtime,
                      args.rand_iodepth))
            results, started_slowly = rand_round_paired(args, builds, tops,
                                                        workdir, keys)
            for key, result in results.items():
                rounds.add(key, result, key in started_slowly)
            continue
        for layers, top in tops.items():
            for key in rounds.wanted(layers):
                build = key[1]
                progress('N=%d %s: rand read (fio %d s, QD%d) %d/%d...' %
                         (layers, build, args.runtime, args.rand_iodepth,
                          i + 1, args.rand_repeat))
                start = time.monotonic()
                result = tolerant(args, 'rand read', rand_read,
                                  builds[build]['binaries'], top,
                                  args.runtime, args.rand_iodepth, workdir)
                rounds.add(key, result,
                           time.monotonic() - start > SLOW_RAND_S)
    result = {layers: {} for layers in tops}
    for (layers, build), results in rounds.runs.items():
        result[layers][build] = median_rand(results)
    return result


def paired_round(args, builds, tops, workdir, keys, what, slices,
                 read_slice, summarize, slow_start_s, rss_key):
    """One round of @what of the chains @keys ((length, build) pairs) side
    by side: a fresh daemon each, all running, and @read_slice(daemon,
    slice) of each in turn for every one of @slices.  A change of the
    machine's speed during the round then weighs on every chain alike,
    where whole runs one after the other take it as a difference.  Per
    key, @summarize(the slices' results) with the daemon's peak RSS as
    @rss_key, or {'error': ...}; and the keys whose daemon took longer than
    @slow_start_s to start (not worth repeating)."""
    results, daemons, slow = {}, {}, set()
    with contextlib.ExitStack() as stack:
        for key in keys:
            layers, build = key
            rundir = tempfile.mkdtemp(prefix='qsd-', dir=workdir)
            stack.callback(shutil.rmtree, rundir, ignore_errors=True)
            start = time.monotonic()
            started = tolerant(args, what, lambda: {
                'daemon': stack.enter_context(rand_daemon(
                    builds[build]['binaries'], tops[layers], rundir))})
            if time.monotonic() - start > slow_start_s:
                slow.add(key)
            if 'error' in started:
                results[key] = started
            else:
                daemons[key] = started['daemon']
        done = {key: [] for key in daemons}
        for piece in slices:
            for key, daemon in daemons.items():
                if key in results:
                    continue        # failed in an earlier slice
                got = tolerant(args, what, lambda: {
                    'value': read_slice(daemon, piece)})
                if 'error' in got:
                    results[key] = got
                else:
                    done[key].append(got['value'])
        for key, daemon in daemons.items():
            if key in results:
                continue
            daemon.stop(DAEMON_STOP_TIMEOUT)
            results[key] = dict(summarize(done[key]))
            results[key][rss_key] = daemon.proc.maxrss
    return results, slow


def rand_round_paired(args, builds, tops, workdir, keys):
    """Random reads in a paired round: fio reads from each daemon for 1
    s, --runtime times; per key {'rand_iops': the mean of its slices,
    'rand_slices': [...], 'qsd_rss_kib': ...}.  A daemon as slow to start
    as a solo run that rand_reads() would not repeat is not repeated."""
    return paired_round(
        args, builds, tops, workdir, keys, 'rand read', range(args.runtime),
        lambda daemon, _: run_fio(daemon.nbd, 1, args.rand_iodepth),
        lambda iops: {'rand_iops': statistics.mean(iops),
                      'rand_slices': iops},
        SLOW_RAND_S - args.runtime, 'qsd_rss_kib')


def seq_slices(size, count=SEQ_SLICES):
    """The disk of @size bytes in @count pieces of whole SEQ_BLOCKs (fewer
    for a small disk): (offset, length) each, in order"""
    blocks = size // SEQ_BLOCK
    per = -(-blocks // count)
    return [(first * SEQ_BLOCK, min(per, blocks - first) * SEQ_BLOCK)
            for first in range(0, blocks, per)]


def seq_round_paired(args, builds, tops, workdir, keys):
    """Sequential reads in a paired round: the disk in SEQ_SLICES pieces,
    each read in order from every daemon before the next (fio over NBD,
    SEQ_BLOCK at a time, QD1); per key {'seq_time_s': the pieces' times
    summed, 'seq_mbps', 'seq_slices_s': [...], 'seq_qsd_rss_kib': ...}
    (the random reads' daemon has its own 'qsd_rss_kib')"""
    return paired_round(
        args, builds, tops, workdir, keys, 'seq read', seq_slices(args.size),
        lambda daemon, piece: run_fio_seq(daemon.nbd, *piece),
        lambda times: {'seq_time_s': sum(times),
                       'seq_mbps': args.size / sum(times) / 1e6,
                       'seq_slices_s': times},
        SLOW_SEQ_S, 'seq_qsd_rss_kib')


def median_rand(results):
    """The median of random-read @results (by IOPS) with every run's IOPS,
    or the first error of any run"""
    failed = [r for r in results if r.get('error')]
    if failed:
        return {'error': failed[0]['error']}
    every = [r['rand_iops'] for r in results]
    ranked = sorted(results, key=lambda r: r['rand_iops'])
    return dict(ranked[len(ranked) // 2], rand_iops_all=every)


def tolerant(args, what, func, *func_args):
    """@func(*@func_args); over NFS, a failure is a result: {'error': ...}
    (stock QEMU cannot open the deepest chains there)"""
    try:
        return func(*func_args)
    except BenchError as e:
        if not args.nfs_nodes:
            raise
        progress('%s failed: %s' % (what, e))
        return {'error': '%s: %s' % (what, e)}


def measure(args, build, info, layers, top, workdir, seq, rand=None):
    tools = info['binaries']
    label = 'N=%d %s' % (layers, build)
    row = {'layers': layers, 'build': build, 'loadavg': os.getloadavg()[0]}
    errors = []

    def step(what, func, *func_args):
        result = tolerant(args, what, func, *func_args)
        if 'error' in result:
            errors.append(result['error'])
        else:
            row.update(result)
        return 'error' not in result

    if 'error' in seq:
        errors.append(seq['error'])
    else:
        row.update(seq)
    if rand is not None:
        if 'error' in rand:
            errors.append(rand['error'])
        else:
            row.update(rand)
    else:
        progress('%s: rand read (fio %d s, QD%d)...' %
                 (label, args.runtime, args.rand_iodepth))
        step('rand read', rand_read, tools, top, args.runtime,
             args.rand_iodepth, workdir)
    progress('%s: chain open...' % label)
    step('chain open', open_time, tools, top)
    if info['sqemu_extension'] and not errors:
        progress('%s: counters...' % label)
        step('counters', lambda: {'counters': read_counters(tools, top,
                                                            args.size)})
    progress('%s: snapshot...' % label)
    options = args.chain_options if info['sqemu_extension'] else ''
    step('snapshot', snapshot, tools, top,
         os.path.join(workdir, 'snap.qcow2'), options)
    if errors:
        row['errors'] = errors
    return row


def run_lengths(args, builds, workdir, nodes=None):
    """Build every chain first and read them all sequentially, lengths and
    builds interleaved, so that a change of this machine's speed during
    the run (seen here: the same read 1.3 s one minute, 1.9 s some minutes
    later) weighs on every length alike; then the rest, chain by chain."""
    tops = {}
    for layers in args.lengths:
        progress('N=%d: building chain...' % layers)
        tops[layers] = build_chain(args, builds['ours'], layers,
                                   os.path.join(workdir, 'chain-%d' % layers),
                                   nodes)
    seq = seq_reads(args, builds, tops, workdir)
    rand = (rand_reads(args, builds, tops, workdir) if args.rand_repeat > 1
            else None)
    rows = []
    for layers in args.lengths:
        for build in BUILDS:
            rows.append(measure(args, build, builds[build], layers,
                                tops[layers], workdir, seq[layers][build],
                                rand[layers][build] if rand else None))
        if not args.keep:
            shutil.rmtree(os.path.join(workdir, 'chain-%d' % layers))
            if nodes:
                nfs_chain.remove([layer_name(d, layers)
                                  for d in range(1, layers + 1)],
                                 nodes, 'c%d' % layers)
    return rows


# Results.

def ratio(a, b):
    return a / b if a is not None and b else None


def diff(a, b):
    return a - b if a is not None and b is not None else None


def add_ratios(rows):
    by_key = {(r['layers'], r['build']): r for r in rows}
    for row in rows:
        base = by_key.get((1, row['build']), {})
        stock = by_key[(row['layers'], 'stock')]
        ratios = {'seq_mbps_vs_n1': ratio(row.get('seq_mbps'),
                                          base.get('seq_mbps')),
                  'iops_vs_n1': ratio(row.get('rand_iops'),
                                      base.get('rand_iops'))}
        if row['build'] == 'ours':
            for key in ('seq_mbps', 'rand_iops', 'seq_rss_kib',
                        'qsd_rss_kib'):
                ratios[key + '_vs_stock'] = ratio(row.get(key),
                                                  stock.get(key))
        row['ratios'] = ratios


# (group, heading, width, value of a row, format)
COLUMNS = (
    ('', 'N', 5, lambda r: r['layers'], '%d'),
    ('', 'build', 5, lambda r: r['build'], '%s'),
    ('seq read', 'time s', 7, lambda r: r['seq_time_s'], '%.2f'),
    ('seq read', 'MB/s', 7, lambda r: r['seq_mbps'], '%.1f'),
    ('seq read', 'RSS MiB', 7, lambda r: r['seq_rss_kib'] / 1024, '%.1f'),
    ('rand 4k', 'IOPS', 8, lambda r: r['rand_iops'], '%.0f'),
    ('rand 4k', 'RSS MiB', 7, lambda r: r['qsd_rss_kib'] / 1024, '%.1f'),
    ('open', 'ms', 8, lambda r: r['open_time_s'] * 1000, '%.0f'),
    ('snapshot', 'ms', 6, lambda r: r['snap_time_s'] * 1000, '%.0f'),
    ('snapshot', 'KiB', 6, lambda r: r['snap_growth_bytes'] / 1024, '%.0f'),
    ('vs N=1', 'MB/s', 6, lambda r: r['ratios']['seq_mbps_vs_n1'], '%.2f'),
    ('vs N=1', 'IOPS', 6, lambda r: r['ratios']['iops_vs_n1'], '%.2f'),
    ('ours/stock', 'MB/s', 6,
     lambda r: r['ratios'].get('seq_mbps_vs_stock'), '%.2f'),
    ('ours/stock', 'IOPS', 6,
     lambda r: r['ratios'].get('rand_iops_vs_stock'), '%.2f'),
    ('ours/stock', 'seqRSS', 6,
     lambda r: r['ratios'].get('seq_rss_kib_vs_stock'), '%.2f'),
    ('ours/stock', 'qsdRSS', 6,
     lambda r: r['ratios'].get('qsd_rss_kib_vs_stock'), '%.2f'),
)
GAP = '  '


def group_header():
    """One heading centred over each run of columns of the same group."""
    cells = []
    i = 0
    while i < len(COLUMNS):
        group = COLUMNS[i][0]
        j = i
        while j < len(COLUMNS) and COLUMNS[j][0] == group:
            j += 1
        width = sum(c[2] for c in COLUMNS[i:j]) + len(GAP) * (j - i - 1)
        title = ' %s ' % group if group else ''
        cells.append(title.center(width, '-' if group else ' '))
        i = j
    return GAP.join(cells)


def format_row(row):
    cells = []
    for _, _, width, value, fmt in COLUMNS:
        try:
            v = value(row)
        except (KeyError, TypeError):
            v = None    # not measured (failed over NFS)
        cells.append((fmt % v if v is not None else '').rjust(width))
    return GAP.join(cells)


def format_table(rows):
    lines = [group_header(),
             GAP.join(c[1].rjust(c[2]) for c in COLUMNS)]
    for row in rows:
        if row['build'] == BUILDS[0] and len(lines) > 2:
            lines.append('')
        lines.append(format_row(row))
    return '\n'.join(lines + [''] + list(LEGEND))


def format_counters(rows):
    lines = []
    for r in rows:
        c = r.get('counters')
        if not c:
            continue
        lines.append('ours N=%d, one full read: direct access %s, %d direct '
                     'reads, %d vanilla fallbacks, %d lookups (%d hits, %d '
                     'misses), %d corrections, %d lower-layer L2 slice reads, '
                     '%d cache slices' %
                     (r['layers'], c['direct-access'], c['direct-reads'],
                      c['vanilla-fallbacks'], c['lookups'], c['hits'],
                      c['misses'], c['corrections'], c['lower-slice-reads'],
                      c['cache-slices']))
    return '\n'.join(lines)


def check(name, value, op, target):
    if value is None:
        return '  %-58s   n/a' % name
    met = value >= target if op == '>=' else value <= target
    return '  %-58s %6.3f  (target %s %.3f: %s)' % (
        name, value, op, target, 'met' if met else 'NOT met')


def round_lines(what, hi, lo, rounds, paired):
    """The target on the worst of @rounds (ratios ours N=@hi / N=@lo of
    measurement @what) and every round's ratio"""
    name = '%s, ours N=%d / ours N=%d' % (what, hi, lo)
    return [check('%s, worst of %d rounds%s' % (
                      name, len(rounds), ' (paired)' if paired else ''),
                  min(rounds), '>=', 0.95),
            '  %-58s %s' % (name + ', each round',
                            ' '.join('%.3f' % r for r in rounds))]


def format_targets(rows):
    """The issue's targets, from the longest and the shortest chain."""
    by_key = {(r['layers'], r['build']): r for r in rows}
    lo, hi = min(args_lengths(rows)), max(args_lengths(rows))
    get = by_key.get
    lines = ['targets (N=%d against N=%d):' % (hi, lo)]
    o_lo, o_hi = get((lo, 'ours')), get((hi, 'ours'))
    s_lo, s_hi = get((lo, 'stock')), get((hi, 'stock'))
    if not (o_lo and o_hi and s_lo and s_hi) or lo == hi:
        return lines[0] + ' need two lengths'
    lines.append(check('seq MB/s, ours N=%d / ours N=%d' % (hi, lo),
                       ratio(o_hi.get('seq_mbps'), o_lo.get('seq_mbps')),
                       '>=', 0.90))
    t_lo, t_hi = o_lo.get('seq_times_s'), o_hi.get('seq_times_s')
    if t_lo and t_hi and len(t_lo) == len(t_hi):
        # reads of the same round were made a minute apart at most
        lines += round_lines('seq', hi, lo,
                             [a / b for a, b in zip(t_lo, t_hi)],
                             'seq_slices_s' in o_hi)
    r_lo, r_hi = o_lo.get('raw_times_s'), o_hi.get('raw_times_s')
    if r_lo and r_hi:
        rounds = [a / b for a, b in zip(r_lo, r_hi)]
        lines.append('  %-58s %.3f-%.3f' % (
            'the same clusters read raw (no QEMU), N=%d / N=%d' % (hi, lo),
            min(rounds), max(rounds)))
        for n, row in ((lo, o_lo), (hi, o_hi)):
            lines.append('  %-58s %6.3f' % (
                'seq, ours N=%d / raw N=%d (medians)' % (n, n),
                row['raw_time_s'] / row['seq_time_s']))
    lines.append(check('seq MB/s, ours N=%d / stock N=%d' % (lo, lo),
                       ratio(o_lo.get('seq_mbps'), s_lo.get('seq_mbps')),
                       '>=', 0.95))
    lines.append(check('rand IOPS, ours N=%d / ours N=%d' % (hi, lo),
                       ratio(o_hi.get('rand_iops'), o_lo.get('rand_iops')),
                       '>=', 0.85))
    i_lo, i_hi = o_lo.get('rand_iops_all'), o_hi.get('rand_iops_all')
    if i_lo and i_hi and len(i_lo) == len(i_hi) and len(i_lo) > 1:
        lines += round_lines('rand', hi, lo,
                             [a / b for a, b in zip(i_hi, i_lo)],
                             'rand_slices' in o_hi)
    for key, what in (('seq_rss_kib', 'qemu-img bench'),
                      ('qsd_rss_kib', 'qemu-storage-daemon')):
        grow_o = diff(o_hi.get(key), o_lo.get(key))
        grow_s = diff(s_hi.get(key), s_lo.get(key))
        lines.append(check('peak RSS growth, %s, ours / stock' % what,
                           ratio(max(grow_o, 0) if grow_o is not None
                                 else None, grow_s), '<=', 1 / 20))
    if o_hi.get('seq_read_bytes') is not None:
        size = o_hi['seq_data_bytes']
        path = o_hi['seq_read_bytes'] - o_hi['seq_open_bytes'] - size
        lines.append(check('bytes a full read reads, ours N=%d / data' % hi,
                           (size + path) / size, '<=', 1.01))
        lines.append('  %-58s %6.1f MiB (%.1f KiB per layer)' %
                     ('and opening the chain at N=%d reads' % hi,
                      o_hi['seq_open_bytes'] / 2**20,
                      o_hi['seq_open_bytes'] / 1024 / hi))
    lines.append('  %-58s %8s ms ours, %s ms stock' % (
        'chain open at N=%d' % hi, format_ms(o_hi.get('open_time_s')),
        format_ms(s_hi.get('open_time_s'))))
    for r in rows:
        for error in r.get('errors', ()):
            lines.append('  N=%d %s: %s' % (r['layers'], r['build'], error))
    return '\n'.join(lines)


def format_ms(seconds):
    return '%.0f' % (seconds * 1000) if seconds is not None else 'failed'


def args_lengths(rows):
    return sorted({r['layers'] for r in rows})


def describe_machine():
    with open('/proc/cpuinfo') as f:
        cpu = re.search(r'^model name\s*:\s*(.*)$', f.read(), re.M)
    return {'nproc': os.cpu_count(), 'kernel': os.uname().release,
            'cpu': cpu.group(1) if cpu else None,
            'loadavg_start': os.getloadavg()}


def parameters(args):
    return {'lengths': args.lengths, 'size': args.size,
            'cluster_size': args.cluster_size, 'fill': 1.0,
            'dist': 'uniform', 'seed': SEED,
            'seq_block': SEQ_BLOCK, 'seq_queue_depth': 1,
            'rand_block': RAND_BLOCK, 'rand_iodepth': args.rand_iodepth,
            'seq_repeat': args.repeat, 'rand_repeat': args.rand_repeat,
            'rand_paired': args.rand_paired, 'seq_paired': args.seq_paired,
            'seq_slices': (len(seq_slices(args.size)) if args.seq_paired
                           else None),
            'fio_runtime_s': args.runtime, 'open_runs': OPEN_RUNS,
            'chain_options': args.chain_options, 'quick': args.quick,
            'nfs_nodes': args.nfs_nodes, 'nfs_latency': args.nfs_latency,
            'nfs_bandwidth': args.nfs_bandwidth, 'nfs_names': args.nfs_names}


# (title, ((row key, line style, scale, label suffix), ...))
PANELS = (
    ('sequential read, QD1 (MB/s)', (('seq_mbps', '-', 1, ''),)),
    ('random 4k read over NBD (IOPS)',
     (('rand_iops', '-', 1, ''),)),
    ('peak RSS (MiB)',
     (('qsd_rss_kib', '-', 1 / 1024, ' qemu-storage-daemon'),
      ('seq_rss_kib', '--', 1 / 1024, ' qemu-img bench'))),
    ('chain open time, qemu-io (ms)', (('open_time_s', '-', 1000, ''),)),
)
COLOURS = {'stock': 'tab:blue', 'ours': 'tab:orange'}


def write_plot(path, report):
    # Imported here, so that eval, which imports this module, runs
    # (without plots) where matplotlib is missing; main() checks for it
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot, ticker
    rows = report['results']
    lengths = report['parameters']['lengths']
    fig, axes = pyplot.subplots(2, 2, figsize=(12, 8))
    for ax, (title, series) in zip(axes.flat, PANELS):
        for build in BUILDS:
            for key, style, scale, suffix in series:
                # what failed (over NFS) is left out
                mine = [r for r in rows
                        if r['build'] == build and r.get(key) is not None]
                ax.plot([r['layers'] for r in mine],
                        [r[key] * scale for r in mine], style, marker='o',
                        color=COLOURS[build], label=build + suffix)
        ax.set_title(title, fontsize=10)
        ax.set_xscale('log')
        ax.set_xticks(lengths)
        ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel('chain length N (layers)')
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    params = report['parameters']
    ours = report['builds']['ours']
    fig.suptitle('sQemu bench: disk %d MiB, cluster %d KiB, %d CPUs, '
                 'ours %s sQemu extension%s' %
                 (params['size'] >> 20, params['cluster_size'] >> 10,
                  report['machine']['nproc'],
                  'with' if ours['sqemu_extension'] else 'without',
                  nfs_title(params)))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    pyplot.close(fig)


def nfs_title(params):
    if not params.get('nfs_nodes'):
        return ''
    return '; on %d NFS nodes, %s added round trip' % (
        params['nfs_nodes'], '%g ms' % params['nfs_latency']
        if params.get('nfs_latency') is not None else 'no')


# Driver.

def parse_args():
    parser = argparse.ArgumentParser(
        description='Compare stock QEMU and sQemu (ours) on qcow2 backing '
                    'chains of growing length: sequential and random read '
                    'performance, peak memory, chain open time and '
                    'snapshot creation.',
        epilog='Prints a table; writes raw numbers as JSON and a plot as '
               'PNG.  Needs fio (apt-get install fio).')
    parser.add_argument('--stock', metavar='DIR',
                        help='directory of the stock build\'s binaries '
                             '(default: Debian\'s packages, unpacked by '
                             'scripts/sqemu/stock-qemu)')
    parser.add_argument('--ours', default=paths.BUILD, metavar='DIR',
                        help='directory of our build\'s binaries, also '
                             'searched in DIR/storage-daemon (default '
                             '%(default)s)')
    parser.add_argument('--lengths', type=parse_lengths, metavar='N,N,...',
                        help='chain lengths (default %s; quick: %s)' %
                             (DEFAULT_LENGTHS, QUICK_LENGTHS))
    parser.add_argument('--size', type=util.parse_size,
                        help='virtual disk size (default %s; quick: %s)' %
                             (DEFAULT_SIZE, QUICK_SIZE))
    parser.add_argument('--cluster-size', type=util.parse_size, default='64k',
                        metavar='SIZE',
                        help='cluster size of the chain (default 64k)')
    parser.add_argument('--runtime', type=int, metavar='SECONDS',
                        help='fio run time per measurement (default %d; '
                             'quick: %d)' % (DEFAULT_RUNTIME, QUICK_RUNTIME))
    parser.add_argument('--rand-iodepth', type=int, default=RAND_IODEPTH,
                        metavar='N',
                        help='requests in flight of the random reads '
                             '(default %d)' % RAND_IODEPTH)
    parser.add_argument('--rand-repeat', type=int, default=1, metavar='K',
                        help='random reads per build and length, in rounds '
                             'that read every length with both builds in '
                             'turn, each with a fresh daemon; the median is '
                             'reported, and each round\'s ratio (default 1: '
                             'one read, chain by chain)')
    parser.add_argument('--rand-paired', action='store_true',
                        help='with --rand-repeat: in each round, start '
                             'every length\'s and build\'s daemon at once '
                             'and let fio read from each in turn for 1 s, '
                             'RUNTIME times, so that each round compares '
                             'them over the same stretch of time')
    parser.add_argument('--seq-paired', action='store_true',
                        help='with --repeat 2 or more: in each round, start '
                             'every length\'s and build\'s daemon at once '
                             'and let fio read the disk from each in turn '
                             '(QD1, 64 KiB, over NBD), in %d pieces, so that '
                             'each round compares them over the same stretch '
                             'of time' % SEQ_SLICES)
    parser.add_argument('--chain-options', default='', metavar='OPTS',
                        help='qcow2 creation options for the chain (mkchain '
                             '-o) and, if ours has the sQemu extension, for '
                             'ours\' snapshots (e.g. backing-index=on)')
    parser.add_argument('--repeat', type=int, metavar='K',
                        help='sequential reads per build and length, in '
                             'rounds that read every length with both '
                             'builds in turn; the median is reported; '
                             'a read slower than %d s is not repeated '
                             '(default %d; quick: %d)' %
                             (SLOW_SEQ_S, DEFAULT_REPEAT, QUICK_REPEAT))
    parser.add_argument('--quick', action='store_true',
                        help='short run: lengths %s, size %s, fio %d s' %
                             (QUICK_LENGTHS, QUICK_SIZE, QUICK_RUNTIME))
    parser.add_argument('--workdir', metavar='DIR',
                        help='new directory for chains and sockets (default '
                             'a new temporary directory under /var/tmp; '
                             'it holds every chain at once); removed at the '
                             'end unless --keep')
    parser.add_argument('--keep', action='store_true',
                        help='keep the workdir and its chains')
    nfs_chain.add_placement_options(parser, 'the chains')
    parser.add_argument('--nfs-bandwidth', type=nfs_nodes.parse_rate,
                        metavar='RATE',
                        help='with --nfs-nodes: the proxy\'s cap per '
                             'direction, in bit/s with k, M or G (default '
                             'none)')
    parser.add_argument('--nfs-names', choices=nfs_chain.NAMES,
                        default='absolute',
                        help='with --nfs-nodes: backing file names within '
                             'a node (default absolute: stock QEMU 7.2 '
                             'resolves relative ones under nfs:// wrongly)')
    parser.add_argument('--json', default='bench-results/bench.json',
                        metavar='FILE',
                        help='raw results (default %(default)s)')
    parser.add_argument('--plot', default='bench-results/bench.png',
                        metavar='FILE', help='plot (default %(default)s)')
    args = parser.parse_args()
    quick = args.quick
    if args.lengths is None:
        args.lengths = parse_lengths(QUICK_LENGTHS if quick
                                     else DEFAULT_LENGTHS)
    if args.size is None:
        args.size = util.parse_size(QUICK_SIZE if quick else DEFAULT_SIZE)
    if args.runtime is None:
        args.runtime = QUICK_RUNTIME if quick else DEFAULT_RUNTIME
    if args.size % SEQ_BLOCK or args.size % args.cluster_size:
        parser.error('--size must be a multiple of 64k and of '
                     '--cluster-size')
    if args.repeat is None:
        args.repeat = QUICK_REPEAT if quick else DEFAULT_REPEAT
    if args.rand_iodepth < 1:
        parser.error('--rand-iodepth must be at least 1')
    if args.rand_repeat < 1:
        parser.error('--rand-repeat must be at least 1')
    if args.rand_paired and args.rand_repeat < 2:
        parser.error('--rand-paired needs --rand-repeat 2 or more')
    if args.seq_paired and args.repeat < 2:
        parser.error('--seq-paired needs --repeat 2 or more')
    if args.runtime < 1:
        parser.error('--runtime must be at least 1')
    if args.repeat < 1:
        parser.error('--repeat must be at least 1')
    if args.nfs_nodes < 0:
        parser.error('--nfs-nodes must be at least 0')
    if not args.nfs_nodes and (args.nfs_latency is not None or
                               args.nfs_bandwidth is not None):
        parser.error('--nfs-latency and --nfs-bandwidth need --nfs-nodes')
    return args


def start_nodes(args, builds, workdir):
    """The NFS storage nodes of --nfs-nodes, started"""
    nodes = nfs_chain.start_nodes(args.nfs_nodes,
                                  os.path.join(workdir, 'nfs'),
                                  args.nfs_latency, BenchError,
                                  args.nfs_bandwidth, log=progress)
    ours = builds['ours']['binaries']
    ours['module_dir'] = os.path.dirname(os.path.realpath(ours['qemu-img']))
    return nodes


def bench(args):
    started = time.monotonic()
    builds = {build: describe_build(tools)
              for build, tools in find_builds(args).items()}
    if not builds['ours']['sqemu_extension']:
        progress(NO_EXTENSION_NOTE)
    report = {'machine': describe_machine(), 'builds': builds,
              'parameters': parameters(args)}
    workdir = util.make_workdir(args.workdir, 'sqemu-bench-', BenchError)
    nodes = None
    try:
        if args.nfs_nodes:
            nodes = start_nodes(args, builds, workdir)
            report['nfs'] = [n.describe() for n in nodes]
        rows = run_lengths(args, builds, workdir, nodes)
    finally:
        if nodes:
            nodes.stop()
        if args.keep:
            progress('kept %s' % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    add_ratios(rows)
    report['machine']['loadavg_end'] = os.getloadavg()
    report['elapsed_s'] = time.monotonic() - started
    report['results'] = rows
    m = report['machine']
    print('disk %d MiB, cluster %d KiB, fio %s QD%d %d s; %d CPUs, '
          'kernel %s' % (args.size >> 20, args.cluster_size >> 10,
                         RAND_BLOCK, args.rand_iodepth, args.runtime,
                         m['nproc'],
                         m['kernel']))
    if args.nfs_nodes:
        print('chains on %d NFS storage nodes (nfs-ganesha, TCP over veth), '
              'added round trip %s, bandwidth cap %s, %s backing names' % (
                  args.nfs_nodes,
                  '%g ms' % args.nfs_latency
                  if args.nfs_latency is not None else 'none',
                  '%d bytes/s' % args.nfs_bandwidth
                  if args.nfs_bandwidth is not None else 'none',
                  args.nfs_names))
    for build in BUILDS:
        print('%-5s: %s' % (build, builds[build]['version']))
    if not builds['ours']['sqemu_extension']:
        print(NO_EXTENSION_NOTE)
    print()
    print(format_table(rows))
    counters = format_counters(rows)
    if counters:
        print()
        print(counters)
    print()
    print(format_targets(rows))
    util.write_json(args.json, report)
    write_plot(args.plot, report)
    progress('wrote %s and %s in %.0f s' % (args.json, args.plot,
                                            report['elapsed_s']))


def main():
    args = parse_args()
    if importlib.util.find_spec('matplotlib') is None:
        print('bench: error: matplotlib missing, for the plot: apt-get '
              'install python3-matplotlib (scripts/sqemu/install-deps '
              'runtime)', file=sys.stderr)
        return 1
    util.interrupt_on(signal.SIGTERM, signal.SIGHUP)
    return util.run_main('bench', lambda: bench(args), (BenchError, OSError))
