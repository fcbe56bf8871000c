# SPDX-License-Identifier: GPL-2.0-or-later
#
# eval: the sQemu paper's evaluation, stock Debian QEMU against ours, on this
# machine in one run, written up as docs/evaluation.md with its plots.
"""Reproduce the sQemu paper's evaluation, stock QEMU against sQemu.

Every figure measures stock Debian QEMU (Debian's packages, unpacked by
scripts/sqemu/stock-qemu) and ours on the same
chains in the same run.  Chains are made by scripts/sqemu/mkchain with ours'
binaries (live snapshots, each indexed by L2 copy); stock QEMU reads the
same files and ignores the index.  Guests boot under KVM if a guest boots
under it here, under TCG otherwise, and the report says which.

Figures (see --help for which scale measures what):
  memory    QEMU's memory overhead (RSS minus guest RAM) after the guest has
            read the whole disk, against chain length
  dd        in-guest dd throughput over the whole disk, against chain length
  boot      Debian guest boot time to a shell prompt, against chain length
  snapshot  snapshot creation time and disk growth, against disk size
  counters  ours' unified cache counters for a full-disk read
  cache     in-guest fio 4 KiB random reads on a 500-layer chain against
            the total L2 cache size (stock: split over the layers)
  rocksdb   db_bench readrandom (read-only, YCSB-C-like) at N=50 and N=500,
            each build's default cache and a 1 MiB total
  livesnap  100 live snapshots over QMP of a guest that writes all along:
            its data verified afterwards, the pause per snapshot
  nfs       bench over chains on NFS storage nodes
  replay    the Debian guest's boot (root disk) and RocksDB reads (data
            disk) recorded by ours (vmrun --io-trace), replayed by trace
            replay on each build's N-layer chain over the same base
The memory and dd figures come from the same guest runs.  The workloads of
cache, rocksdb and livesnap run in the Debian guest without systemd
(vmrun --fast-init).
"""

import argparse
import concurrent.futures
import datetime
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from sqemu import (bench, evaluation_report, paths, trace_convert,
                   trace_file, util)
from sqemu.proc import run_child
from sqemu.evaluation_setup import (
    CACHE_CLUSTER, CACHE_ENTRY, CACHE_LAYERS, CHILD_STOP_S, DEBIAN_FIGURES,
    FIGURES, GUEST_FIGURES, GUEST_MEMORY_MIB, KVM_PROBE_S, LIVESNAP_BLOCK,
    LIVESNAP_DISK, LIVESNAP_HEADER, LIVESNAP_INTERVAL, NFS_LATENCIES,
    NFS_NODES, REPLAY_TARGET, REPLAY_TRACES,
    ROCKSDB_SMALL_CACHE, ROCKSDB_VALUE, SCALES, SNAP_FILL)

VMRUN = paths.script('vmrun')
BENCH = paths.script('bench')
MKCHAIN = paths.script('mkchain')
MKIMAGE = paths.script('mkimage')
TRACE = paths.script('trace')
INSTALL_DEPS = paths.script('install-deps')
DEFAULT_OUT = os.path.join(paths.REPO_TOP, 'docs')
DEFAULT_DEBIAN_DIR = os.path.join(paths.REPO_TOP, 'build', 'guest-debian')
DEFAULT_INITRAMFS_DIR = os.path.join(paths.REPO_TOP, 'build', 'guest')


class EvalError(Exception):
    """A failure that ends the run; the message is shown to the user."""


STARTED = time.monotonic()


def progress(message):
    """One line of progress on stderr, with the seconds since the start."""
    print('eval [%4.0f s]: %s' % (time.monotonic() - STARTED, message),
          file=sys.stderr, flush=True)


def run_tool(cmd):
    """Run a tool to its end; its output (stdout and stderr).  Unlike
    bench.execute, safe in several threads at once (bench's launcher
    makes this process a child subreaper for a moment, which is
    process-wide)."""
    status, output = run_child(cmd, CHILD_STOP_S)
    if status != 0:
        lines = output.strip().splitlines() or ['no output']
        raise EvalError('%s failed (exit status %d): %s' %
                        (os.path.basename(cmd[0]), status, lines[-1]))
    return output


def run_json(cmd, what, usable=lambda status, data: status == 0):
    """Run a script that writes --json FILE; return the parsed JSON, if
    @usable(exit status, JSON) says it is (by default: exit status 0)."""
    with tempfile.NamedTemporaryFile(suffix='.json') as out:
        status, output = run_child(cmd + ['--json', out.name])
        try:
            with open(out.name) as f:
                data = json.load(f)
        except ValueError:
            data = None
    if data is None or not usable(status, data):
        tail = ' | '.join(output.strip().splitlines()[-4:])
        raise EvalError('%s failed (status %d): %s' % (what, status, tail))
    return data


# Builds and accelerator.

def find_builds(args):
    """Tools of both builds, as bench finds them, plus qemu-system."""
    stock = args.stock = args.stock or paths.stock_dir(EvalError)
    builds = bench.find_builds(argparse.Namespace(stock=stock,
                                                  ours=args.ours))
    systems = {'stock': args.stock_qemu or
               os.path.join(stock, 'qemu-system-x86_64'),
               'ours': os.path.join(args.ours, 'qemu-system-x86_64')}
    for build, path in systems.items():
        if not os.access(path, os.X_OK):
            raise EvalError('%s qemu-system-x86_64 not found at %s' %
                            (build, path))
        builds[build]['qemu-system-x86_64'] = path
    return {build: bench.describe_build(tools)
            for build, tools in builds.items()}


