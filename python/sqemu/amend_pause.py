# SPDX-License-Identifier: GPL-2.0-or-later
#
# amend-pause: what indexing a running chain online costs its guest.
#
# Makes a chain of N layers with stock QEMU's tools (no index, as every
# existing chain), exports its top from our qemu-storage-daemon over NBD,
# and reads (and optionally writes) 4 KiB at random offsets, one request
# at a time, before, during and after x-blockdev-amend with
# "backing-index": true (with --deep-commit: before and after a
# block-commit in the middle of an indexed chain, and during the job QEMU
# then starts on its own to index the chain again; with --after OP, the
# same after another chain operation, online or, for the img-* ones, with
# qemu-img before QEMU opens the chain).  Prints the request
# latencies of each phase, the job's time, the drained sections the job
# imposed (trace event qcow2_bi_amend_reopen: waiting for requests in
# flight, then the reopen of one layer), and whether reads go direct
# afterwards.  Everything it
# makes and starts is removed when it exits, also on SIGTERM.

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from sqemu import chain as sqemu_chain
from sqemu import paths, util
from sqemu.qsd import Daemon

BLOCK = 4096
START_TIMEOUT = 600


class PauseError(Exception):
    pass


# --after: the chain operations that leave a running top without a valid
# index, and what they do to a chain of N layers
OPERATIONS = {
    'commit': 'block-commit of depths 2N/5+1..3N/5 (the middle fifth)',
    'stream': 'block-stream into depth 3N/5 from depth 2N/5',
    'mirror-none': 'drive-mirror sync=none of the top and its pivot',
    'reopen': 'blockdev-reopen of the top onto depth N-2',
    # these keep the index themselves: direct access when they end
    'stream-top': 'block-stream into the top from depth N-100',
    'commit-below': 'block-commit of depths N-10..N-1 (right below the top) '
                    'into depth N-11',
    'active-commit': 'active block-commit of the top into depth N-1, pivot',
    'mirror-top': 'drive-mirror sync=top of the top and its pivot',
    'snapshot': 'blockdev-snapshot-sync of the top',
    'mirror-full': 'drive-mirror sync=full of the top and its pivot',
    'change-backing-file': 'change-backing-file of the top naming the '
                           'file already below it',
    # these need a VM (qemu-system-x86_64 -M none, TCG) instead of the
    # storage daemon
    'savevm': 'HMP savevm (an internal snapshot of the top)',
    'loadvm': 'HMP loadvm of an internal snapshot taken before',
}

# Offline operations: run with our qemu-img on the chain before QEMU opens
# it; measured is the command, then how long after the open reads are
# direct (0 if the chain validates when it is opened)
OFFLINE = {
    'img-rebase': 'qemu-img rebase (safe) of the top onto depth N-2',
    'img-rebase-unsafe': 'qemu-img rebase -u of the top onto depth N-2',
    'img-commit': 'qemu-img commit of the top into depth N-1',
    'img-commit-base': 'qemu-img commit -b depth N-10 of the top (the '
                       'layers in between stay)',
    'img-snapshot-create': 'qemu-img snapshot -c of the top',
    'img-snapshot-apply': 'qemu-img snapshot -a of the top (the snapshot '
                          'taken with -c before it)',
    'img-snapshot-delete': 'qemu-img snapshot -d of the top (the snapshot '
                           'taken with -c before it)',
}
SYSTEM_OPS = ('savevm', 'loadvm')


def layer_path(chain, depth, layers):
    """The file of layer @depth of the chain mkchain made in @chain"""
    return os.path.join(chain, sqemu_chain.layer_name(depth, layers))


progress = util.printer('amend-pause', stderr=True)


