# SPDX-License-Identifier: GPL-2.0-or-later
#
# stress: check sQemu's I/O path (direct access through the backing index,
# unified L2 cache, copy-on-write reads) under load and faults, against
# stock QEMU 7.2 as the reference.
#
# It makes one indexed chain the way a VM makes one (mkchain --live -o
# backing-index=on, ours' tools; the "ours" chain) and a copy of it for
# stock QEMU (cp --sparse=always, each layer rebased -u onto the copy of the
# layer below with stock qemu-img; the "stock" chain, whose index stock's
# read-write opens invalidate, which does not matter to stock).  Stock's
# read of the copy must equal ours' read of the original.  Disks are read
# whole into raw files with qemu-img dd, which only reads (stock's qemu-img
# compare first asks every layer for the block status of every extent:
# 282 s for the two fresh 500-layer chains of 1 GiB here, against 44 s
# for stock's dd of one), and compared 4k block by 4k block, so that a
# mismatch is reported with its offsets.
#
# Then the phases, mixed (one deterministic fio randrw job against ours'
# and stock's daemons: same I/O, same chains, fio's verify) and kill
# (SIGKILL of ours' daemon under fio randwrite, then every acknowledged
# write verified); what each checks: docs/sqemu.md, "Under load and
# faults".
# fio puts time stamps into its verify headers unless latency accounting
# is off, so the jobs run with disable_lat/clat/slat: the data written is
# then a function of the seed only.  Why the kill phase does not use fio's
# verify_state_load: verify_acked() below.
#
# Every check prints a PASS or FAIL line; the last line is the summary.
# The exit status is non-zero if any check failed or anything went wrong.
# Everything it creates (chains, raw images, sockets, daemons, fio) is gone
# when it exits, also on error and on Ctrl-C, unless --keep.

import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback

from sqemu import nfs_chain, paths, qsd, util
from sqemu.proc import Processes

MKCHAIN = paths.script('mkchain')
TOOLS = ('qemu-img', 'qemu-io', 'qemu-storage-daemon')
PHASES = ('mixed', 'kill')

BLOCK = 4096
IODEPTH = 32
CHAIN_SEED = 1
MIXED_SEED = 20261121
KILL_SEED = 4242
# sqemu-stats' reason when no read went below the top
NOTHING_BELOW = 'no read of the backing chain yet'
# Opening a chain of 1000 layers takes about 12 s; stock reads of a long
# chain are slow.
DAEMON_START_TIMEOUT = 600
# A verify failure as fio 3.33 prints it: "verify: bad magic header ...,
# wanted acca at file NAME offset 44572672, length 4096 (requested ..."
# or "crc32c: verify failed at file NAME offset 8192, length 4096 ..."
FIO_BAD_BLOCK_RE = re.compile(r'\bat file .* offset (\d+), length (\d+)')
# fio's error number for a verify failure (EILSEQ)
FIO_VERIFY_ERROR = 84


class StressError(Exception):
    pass


progress = util.printer('stress', stderr=True)


def parse_size(text):
    return util.parse_size(text, '256M, 1G')


def human_size(n):
    for unit, shift in (('GiB', 30), ('MiB', 20), ('KiB', 10)):
        if n >= 1 << shift and n % (1 << (shift - 4)) == 0:
            return '%g %s' % (n / (1 << shift), unit)
    return '%d bytes' % n


class Daemon(qsd.Daemon):
    """A qemu-storage-daemon exporting TOP writable over NBD on a unix
    socket, one of the command's @procs."""

    def __init__(self, procs, binary, top, rundir, writethrough=False,
                 env=None):
        self.procs = procs
        blockdev = {'driver': 'qcow2', 'node-name': 'disk',
                    'file': nfs_chain.protocol_node(top)}
        super().__init__(binary, blockdev, rundir, StressError,
                         writable=True, writethrough=writethrough,
                         launch=lambda cmd, log: procs.spawn(
                             cmd, stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, env=env),
                         start_timeout=DAEMON_START_TIMEOUT)

    def counters(self):
        """The node's sQemu counters (query-blockstats), or None if it
        reports none."""
        qmp = self.monitor(30, 30)
        try:
            stats = qmp.cmd('query-blockstats', **{'query-nodes': True})
        finally:
            qmp.close()
        for node in stats:
            if node.get('node-name') == 'disk':
                specific = node.get('driver-specific') or {}
                return specific.get('backing-index')
        return None

    def close(self):
        super().close()
        if self.proc:
            self.procs.forget(self.proc)


# fio.

def read_iolog(path):
    """fio's write_iolog as a list of (action, offset, length) of its reads
    and writes, in the order they were issued (time and file name left
    out: they differ between runs)."""
    ios = []
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) == 5 and fields[2] in ('read', 'write'):
                ios.append((fields[2], int(fields[3]), int(fields[4])))
    return ios