def choose_accel(args, builds, chaindir):
    """KVM if a guest boots under it here, else TCG; with the reason."""
    if args.accel != 'auto':
        return args.accel, 'requested'
    top = make_chain(args, builds, 1, 64 << 20, chaindir)
    data = run_json([VMRUN, '--guest-dir', args.initramfs_dir, '--disk', top,
                     '--qemu', builds['stock']['binaries'][
                         'qemu-system-x86_64'],
                     '--workload', 'none', '--accel', 'auto',
                     '--kvm-probe-timeout', str(KVM_PROBE_S),
                     '--timeout', '120'],
                    'the KVM probe')
    shutil.rmtree(chaindir)
    return data['accelerator'], data['accel_note']


# Chains.

def make_chain(args, builds, layers, size, chaindir, base=None,
               index=True):
    """A chain made the way a VM makes one; returns the top's path.
    Without @index, the plain qcow2 chain stock QEMU makes (no L2 copies:
    a layer has L2 tables only where it holds data), same layout."""
    tools = builds['ours']['binaries']
    cmd = [MKCHAIN, chaindir, '-n', str(layers), '-s', str(size),
           '--live', '-o', 'backing-index=%s' % ('on' if index else 'off'),
           '--qemu-img', tools['qemu-img'], '--qemu-io', tools['qemu-io'],
           '--qemu-storage-daemon', tools['qemu-storage-daemon']]
    if base:
        cmd += ['--base', base]
    output = run_tool(cmd)
    bench.sync_files(chaindir)
    return os.path.abspath(output.strip().splitlines()[-1])


def side_by_side(calls):
    """Run {build: function of no arguments} in two threads at once (chain
    setup only: nothing is measured meanwhile); {build: its result}."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        jobs = {build: pool.submit(call) for build, call in calls.items()}
        return {build: job.result() for build, job in jobs.items()}


def make_chains(args, builds, layers, chaindir, base):
    """Stock's plain chain and ours' indexed one over @base; {build: top}."""
    return side_by_side({
        build: functools.partial(make_chain, args, builds, layers, 0,
                                 os.path.join(chaindir, build), base=base,
                                 index=build == 'ours')
        for build in ('stock', 'ours')})


# Figures.

def guest_run(args, builds, build, accel, extra):
    """One vmrun of a build's qemu-system-x86_64; its JSON summary."""
    cmd = [VMRUN, '--qemu', builds[build]['binaries']['qemu-system-x86_64'],
           '--accel', accel, '--memory', str(GUEST_MEMORY_MIB),
           '--timeout', str(args.guest_timeout)] + extra
    return run_json(cmd, 'vmrun (%s)' % build)


def figure_dd(args, builds, accel, workdir, report):
    """Guest dd over the whole disk and QEMU's memory overhead, and ours'
    counters for the same chains.

    All chains are made first; then each round reads every (N, build)
    once (stock only in the first), so that the machine's drift over the
    run falls on every length alike, as in the boot figure."""
    size = args.scale['dd_size']
    tops = {}
    for layers in args.scale['dd_lengths']:
        progress('dd: %d-layer chain of %d MiB' % (layers, size >> 20))
        tops[layers] = make_chain(args, builds, layers, size,
                                  os.path.join(workdir, 'dd-%d' % layers))
    repeat = {'stock': 1, 'ours': args.scale['dd_repeat']}
    runs = {(layers, build): [] for layers in tops for build in repeat}
    for round_ in range(max(repeat.values())):
        for layers in tops:
            for build in ('stock', 'ours'):
                if round_ >= repeat[build]:
                    continue
                progress('dd: N=%d %s: guest dd (%d/%d)' %
                         (layers, build, round_ + 1, repeat[build]))
                runs[(layers, build)].append(guest_run(
                    args, builds, build, accel,
                    ['--guest-dir', args.initramfs_dir, '--disk',
                     tops[layers], '--workload', 'dd']))
    for (layers, build), done in runs.items():
        # The fastest read (noise only ever adds time), and the largest
        # memory overhead (the one that counts against ours)
        fastest = min(done, key=lambda d: d['guest_seconds'])
        largest = max(done, key=lambda d: d['peak_overhead_kib'] or 0)
        report['dd'].append({
            'layers': layers, 'build': build,
            'mb_per_s': fastest['guest_bytes'] / fastest['guest_seconds'] /
            1e6,
            'seconds': fastest['guest_seconds'],
            'dd_times_s': [d['guest_seconds'] for d in done],
            'bytes': fastest['guest_bytes'],
            'peak_rss_kib': largest['peak_rss_kib'],
            'overhead_kib': largest['peak_overhead_kib'],
            'tcg_code_kib': largest.get('peak_tcg_code_kib'),
            'overhead_no_code_kib': largest.get('peak_overhead_no_code_kib')})
    for layers, top in tops.items():
        if 'counters' in args.figures:
            progress('counters: N=%d' % layers)
            counters = bench.read_counters(builds['ours']['binaries'], top,
                                           size)
            report['counters'].append(dict(layers=layers, **counters))
        shutil.rmtree(os.path.dirname(top))