class Client(threading.Thread):
    """One request at a time at random 4 KiB offsets; a fraction writes"""

    def __init__(self, uri, write_fraction):
        super().__init__(daemon=True)
        import nbd      # python3-libnbd
        self.h = nbd.NBD()
        self.h.connect_uri(uri)
        self.size = self.h.get_size()
        self.write_fraction = write_fraction
        self.samples = []
        self.stop = False
        self.error = None

    def run(self):
        rnd = random.Random(1)
        try:
            while not self.stop:
                off = rnd.randrange(self.size // BLOCK) * BLOCK
                start = time.monotonic()
                if rnd.random() < self.write_fraction:
                    self.h.pwrite(rnd.randbytes(BLOCK), off)
                else:
                    self.h.pread(BLOCK, off)
                self.samples.append((start, time.monotonic() - start))
        except Exception as e:      # reported by the caller
            self.error = e

    def finish(self, phase):
        """Go on for @phase seconds, then stop; when it stopped"""
        time.sleep(phase)
        t2 = time.monotonic()
        self.stop = True
        self.join()
        if self.error:
            raise PauseError('the NBD client failed: %s' % self.error)
        return t2

    def phase(self, t0, t1):
        return [lat for start, lat in self.samples if t0 <= start < t1]


def execute(qmp, cmd, args):
    """Run QMP command @cmd with @args; PauseError if it fails"""
    res = qmp.cmd(cmd, args)
    if 'error' in res:
        raise PauseError('%s: %s' % (cmd, res['error']['desc']))


def run_job(qmp, cmd, args, complete=False):
    """Run block job @cmd (job-id 'op', not dismissed on its own, as
    libvirt runs them); with @complete, complete it once ready (a mirror's
    pivot).  Returns when it concluded and was dismissed."""
    execute(qmp, cmd, dict(args, **{'job-id': 'op', 'auto-dismiss': False}))
    while True:
        state = [j for j in qmp.cmd('query-jobs')['return']
                 if j['id'] == 'op'][0]
        if state['status'] == 'ready' and complete:
            qmp.cmd('job-complete', {'id': 'op'})
            complete = False
        if state['status'] == 'concluded':
            break
        time.sleep(0.01)
    # dismissed once it concluded, as libvirt does
    qmp.cmd('job-dismiss', {'id': 'op'})
    if 'error' in state:
        raise PauseError('%s failed: %s' % (cmd, state['error']))


def chain_operation(args, qmp, chain, work):
    """Run the operation --after names on the running chain; it leaves the
    top without a valid index.  Returns when the operation ended."""
    low = args.layers * 2 // 5
    high = args.layers * 3 // 5

    def layer(depth):
        return layer_path(chain, depth, args.layers)

    def node(depth):
        for n in qmp.cmd('query-named-block-nodes',
                         {'flat': True})['return']:
            if n['drv'] == 'qcow2' and n['file'] == layer(depth):
                return n['node-name']
        raise PauseError('no node for depth %d' % depth)

    if args.after == 'commit':
        # the layers above the committed range shift down
        progress('block-commit of depths %d..%d into %d' %
                 (low + 1, high, low))
        run_job(qmp, 'block-commit', {'device': 'top', 'top': layer(high),
                                      'base': layer(low)})
    elif args.after == 'stream':
        # into a layer below the top: the layers above it shift down
        progress('block-stream of depths %d..%d into %d' %
                 (low + 1, high - 1, high))
        run_job(qmp, 'block-stream', {'device': node(high),
                                      'base-node': node(low)})
    elif args.after.startswith('mirror-'):
        # sync=none: the target is made over the running top, its index is
        # not built; sync=top: the target, made over the top's backing
        # file, is indexed by L2 copy when QEMU creates it; sync=full: the
        # target is one layer, nothing to index
        sync = args.after[len('mirror-'):]
        progress('drive-mirror sync=%s, then its pivot' % sync)
        run_job(qmp, 'drive-mirror', {
            'device': 'top', 'target': os.path.join(work, 'target.qcow2'),
            'format': 'qcow2', 'sync': sync, 'mode': 'absolute-paths',
            'node-name': 'target'}, complete=True)
    elif args.after == 'stream-top':
        base = max(args.layers - 100, 1)
        progress('block-stream of depths %d..%d into the top' %
                 (base + 1, args.layers - 1))
        run_job(qmp, 'block-stream', {'device': 'top', 'base': layer(base)})
    elif args.after == 'commit-below':
        progress('block-commit of depths %d..%d into %d' %
                 (args.layers - 10, args.layers - 1, args.layers - 11))
        run_job(qmp, 'block-commit', {'device': 'top',
                                      'top': layer(args.layers - 1),
                                      'base': layer(args.layers - 11)})
    elif args.after == 'active-commit':
        progress('active block-commit into depth %d, then its pivot' %
                 (args.layers - 1))
        run_job(qmp, 'block-commit', {'device': 'top',
                                      'base': layer(args.layers - 1)},
                complete=True)
    elif args.after == 'snapshot':
        progress('blockdev-snapshot-sync of the top')
        execute(qmp, 'blockdev-snapshot-sync', {
            'node-name': 'top', 'snapshot-node-name': 'snap',
            'snapshot-file': os.path.join(work, 'snap.qcow2'),
            'format': 'qcow2'})
    elif args.after == 'change-backing-file':
        progress('change-backing-file of the top naming depth %d' %
                 (args.layers - 1))
        execute(qmp, 'change-backing-file', {
            'device': 'top', 'image-node-name': 'top',
            'backing-file': layer(args.layers - 1)})
    elif args.after in SYSTEM_OPS:
        progress('HMP ' + args.after)
        res = qmp.cmd('human-monitor-command',
                      {'command-line': args.after + ' sqemu-snap'})
        if 'error' in res or res['return'].strip():
            raise PauseError('%s: %s' % (args.after, res))
    else:
        # the top's backing file becomes the layer below it (in memory)
        progress('blockdev-reopen of the top onto depth %d' %
                 (args.layers - 2))
        execute(qmp, 'blockdev-reopen', {'options': [{
            'driver': 'qcow2', 'node-name': 'top',
            'file': {'driver': 'file',
                     'filename': layer(args.layers)},
            'backing': node(args.layers - 2)}]})
    return time.monotonic()


def offline_operation(args, top, chain):
    """Run the offline operation --after names on the chain with our
    qemu-img; returns the command's time"""
    qemu_img = os.path.join(paths.BUILD, 'qemu-img')

    def layer(depth):
        return layer_path(chain, depth, args.layers)

    if args.after in ('img-snapshot-apply', 'img-snapshot-delete'):
        subprocess.run([qemu_img, 'snapshot', '-c', 'sqemu-snap', top],
                       check=True)
    cmd = {
        'img-rebase': ['rebase', '-F', 'qcow2', '-b',
                       layer(args.layers - 2), top],
        'img-rebase-unsafe': ['rebase', '-u', '-F', 'qcow2', '-b',
                              layer(args.layers - 2), top],
        'img-commit': ['commit', top],
        'img-commit-base': ['commit', '-b', layer(args.layers - 10), top],
        'img-snapshot-create': ['snapshot', '-c', 'sqemu-snap', top],
        'img-snapshot-apply': ['snapshot', '-a', 'sqemu-snap', top],
        'img-snapshot-delete': ['snapshot', '-d', 'sqemu-snap', top],
    }[args.after]
    progress('qemu-img ' + ' '.join(cmd))
    t0 = time.monotonic()
    subprocess.run([qemu_img, *cmd], check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def wait_direct(qmp):
    """Wait until the exported top is chain-valid and no background index
    job runs; whether a job ran"""
    deadline = time.monotonic() + START_TIMEOUT
    ran = False
    while True:
        jobs = [j for j in qmp.cmd('query-jobs')['return']
                if j['id'].startswith('sqemu-index-')]
        ran = ran or bool(jobs)
        if any(j['status'] == 'concluded' and 'error' in j for j in jobs):
            raise PauseError('the background job failed')
        if not jobs and exported_chain(qmp).get('chain-valid', False):
            return ran
        if time.monotonic() > deadline:
            raise PauseError('the top did not become chain-valid')
        time.sleep(0.05)


def exported_node(qmp):
    """query-named-block-nodes' entry of the node the NBD export reads now
    (the top, or what replaced it: a pivot, a snapshot)"""
    name = qmp.cmd('query-block-exports')['return'][0]['node-name']
    for n in qmp.cmd('query-named-block-nodes', {'flat': True})['return']:
        if n['node-name'] == name:
            return n
    raise PauseError('no node %s' % name)


def backing_index(node):
    """The backing-index information of a query-named-block-nodes entry"""
    return node['image'].get('format-specific', {}).get('data', {}).get(
        'backing-index', {})


def exported_chain(qmp):
    """The backing-index information of the exported node"""
    return backing_index(exported_node(qmp))


def index_job_events(qmp):
    """The QMP events that came, and whether one is of a background index
    job (sqemu-index-*)"""
    events = qmp.get_events(wait=False)
    qmp.clear_events()
    return events, any(ev['event'] == 'JOB_STATUS_CHANGE' and
                       ev['data']['id'].startswith('sqemu-index-')
                       for ev in events)


def background_job(qmp, events):
    """Wait for the job that indexes the chain again in the background
    (sqemu-index-top) to go, showing its progress; raise if it failed.
    @events: those that came already."""
    last = -1
    while True:
        events += index_job_events(qmp)[0]
        for ev in events:
            if ev['event'] != 'JOB_STATUS_CHANGE' or \
                    not ev['data']['id'].startswith('sqemu-index-'):
                continue
            if ev['data']['status'] == 'aborting':
                raise PauseError('the background job failed')
            if ev['data']['status'] == 'null':
                return
        events = []
        time.sleep(0.05)
        for state in qmp.cmd('query-jobs')['return']:
            if state['id'].startswith('sqemu-index-'):
                tenth = state['current-progress'] * 10 // max(
                    state['total-progress'], 1)
                if tenth != last:
                    last = tenth
                    progress('background job: %d of %d L2 slices' % (
                        state['current-progress'], state['total-progress']))


def amend(args, qmp):
    """Run x-blockdev-amend backing-index=true on the top; its start and
    end"""
    job = {'job-id': 'bi', 'node-name': 'top',
           'options': {'driver': 'qcow2', 'backing-index': True}}
    if args.speed:
        job['speed'] = args.speed
    t0 = time.monotonic()
    execute(qmp, 'x-blockdev-amend', job)
    last = -1
    while True:
        state = qmp.cmd('query-jobs')['return'][0]
        if state['status'] == 'concluded':
            break
        tenth = state['current-progress'] * 10 // max(
            state['total-progress'], 1)
        if tenth != last:
            last = tenth
            progress('job: %d of %d L2 slices' % (
                state['current-progress'], state['total-progress']))
        time.sleep(0.05)
    t1 = time.monotonic()
    qmp.cmd('job-dismiss', {'id': 'bi'})
    if 'error' in state:
        raise PauseError('the job failed: ' + state['error'])
    return t0, t1


