# SPDX-License-Identifier: GPL-2.0-or-later
#
# The QEMU process that serves one block node over NBD on a unix socket,
# with a QMP monitor, as the commands run it: a qemu-storage-daemon, or a
# qemu-system-* machine without devices (amend-pause's savevm/loadvm).
# QEMU's own qemu.machine cannot start it (QEMUMachine adds options that
# qemu-storage-daemon refuses); how the process is started stays the
# caller's (bench measures its peak RSS with proc.Process, stress counts it
# among its proc.Processes), and everything else is here: its command line,
# when it is ready, its log, its failures in words, its stop.

import json
import os
import signal
import subprocess
import time

from sqemu import qmp, util


def command(binary, blockdev, nbd_sock, qmp_sock=None, pidfile=None,
            export_name='disk', writable=False, writethrough=False,
            extra=()):
    """The command line of @binary serving @blockdev (a dict with a
    node-name) as NBD export @export_name on unix socket @nbd_sock; a QMP
    monitor on @qmp_sock and a pid file at @pidfile if given (the daemon
    writes it once every option is set up); @extra options last"""
    cmd = [binary, '--blockdev', json.dumps(blockdev)]
    if qmp_sock:
        cmd += ['--chardev', 'socket,id=qmp,path=%s,server=on,wait=off' %
                qmp_sock, '--monitor', 'chardev=qmp']
    export = 'type=nbd,id=exp0,node-name=%s,name=%s' % (
        blockdev['node-name'], export_name)
    if writable:
        export += ',writable=on'
    if writethrough:
        export += ',writethrough=on'
    cmd += ['--nbd-server', 'addr.type=unix,addr.path=' + nbd_sock,
            '--export', export]
    if pidfile:
        cmd += ['--pidfile', pidfile]
    return cmd + list(extra)


def _popen(cmd, log):
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


class Daemon:
    """@binary serving @blockdev as NBD export @export_name, its sockets,
    pid file and log (qsd.log) in @rundir.  @launch(cmd, log) starts the
    process and returns it (as subprocess.Popen does: pid, returncode,
    poll(), wait(timeout)).  Failures raise @error with the daemon's last
    lines.  Killed and reaped on leaving a with block."""

    def __init__(self, binary, blockdev, rundir, error=RuntimeError,
                 export_name='disk', writable=False, writethrough=False,
                 extra=(), launch=_popen, start_timeout=600):
        self.error = error
        self.name = os.path.basename(binary)
        self.export_name = export_name
        self.nbd = os.path.join(rundir, 'nbd.sock')
        self.qmp_path = os.path.join(rundir, 'qmp.sock')
        pidfile = os.path.join(rundir, 'qsd.pid')
        for path in (self.nbd, self.qmp_path, pidfile):
            if os.path.lexists(path):
                os.unlink(path)
        system = self.name.startswith('qemu-system-')
        if system:
            # no devices, TCG (no guest code runs); the export is added
            # over QMP once the monitor answers
            cmd = [binary, '-M', 'none', '-accel', 'tcg', '-nodefaults',
                   '-display', 'none', '-chardev',
                   'socket,id=m,path=%s,server=on,wait=off' % self.qmp_path,
                   '-mon', 'chardev=m,mode=control',
                   '-blockdev', json.dumps(blockdev), *extra]
        else:
            cmd = command(binary, blockdev, self.nbd, self.qmp_path, pidfile,
                          export_name, writable, writethrough, extra)
        self.log = open(os.path.join(rundir, 'qsd.log'), 'w+')
        self.proc = None
        try:
            self.proc = launch(cmd, self.log)
            self.wait_ready(self.qmp_path if system else pidfile,
                            start_timeout)
            if system:
                mon = self.monitor(start_timeout)
                try:
                    mon.cmd('nbd-server-start', addr={
                        'type': 'unix', 'data': {'path': self.nbd}})
                    mon.cmd('block-export-add', **{
                        'type': 'nbd', 'id': 'exp0', 'name': export_name,
                        'writable': writable,
                        'node-name': blockdev['node-name']})
                finally:
                    mon.close()
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def uri(self):
        return 'nbd+unix:///%s?socket=%s' % (self.export_name, self.nbd)

    def monitor(self, wait=30, timeout=None):
        """A QMP connection (sqemu.qmp.Monitor) to the daemon"""
        return qmp.Monitor(self.qmp_path, wait, self.error, timeout)

    def output(self):
        self.log.seek(0)
        return self.log.read()

    def alive(self):
        return self.proc.poll() is None

    def failed(self):
        return self.error('%s %s: %s' % (
            self.name, util.describe_status(self.proc.returncode),
            util.tail(self.output())))

    def wait_ready(self, path, timeout):
        """qemu-storage-daemon writes its pid file once its block node,
        NBD server and export are all set up; qemu-system is ready for
        QMP once its monitor's socket is there."""
        deadline = time.monotonic() + timeout
        while not (os.path.exists(path) and
                   (path.endswith('.sock') or os.path.getsize(path))):
            if self.proc.poll() is not None:
                raise self.failed()
            if time.monotonic() > deadline:
                raise self.error('%s not ready after %d s: %s' %
                                 (self.name, timeout,
                                  util.tail(self.output())))
            time.sleep(0.05)

    def stop(self, timeout=120, check=True):
        """SIGTERM; the daemon must exit cleanly within @timeout s (if not
        @check: whatever its status, killed after @timeout s)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                if check:
                    raise self.error('%s did not exit within %d s of '
                                     'SIGTERM' % (self.name, timeout))
                self.kill()
        if check and self.proc.returncode != 0:
            raise self.failed()

    def kill(self):
        """SIGKILL, and reap it"""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self):
        self.kill()
        self.log.close()
