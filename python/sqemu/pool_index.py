# SPDX-License-Identifier: GPL-2.0-or-later
#
# pool index: convert the chains a pool scan ranks first (issue 21).
#
#   pool index PATH... [--limit N] [--dry-run] [--qemu-img QEMU_IMG]
#
# scans the pool (pool.Scan) and, for each chain worth converting in the
# scan's order (deepest first), runs the one-command conversion, sQemu's
# `qemu-img amend -o backing-index=on TOP`: it indexes every layer of the
# chain without a valid index, from the base up, so that chains sharing
# layers reuse the indexed ones.  A chain with a layer in use (QEMU holds
# an image lock on it: a running VM, a storage daemon, a qemu-img) is
# skipped with that reason, before anything is written.  Each conversion
# is safe to interrupt: the index of a layer is marked valid only once its
# entries are on disk, so an amend that is stopped leaves an index that is
# not used (a later run builds it again).  On SIGINT, SIGTERM or SIGHUP the
# amend in progress is stopped, the summary printed, and the exit status
# is 130.

import fcntl
import os
import signal
import struct
import subprocess

from sqemu import paths, util
from sqemu.pool import Scan

# QEMU's file-posix image locks: one byte per permission from 100 (held),
# and from 200 (not shared); any lock there means the image is in use
LOCK_FIRST, LOCK_LAST = 100, 263


class PoolIndexError(Exception):
    pass


def lock_holder(path):
    """Whether another process holds a QEMU image lock on file @path:
    'read' (shared locks: readers), 'write' (an exclusive one), or None"""
    fd = os.open(path, os.O_RDONLY)
    try:
        # an OFD lock test: what would stop a write lock over the bytes
        probe = struct.pack('hhqqi', fcntl.F_WRLCK, os.SEEK_SET, LOCK_FIRST,
                            LOCK_LAST - LOCK_FIRST + 1, 0)
        got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, probe)
    finally:
        os.close(fd)
    kind = struct.unpack('hhqqi', got)[0]
    if kind == fcntl.F_UNLCK:
        return None
    return 'write' if kind == fcntl.F_WRLCK else 'read'


def in_use(layers):
    """The first layer of @layers (paths) that is in use, or None"""
    return next((path for path in layers if lock_holder(path)), None)


class Converter:
    def __init__(self, qemu_img, progress=print):
        self.qemu_img = qemu_img
        self.progress = progress
        self.child = None
        self.done = {'converted': [], 'skipped': [], 'failed': []}

    def convert(self, top):
        cmd = [self.qemu_img, 'amend', '-f', 'qcow2', '-o',
               'backing-index=on', top]
        self.child = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
        out = self.child.communicate()[0]
        code = self.child.returncode
        self.child = None
        return code, out

    def stop(self):
        if self.child and self.child.poll() is None:
            self.child.terminate()
            self.child.wait()

    def run(self, chains, dry_run):
        total = len(chains)
        for i, c in enumerate(chains, 1):
            what = '[%d/%d] %s (%d layers)' % (i, total, c['top'],
                                               c['length'])
            path = in_use(c['layers'])
            if path:
                why = ('%s is in use (another process holds a QEMU image '
                       'lock on it)' % path)
                self.progress('%s: skipped: %s' % (what, why))
                self.done['skipped'].append({'top': c['top'],
                                             'reason': why})
                continue
            if dry_run:
                self.progress('%s: would run qemu-img amend -o '
                              'backing-index=on' % what)
                continue
            self.progress('%s: indexing...' % what)
            code, out = self.convert(c['top'])
            if code:
                why = util.tail(out) or util.describe_status(code)
                self.progress('%s: failed: %s' % (what, why))
                self.done['failed'].append({'top': c['top'], 'error': why})
            else:
                self.done['converted'].append(c['top'])
        return self.done


def selected(scan, limit):
    """The chains to convert, in the scan's order, with their layers"""
    chains = sorted((c for c in scan.chains if c['rank']),
                    key=lambda c: c['rank'])
    if limit:
        chains = chains[:limit]
    return [{'top': c['top'].path, 'length': len(c['layers']),
             'layers': [i.path for i in c['layers'] if i.format == 'qcow2']}
            for c in chains]


def summary(done, dry_run, planned):
    if dry_run:
        return ('dry run: %d chains would be converted, %d skipped' %
                (planned - len(done['skipped']), len(done['skipped'])))
    return ('converted %d chains, skipped %d (in use), failed %d' %
            (len(done['converted']), len(done['skipped']),
             len(done['failed'])))


def cmd_index(args):
    qemu_img = args.qemu_img or paths.find_tool(paths.BUILD, 'qemu-img')
    if not qemu_img:
        raise PoolIndexError('no sQemu qemu-img in %s (run make, or give '
                             '--qemu-img)' % paths.BUILD)
    if not os.access(qemu_img, os.X_OK):
        raise PoolIndexError('--qemu-img %s is not an executable' %
                             qemu_img)
    progress = util.printer('pool index')
    scan = Scan(args.paths)
    chains = selected(scan, args.limit)
    progress('%d chains to convert (of %d; %d errors in the scan)' %
             (len(chains), len(scan.chains), len(scan.errors)))
    conv = Converter(qemu_img, progress)
    util.interrupt_on(signal.SIGTERM, signal.SIGHUP)
    try:
        done = conv.run(chains, args.dry_run)
    except KeyboardInterrupt:
        conv.stop()
        progress('interrupted: the chain being converted keeps an index '
                 'that is not used until a later run builds it')
        print(summary(conv.done, False, len(chains)))
        return 130
    print(summary(done, args.dry_run, len(chains)))
    return 1 if done['failed'] else 0