def make_chain(args, stock, chain, index):
    """A chain of --layers layers made with stock QEMU's tools, indexed
    offline afterwards if @index; its top"""
    progress('making a %d-layer chain of %s with stock QEMU (%s)' %
             (args.layers, args.size, stock))
    subprocess.run([paths.script('mkchain'), '-n',
                    str(args.layers), '-s', args.size, '--qemu-img',
                    os.path.join(stock, 'qemu-img'), '--qemu-io',
                    os.path.join(stock, 'qemu-io'), chain],
                   check=True, stdout=subprocess.DEVNULL)
    top = layer_path(chain, args.layers, args.layers)
    if index:
        progress('indexing the chain offline (qemu-img amend)')
        subprocess.run([os.path.join(paths.BUILD, 'qemu-img'), 'amend', '-o',
                        'backing-index=on', top], check=True)
    return top


def start_daemon(binary, node, work, trace_args=()):
    """Start @binary (qemu-storage-daemon, or qemu-system for savevm and
    loadvm) on blockdev @node, exported over NBD as "top"; returns the
    daemon and a QMP connection (QEMU's legacy client, whose events this
    command reads)"""
    daemon = Daemon(binary, node, work, PauseError, export_name='top',
                    writable=True, extra=trace_args,
                    start_timeout=START_TIMEOUT)
    try:
        return daemon, daemon.monitor(START_TIMEOUT).qmp
    except BaseException:
        daemon.close()
        raise