def read_completions(pattern):
    """Offsets of the writes in fio's completion latency log (log_offset=1:
    time, latency, direction, size, offset[, priority]).  fio logs an I/O
    there only when it completed without error."""
    paths = glob.glob(pattern)
    if len(paths) != 1:
        raise StressError('expected one fio completion log %s, found %d' %
                          (pattern, len(paths)))
    acked = []
    with open(paths[0]) as f:
        for line in f:
            fields = [x.strip() for x in line.split(',')]
            if len(fields) >= 5 and fields[2] == '1':
                acked.append(int(fields[4]))
    return acked


def bad_blocks(stderr):
    return [int(m.group(1)) for m in FIO_BAD_BLOCK_RE.finditer(stderr)]


def diff_blocks(path_a, path_b, chunk=4 << 20):
    """Offsets of the 4k blocks in which two raw images of the same size
    differ."""
    diff = []
    with open(path_a, 'rb') as a, open(path_b, 'rb') as b:
        off = 0
        while True:
            x, y = a.read(chunk), b.read(chunk)
            if len(x) != len(y):
                raise StressError('%s and %s differ in size' %
                                  (path_a, path_b))
            if not x:
                return diff
            if x != y:
                diff += [off + i for i in range(0, len(x), BLOCK)
                         if x[i:i + BLOCK] != y[i:i + BLOCK]]
            off += len(x)


def describe_diff(diff):
    return '%d 4k blocks differ, at offsets %s%s' % (
        len(diff), ', '.join(str(o) for o in diff[:5]),
        ', ...' if len(diff) > 5 else '')


# The run.

