# SPDX-License-Identifier: GPL-2.0-or-later
#
# QMP for the commands: QEMU's own client (qemu.qmp.legacy from the
# assembled tree's python/), with what they all need around it: waiting
# for the monitor's socket to appear, replies as large as a deep chain's,
# a thread of its own, and errors as the caller's exception class.

import asyncio
import time

from sqemu import paths

paths.use_qemu_python()
from qemu.qmp import ExecuteError, QMPError  # noqa: E402
from qemu.qmp.legacy import QEMUMonitorProtocol  # noqa: E402

# query-named-block-nodes and query-blockstats answer about 1 KiB per node
# (two nodes per layer): more than the client's 256 KiB default at a few
# hundred layers.  qemu.qmp 7.2 has no public setting for it.
MESSAGE_LIMIT = 64 * 1024 * 1024


class Monitor:
    """A QMP connection to the monitor socket @path, retried for @wait
    seconds while the socket is not there yet; each command waits at most
    @timeout seconds (None: no limit).  Failures raise @error."""

    def __init__(self, path, wait, error=RuntimeError, timeout=None):
        self.error = error
        # the legacy client runs its own event loop; a thread (vmrun's
        # snapshots) has none until it is given one
        try:
            asyncio.get_event_loop()
        except RuntimeError:
            asyncio.set_event_loop(asyncio.new_event_loop())
        deadline = time.monotonic() + wait
        while True:
            self.qmp = QEMUMonitorProtocol(path)
            self.qmp._qmp._limit = MESSAGE_LIMIT
            try:
                self.qmp.connect()
                break
            except (QMPError, OSError):
                self.qmp.close()
                if time.monotonic() > deadline:
                    raise error('no QMP monitor at %s' % path)
                time.sleep(0.05)
        self.qmp.settimeout(timeout)

    def cmd(self, name, /, **arguments):
        """Run command @name; its return value"""
        try:
            return self.qmp.command(name, **arguments)
        except ExecuteError as e:
            raise self.error('%s failed: %s' % (name, e.error.error.desc))
        except (QMPError, OSError, EOFError, asyncio.TimeoutError) as e:
            raise self.error('QMP connection lost during %s: %s' %
                             (name, e or type(e).__name__))

    def close(self):
        """Disconnect; a peer that is gone already (after 'quit') is no
        error"""
        try:
            self.qmp.close()
        except (QMPError, OSError, EOFError):
            pass