def stop_daemon(daemon):
    daemon.stop(60, check=False)
    daemon.close()


def stream_compare(args, work):
    """--stream-compare: block-stream of the layers above depth N-100 into
    the top, stock's daemon on a stock-made chain and ours on the same
    chain indexed, one after the other, with the QD1 client reading
    throughout; prints the stream's time and the latencies side by side"""
    stock = paths.stock_dir(PauseError)
    base_depth = max(args.layers - 100, 1)
    rows = []
    for label, binary, index in (
            ('stock', os.path.join(stock, 'qemu-storage-daemon'), False),
            ('sQemu', os.path.join(paths.BUILD, 'storage-daemon',
                                   'qemu-storage-daemon'), True)):
        chain = os.path.join(work, 'chain-' + label)
        top = make_chain(args, stock, chain, index)
        node = {'driver': 'qcow2', 'node-name': 'top',
                'file': {'driver': 'file', 'filename': top}}
        daemon, qmp = start_daemon(binary, node, work)
        try:
            client = Client(daemon.uri, args.write_fraction)
            client.start()
            progress('%s: reading for %g s before the stream' %
                     (label, args.phase))
            time.sleep(args.phase)
            progress('%s: block-stream of depths %d..%d into the top' %
                     (label, base_depth + 1, args.layers - 1))
            t0 = time.monotonic()
            run_job(qmp, 'block-stream', {
                'device': 'top',
                'base': layer_path(chain, base_depth, args.layers)})
            t1 = time.monotonic()
            t2 = client.finish(args.phase)
            qmp.close()
        finally:
            stop_daemon(daemon)
        shutil.rmtree(chain, ignore_errors=True)
        rows.append((label, t1 - t0, client.phase(0, t0),
                     client.phase(t0, t1), client.phase(t1, t2)))
    print('chain: %d layers of %s, made by stock QEMU (sQemu: indexed '
          'offline); block-stream of %d layers into the top; client: QD1 '
          '4 KiB, %d%% writes' % (args.layers, args.size,
                                  args.layers - 1 - base_depth,
                                  round(args.write_fraction * 100)))
    for label, took, before, during, after in rows:
        print('%s: stream %.2f s' % (label, took))
        print('  request latency before: ' + util.percentiles(before))
        print('  request latency during: ' + util.percentiles(during))
        print('  request latency after:  ' + util.percentiles(after))
    print('stream time, stock / sQemu: %.1fx' % (rows[0][1] / rows[1][1]))


