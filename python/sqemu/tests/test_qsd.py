# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.qsd: the storage daemon's command line as every command builds it,
# and the Daemon class on a shell stand-in (ready, failed, stopped).

import json

import pytest

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


# A stand-in for qemu-storage-daemon: writes its --pidfile and waits for
# SIGTERM, exiting with $1's status then; "fail" prints and exits at once,
# "silent" never writes the pid file.
FAKE = '''#!/bin/sh
mode=$(basename "$0")
while [ $# -gt 0 ]; do
    [ "$1" = --pidfile ] && pidfile=$2
    shift
done
case $mode in
fail) echo "qemu-storage-daemon: Could not open 'x': No such file"; exit 1 ;;
silent) exec sleep 60 ;;
esac
trap 'echo stopping; [ $mode = ok ] && exit 0; exit 3' TERM
echo $$ > "$pidfile"
while :; do sleep 0.05; done
'''


class Failed(Exception):
    pass


def fake(tmp_path, mode):
    path = tmp_path / mode
    path.write_text(FAKE)
    path.chmod(0o755)
    return str(path)


NODE = {'driver': 'qcow2', 'node-name': 'disk'}


def test_daemon_ready_and_stopped(tmp_path):
    with qsd.Daemon(fake(tmp_path, 'ok'), NODE, str(tmp_path),
                    Failed) as daemon:
        assert daemon.alive()
        assert daemon.uri == 'nbd+unix:///disk?socket=%s/nbd.sock' % tmp_path
        daemon.stop(10)
        assert daemon.proc.returncode == 0
        assert 'stopping' in daemon.output()


def test_daemon_failure_in_words(tmp_path):
    with pytest.raises(Failed) as e:
        qsd.Daemon(fake(tmp_path, 'fail'), NODE, str(tmp_path), Failed)
    assert str(e.value) == ("fail exit status 1: qemu-storage-daemon: "
                            "Could not open 'x': No such file")


def test_daemon_not_ready_is_killed(tmp_path):
    spawned = []

    def launch(cmd, log):
        spawned.append(qsd._popen(cmd, log))
        return spawned[-1]
    with pytest.raises(Failed, match='silent not ready after 0 s'):
        qsd.Daemon(fake(tmp_path, 'silent'), NODE, str(tmp_path), Failed,
                   launch=launch, start_timeout=0.2)
    assert spawned[0].returncode == -9


def test_daemon_unclean_exit_is_an_error(tmp_path):
    with qsd.Daemon(fake(tmp_path, 'dirty'), NODE, str(tmp_path),
                    Failed) as daemon:
        with pytest.raises(Failed, match='dirty exit status 3: stopping'):
            daemon.stop(10)
