# SPDX-License-Identifier: GPL-2.0-or-later
#
# snapshot-cost: what a snapshot of a big, mostly written disk costs with
# the backing index, against stock QEMU's `qemu-img create -b`, side by
# side in one run.
#
# It makes a base of --size (50G by default, 64 KiB clusters) with 90% of
# its clusters allocated (metadata preallocation, then a discard of every
# tenth cluster, which leaves it unallocated; no data is written, the
# file stays sparse) and indexes it.
# Then, for each case, a chain whose top is the snapshot's parent:
#   base          the base itself (the snapshot is at depth 2);
#   empty-middle  base <- l2 <- l3, l2 and l3 empty (depth 4): the data is
#                 in the base;
#   middle        base <- l2 <- l3, l2 holding every cluster and l3 empty
#                 (depth 4): the new top's index names l2, a middle layer,
#                 so it also gets resolved L2 tables (here references to
#                 l2's own L2 tables: every entry of a table names l2);
#   mixed         base <- l2 <- l3 <- l4, l2 holding the even clusters, l3
#                 the odd ones, l4 empty (depth 5): every L2 table's
#                 entries name two middle layers;
#   spread        base <- l2 <- ... <- l9 <- l10, layer j holding the
#                 clusters c with c mod 8 = j - 2, l10 empty (depth 11):
#                 every L2 table names eight middle layers, more than a
#                 read corrects from without resolved tables, so the new
#                 top gets resolved tables of its own, from its parent's
#                 and its grandparent's.
# Each case times --runs snapshots with stock's qemu-img (no index) and
# ours (-o backing-index=on) over the same parent, alternating, and
# prints the medians, their ratio (the target is 3x) and the new file's
# size on disk (the paper reports up to 6 MB per snapshot of a full 50 GB
# disk).  Everything it makes is removed when it exits, also on SIGTERM.

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import time

from sqemu import paths, util

CASES = ('base', 'empty-middle', 'middle', 'mixed', 'spread')
# middle layers of each case, and how many of them share the clusters
# (0: none holds any; 1: the first holds them all)
MIDDLE = {'empty-middle': (2, 0), 'middle': (2, 1), 'mixed': (3, 2),
          'spread': (9, 8)}
CLUSTER = 64 << 10
TARGET_RATIO = 3.0
PAPER_BYTES = 6 * 1000 * 1000


class CostError(Exception):
    pass


progress = util.printer('snapshot-cost')


def run(cmd, stdin=None):
    """Run @cmd; its wall time in seconds.  Raise CostError with its
    output if it fails."""
    start = time.monotonic()
    out = subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    elapsed = time.monotonic() - start
    if out.returncode != 0:
        raise CostError('%s failed (%s): %s' %
                        (' '.join(cmd[:3]), util.describe_status(
                            out.returncode), util.tail(out.stdout)))
    return elapsed


