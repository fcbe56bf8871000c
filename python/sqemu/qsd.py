# SPDX-License-Identifier: GPL-2.0-or-later
#
# qemu-storage-daemon as the commands run it: one qcow2 node exported over
# NBD on a unix socket, with or without a QMP monitor.  QEMU's own
# qemu.machine cannot start it (it adds options the daemon refuses); each
# command starts the process its own way (bench measures its peak RSS,
# stress runs it in a session of its own), from this command line.

import json


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