def measure(args, work):
    stock = paths.stock_dir(PauseError)
    chain = os.path.join(work, 'chain')
    top = make_chain(args, stock, chain, bool(args.after))
    trace = os.path.join(work, 'trace.log')
    node = {'driver': 'qcow2', 'node-name': 'top',
            'file': {'driver': 'file', 'filename': top}}
    if args.after and args.speed:
        node['backing-index-rebuild-speed'] = args.speed
    offline = args.after in OFFLINE
    if offline:
        took = offline_operation(args, top, chain)
    binary = os.path.join(paths.BUILD, 'storage-daemon', 'qemu-storage-daemon')
    if args.after in SYSTEM_OPS:
        binary = os.path.join(paths.BUILD, 'qemu-system-x86_64')
    opened = time.monotonic()
    daemon, qmp = start_daemon(
        # qemu-system-x86_64 takes the file of the last --trace
        binary, node, work, ('--trace', 'qcow2_bi_rebuild_end',
                             '--trace', 'qcow2_bi_amend_reopen,file=' +
                             trace))
    try:
        if offline:
            # the background job may have come and gone before QMP
            # answers: whether it ran is read from the trace below
            t0 = time.monotonic()
            wait_direct(qmp)
            t1 = time.monotonic()
            qmp.clear_events()
        if args.after == 'loadvm':
            progress('HMP savevm, to be loaded later')
            res = qmp.cmd('human-monitor-command',
                          {'command-line': 'savevm sqemu-snap'})
            if 'error' in res or res['return'].strip():
                raise PauseError('savevm: %s' % res)
        client = Client(daemon.uri, args.write_fraction)
        client.start()
        progress('reading for %g s before the job' % args.phase)
        time.sleep(args.phase)
        if offline:
            pass
        elif args.after:
            # The operation leaves the top without a valid index: QEMU
            # builds it again in the background, from the operation's end
            t0 = chain_operation(args, qmp, chain, work)
            exported = exported_node(qmp)
            valid = backing_index(exported).get('chain-valid', False)
            single = 'backing-filename' not in exported['image']
            events, started = index_job_events(qmp)
            kept = (valid or single) and not started
            if kept:
                t1 = t0     # kept by the operation itself
            else:
                deadline = time.monotonic() + 5
                while not started:
                    if time.monotonic() > deadline:
                        raise PauseError('the top does not validate and no '
                                         'background job started')
                    time.sleep(0.05)
                    more, started = index_job_events(qmp)
                    events += more
                background_job(qmp, events)
                t1 = time.monotonic()
        else:
            t0, t1 = amend(args, qmp)
        progress('reading for %g s after the job' % args.phase)
        t2 = client.finish(args.phase)
        # Whether the running top's chain validates, as QEMU has it (after
        # blockdev-reopen, the header names another backing file)
        bi = exported_chain(qmp)
        qmp.close()
    finally:
        stop_daemon(daemon)

    drained = []
    with open(trace) as f:
        log = f.read()
    for m in re.finditer(r'reopened read_only=\d in (\d+) ns', log):
        drained.append(int(m.group(1)) / 1e9)
    rebuilt = 'qcow2_bi_rebuild_end' in log
    print('chain: %d layers of %s, made by stock QEMU%s; client: QD1 4 KiB, '
          '%d%% writes; speed %s' % (args.layers, args.size,
                                     ', indexed, then ' + dict(
                                         OPERATIONS, **OFFLINE)[args.after]
                                     if args.after else '',
                                     round(args.write_fraction * 100),
                                     args.speed or 'unlimited'))
    if offline:
        print('qemu-img: %.2f s' % took)
        print('QEMU started, the chain opened: QMP answered after %.2f s, '
              'the top was chain-valid after %.2f s (%s); afterwards the '
              'top is chain-valid: %s' % (
                  t0 - opened, t1 - opened, 'after the background job' if
                  rebuilt else 'kept by the operation',
                  bi.get('chain-valid', False)))
    elif args.after:
        print('from the operation\'s end to direct access: %.2f s (%s); '
              'afterwards the top is chain-valid: %s' % (
                  t1 - t0, 'one layer: nothing to index' if kept and single
                  else 'kept by the operation' if kept else
                  'the background job', bi.get('chain-valid', False)))
    else:
        print('job: %.2f s; afterwards the top is chain-valid: %s' %
              (t1 - t0, bi.get('chain-valid', False)))
    print('request latency before: ' + util.percentiles(client.phase(0, t0)))
    print('request latency during: ' + util.percentiles(client.phase(t0, t1)))
    print('request latency after:  ' + util.percentiles(client.phase(t1, t2)))
    print('drained sections (reopens of a layer): ' +
          util.percentiles(drained))
    print('  over 10 ms: %d' % sum(d > 0.010 for d in drained))