def figure_boot(args, builds, accel, workdir, report):
    """Debian guest boot time to a shell, the root disk at depth N.

    All chains are made first; then each round boots every (N, build)
    once, so that the machine's drift over the run (seconds here) falls
    on every length alike instead of on the last ones."""
    base = os.path.join(args.debian_dir, 'debian.qcow2')
    tops, points = {}, []
    for layers in args.scale['boot_lengths']:
        progress('boot: %d-layer chains over the Debian image' % layers)
        tops[layers] = make_chains(args, builds, layers,
                                   os.path.join(workdir, 'boot-%d' % layers),
                                   base)
        for build in ('stock', 'ours'):
            if (build, layers) == ('stock', 1) and \
                    not args.scale['boot_stock_at_1']:
                # No backing file: stock and ours run the same code
                continue
            repeat = args.scale['boot_repeat' if build == 'ours'
                                else 'boot_repeat_stock']
            points.append((layers, build, repeat))
    times = {(layers, build): [] for layers, build, _ in points}
    rss = {(layers, build): [] for layers, build, _ in points}
    for round_ in range(max(repeat for _, _, repeat in points)):
        for layers, build, repeat in points:
            if round_ >= repeat:
                continue
            progress('boot: N=%d %s (%d/%d)' % (layers, build, round_ + 1,
                                                repeat))
            data = guest_run(args, builds, build, accel,
                             ['--guest', 'debian', '--guest-dir',
                              args.debian_dir, '--root',
                              tops[layers][build], '--workload', 'none'])
            times[(layers, build)].append(data['boot_seconds'])
            report['boot_kernel'] = data.get('kernel')
            rss[(layers, build)].append(data['peak_rss_kib'])
    for layers, build, _ in points:
        # The fastest: this machine's noise only ever adds time
        report['boot'].append({'layers': layers, 'build': build,
                               'boot_s': min(times[(layers, build)]),
                               'boot_times_s': times[(layers, build)],
                               'peak_rss_kib': max(rss[(layers, build)])})
    for layers in tops:
        shutil.rmtree(os.path.join(workdir, 'boot-%d' % layers))


