# SPDX-License-Identifier: GPL-2.0-or-later
#
# Child processes of the commands, in one place: the measured process
# (bench: its peak RSS, its own process group), a command's group of
# children (stress: sessions, killed and reaped on the way out), and a
# tool run to its end that stops cleanly when we are stopped (eval).

import ctypes
import os
import signal
import subprocess
import tempfile
import time

from sqemu import util

# Processes.
#
# Linux charges a process's peak RSS (ru_maxrss) with the pages of the
# process that forked it, as they were at exec time, so every child of this
# Python process would report at least our own peak RSS.  Commands are
# therefore forked by a small /bin/sh, which prints the command's pid and
# exits; being child subreaper while it exits, we inherit the command and
# wait4() it ourselves.  The command waits to start until the shell has
# exited (a gate on the shell's stdin), so that the shell cannot reap it.
# Each command runs in a process group of its own, so that on error or
# interruption the whole group (e.g. mkchain and its qemu-io) can be killed
# without signalling ourselves.

PR_SET_CHILD_SUBREAPER = 36
LIBC = ctypes.CDLL(None, use_errno=True)
LAUNCHER = ('exec 3<&0; { read go <&3; exec "$@" 3<&-; } 2>&1 & '
            'echo $! >&2')


def set_subreaper(on):
    if LIBC.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), 'prctl(PR_SET_CHILD_SUBREAPER)')


class Process:
    """A command running in its own process group, its stdout and stderr
    going to a temporary file.  Killed and reaped on leaving a with
    block.  started is when it was let go."""

    def __init__(self, cmd, output=None):
        self.cmd = cmd
        self.own_output = output is None
        self.output = output or tempfile.TemporaryFile('w+', errors='replace')
        self.group = self.pid = self.returncode = self.maxrss = None
        self.inblock = None
        try:
            self.launch(cmd)
        except BaseException:
            self.close()
            raise

    def launch(self, cmd):
        set_subreaper(True)
        try:
            launcher = subprocess.Popen(['/bin/sh', '-c', LAUNCHER, 'sh',
                                         *cmd],
                                        stdin=subprocess.PIPE,
                                        stdout=self.output,
                                        stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)
            self.group = launcher.pid
            with launcher.stderr:
                self.pid = int(launcher.stderr.read())
            launcher.wait()
        finally:
            set_subreaper(False)
        self.started = time.monotonic()
        launcher.stdin.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _wait4(self, options):
        if self.returncode is None:
            pid, status, usage = os.wait4(self.pid, options)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                self.maxrss = usage.ru_maxrss   # KiB
                # Blocks of 512 bytes read from storage (with O_DIRECT:
                # every byte the command read)
                self.inblock = usage.ru_inblock
        return self.returncode

    def poll(self):
        """The command's exit code, or None while it runs"""
        return self._wait4(os.WNOHANG)

    def wait(self, timeout=None):
        """Wait for the command's end (at most @timeout s, as
        subprocess.Popen.wait); its exit code.  Sets maxrss."""
        if timeout is None:
            return self._wait4(0)
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.cmd, timeout)
            time.sleep(0.05)
        return self.returncode

    def read_output(self):
        self.output.seek(0)
        return self.output.read()

    def close(self):
        """Kill the process group and reap the command, unless reaped."""
        if self.returncode is None and self.group:
            try:
                os.killpg(self.group, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if self.pid:
                self.wait()
        if self.own_output:
            self.output.close()


# A command's children.  Every child runs in a session (process group) of
# its own, so that Ctrl-C reaches only us, and on the way out each group
# still running is killed by its id (mkchain's group holds its daemon and
# qemu-io).  We are a child subreaper, so that the processes of a group
# whose leader died first are reparented to us and reaped here.

# How long a child of Processes.run may take
LONG_TIMEOUT = 3600


class Processes:
    """The children of a command that starts many (stress); @error is the
    exception class of its failures"""

    def __init__(self, error=RuntimeError):
        self.children = []
        self.error = error
        self.subreaper = LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0

    def spawn(self, cmd, **kwargs):
        proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        self.children.append(proc)
        return proc

    def run(self, cmd, timeout=LONG_TIMEOUT, cwd=None, merge=True):
        """Run @cmd; return (exit code, stdout, stderr), stderr merged
        into stdout (and returned empty) if @merge."""
        proc = self.spawn(cmd, cwd=cwd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT if merge
                          else subprocess.PIPE,
                          text=True, errors='replace')
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            raise self.error('%s did not finish within %d s' %
                             (os.path.basename(cmd[0]), timeout))
        finally:
            self.forget(proc)
        return proc.returncode, out, err or ''

    def must(self, cmd, **kwargs):
        """Run @cmd, which must succeed; return its output."""
        code, out, err = self.run(cmd, **kwargs)
        if code != 0:
            raise self.error('%s failed (%s): %s' %
                             (' '.join(os.path.basename(c) if i == 0 else c
                                       for i, c in enumerate(cmd[:2])),
                              util.describe_status(code),
                              util.tail(out + err)))
        return out

    def kill(self, proc):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def forget(self, proc):
        if proc.poll() is None:
            self.kill(proc)
        if proc in self.children:
            self.children.remove(proc)

    def kill_all(self):
        for proc in list(self.children):
            self.forget(proc)
        # Reap what was reparented to us (all of it was in a group killed
        # above, so it is dying)
        deadline = time.monotonic() + 10
        while self.subreaper and time.monotonic() < deadline:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    time.sleep(0.05)
            except ChildProcessError:
                break


def run_child(cmd, stop_timeout=30):
    """Run a tool to its end; its exit status and output (stdout and
    stderr).  If this process is stopped meanwhile (SIGTERM, ^C), the tool
    gets SIGTERM, so that it stops what it started (vmrun its QEMU,
    mkchain its qemu-storage-daemon) and removes what it made, where
    subprocess.run would SIGKILL it."""
    with subprocess.Popen(cmd, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT) as proc:
        try:
            output, _ = proc.communicate()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    return proc.returncode, output