def main():
    parser = argparse.ArgumentParser(
        description='Measure what indexing a running chain online '
        '(x-blockdev-amend backing-index=true) costs its guest: request '
        'latencies before, during and after the job, and the drained '
        'sections it imposes.')
    parser.add_argument('-n', '--layers', type=int, default=1000,
                        help='layers of the chain (default 1000)')
    parser.add_argument('-s', '--size', default='1G',
                        help='virtual disk size (default 1G)')
    parser.add_argument('--speed', type=int, default=0,
                        help='the job\'s speed in bytes of L2 tables per '
                        'second (default 0: unlimited)')
    parser.add_argument('--write-fraction', type=float, default=0.0,
                        help='fraction of requests that write (default 0)')
    parser.add_argument('--phase', type=float, default=5.0,
                        help='seconds of requests before and after the job '
                        '(default 5)')
    parser.add_argument('--after', choices=sorted(dict(OPERATIONS,
                                                       **OFFLINE)),
                        help='index the chain offline first, then run this '
                        'chain operation (' + '; '.join(
                            '%s: %s' % kv for kv in sorted(
                                dict(OPERATIONS, **OFFLINE).items())) +
                        ') and measure the time until the top reads '
                        'directly again: 0 if the operation keeps the '
                        'index, else the background job QEMU starts (--speed '
                        'sets the node\'s backing-index-rebuild-speed); an '
                        'img-* operation runs offline, before QEMU opens '
                        'the chain')
    parser.add_argument('--deep-commit', action='store_const', dest='after',
                        const='commit', help='the same as --after commit')
    parser.add_argument('--stream-compare', action='store_true',
                        help='instead: block-stream the 99 layers above '
                        'depth N-100 into the top, stock QEMU\'s daemon on a '
                        'stock-made chain, then ours on the same chain '
                        'indexed, with the client reading throughout: the '
                        'stream\'s time and the request latencies of both')
    parser.add_argument('--workdir', help='directory for the chain (default '
                        'a new one under /var/tmp, removed at the end)')
    args = parser.parse_args()
    util.interrupt_on(signal.SIGTERM)
    work = tempfile.mkdtemp(prefix='amend-pause-', dir=args.workdir or
                            '/var/tmp')
    run = stream_compare if args.stream_compare else measure
    try:
        return util.run_main('amend-pause', lambda: run(args, work),
                             (PauseError, OSError,
                              subprocess.CalledProcessError))
    finally:
        shutil.rmtree(work, ignore_errors=True)