def discard_script(size, every=10, first=0):
    """qemu-io commands that discard every @every-th cluster of a disk of
    @size bytes, from cluster @first on"""
    return ''.join('discard %d %d\n' % (c * CLUSTER, CLUSTER)
                   for c in range(first, size // CLUSTER, every)) + 'quit\n'


def keep_script(size, period, keep):
    """qemu-io commands that discard every cluster c of a disk of @size
    bytes but those with c % @period == @keep, in runs"""
    clusters = size // CLUSTER
    runs = [(0, keep)] + [(c + 1, min(c + period, clusters))
                          for c in range(keep, clusters, period)]
    return ''.join('discard %d %d\n' % (a * CLUSTER, (b - a) * CLUSTER)
                   for a, b in runs if b > a) + 'quit\n'


def make_full(tools, img, size, backing=None, discard=None):
    """@img: a qcow2 of @size with every cluster allocated (metadata
    preallocation, no data written) but those qemu-io script @discard
    discards (they are left unallocated), over @backing if given"""
    # A discard in a version 3 image leaves a zero cluster that the layer
    # holds; in a version 2 image it leaves the cluster unallocated, and
    # the upgrade to version 3 keeps it so
    run([tools['ours'], 'create', '-q', '-f', 'qcow2', '-o',
         'preallocation=metadata,cluster_size=%d%s' %
         (CLUSTER, ',compat=0.10' if discard else ''), img, str(size)])
    if discard:
        run([tools['qemu-io'], '-f', 'qcow2', img], stdin=discard)
        run([tools['ours'], 'amend', '-f', 'qcow2', '-o', 'compat=1.1', img])
    if backing:
        run([tools['ours'], 'rebase', '-u', '-f', 'qcow2', '-b', backing,
             '-F', 'qcow2', img])


def make_parents(tools, work, size, cases):
    """The parents of the snapshots, by case"""
    base = os.path.join(work, 'base.qcow2')
    progress('base: %d MiB, 90%% of its clusters allocated...' %
             (size >> 20))
    make_full(tools, base, size, discard=discard_script(size))
    run([tools['ours'], 'amend', '-f', 'qcow2', '-o', 'backing-index=on',
         base])
    parents = {}
    for case in cases:
        if case == 'base':
            parents[case] = base
            continue
        last, sharing = MIDDLE[case]
        layers = [base] + [os.path.join(work, '%s-l%d.qcow2' % (case, d))
                           for d in range(2, last + 2)]
        progress('%s: a chain of depth %d...' % (case, len(layers)))
        for d, img in enumerate(layers[1:], 2):
            if sharing == 1 and d == 2:
                make_full(tools, img, size, backing=layers[d - 2])
            elif d < 2 + sharing:
                # depth d keeps the clusters c with c % sharing == d - 2
                make_full(tools, img, size, backing=layers[d - 2],
                          discard=keep_script(size, sharing, d - 2))
            else:
                run([tools['ours'], 'create', '-q', '-f', 'qcow2', '-b',
                     layers[d - 2], '-F', 'qcow2', img])
        # indexes the chain above the base
        run([tools['ours'], 'amend', '-f', 'qcow2', '-o',
             'backing-index=on', layers[-1]])
        parents[case] = layers[-1]
    return parents


def snapshot(tools, build, parent, snap):
    """One snapshot of @parent by @build: (seconds, bytes on disk)"""
    cmd = [tools[build], 'create', '-q', '-f', 'qcow2', '-b', parent, '-F',
           'qcow2']
    if build == 'ours':
        cmd += ['-o', 'backing-index=on']
    try:
        seconds = run(cmd + [snap])
        on_disk = os.stat(snap).st_blocks * 512
    finally:
        if os.path.exists(snap):
            os.unlink(snap)
    return seconds, on_disk


def measure(tools, parents, runs, work):
    """{case: {build: {'ms': median, 'runs_ms': [...], 'bytes': ...}}},
    the builds alternating run by run"""
    result = {}
    snap = os.path.join(work, 'snap.qcow2')
    for case, parent in parents.items():
        times = {'stock': [], 'ours': []}
        on_disk = {}
        for i in range(runs):
            progress('%s: run %d/%d...' % (case, i + 1, runs))
            for build in times:
                seconds, on_disk[build] = snapshot(tools, build, parent,
                                                   snap)
                times[build].append(seconds * 1000)
        result[case] = {build: {'ms': statistics.median(times[build]),
                                'runs_ms': times[build],
                                'bytes': on_disk[build]}
                        for build in times}
    return result


def report(result):
    lines = ['%-13s %10s %10s %8s %14s %14s' %
             ('case', 'stock ms', 'ours ms', 'ratio', 'stock on disk',
              'ours on disk')]
    for case, r in result.items():
        ratio = r['ours']['ms'] / r['stock']['ms']
        lines.append('%-13s %10.1f %10.1f %7.2fx %12.0f K %12.0f K%s' %
                     (case, r['stock']['ms'], r['ours']['ms'], ratio,
                      r['stock']['bytes'] / 1024, r['ours']['bytes'] / 1024,
                      '' if ratio <= TARGET_RATIO else
                      '  (over the %gx target)' % TARGET_RATIO))
    lines.append('target: ours within %gx of stock; the paper reports up '
                 'to %d MB per snapshot of a full 50 GB disk' %
                 (TARGET_RATIO, PAPER_BYTES // 1000000))
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog='snapshot-cost',
        description='Time snapshots (qemu-img create -b) of a 90%%-written '
        'disk with stock QEMU and with ours (-o backing-index=on) over the '
        'same chains, side by side; print the medians, their ratio and the '
        'new files\' size on disk.')
    parser.add_argument('--size', default='50G',
                        help='virtual disk size (default 50G)')
    parser.add_argument('--runs', type=int, default=9,
                        help='snapshots per build and case (default 9)')
    parser.add_argument('--cases', default=','.join(CASES),
                        help='comma-separated, of: %s (default all)' %
                        ', '.join(CASES))
    parser.add_argument('--ours', default=paths.BUILD,
                        help='build directory of ours (default %(default)s)')
    parser.add_argument('--stock', default=None,
                        help='directory of stock qemu-img (default: '
                        'scripts/sqemu/stock-qemu\'s)')
    parser.add_argument('--workdir', default=None,
                        help='work directory to create (default: a new one '
                        'under /var/tmp, removed at the end)')
    parser.add_argument('--json', default=None, help='write results here')
    args = parser.parse_args(argv)
    try:
        args.size = util.parse_size(args.size, '50G, 4G')
    except argparse.ArgumentTypeError as e:
        parser.error('--size: %s' % e)
    if args.size < CLUSTER * 10 or args.size % CLUSTER:
        parser.error('--size must be a multiple of 64 KiB, at least 640 KiB')
    if args.runs < 1:
        parser.error('--runs must be at least 1')
    args.cases = [c for c in args.cases.split(',') if c]
    bad = [c for c in args.cases if c not in CASES]
    if bad or not args.cases:
        parser.error('--cases: unknown %s (choose from %s)' %
                     (', '.join(bad) or 'empty list', ', '.join(CASES)))
    return args


def find_tools(args):
    stock = args.stock or paths.stock_dir(CostError)
    tools = {'stock': paths.find_tool(stock, 'qemu-img'),
             'ours': paths.find_tool(args.ours, 'qemu-img'),
             'qemu-io': paths.find_tool(args.ours, 'qemu-io')}
    missing = [name for name, path in tools.items() if not path]
    if missing:
        raise CostError('missing: %s (stock in %s, ours in %s)' %
                        (', '.join(missing), stock, args.ours))
    return tools


def main(argv=None):
    args = parse_args(argv)
    util.exit_on(signal.SIGTERM, signal.SIGHUP)

    def work():
        tools = find_tools(args)
        workdir = util.make_workdir(args.workdir, 'snapshot-cost-',
                                    CostError)
        try:
            parents = make_parents(tools, workdir, args.size, args.cases)
            result = measure(tools, parents, args.runs, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(report(result))
        if args.json:
            util.write_json(args.json, {'size': args.size, 'runs': args.runs,
                                        'cases': result})
    return util.run_main('snapshot-cost', work, (CostError, OSError))
