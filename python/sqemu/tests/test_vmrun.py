# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.vmrun's --io-trace: the options, the drives and files traced, the
# paused start (-S) and QMP commands in order, stock QEMU's unknown command
# said plainly, and the trace files read back for the summary.

import pytest

from sqemu import trace_file, vmrun


def args_of(*argv):
    return vmrun.parse_args(['--qemu', '/bin/true', *argv])


@pytest.mark.parametrize('argv, why', [
    (['--disk', 'd.qcow2', '--io-trace', 't'], 'for the Debian guest'),
    (['--guest', 'debian', '--disk', 'd.qcow2', '--layer-blockdev',
      'l2-cache-size=1024', '--io-trace', 't'], 'replaces'),
])
def test_io_trace_option_errors(argv, why, capsys):
    with pytest.raises(SystemExit):
        args_of(*argv)
    assert why in capsys.readouterr().err


def test_trace_targets(tmp_path):
    args = args_of('--guest', 'debian', '--io-trace', 'rel/t')
    # the prefix is made absolute: QEMU may run elsewhere
    assert args.io_trace.startswith('/')
    assert vmrun.trace_targets(args) == [('root', args.io_trace +
                                          '-root.iotrace')]
    args = args_of('--guest', 'debian', '--disk', str(tmp_path / 'd'),
                   '--io-trace', str(tmp_path / 'x'))
    assert vmrun.trace_targets(args) == [
        ('root', str(tmp_path / 'x-root.iotrace')),
        ('data', str(tmp_path / 'x-data.iotrace'))]
    assert vmrun.trace_targets(args_of('--guest', 'debian')) == []


def test_paused_start_with_qmp(tmp_path):
    args = args_of('--guest', 'debian', '--guest-dir', str(tmp_path),
                   '--disk', str(tmp_path / 'd'), '--io-trace', 't')
    args.qmp = str(tmp_path / 'qmp.sock')
    cmd = vmrun.qemu_command(args, 'tcg', 'rocksdb:5')
    assert '-S' in cmd
    assert 'unix:%s,server=on,wait=off' % args.qmp in cmd
    # the drives the traces name
    assert any(a.startswith('file=') and 'id=root' in a for a in cmd)
    assert any('id=data' in a for a in cmd)
    args = args_of('--guest', 'debian', '--guest-dir', str(tmp_path))
    assert '-S' not in vmrun.qemu_command(args, 'tcg', 'none')


class FakeMonitor:
    def __init__(self, fail=None):
        self.calls = []
        self.fail = fail

    def cmd(self, name, **arguments):
        self.calls.append((name, arguments))
        if self.fail and name == 'block-io-trace-start':
            raise vmrun.RunError('block-io-trace-start failed: %s' %
                                 self.fail)


def test_start_traces_then_cont():
    mon = FakeMonitor()
    vmrun.start_traces(mon, [('root', '/t-root.iotrace'),
                             ('data', '/t-data.iotrace')], 'qemu')
    assert mon.calls == [
        ('block-io-trace-start', {'device': 'root',
                                  'filename': '/t-root.iotrace'}),
        ('block-io-trace-start', {'device': 'data',
                                  'filename': '/t-data.iotrace'}),
        ('cont', {})]


def test_stock_qemu_has_no_trace_command():
    mon = FakeMonitor('The command block-io-trace-start has not been found')
    with pytest.raises(vmrun.RunError) as e:
        vmrun.start_traces(mon, [('root', '/t-root.iotrace')],
                           '/usr/bin/qemu-system-x86_64')
    assert 'only sQemu\'s qemu-system-x86_64' in str(e.value)
    assert '/usr/bin/qemu-system-x86_64 has no block-io-trace-start' in \
        str(e.value)
    # the guest is not let run
    assert [name for name, _ in mon.calls] == ['block-io-trace-start']
    # another failure keeps QMP's words
    mon = FakeMonitor('Cannot create /x/t: No such file or directory')
    with pytest.raises(vmrun.RunError) as e:
        vmrun.start_traces(mon, [('data', '/x/t')], 'q')
    assert 'tracing drive data: block-io-trace-start failed: Cannot ' \
        'create' in str(e.value)


def write_trace(path, requests, complete=True, dropped=0):
    body = b''.join(trace_file.RECORD.pack(i * 1000, i * 1000 + 500,
                                           i * 4096, 4096, 0, 0, 0, 4096)
                    for i in range(requests))
    header = trace_file.HEADER.pack(
        trace_file.MAGIC, 1, trace_file.HEADER.size, trace_file.RECORD.size,
        trace_file.COMPLETE if complete else 0, 1 << 30,
        requests if complete else 0, dropped)
    path.write_bytes(header + body)


def test_trace_summary(tmp_path):
    write_trace(tmp_path / 't-root.iotrace', 3)
    write_trace(tmp_path / 't-data.iotrace', 2, complete=False)
    traces = vmrun.trace_summary([
        ('root', str(tmp_path / 't-root.iotrace')),
        ('data', str(tmp_path / 't-data.iotrace')),
        ('none', str(tmp_path / 'missing'))])
    assert traces['root'] == {'file': str(tmp_path / 't-root.iotrace'),
                              'records': 3, 'dropped': 0, 'complete': True,
                              'disk_length': 1 << 30, 'warnings': []}
    assert traces['data']['records'] == 2
    assert not traces['data']['complete']
    assert 'not stopped' in traces['data']['warnings'][0]
    assert 'missing' in traces['none']['error']


def test_trace_error_is_the_failure():
    run = vmrun.GuestRun(exit_status=-9, trace_error='no QMP monitor')
    assert vmrun.run_failure(run, 60) == '--io-trace: no QMP monitor'
