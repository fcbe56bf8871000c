# SPDX-License-Identifier: GPL-2.0-or-later
#
# trace record and trace overhead (issue 21, recording a disk's I/O).
#
#   trace record --qmp SOCKET (--device NAME | --id ID | --export ID)
#                [--duration S] OUT
#
# records the requests a running QEMU's disk receives into sQemu trace
# file OUT (block-io-trace-start over the QMP monitor at SOCKET; QEMU
# writes the file, so OUT is a path QEMU can create), for S seconds or
# until ^C or SIGTERM, then stops the trace (block-io-trace-stop) and says
# what it recorded.  The guest runs on throughout; nothing restarts.  The
# disk is named as QEMU's block commands name one: a -drive's name
# (--device), a device's qdev id or QOM path (--id: libvirt's
# "virtio-disk0"), or a block export's id (--export: qemu-storage-daemon).
#
#   trace overhead [--rounds N] [--runtime S] [--iodepth D] [--size SIZE]
#
# measures what recording costs: ours' qemu-storage-daemon serves a qcow2
# disk over NBD, fio reads it at random (4 KiB, queue depth D) for S
# seconds per run, alternately with the trace off and on, N rounds, and
# the medians of IOPS and their ratio are reported (target: at most 5%
# fewer IOPS with the trace on, at queue depth 16).  Each traced run's
# records are counted against fio's requests.

import os
import signal
import statistics
import subprocess
import time

from sqemu import paths, qmp, qsd, trace_file, util

OVERHEAD_TARGET = 0.95


class RecordError(Exception):
    pass


def target_args(args):
    """The QMP arguments that name the disk of @args"""
    for key in ('device', 'id', 'export'):
        if getattr(args, key):
            return {key: getattr(args, key)}
    raise RecordError('name the disk: --device, --id or --export')


def record(monitor, target, output, duration, say, interval=5.0):
    """Trace @target ({device|id|export: name}) into @output through QMP
    @monitor for @duration seconds (None: until ^C or SIGTERM, which stop
    the trace as its end does); the trace's counters when it stopped"""
    monitor.cmd('block-io-trace-start', filename=output, **target)
    say('recording %s into %s%s' % (
        next(iter(target.values())), output,
        ' for %g s' % duration if duration else ' until ^C or SIGTERM'))
    start = time.monotonic()
    try:
        while duration is None or time.monotonic() - start < duration:
            time.sleep(interval if duration is None else max(0, min(
                interval, duration - (time.monotonic() - start))))
            for info in monitor.cmd('query-block-io-traces'):
                if info['filename'] == output:
                    say('%d requests recorded, %d dropped (%.0f s)' % (
                        info['records'], info['dropped'],
                        time.monotonic() - start))
    except KeyboardInterrupt:
        say('interrupted after %.0f s' % (time.monotonic() - start))
    return monitor.cmd('block-io-trace-stop', **target)


def cmd_record(args):
    target = target_args(args)
    output = os.path.abspath(args.output)
    say = util.printer('trace record')
    util.interrupt_on(signal.SIGTERM)
    monitor = qmp.Monitor(args.qmp, 5, RecordError, timeout=60)
    try:
        info = record(monitor, target, output, args.duration, say)
    finally:
        monitor.close()
    say('stopped: %d requests in %s, %d dropped%s' % (
        info['records'], output, info['dropped'],
        '; writing it failed: ' + info['write-error']
        if info.get('write-error') else ''))
    if info.get('write-error') or info['dropped']:
        return 1


def fio_randread(uri, runtime, iodepth, size):
    """IOPS, p99 completion latency (us) and requests of a random 4 KiB
    read run of @runtime s at queue depth @iodepth on NBD export @uri"""
    out = subprocess.run(
        ['fio', '--name=randread', '--ioengine=nbd', '--uri=' + uri,
         '--rw=randread', '--bs=4k', '--iodepth=%d' % iodepth,
         '--size=%d' % size, '--runtime=%g' % runtime, '--time_based',
         '--output-format=json'], capture_output=True, text=True)
    if out.returncode:
        raise RecordError('fio failed: ' + util.tail(out.stderr +
                                                     out.stdout))
    job = util.fio_job(out.stdout, RecordError)
    read = job['read']
    p99 = read['clat_ns']['percentile'].get('99.000000', 0) / 1000
    return read['iops'], p99, read['total_ios']


def overhead_rounds(daemon, workdir, rounds, runtime, iodepth, size, say):
    """[(trace on?, IOPS, p99 us)] of @rounds alternating pairs of fio
    runs through @daemon; each traced run's records must be fio's
    requests"""
    runs = []
    mon = daemon.monitor()
    try:
        for r in range(rounds):
            for traced in ((False, True) if r % 2 == 0 else (True, False)):
                path = os.path.join(workdir, 'round-%d.iotrace' % r)
                if traced:
                    mon.cmd('block-io-trace-start', export='exp0',
                            filename=path)
                iops, p99, ios = fio_randread(daemon.uri, runtime, iodepth,
                                              size)
                if traced:
                    info = mon.cmd('block-io-trace-stop', export='exp0')
                    recorded = len(trace_file.Trace(path).requests)
                    os.unlink(path)
                    if recorded + info['dropped'] != ios:
                        raise RecordError(
                            'round %d: fio made %d requests, the trace '
                            'holds %d and dropped %d' %
                            (r + 1, ios, recorded, info['dropped']))
                runs.append((traced, iops, p99))
                say('round %d/%d, trace %s: %.0f IOPS, p99 %.0f us' % (
                    r + 1, rounds, 'on ' if traced else 'off', iops, p99))
    finally:
        mon.close()
    return runs