class Stress:
    def __init__(self, args, procs, workdir):
        self.args = args
        self.procs = procs
        self.workdir = workdir
        self.results = []
        self.ours = {t: paths.find_tool(args.ours, t) for t in TOOLS}
        self.stock = {t: paths.find_tool(args.stock, t) for t in TOOLS}
        self.ours_top = self.stock_top = None
        self.nodes = None
        # ours' storage daemon, in its own directory of the build, finds
        # the nfs module (block-nfs.so) through QEMU_MODULE_DIR
        self.ours_env = dict(os.environ, QEMU_MODULE_DIR=os.path.dirname(
            os.path.realpath(self.ours['qemu-img'])))
        # True while the two chains are known to hold the same content
        self.chains_equal = False

    def check(self, name, ok, detail):
        self.results.append((name, ok))
        print('%s  %-36s %s' % ('PASS' if ok else 'FAIL', name, detail),
              flush=True)
        return ok

    def error(self, name, message):
        self.check(name, False, 'error: ' + message)

    # Setup

    def build_chains(self):
        args = self.args
        chaindir = os.path.join(self.workdir, 'ours')
        progress('making the ours chain: %d layers of %s (mkchain --live '
                 '-o backing-index=on)...' % (args.layers,
                                              human_size(args.size)))
        started = time.monotonic()
        out = self.procs.must(
            [MKCHAIN, chaindir, '-n', str(args.layers), '-s', str(args.size),
             '--seed', str(args.seed), '--live', '-o', 'backing-index=on',
             '--qemu-img', self.ours['qemu-img'],
             '--qemu-io', self.ours['qemu-io'],
             '--qemu-storage-daemon', self.ours['qemu-storage-daemon']])
        self.ours_top = os.path.abspath(out.strip().splitlines()[-1])
        made = time.monotonic() - started
        info = json.loads(self.procs.must(
            [self.ours['qemu-img'], 'info', '--output=json',
             self.ours_top]))
        index = info.get('format-specific', {}).get('data', {}).get(
            'backing-index', {})
        progress('made in %.0f s; top %s, backing index %s' %
                 (made, os.path.basename(self.ours_top), index or 'none'))
        if not index.get('valid') or index.get('depth') != args.layers:
            raise StressError('mkchain --live did not make an indexed chain: '
                              'qemu-img info says %s' % (index or 'no index'))
        # The stock chain: a copy, rebased onto itself (mkchain --live
        # writes absolute backing file names).  Only stock tools touch it.
        progress('copying it for stock (cp --sparse=always, stock '
                 'qemu-img rebase -u per layer)...')
        started = time.monotonic()
        stockdir = os.path.join(self.workdir, 'stock')
        os.mkdir(stockdir)
        layers = sorted(glob.glob(os.path.join(chaindir, 'layer-*.qcow2')))
        if len(layers) != args.layers:
            raise StressError('expected %d layers in %s, found %d' %
                              (args.layers, chaindir, len(layers)))
        self.procs.must(['cp', '--sparse=always', *layers, stockdir])
        copies = [os.path.join(stockdir, os.path.basename(p))
                  for p in layers]
        for below, layer in zip(copies, copies[1:]):
            self.procs.must([self.stock['qemu-img'], 'rebase', '-u',
                             '-b', below, '-F', 'qcow2', layer])
        self.stock_top = copies[-1]
        progress('copied in %.0f s' % (time.monotonic() - started))

    def place_on_nodes(self):
        """With --nfs-nodes: both chains' layers onto the storage nodes,
        in contiguous ranges, every backing file named by its nfs:// URL
        (stock 7.2 resolves relative names under nfs:// wrongly)"""
        args = self.args
        progress('starting %d NFS storage nodes%s...' % (
            args.nfs_nodes, '' if args.nfs_latency is None else
            ' (%g ms round trip)' % args.nfs_latency))
        self.nodes = nfs_chain.start_nodes(
            args.nfs_nodes, os.path.join(self.workdir, 'nfs'),
            args.nfs_latency, StressError, log=progress)
        for build, top in (('ours', self.ours_top),
                           ('stock', self.stock_top)):
            chaindir = os.path.dirname(top)
            names = [os.path.basename(p) for p in sorted(
                glob.glob(os.path.join(chaindir, 'layer-*.qcow2')))]
            url, ranges = nfs_chain.place(chaindir, names, self.nodes,
                                          build, 'absolute')
            progress('%s chain on the nodes: %s; top %s' % (
                build, ', '.join('node %d: layers %d-%d' % r
                                 for r in ranges), url))
            if build == 'ours':
                self.ours_top = url
            else:
                self.stock_top = url

    def stop_nodes(self):
        if self.nodes:
            self.nodes.stop()
            self.nodes = None

    def read_disk(self, build, top, name, convert=False):
        """Read the whole disk of the chain @top through @build's qemu-img
        into the raw file @name in the workdir; return its path and the
        time it took.  qemu-img dd only reads; qemu-img convert also asks
        for the block status of every extent and writes only data."""
        path = os.path.join(self.workdir, name)
        tools = self.ours if build == 'ours' else self.stock
        if convert:
            cmd = [tools['qemu-img'], 'convert', '-f', 'qcow2', '-O', 'raw',
                   top, path]
        else:
            cmd = [tools['qemu-img'], 'dd', '-f', 'qcow2', '-O', 'raw',
                   'bs=1M', 'if=' + top, 'of=' + path]
        started = time.monotonic()
        self.procs.must(cmd)
        took = time.monotonic() - started
        if os.path.getsize(path) != self.args.size:
            raise StressError('%s qemu-img %s of %s made %d bytes, not %d' %
                              (build, cmd[1], top, os.path.getsize(path),
                               self.args.size))
        return path, took

    def check_copy(self):
        """The stock chain read by stock equals the ours chain read by
        ours: the copy is right and ours reads a fresh indexed chain
        right.  If not, stock's read of the ours chain says which one is
        wrong."""
        name = 'setup: ours chain = stock copy'
        progress('reading the stock copy with stock and the ours chain '
                 'with ours (qemu-img dd)...')
        stock_raw, t_stock = self.read_disk('stock', self.stock_top,
                                            'stock-copy.raw')
        ours_raw, t_ours = self.read_disk('ours', self.ours_top,
                                          'ours-chain.raw')
        diff = diff_blocks(stock_raw, ours_raw)
        try:
            if not diff:
                self.chains_equal = True
                return self.check(name, True, 'identical, whole disk (read '
                                  'by stock in %.0f s, by ours in %.0f s)' %
                                  (t_stock, t_ours))
            progress('they differ: reading the ours chain with stock...')
            third, _ = self.read_disk('stock', self.ours_top,
                                      'ours-chain-by-stock.raw')
            if not diff_blocks(third, stock_raw):
                culprit = 'stock reads the ours chain like the copy: ours ' \
                          'misreads its chain'
            elif not diff_blocks(third, ours_raw):
                culprit = 'stock reads the ours chain as ours does: the ' \
                          'copy is wrong'
            else:
                culprit = 'stock reads the ours chain unlike both'
            os.unlink(third)
            return self.check(name, False, '%s; %s' %
                              (describe_diff(diff), culprit))
        finally:
            os.unlink(stock_raw)
            os.unlink(ours_raw)

    # Phase 1: the same mixed load through ours and through stock

    def mixed_fio(self, build, daemon, rundir):
        args = self.args
        iolog = os.path.join(rundir, 'fio-%s.iolog' % build)
        started = time.monotonic()
        code, out, err = self.procs.run(
            ['fio', '--name=mixed', '--ioengine=nbd', '--uri=' + daemon.uri,
             '--rw=randrw', '--rwmixread=50', '--bs=%d' % BLOCK,
             '--iodepth=%d' % IODEPTH, '--randrepeat=1',
             '--randseed=%d' % MIXED_SEED, '--io_size=%d' % args.io_size,
             '--verify=crc32c', '--verify_state_save=0',
             '--disable_lat=1', '--disable_clat=1', '--disable_slat=1',
             '--write_iolog=' + iolog, '--output-format=json'],
            cwd=rundir, merge=False)
        took = time.monotonic() - started
        name = 'mixed: fio verify, %s' % build
        if not daemon.alive():
            raise daemon.failed()
        job = util.fio_job(out, StressError) if out.lstrip() else {}
        if code != 0 or job.get('error'):
            bad = bad_blocks(err)
            self.check(name, False, 'fio %s, job error %s%s: %s' %
                       (util.describe_status(code), job.get('error'),
                        ', %d bad blocks' % len(bad) if bad else '',
                        util.tail(err, 4)))
            return None
        ios = read_iolog(iolog)
        writes = sum(1 for a, _, _ in ios if a == 'write')
        reads = len(ios) - writes
        # Reads beyond io_size are fio's verification pass: one per write
        verify_reads = reads - (args.io_size // BLOCK - writes)
        ok = writes > 0 and verify_reads == writes
        self.check(name, ok, '%d writes, %d reads, %d written blocks '
                   'verified (%d I/Os in %.0f s, %.0f IOPS)' %
                   (writes, reads - verify_reads, verify_reads, len(ios),
                    took, len(ios) / took))
        return ios

    def phase_mixed(self):
        rundir = os.path.join(self.workdir, 'mixed')
        os.mkdir(rundir)
        runs = {}
        for build, tools, top in (('ours', self.ours, self.ours_top),
                                  ('stock', self.stock, self.stock_top)):
            progress('mixed: %s qemu-storage-daemon, fio randrw %s...' %
                     (build, human_size(self.args.io_size)))
            with Daemon(self.procs, tools['qemu-storage-daemon'], top,
                        rundir, env=self.ours_env if build == 'ours'
                        else None) as daemon:
                runs[build] = self.mixed_fio(build, daemon, rundir)
                if build == 'ours':
                    self.check_daemon_counters(daemon.counters())
                daemon.stop()
        self.chains_equal = False
        if runs['ours'] is not None and runs['stock'] is not None:
            same = runs['ours'] == runs['stock']
            if same:
                detail = ('%d I/Os, identical (operation, offset, length) '
                          'sequences' % len(runs['ours']))
            else:
                first = next((i for i, (a, b) in
                              enumerate(zip(runs['ours'], runs['stock']))
                              if a != b),
                             min(len(runs['ours']), len(runs['stock'])))
                detail = ('write_iologs differ at I/O %d: ours %s, stock '
                          '%s (%d and %d I/Os)' %
                          (first, runs['ours'][first:first + 1],
                           runs['stock'][first:first + 1],
                           len(runs['ours']), len(runs['stock'])))
            self.check('mixed: same I/O in both runs', same, detail)
        progress('mixed: reading both final chains with stock (qemu-img '
                 'dd)...')
        ours_by_stock, t1 = self.read_disk('stock', self.ours_top,
                                           'mixed-ours-by-stock.raw')
        stock_by_stock, t2 = self.read_disk('stock', self.stock_top,
                                            'mixed-stock-by-stock.raw')
        diff = diff_blocks(ours_by_stock, stock_by_stock)
        self.chains_equal = not diff
        self.check('mixed: final chains identical', not diff,
                   describe_diff(diff) if diff else
                   'identical, whole disk (read by stock in %.0f s and '
                   '%.0f s)' % (t1, t2))
        # The stock chain's content is the kill phase's "before"
        if self.chains_equal:
            os.replace(stock_by_stock, os.path.join(self.workdir,
                                                    'before.raw'))
        else:
            os.unlink(stock_by_stock)
        progress('mixed: reading the ours chain with ours (qemu-img dd)...')
        ours_by_ours, t3 = self.read_disk('ours', self.ours_top,
                                          'mixed-ours-by-ours.raw')
        diff = diff_blocks(ours_by_ours, ours_by_stock)
        self.check('mixed: ours reads it as stock does', not diff,
                   describe_diff(diff) if diff else
                   'identical, whole disk (read by ours in %.0f s)' % t3)
        os.unlink(ours_by_ours)
        os.unlink(ours_by_stock)
        self.check_image('mixed: qemu-img check (ours)', leaks_ok=False)
        self.check_full_read('mixed: full read, ours qemu-io')

    def check_daemon_counters(self, c):
        name = 'mixed: ours reads direct under load'
        if c is None:
            self.check(name, False, 'query-blockstats reports no sQemu '
                       'counters for the node')
            return
        ok = (c.get('direct-access') is True and
              c.get('vanilla-fallbacks') == 0 and c.get('direct-reads', 0) > 0)
        self.check(name, ok, 'direct-access %s, %s direct reads, %s vanilla '
                   'fallbacks, %s corrections, %s lower slice reads%s' %
                   ({True: 'yes', False: 'no'}.get(c.get('direct-access')),
                    c.get('direct-reads'),
                    c.get('vanilla-fallbacks'), c.get('corrections'),
                    c.get('lower-slice-reads'),
                    '' if ok or not c.get('reason')
                    else ' (reason: %s)' % c.get('reason')))

    def check_image(self, name, leaks_ok):
        code, out, err = self.procs.run([self.ours['qemu-img'], 'check',
                                         '--output=json', self.ours_top],
                                        merge=False)
        try:
            result = json.loads(out)
        except ValueError:
            result = None
        if result is None:
            return self.check(name, False, '%s: %s' % (
                util.describe_status(code), util.tail(out + err)))
        corruptions = result.get('corruptions', 0)
        leaks = result.get('leaks', 0)
        errors = result.get('check-errors', 0)
        summary = '%d corruptions, %d leaked clusters, %d check errors' % (
            corruptions, leaks, errors)
        if code == 0 and not (corruptions or leaks or errors):
            return self.check(name, True, 'clean')
        if (code == 3 and leaks_ok and leaks and not corruptions and
                not errors):
            return self.check(name, True, 'exit 3, only leaks: ' + summary)
        return self.check(name, False, '%s: %s%s' %
                          (util.describe_status(code), summary,
                           ' (%s)' % util.tail(err) if err.strip() else ''))

    def check_full_read(self, name, top_may_hold_all=False):
        """Read the whole disk through ours' qemu-io: the reads that go
        below the top must all go straight to the layer that holds the
        cluster.  With @top_may_hold_all, a top that holds every cluster
        (nothing read below, so the chain view is never built) passes."""
        code, out, _ = self.procs.run(util.stats_command(
            self.ours['qemu-io'], self.ours_top, self.args.size))
        c = util.parse_stats(out)
        ok = (code == 0 and c.get('direct-access') == 'yes' and
              c.get('vanilla-fallbacks') == '0')
        nothing_below = (c.get('direct-access') == 'no' and
                         c.get('reason') == NOTHING_BELOW and
                         c.get('vanilla-fallbacks') == '0' and
                         c.get('direct-reads') == '0')
        if top_may_hold_all and code == 0 and nothing_below:
            return self.check(name, True, 'the top holds every cluster: '
                              'nothing read below it, no vanilla fallback')
        if 'direct-access' not in c:
            detail = 'no counters (%s): %s' % (util.describe_status(code),
                                               util.tail(out))
        else:
            detail = ('direct-access: %s, vanilla-fallbacks: %s, '
                      'direct-reads: %s, corrections: %s%s' %
                      (c.get('direct-access'), c.get('vanilla-fallbacks'),
                       c.get('direct-reads'), c.get('corrections'),
                       ', reason: ' + c['reason']
                       if c.get('reason') and not ok else ''))
            if code != 0:
                detail += ' (qemu-io %s: %s)' % (util.describe_status(code),
                                                 util.tail(out))
        return self.check(name, ok, detail)

    # Phase 2: SIGKILL under write load

    def kill_job(self, uri):
        return ['fio', '--name=kill', '--ioengine=nbd', '--uri=' + uri,
                '--rw=randwrite', '--bs=%d' % BLOCK,
                '--iodepth=%d' % IODEPTH, '--randrepeat=1',
                '--randseed=%d' % KILL_SEED, '--verify=crc32c']

    def phase_kill(self):
        args = self.args
        rundir = os.path.join(self.workdir, 'kill')
        os.mkdir(rundir)
        # Content of the disk before the kill, read by stock from the stock
        # chain, when it is known to equal the ours chain
        reference = os.path.join(self.workdir, 'before.raw')
        if not self.chains_equal:
            reference = None
        elif not os.path.exists(reference):
            progress('kill: reading the stock chain as the reference '
                     '(stock qemu-img dd)...')
            reference = self.read_disk('stock', self.stock_top,
                                       'before.raw')[0]
        progress('kill: ours qemu-storage-daemon (writethrough), fio '
                 'randwrite QD%d, SIGKILL after %g s...' %
                 (IODEPTH, args.kill_after))
        with Daemon(self.procs, self.ours['qemu-storage-daemon'],
                    self.ours_top, rundir, writethrough=True,
                    env=self.ours_env) as daemon:
            issued, acked = self.write_and_kill(daemon, rundir)
        if issued is None:
            return
        self.check_image('kill: qemu-img check (ours)', leaks_ok=True)
        progress('kill: restarting ours\' daemon, fio verify_only over the '
                 '%d issued writes...' % len(issued))
        with Daemon(self.procs, self.ours['qemu-storage-daemon'],
                    self.ours_top, rundir, writethrough=True,
                    env=self.ours_env) as daemon:
            self.verify_acked(daemon, rundir, issued, acked)
            daemon.stop()
        progress('kill: reading the disk with ours (qemu-img convert)...')
        after, t_ours = self.read_disk('ours', self.ours_top, 'after.raw',
                                       convert=True)
        if reference:
            self.check_changes(reference, after, issued, acked)
            os.unlink(reference)
        else:
            self.check('kill: only issued blocks changed', False,
                       'not checked: the chains were not known to be equal '
                       'before the kill')
        progress('kill: reading the disk with stock (qemu-img dd)...')
        by_stock, t_stock = self.read_disk('stock', self.ours_top,
                                           'after-by-stock.raw')
        diff = diff_blocks(after, by_stock)
        self.check('kill: ours and stock read alike', not diff,
                   describe_diff(diff) if diff else
                   'identical, whole disk (ours qemu-img convert %.0f s, '
                   'stock qemu-img dd %.0f s)' % (t_ours, t_stock))
        os.unlink(after)
        os.unlink(by_stock)
        self.check_full_read('kill: full read, ours qemu-io',
                             top_may_hold_all=True)

    def write_and_kill(self, daemon, rundir):
        """Run the write job, SIGKILL the daemon under it; return the
        offsets fio issued (in order) and the set it saw acknowledged."""
        name = 'kill: SIGKILL under write load'
        iolog = os.path.join(rundir, 'issued.iolog')
        out_path = os.path.join(rundir, 'fio-kill.json')
        err_path = os.path.join(rundir, 'fio-kill.err')
        with open(out_path, 'w') as out, open(err_path, 'w') as err:
            fio = self.procs.spawn(
                self.kill_job(daemon.uri) +
                ['--io_size=%d' % self.args.size, '--verify_state_save=1',
                 '--write_iolog=' + iolog, '--write_lat_log=ack',
                 '--log_offset=1', '--disable_slat=1',
                 '--output-format=json'],
                cwd=rundir, stdin=subprocess.DEVNULL, stdout=out,
                stderr=err)
        try:
            deadline = time.monotonic() + self.args.kill_after
            while time.monotonic() < deadline:
                if fio.poll() is not None or not daemon.alive():
                    break
                time.sleep(0.05)
            if not daemon.alive():
                raise daemon.failed()
            if fio.poll() is not None:
                with open(err_path) as f:
                    raise StressError('fio ended before the kill (%s): %s' %
                                      (util.describe_status(fio.returncode),
                                       util.tail(f.read())))
            daemon.kill()
            try:
                fio.wait(timeout=120)
            except subprocess.TimeoutExpired:
                raise StressError('fio did not end within 120 s of the '
                                  'daemon\'s death')
        finally:
            self.procs.forget(fio)
        with open(out_path) as f:
            job = util.fio_job(f.read(), StressError)
        issued = [off for action, off, _ in read_iolog(iolog)
                  if action == 'write']
        acked = read_completions(os.path.join(rundir, 'ack_clat.*.log'))
        completed = job['write']['io_bytes'] // BLOCK
        problems = []
        if fio.returncode == 0 or not job.get('error'):
            problems.append('fio did not fail (%s, job error %s)' %
                            (util.describe_status(fio.returncode),
                             job.get('error')))
        if not acked:
            problems.append('no write was acknowledged before the kill')
        if len(acked) == len(issued):
            problems.append('no write was in flight at the kill')
        if len(issued) * BLOCK >= self.args.size:
            problems.append('fio had issued all its writes before the kill '
                            '(lower --kill-after or raise --size)')
        if len(acked) != completed:
            problems.append('completion log has %d writes, fio counted %d' %
                            (len(acked), completed))
        if len(set(issued)) != len(issued):
            problems.append('fio issued a block twice')
        if not set(acked) <= set(issued):
            problems.append('acknowledged writes fio did not issue')
        if not os.path.exists(os.path.join(rundir,
                                           'local-kill-0-verify.state')):
            problems.append('fio saved no verify state')
        error = job.get('error') or 0
        detail = ('daemon killed after %g s: %d writes issued, %d '
                  'acknowledged, %d in flight; fio then failed as expected '
                  '(error %d)' % (self.args.kill_after, len(issued),
                                  len(acked), len(issued) - len(acked),
                                  error - (1 << 32) if error >= 1 << 31
                                  else error))
        if problems:
            self.check(name, False, '; '.join(problems) + ' (' + detail + ')')
            return None, None
        self.check(name, True, detail)
        return issued, set(acked)

    def verify_acked(self, daemon, rundir, issued, acked):
        """fio's verify_only over exactly the @issued writes (same job and
        seed, io_size = issued writes x 4k), continue_on_error=verify so
        that every bad block is reported; a bad block fails the check if
        it is in @acked, taken from fio's completion latency log (one line
        per write completed successfully).  fio 3.33's verify_state_load
        is no use here over QD > 1: it treats every write issued before
        the last iodepth ones as complete (fio issue #1950) and verifies
        writes never acknowledged (31 of 32 in flight at the kill, QD32,
        measured here), which fail on a correct disk.  A write-only job's
        verify checks block headers and data CRCs, so a stale block fio
        wrote at the same offset in the mixed phase would pass: hence the
        comparison with the stock chain too (check_changes)."""
        name = 'kill: acknowledged writes intact'
        vlog = os.path.join(rundir, 'verified.iolog')
        code, out, err = self.procs.run(
            self.kill_job(daemon.uri) +
            ['--io_size=%d' % (len(issued) * BLOCK), '--verify_only=1',
             '--continue_on_error=verify', '--verify_state_save=0',
             '--write_iolog=' + vlog, '--output-format=json'],
            cwd=rundir, merge=False)
        if not daemon.alive():
            raise daemon.failed()
        job = util.fio_job(out, StressError) if out.lstrip() else {}
        verified = [off for action, off, _ in read_iolog(vlog)
                    if action == 'read']
        bad = bad_blocks(err)
        bad_acked = sorted(set(bad) & acked)
        problems = []
        if code != 0 or job.get('error') not in (0, FIO_VERIFY_ERROR):
            problems.append('fio %s, job error %s: %s' %
                            (util.describe_status(code), job.get('error'),
                             util.tail(err)))
        if verified != issued:
            problems.append('fio verified %d blocks, not the %d issued '
                            'writes in their order' % (len(verified),
                                                       len(issued)))
        if len(set(bad)) != job.get('total_err', 0):
            problems.append('fio counted %s errors, %d bad blocks parsed: %s'
                            % (job.get('total_err'), len(set(bad)),
                               util.tail(err)))
        if bad_acked:
            lines = [ln for ln in err.splitlines()
                     if FIO_BAD_BLOCK_RE.search(ln) and
                     int(FIO_BAD_BLOCK_RE.search(ln).group(1)) in acked]
            problems.append('%d acknowledged writes read back wrong, e.g. %s'
                            % (len(bad_acked), ' | '.join(lines[:3])))
        unacked = len(issued) - len(acked)
        detail = ('%d acknowledged writes verified, %d bad; of the %d '
                  'unacknowledged, %d read back intact (landed) and %d not' %
                  (len(acked), len(bad_acked), unacked,
                   unacked - len(set(bad) - acked),
                   len(set(bad) - acked)))
        if problems:
            return self.check(name, False, '; '.join(problems) +
                              ' (' + detail + ')')
        return self.check(name, True, detail)

    def check_changes(self, before, after, issued, acked):
        """Blocks that differ between the disk before the kill (read by
        stock from the stock chain) and after it (read by ours): all of
        them must have been issued, and every acknowledged write must have
        changed its block."""
        name = 'kill: only issued blocks changed'
        issued_set = set(issued)
        changed = set(diff_blocks(before, after))
        stray = sorted(changed - issued_set)
        unchanged_acked = sorted(acked - changed)
        problems = []
        if stray:
            problems.append('%d blocks changed that no write touched, '
                            'first at offset %d' % (len(stray), stray[0]))
        if unchanged_acked:
            problems.append('%d acknowledged writes left their block as it '
                            'was, first at offset %d' %
                            (len(unchanged_acked), unchanged_acked[0]))
        detail = ('%d blocks changed, all written; all %d acknowledged '
                  'writes changed theirs' % (len(changed), len(acked)))
        if problems:
            return self.check(name, False, '; '.join(problems))
        return self.check(name, True, detail)

    # Driver

    def run(self):
        phases = self.args.checks
        started = time.monotonic()
        try:
            self.build_chains()
            if self.args.nfs_nodes:
                self.place_on_nodes()
            self.check_copy()
        except StressError as e:
            self.error('setup', str(e))
            return
        progress('setup done in %.0f s' % (time.monotonic() - started))
        for phase, method in (('mixed', self.phase_mixed),
                              ('kill', self.phase_kill)):
            if phase not in phases:
                continue
            t0 = time.monotonic()
            try:
                method()
            except StressError as e:
                self.error(phase, str(e))
            progress('%s done in %.0f s' % (phase, time.monotonic() - t0))


def check_requirements(args):
    paths.find_builds((('ours', args.ours), ('stock', args.stock)), TOOLS,
                      StressError)
    ours_io = paths.find_tool(args.ours, 'qemu-io')
    commands = subprocess.run([ours_io, '-c', 'help'], text=True,
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT).stdout
    if 'sqemu-stats' not in commands:
        raise StressError('%s has no sqemu-stats command: not an sQemu '
                          'build with the I/O path' % ours_io)
    engines = subprocess.run(['fio', '--enghelp'], text=True,
                             stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT).stdout
    if not re.search(r'^\s*nbd\s*$', engines, re.M):
        raise StressError('this fio has no nbd engine')


def parse_args():
    parser = argparse.ArgumentParser(
        description='Check sQemu\'s I/O path under load and faults: the '
                    'same deterministic fio randrw load (nbd engine, '
                    'verify=crc32c) through ours\' and stock\'s '
                    'qemu-storage-daemon on an indexed chain and its copy, '
                    'compared byte for byte ("mixed"); and SIGKILL of ours\' '
                    'daemon under fio randwrite, then qemu-img check, every '
                    'acknowledged write verified, and ours and stock '
                    'reading alike ("kill").',
        epilog='Prints a PASS or FAIL line per check and a summary; exits '
               'non-zero if any check fails.  Stock tools: Debian\'s QEMU '
               '7.2 (qemu-utils, qemu-system-common).  Needs fio with its '
               'nbd engine.  Everything it creates is removed at the end '
               '(also on error or Ctrl-C) unless --keep.')
    parser.add_argument('--layers', '-n', type=int, default=500,
                        help='chain length (default %(default)s)')
    parser.add_argument('--size', '-s', type=parse_size, default='1G',
                        help='virtual disk size (default 1G)')
    parser.add_argument('--io-size', type=parse_size,
                        help='bytes of reads and writes of the mixed fio job '
                             '(random map, so each 4k block is read or '
                             'written at most once; default a quarter of '
                             '--size)')
    parser.add_argument('--kill-after', type=float, default=3.0,
                        metavar='SECONDS',
                        help='SIGKILL ours\' daemon this long after fio '
                             'starts writing (default %(default)s)')
    parser.add_argument('--checks', default=','.join(PHASES),
                        metavar='LIST',
                        help='which phases to run: mixed, kill or both '
                             '(default %(default)s)')
    parser.add_argument('--seed', type=int, default=CHAIN_SEED,
                        help='mkchain seed (default %(default)s)')
    parser.add_argument('--ours', default=paths.BUILD, metavar='DIR',
                        help='directory of our build\'s binaries, also '
                             'searched in DIR/storage-daemon (default '
                             '%(default)s)')
    parser.add_argument('--stock', metavar='DIR',
                        help='directory of stock binaries (default: '
                             'Debian\'s packages, unpacked by '
                             'scripts/sqemu/stock-qemu)')
    nfs_chain.add_placement_options(parser, 'both chains')
    parser.add_argument('--workdir', metavar='DIR',
                        help='new directory for chains, logs and sockets '
                             '(default a new temporary directory under '
                             '/var/tmp); removed at the end unless --keep')
    parser.add_argument('--keep', action='store_true',
                        help='keep the workdir (chains, fio logs)')
    args = parser.parse_args()
    args.checks = [c.strip() for c in args.checks.split(',') if c.strip()]
    if not args.checks or set(args.checks) - set(PHASES):
        parser.error('--checks takes mixed, kill or mixed,kill')
    if args.layers < 2:
        parser.error('--layers must be at least 2')
    if args.size < 1 << 20 or args.size % (64 << 10):
        parser.error('--size must be a multiple of 64k, at least 1M')
    if args.io_size is None:
        args.io_size = args.size // 4
    if (args.io_size < BLOCK or args.io_size % BLOCK or
            args.io_size > args.size):
        parser.error('--io-size must be a multiple of 4k, at most --size')
    if args.kill_after <= 0:
        parser.error('--kill-after must be positive')
    if args.nfs_nodes < 0 or args.nfs_nodes > args.layers:
        parser.error('--nfs-nodes must be between 0 and --layers')
    if args.nfs_latency is not None and not args.nfs_nodes:
        parser.error('--nfs-latency needs --nfs-nodes')
    return args


def main():
    args = parse_args()
    util.interrupt_on(signal.SIGTERM, signal.SIGHUP)
    started = time.monotonic()
    procs = Processes(StressError)
    workdir = None
    stress = None
    status = 1
    try:
        if args.stock is None:
            args.stock = paths.stock_dir(StressError)
        check_requirements(args)
        workdir = util.make_workdir(args.workdir, 'sqemu-stress-',
                                    StressError)
        # Unix socket paths are limited to 107 bytes
        if len(os.path.join(workdir, 'mixed', 'nbd.sock')) > 100:
            raise StressError('--workdir path too long for unix sockets')
        print('sQemu stress: %d layers of %s, mixed io %s, kill after %g s; '
              'ours %s, stock %s' %
              (args.layers, human_size(args.size), human_size(args.io_size),
               args.kill_after, args.ours, args.stock), flush=True)
        stress = Stress(args, procs, workdir)
        stress.run()
        status = 0
    except (StressError, OSError) as e:
        print('FAIL  %-36s error: %s' % ('stress', e), flush=True)
    except KeyboardInterrupt:
        print('stress: interrupted', file=sys.stderr)
        status = 130
    except Exception:
        traceback.print_exc()
        print('FAIL  %-36s internal error (traceback above)' % 'stress',
              flush=True)
    finally:
        procs.kill_all()
        if stress:
            stress.stop_nodes()
        if workdir:
            if args.keep:
                progress('kept %s' % workdir)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    results = stress.results if stress else []
    failed = sum(1 for _, ok in results if not ok)
    passed = len(results) - failed
    elapsed = time.monotonic() - started
    if status == 0 and (failed or not results):
        status = 1
    verdict = 'PASS' if status == 0 else 'FAIL'
    if status == 130:
        verdict = 'INTERRUPTED'
    print('%s: %d checks, %d passed, %d failed, in %dm%02ds' %
          (verdict, len(results), passed, failed, elapsed // 60,
           elapsed % 60), flush=True)
    return status