def figure_snapshot(args, builds, workdir, report):
    """qemu-img create -b time and new-file size against disk size."""
    for size in args.scale['snap_sizes']:
        chaindir = os.path.join(workdir, 'snap-%d' % (size >> 30))
        progress('snapshot: %d GiB disk, %d%% written' %
                 (size >> 30, SNAP_FILL * 100))
        tools = builds['ours']['binaries']
        output = bench.execute([MKCHAIN, chaindir, '-n', '1', '-s',
                                str(size), '-f', str(SNAP_FILL),
                                '-o', 'backing-index=on',
                                '--qemu-img', tools['qemu-img'],
                                '--qemu-io', tools['qemu-io']])[0]
        top = os.path.abspath(output.strip().splitlines()[-1])
        bench.sync_files(chaindir)
        for build, options in (('stock', None), ('ours', 'backing-index=on')):
            snap = os.path.join(chaindir, 'snap.qcow2')
            times, growth = [], None
            for _ in range(args.snap_repeat):
                result = bench.snapshot(builds[build]['binaries'], top, snap,
                                        options)
                times.append(result['snap_time_s'])
                growth = result['snap_growth_bytes']
            report['snapshot'].append({
                'size': size, 'build': build,
                'time_s': sorted(times)[len(times) // 2], 'times_s': times,
                'growth_bytes': growth})
        shutil.rmtree(chaindir)


def debian_run(args, builds, build, accel, disk, workload, extra=(),
               fast_init=True):
    """A Debian guest run on data disk @disk, without systemd unless not
    @fast_init."""
    return guest_run(args, builds, build, accel,
                     ['--guest', 'debian', '--guest-dir', args.debian_dir]
                     + (['--fast-init'] if fast_init else []) +
                     ['--disk', disk, '--workload', workload] + list(extra))


def cache_options(build, total, layers):
    """vmrun options giving @build @total bytes of L2 cache: stock split
    evenly over its layers (a -blockdev each), ours as the unified cache
    plus the top's own share, which the top's index lookups use."""
    share = max(total // layers, 2 * CACHE_ENTRY)
    per_layer = 'l2-cache-size=%d,l2-cache-entry-size=%d' % (share,
                                                             CACHE_ENTRY)
    if build == 'stock':
        return ['--layer-blockdev', per_layer]
    return ['--extra-drive-opts', 'unified-cache-size=%d,%s' % (total,
                                                                per_layer)]


def figure_cache(args, builds, accel, workdir, report):
    """Guest fio random reads on a 500-layer chain against cache size."""
    chaindir = os.path.join(workdir, 'cache')
    fill = args.scale['cache_fill']
    progress('cache: %d-layer chains of %d MiB, %d KiB clusters, %d%% '
             'written' % (CACHE_LAYERS, args.scale['cache_disk'] >> 20,
                          CACHE_CLUSTER >> 10, fill * 100))
    tools = builds['ours']['binaries']
    cmds = {}
    for build in ('stock', 'ours'):
        # Ours by live snapshots (each an L2 copy); stock's the plain
        # qcow2 chain qemu-img create -b makes, all with 4 KiB clusters
        # (a live snapshot under stock QEMU would get 64 KiB ones)
        cmd = [MKCHAIN, os.path.join(chaindir, build), '-n',
               str(CACHE_LAYERS), '-s', str(args.scale['cache_disk']), '-c',
               str(CACHE_CLUSTER), '-f', str(fill),
               '--qemu-img', tools['qemu-img'], '--qemu-io', tools['qemu-io']]
        if build == 'ours':
            cmd += ['--live', '-o', 'backing-index=on',
                    '--qemu-storage-daemon', tools['qemu-storage-daemon']]
        cmds[build] = cmd
    outputs = side_by_side({build: functools.partial(run_tool, cmd)
                            for build, cmd in cmds.items()})
    tops = {build: os.path.abspath(output.strip().splitlines()[-1])
            for build, output in outputs.items()}
    bench.sync_files(chaindir)
    workload = 'fio-randread:%d' % args.scale['fio_seconds']
    for total in args.scale['cache_sizes']:
        for build in ('stock', 'ours'):
            progress('cache: %d KiB total, %s: guest fio' %
                     (total >> 10, build))
            data = debian_run(args, builds, build, accel, tops[build],
                              workload,
                              cache_options(build, total, CACHE_LAYERS))
            report['cache'].append({
                'layers': CACHE_LAYERS, 'cache_bytes': total,
                'build': build, 'iops': data['guest_iops'],
                'peak_rss_kib': data['peak_rss_kib'],
                'overhead_kib': data['peak_overhead_kib']})
    shutil.rmtree(chaindir)


def make_rocksdb_disk(args, builds, workdir):
    """A qcow2 ext4 disk holding a RocksDB database filled by db_bench on
    the host (fillseq, then compacted) and its key count."""
    db_bench = shutil.which('db_bench')
    if not db_bench:
        raise EvalError('db_bench not found: apt-get install rocksdb-tools '
                        '(scripts/sqemu/install-deps image)')
    keys = args.scale['rocksdb_keys']
    tree = os.path.join(workdir, 'rocksdb-tree')
    os.makedirs(tree)
    progress('rocksdb: filling %d keys of %d bytes' % (keys, ROCKSDB_VALUE))
    bench.execute([db_bench, '--benchmarks=fillseq,compact',
                   '--db=' + os.path.join(tree, 'db'), '--num=%d' % keys,
                   '--value_size=%d' % ROCKSDB_VALUE,
                   '--compression_type=none', '--threads=1'])
    with open(os.path.join(tree, 'sqemu-db.keys'), 'w') as f:
        f.write('%d\n' % keys)
    used = sum(os.path.getsize(os.path.join(d, n))
               for d, _, names in os.walk(tree) for n in names)
    size = (used * 5 // 4 + (64 << 20)) >> 20 << 20
    raw = os.path.join(workdir, 'rocksdb.raw')
    bench.execute(['mkfs.ext4', '-q', '-F', '-d', tree, raw,
                   '%dM' % (size >> 20)])
    disk = os.path.join(workdir, 'rocksdb.qcow2')
    bench.execute([builds['ours']['binaries']['qemu-img'], 'convert', '-f',
                   'raw', '-O', 'qcow2', raw, disk])
    os.unlink(raw)
    shutil.rmtree(tree)
    return disk, size


def figure_rocksdb(args, builds, accel, workdir, report):
    """db_bench readrandom on a database below an N-layer chain."""
    base, size = make_rocksdb_disk(args, builds, workdir)
    workload = 'rocksdb:%d' % args.scale['rocksdb_seconds']
    for layers in args.scale['rocksdb_lengths']:
        chaindir = os.path.join(workdir, 'rocksdb-%d' % layers)
        progress('rocksdb: %d-layer chains over the database disk' %
                 layers)
        tops = make_chains(args, builds, layers, chaindir, base)
        for cache in args.scale['rocksdb_caches']:
            for build in ('stock', 'ours'):
                progress('rocksdb: N=%d %s, %s cache' % (layers, build,
                                                         cache))
                extra = []
                if cache == 'small':
                    extra = cache_options(build, ROCKSDB_SMALL_CACHE,
                                          layers)
                data = debian_run(args, builds, build, accel, tops[build],
                                  workload, extra)
                result = data['guest_result']
                report['rocksdb'].append({
                    'layers': layers, 'build': build, 'cache': cache,
                    'ops_per_s': float(result['ops_per_s']),
                    'reads': int(result['reads']),
                    'disk_bytes': size,
                    'peak_rss_kib': data['peak_rss_kib'],
                    'overhead_kib': data['peak_overhead_kib']})
        shutil.rmtree(chaindir)
    os.unlink(base)


def host_verify(tools, top, writes, blocks):
    """Read every block the writer wrote through @tools' qemu-io and check
    its fill byte (all but its header); the number of bad blocks."""
    commands = []
    for block in range(min(writes, blocks)):
        generation = writes // blocks + (1 if block < writes % blocks else 0)
        fill = (block * 37 + generation * 101) % 251 + 1
        commands.append('read -q -P %d %d %d' % (
            fill, block * LIVESNAP_BLOCK + LIVESNAP_HEADER,
            LIVESNAP_BLOCK - LIVESNAP_HEADER))
    done = subprocess.run([tools['qemu-io'], '-r', '-f', 'qcow2', top],
                          input='\n'.join(commands) + '\nquit\n',
                          text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0 and 'Pattern verification failed' not in \
            done.stdout:
        raise EvalError('qemu-io on %s failed: %s' % (top, done.stdout[-300:]))
    return done.stdout.count('Pattern verification failed')


def figure_livesnap(args, builds, accel, workdir, report):
    """Live snapshots of a guest that writes, then its data checked."""
    count = args.scale['live_snapshots']
    for build, options in (('stock', []), ('ours', ['-o',
                                                    'backing-index=on'])):
        chaindir = os.path.join(workdir, 'livesnap-%s' % build)
        os.makedirs(chaindir)
        disk = os.path.join(chaindir, 'data.qcow2')
        tools = builds[build]['binaries']
        bench.execute([tools['qemu-img'], 'create', '-q', '-f', 'qcow2']
                      + options + [disk, str(LIVESNAP_DISK)])
        progress('livesnap: %s: %d live snapshots of a writing guest' %
                 (build, count))
        data = debian_run(args, builds, build, accel, disk, 'writer',
                          ['--writable', '--live-snapshots', str(count),
                           '--snapshot-interval', str(LIVESNAP_INTERVAL)])
        result = data['guest_result']
        writes, blocks = int(result['writes']), int(result['blocks'])
        times = sorted(data['snapshot_seconds'])
        top_ms = [float(x) for x in result['top_ms'].split(',')]
        row = {'build': build, 'snapshots': len(times),
               'snapshot_ms_median': times[len(times) // 2] * 1000,
               'snapshot_ms_max': times[-1] * 1000,
               'writes': writes, 'blocks': blocks,
               'write_ms_median': float(result['lat_median_ms']),
               'write_ms_p99': float(result['lat_p99_ms']),
               'pause_ms_median': statistics.median(top_ms[:len(times)]),
               'pause_ms_max': top_ms[0],
               'guest_verify_errors': int(result['verify_errors']),
               'host_verify_errors': {}}
        for reader in ('stock', 'ours'):
            progress('livesnap: %s chain read back by %s qemu-io' %
                     (build, reader))
            row['host_verify_errors'][reader] = host_verify(
                builds[reader]['binaries'], data['top'], writes, blocks)
        report['livesnap'].append(row)
        shutil.rmtree(chaindir)


def convert_trace(path, iolog):
    """sQemu trace file @path as fio iolog @iolog (trace convert --from
    sqemu); what the trace holds, for the report"""
    ops, trace = trace_convert.read_sqemu(path)
    if not ops:
        raise EvalError('the trace %s holds no request' % path)
    with open(iolog, 'w') as f:
        f.write(trace_convert.fio_iolog(ops, REPLAY_TARGET))
    kinds = {}
    for _, kind, _, length in ops:
        n, size = kinds.get(kind, (0, 0))
        kinds[kind] = (n + 1, size + length)
    latency = trace_file.latency_summary(trace.requests)
    return {'records': len(trace.requests), 'dropped': trace.dropped,
            'complete': trace.complete, 'disk_length': trace.disk_length,
            'operations': len(ops),
            'counts': {kind: {'ios': n, 'bytes': size}
                       for kind, (n, size) in sorted(kinds.items())},
            'span_s': (max(o[0] for o in ops) - min(o[0] for o in ops)) /
            1e6,
            'recorded_latency_ms': {
                op: {'n': n, 'p50': p50 / 1000, 'p99': p99 / 1000,
                     'max': top / 1000}
                for op, (n, p50, p99, top) in sorted(latency.items())},
            'warnings': trace.warnings()}


def replay_json(cmd, what):
    """trace replay's JSON report of @cmd; its exit status 1 with a report
    (a replay that did not issue the trace's operations) is kept, the
    report says so"""
    return run_json(cmd, what, lambda status, data: 'summary' in data and (
        status == 0 or data.get('operations_match') is False))


def replay_rows(data, trace, layers):
    """The report's rows of trace replay's JSON @data: one per pace and
    build (the medians over the rounds, and ours' index counters of the
    first), at chain length
    @layers of trace @trace"""
    rows = []
    for pace, builds in data['summary'].items():
        for build in ('stock', 'ours'):
            if build not in builds:
                continue
            runs = [r for r in data['runs']
                    if r['pace'] == pace and r['build'] == build]
            row = {'trace': trace, 'layers': layers, 'pace': pace,
                   'build': build,
                   'issued': {k: v['ios'] for k, v in
                              runs[0]['issued'].items()},
                   'wall_s': statistics.median(r['wall_s'] for r in runs),
                   'operations_match': not any(r['mismatches']
                                               for r in runs),
                   'index_counters': runs[0].get('index_counters')}
            row.update(builds[build])
            rows.append(row)
    return rows


def figure_replay(args, builds, accel, workdir, report):
    """The Debian guest's boot and RocksDB reads recorded by ours, each
    disk's trace replayed by stock and ours on N-layer chains over the
    disk it was recorded on.

    One guest run (ours, systemd boot, the rocksdb workload) records both
    disks: the root disk (debian.qcow2, read-only) from the first read of
    the boot to the power-off, the data disk (the RocksDB database) from
    udev's first look at it to db_bench's last read.  Each build replays
    on the chain it makes itself (make_chains: ours indexed, stock's
    plain overlays) with trace replay --stock-chain; mkchain --base
    converts the base into the chain's first layer, so the Debian image
    is only read."""
    disk, _ = make_rocksdb_disk(args, builds, workdir)
    bases = {'root': os.path.join(args.debian_dir, 'debian.qcow2'),
             'data': disk}
    prefix = os.path.join(workdir, 'replay')
    progress('replay: ours records the Debian guest\'s boot and RocksDB '
             'reads (vmrun --io-trace)')
    data = debian_run(args, builds, 'ours', accel, disk,
                      'rocksdb:%d' % args.scale['rocksdb_seconds'],
                      ['--io-trace', prefix], fast_init=False)
    iologs = {}
    for trace in REPLAY_TRACES:
        info = data['io_traces'][trace]
        iologs[trace] = '%s-%s.iolog' % (prefix, trace)
        row = convert_trace(info['file'], iologs[trace])
        row.update(trace=trace, base=os.path.basename(bases[trace]),
                   guest_boot_s=data.get('boot_seconds'),
                   guest_exit_s=data.get('exit_seconds'),
                   rocksdb_ops_per_s=float(
                       data['guest_result']['ops_per_s']))
        report['replay_traces'].append(row)
        progress('replay: %s trace: %d requests over %.0f s' % (
            trace, row['operations'], row['span_s']))
    for layers in args.scale['replay_lengths']:
        for trace in REPLAY_TRACES:
            chaindir = os.path.join(workdir,
                                    'replay-%s-%d' % (trace, layers))
            progress('replay: %s trace, %d-layer chains over %s' % (
                trace, layers, os.path.basename(bases[trace])))
            tops = make_chains(args, builds, layers, chaindir, bases[trace])
            progress('replay: %s trace at N=%d, both paces' % (trace,
                                                               layers))
            out = replay_json([
                TRACE, 'replay', iologs[trace], '--chain', tops['ours'],
                '--stock-chain', tops['stock'], '--builds', 'stock,ours',
                '--pace', 'both', '--skip-trims',
                '--rounds', str(args.scale['replay_rounds']),
                '--stock', args.stock,
                '--ours', args.ours, '--workdir',
                os.path.join(workdir, 'replay-work-%s-%d' % (trace,
                                                             layers))],
                'trace replay (%s trace, N=%d)' % (trace, layers))
            report['replay'] += replay_rows(out, trace, layers)
            shutil.rmtree(chaindir)
    os.unlink(disk)


# Main.

def figure_nfs(args, workdir, report):
    """Sequential and random reads, chain open and snapshot with the
    chains on NFS storage nodes: bench's NFS mode, side by side on the same
    chains, once without added latency and once per round trip of
    NFS_LATENCIES"""
    scale = args.scale
    for latency in NFS_LATENCIES:
        what = 'no added latency' if latency is None else \
            '%g ms round trip' % latency
        progress('nfs: %d storage nodes, %s, N=%s' % (
            NFS_NODES, what, ','.join(map(str, scale['nfs_lengths']))))
        name = 'nfs-%s' % ('direct' if latency is None else latency)
        cmd = [BENCH, '--stock', args.stock, '--ours', args.ours,
               '--lengths', ','.join(map(str, scale['nfs_lengths'])),
               '--size', str(scale['nfs_size']),
               '--repeat', str(scale['nfs_repeat']),
               '--runtime', str(scale['nfs_seconds']),
               # random reads in rounds whose daemons run side by side:
               # one run's N=1 can be 25% off the next one's here
               '--rand-repeat', str(scale['nfs_rand_repeat']),
               '--rand-paired',
               # sequential reads too: whole reads one after the other
               # drifted by more than the depth costs
               '--seq-paired',
               '--nfs-nodes', str(NFS_NODES),
               '--workdir', os.path.join(workdir, name),
               '--plot', os.path.join(workdir, name + '.png')]
        if latency is not None:
            cmd += ['--nfs-latency', str(latency)]
        data = run_json(cmd, 'bench over NFS (%s)' % what)
        report['nfs'].append({
            'latency_ms': latency, 'nodes': NFS_NODES,
            'names': data['parameters'].get('nfs_names'),
            'size': scale['nfs_size'], 'repeat': scale['nfs_repeat'],
            'rand_repeat': scale['nfs_rand_repeat'],
            # None: whole reads one after the other, not paired rounds
            'seq_slices': data['parameters'].get('seq_slices'),
            'results': data['results']})


def install_packages(figures):
    """The Debian packages @figures need (install-deps installs them as
    root, else names them and fails)."""
    sets = ['runtime']
    if DEBIAN_FIGURES & set(figures):
        sets.append('image')
    if 'nfs' in figures:
        sets.append('nfs')
    status, output = run_child([INSTALL_DEPS] + sets)
    if status != 0:
        raise EvalError('%s (or leave out the figures that need them)' %
                        ' '.join(output.strip().splitlines()))
    if output.strip():
        progress(output.strip().splitlines()[0])


def build_debian_guest(args):
    """The Debian guest, built by mkimage if a figure boots it and
    --debian-dir has none, as vmrun would on first use: those figures make
    their chains over its image before any guest boots."""
    image = os.path.join(args.debian_dir, 'debian.qcow2')
    if not DEBIAN_FIGURES & set(args.figures) or os.path.isfile(image):
        return
    progress('building the Debian guest in %s (scripts/sqemu/mkimage, a '
             'few minutes)' % args.debian_dir)
    status, output = run_child([sys.executable, MKIMAGE, '--output-dir',
                                args.debian_dir])
    if status != 0 or not os.path.isfile(image):
        lines = output.strip().splitlines() or ['no output']
        raise EvalError('mkimage could not build the Debian guest in %s: '
                        '%s (or leave out the figures that boot it: %s)' %
                        (args.debian_dir, lines[-1],
                         ', '.join(sorted(DEBIAN_FIGURES))))


def evaluate(args):
    if args.from_json:
        with open(args.from_json) as f:
            report = json.load(f)
        values = evaluation_report.write_report(report, args.out, progress)
        print('wrote %s from %s' % (os.path.join(args.out, 'evaluation.md'),
                                    args.from_json))
        for key, value in sorted(values.items()):
            print('%s: %.3f' % (key, value))
        return
    # What a fresh machine lacks, stock QEMU included, before looking for it
    install_packages(args.figures)
    builds = find_builds(args)
    build_debian_guest(args)
    started = time.monotonic()
    report = {'command': ' '.join(['scripts/sqemu/eval'] + args.argv),
              'date': datetime.date.today().isoformat(),
              'scale': args.scale_name, 'figures': args.figures,
              'boot_repeat': args.scale['boot_repeat'],
              'dd_repeat': args.scale['dd_repeat'],
              'boot_repeat_stock': args.scale['boot_repeat_stock'],
              'machine': bench.describe_machine(),
              'builds': {b: builds[b]['version'] for b in builds},
              'dd': [], 'boot': [], 'snapshot': [], 'counters': [],
              'cache': [], 'rocksdb': [], 'livesnap': [], 'nfs': [],
              'replay': [], 'replay_traces': [],
              'replay_lengths': args.scale['replay_lengths'],
              'replay_rounds': args.scale['replay_rounds'],
              'cache_fill': args.scale['cache_fill'],
              'dd_size': args.scale['dd_size'],
              'cache_disk': args.scale['cache_disk'],
              'fio_seconds': args.scale['fio_seconds'],
              'rocksdb_keys': args.scale['rocksdb_keys'],
              'rocksdb_seconds': args.scale['rocksdb_seconds']}
    workdir = tempfile.mkdtemp(prefix='sqemu-eval-', dir=args.workdir)
    try:
        if GUEST_FIGURES & set(args.figures):
            accel, note = choose_accel(args, builds,
                                       os.path.join(workdir, 'probe'))
        else:
            accel, note = 'none', 'no guest in the figures asked for'
        progress('accelerator: %s (%s)' % (accel, note))
        report.update(accelerator=accel, accel_note=note)
        if {'dd', 'memory', 'counters'} & set(args.figures):
            figure_dd(args, builds, accel, workdir, report)
        if 'boot' in args.figures:
            figure_boot(args, builds, accel, workdir, report)
        if 'cache' in args.figures:
            figure_cache(args, builds, accel, workdir, report)
        if 'rocksdb' in args.figures:
            figure_rocksdb(args, builds, accel, workdir, report)
        if 'livesnap' in args.figures:
            figure_livesnap(args, builds, accel, workdir, report)
        if 'nfs' in args.figures:
            figure_nfs(args, workdir, report)
        if 'replay' in args.figures:
            figure_replay(args, builds, accel, workdir, report)
        # Last: it writes 90% of each disk (45 GiB at --full), and a figure
        # timed right after such writes here ran up to 5x slower (the
        # disk's write-back and throttling outlast the writes)
        if 'snapshot' in args.figures:
            figure_snapshot(args, builds, workdir, report)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report['seconds'] = time.monotonic() - started
    if args.merge:
        report = merge_reports(args.merge_base, report)
    values = evaluation_report.write_report(report, args.out, progress)
    print('wrote %s' % os.path.join(args.out, 'evaluation.md'))
    for key, value in sorted(values.items()):
        print('%s: %.3f' % (key, value))


# What each figure puts in the report
FIGURE_KEYS = {'memory': ('dd',), 'dd': ('dd',), 'counters': ('counters',),
               'boot': ('boot',), 'snapshot': ('snapshot',),
               'cache': ('cache',), 'rocksdb': ('rocksdb',),
               'livesnap': ('livesnap',), 'nfs': ('nfs',),
               'replay': ('replay', 'replay_traces', 'replay_lengths',
                          'replay_rounds')}


def merge_reports(base, new):
    """@base (an earlier run's report) with the results of @new's figures
    in place of its own, and a line saying when they were measured"""
    merged = dict(base)
    for figure in new['figures']:
        for key in FIGURE_KEYS[figure]:
            merged[key] = new[key]
    merged['figures'] = sorted(set(base['figures']) | set(new['figures']),
                               key=FIGURES.index)
    merged['merged'] = [m for m in base.get('merged', ())
                        if not set(m['figures']) <= set(new['figures'])]
    merged['merged'].append({k: new[k] for k in (
        'command', 'date', 'seconds', 'figures', 'builds')})
    return merged


def describe_scale(name):
    """What a scale measures, from SCALES, for --help."""
    scale = SCALES[name]

    def sizes(values):
        return ', '.join('%d' % (v >> 30) for v in values)

    def lengths(values):
        return ','.join(str(v) for v in values)

    return (
        'dd/memory/counters on a %d MiB disk at N=%s (ours the fastest of '
        '%d reads), boots at N=%s (the fastest of %d; stock %s), '
        'snapshots of %s GiB disks, fio (%d s) with %s MiB of cache on '
        '%d%% of a %d MiB disk, RocksDB (%dk keys, %d s) at N=%s with %s '
        'caches, %d live snapshots, reads over NFS (%d nodes, %s) at '
        'N=%s on a %d MiB disk, the boot and RocksDB traces replayed at '
        'N=%s (medians of %d rounds)' % (
            scale['dd_size'] >> 20, lengths(scale['dd_lengths']),
            scale['dd_repeat'], lengths(scale['boot_lengths']),
            scale['boot_repeat'],
            ('%d times' % scale['boot_repeat_stock'])
            if scale['boot_stock_at_1'] else
            'once and not at N=1, where both run the same code',
            sizes(scale['snap_sizes']), scale['fio_seconds'],
            ', '.join('%d' % (c >> 20) for c in scale['cache_sizes']),
            scale['cache_fill'] * 100, scale['cache_disk'] >> 20,
            scale['rocksdb_keys'] // 1000, scale['rocksdb_seconds'],
            lengths(scale['rocksdb_lengths']),
            ' and '.join(scale['rocksdb_caches']),
            scale['live_snapshots'], NFS_NODES,
            ' and '.join('no added latency' if ms is None else
                         '%g ms round trip' % ms for ms in NFS_LATENCIES),
            lengths(scale['nfs_lengths']), scale['nfs_size'] >> 20,
            lengths(scale['replay_lengths']), scale['replay_rounds']))


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description='Reproduce the sQemu paper\'s evaluation, stock Debian '
        'QEMU against ours on the same chains in one run, and write '
        'OUT/evaluation.md with its plots in OUT/eval/.',
        epilog='Figures: %s.  --quick: %s.  --full: %s.' % (
            ', '.join(FIGURES), describe_scale('quick'),
            describe_scale('full')))
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument('--quick', action='store_true',
                       help='the short run (the default; under 15 minutes '
                       'here without the nfs figure)')
    scale.add_argument('--full', action='store_true',
                       help='the paper\'s scale')
    parser.add_argument('--figures', default=','.join(FIGURES),
                        help='comma-separated subset of: %s (default: all)'
                        % ', '.join(FIGURES))
    parser.add_argument('--stock', metavar='DIR',
                        help='stock qemu-img, qemu-io, qemu-storage-daemon '
                        '(default: Debian\'s packages, unpacked by '
                        'scripts/sqemu/stock-qemu)')
    parser.add_argument('--stock-qemu', metavar='PATH',
                        help='stock qemu-system-x86_64 (default: the one '
                        'beside the --stock tools)')
    parser.add_argument('--ours', default=paths.BUILD, metavar='DIR',
                        help='our build directory (default: %(default)s)')
    parser.add_argument('--initramfs-dir', default=DEFAULT_INITRAMFS_DIR,
                        metavar='DIR', help='initramfs guest (made by vmrun '
                        'if missing; default: %(default)s)')
    parser.add_argument('--debian-dir', default=DEFAULT_DEBIAN_DIR,
                        metavar='DIR', help='Debian guest from mkimage '
                        '(default: %(default)s)')
    parser.add_argument('--accel', choices=('auto', 'kvm', 'tcg'),
                        default='auto', help='accelerator (default: probe '
                        'KVM, fall back to TCG)')
    parser.add_argument('--guest-timeout', type=int, default=1800,
                        metavar='S', help='limit per guest run (default: '
                        '%(default)s)')
    parser.add_argument('--snap-repeat', type=int, default=3, metavar='N',
                        help='snapshot runs per size and build (default: '
                        '%(default)s)')
    parser.add_argument('--out', default=DEFAULT_OUT, metavar='DIR',
                        help='where evaluation.md and eval/ go (default: '
                        '%(default)s)')
    parser.add_argument('--merge', action='store_true',
                        help='measure only --figures and keep the other '
                        'figures of the earlier run in OUT/eval/eval.json '
                        '(the report says when each was measured)')
    parser.add_argument('--from-json', metavar='FILE',
                        help='measure nothing: rewrite the report from the '
                        'eval.json of an earlier run')
    parser.add_argument('--workdir', default='/var/tmp', metavar='DIR',
                        help='scratch space for chains, removed at the end '
                        '(default: %(default)s)')
    args = parser.parse_args(argv)
    args.argv = argv
    args.scale_name = 'full' if args.full else 'quick'
    args.scale = SCALES[args.scale_name]
    args.figures = [f.strip() for f in args.figures.split(',') if f.strip()]
    unknown = set(args.figures) - set(FIGURES)
    if unknown:
        parser.error('unknown figure(s): %s' % ', '.join(sorted(unknown)))
    args.merge_base = None
    if args.merge:
        if args.from_json:
            parser.error('--merge measures: not with --from-json')
        path = os.path.join(args.out, 'eval', 'eval.json')
        try:
            with open(path) as f:
                args.merge_base = json.load(f)
        except (OSError, ValueError) as e:
            parser.error('--merge: cannot read the earlier run\'s %s: %s'
                         % (path, e))
        if args.merge_base.get('scale') != args.scale_name:
            parser.error('--merge: %s is a --%s run, this one --%s' % (
                path, args.merge_base.get('scale'), args.scale_name))
    return args


def main():
    args = parse_args(sys.argv[1:])
    util.exit_on(signal.SIGTERM)
    return util.run_main('eval', lambda: evaluate(args),
                         (EvalError, bench.BenchError, OSError), 1)