def overhead_report(runs, iodepth):
    """The lines that report @runs (overhead_rounds)"""
    off = [iops for traced, iops, _ in runs if not traced]
    on = [iops for traced, iops, _ in runs if traced]
    p99_off = statistics.median(p for t, _, p in runs if not t)
    p99_on = statistics.median(p for t, _, p in runs if t)
    ratio = statistics.median(on) / statistics.median(off)
    pairs = [b / a for (_, a, _), (_, b, _) in
             zip([r for r in runs if not r[0]], [r for r in runs if r[0]])]
    return [
        'random 4 KiB reads at queue depth %d, medians of %d runs each:' %
        (iodepth, len(off)),
        '  trace off: %.0f IOPS, p99 %.0f us' % (statistics.median(off),
                                                 p99_off),
        '  trace on:  %.0f IOPS, p99 %.0f us' % (statistics.median(on),
                                                 p99_on),
        '  on / off: %.3f (per round %s); target >= %.2f: %s' % (
            ratio, ' '.join('%.3f' % p for p in pairs), OVERHEAD_TARGET,
            'met' if ratio >= OVERHEAD_TARGET else 'NOT met')]


def cmd_overhead(args):
    say = util.printer('trace overhead')
    util.exit_on(signal.SIGTERM)
    daemon_bin = paths.find_tool(paths.BUILD, 'qemu-storage-daemon')
    qemu_img = paths.find_tool(paths.BUILD, 'qemu-img')
    if not daemon_bin or not qemu_img:
        raise RecordError('no qemu-storage-daemon or qemu-img in %s: run '
                          'make' % paths.BUILD)
    workdir = util.make_workdir(args.workdir, 'sqemu-trace-', RecordError)
    try:
        image = os.path.join(workdir, 'disk.qcow2')
        subprocess.run([qemu_img, 'create', '-q', '-f', 'qcow2', '-o',
                        'preallocation=falloc', image, str(args.size)],
                       check=True)
        node = {'driver': 'qcow2', 'node-name': 'disk',
                'file': {'driver': 'file', 'filename': image}}
        say('%s, %d rounds of %g s runs, trace off and on' % (
            daemon_bin, args.rounds, args.runtime))
        with qsd.Daemon(daemon_bin, node, workdir, RecordError) as daemon:
            runs = overhead_rounds(daemon, workdir, args.rounds,
                                   args.runtime, args.iodepth, args.size,
                                   say)
            daemon.stop()
        for line in overhead_report(runs, args.iodepth):
            print(line)
    finally:
        subprocess.run(['rm', '-rf', workdir])


def add_parser(sub):
    """trace record's and trace overhead's parsers, under @sub"""
    rec = sub.add_parser(
        'record', help='record a running QEMU\'s disk I/O into a trace file',
        description='Record the requests a disk of a running QEMU '
        '(qemu-system or qemu-storage-daemon) receives, through its QMP '
        'monitor, into an sQemu I/O trace file: operation, offset, '
        'length, flags, issue and completion times, result; no data, no '
        'names.  Convert it with trace convert --from sqemu.')
    rec.add_argument('--qmp', required=True, metavar='SOCKET',
                     help='QEMU\'s QMP monitor socket')
    which = rec.add_mutually_exclusive_group(required=True)
    which.add_argument('--device', help='the block backend\'s name '
                       '(-drive id)')
    which.add_argument('--id', help='the device\'s qdev id or QOM path')
    which.add_argument('--export', help='the block export\'s id '
                       '(qemu-storage-daemon)')
    rec.add_argument('--duration', type=float, metavar='S',
                     help='seconds to record (default: until ^C/SIGTERM)')
    rec.add_argument('output', metavar='OUT',
                     help='the trace file QEMU creates')
    rec.set_defaults(run=cmd_record, errors=(RecordError,))

    ovh = sub.add_parser(
        'overhead', help='what recording costs: IOPS with the trace off '
        'and on', description='Measure random read IOPS through ours\' '
        'qemu-storage-daemon with the I/O trace off and on, alternating, '
        'in one run.')
    ovh.add_argument('--rounds', type=int, default=5)
    ovh.add_argument('--runtime', type=float, default=10, metavar='S',
                     help='seconds per fio run (default 10)')
    ovh.add_argument('--iodepth', type=int, default=16)
    ovh.add_argument('--size', type=util.parse_size, default=1 << 30,
                     help='the disk (default 1G)')
    ovh.add_argument('--workdir', help='a new directory for the disk and '
                     'the traces (default: one under /var/tmp)')
    ovh.set_defaults(run=cmd_overhead, errors=(
        RecordError, trace_file.TraceFileError, OSError,
        subprocess.CalledProcessError))
