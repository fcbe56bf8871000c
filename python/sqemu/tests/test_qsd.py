# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.qsd: the storage daemon's command line as every command builds it.

import json

from sqemu import qsd


def test_command_read_only_with_pidfile():
    node = {'driver': 'qcow2', 'node-name': 'disk',
            'file': {'driver': 'file', 'filename': '/c/top.qcow2'}}
    cmd = qsd.command('/b/qsd', node, '/r/nbd.sock', pidfile='/r/qsd.pid')
    assert cmd[:3] == ['/b/qsd', '--blockdev', json.dumps(node)]
    assert cmd[3:] == ['--nbd-server', 'addr.type=unix,addr.path=/r/nbd.sock',
                       '--export', 'type=nbd,id=exp0,node-name=disk,'
                       'name=disk', '--pidfile', '/r/qsd.pid']


def test_command_writable_with_monitor():
    node = {'driver': 'qcow2', 'node-name': 'top'}
    cmd = qsd.command('qsd', node, 'n.sock', 'q.sock', export_name='top',
                      writable=True, writethrough=True,
                      extra=('--trace', 'x'))
    assert cmd[3:7] == ['--chardev', 'socket,id=qmp,path=q.sock,server=on,'
                        'wait=off', '--monitor', 'chardev=qmp']
    assert cmd[cmd.index('--export') + 1] == (
        'type=nbd,id=exp0,node-name=top,name=top,writable=on,'
        'writethrough=on')
    assert cmd[-2:] == ['--trace', 'x']
    assert '--pidfile' not in cmd
