# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.bench: its argument parsing, failure text, ratios and targets.

import argparse
import json

import pytest

from sqemu import bench


def test_parse_lengths():
    assert bench.parse_lengths('500,1,10,10') == [1, 10, 500]
    for bad in ('', '0,1', 'a', '1,,2'):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.parse_lengths(bad)


def test_describe_exit():
    assert bench.describe_exit('qemu-img', 1, 'a\n\nlast words\n\n') == \
        'qemu-img failed (exit status 1): last words'
    assert bench.describe_exit('qemu-io', -9, '') == \
        'qemu-io failed (killed by signal 9)'


def test_ratio():
    assert bench.ratio(3.0, 2.0) == 1.5
    assert bench.ratio(None, 2.0) is None
    assert bench.ratio(3.0, 0) is None


def test_check():
    assert bench.check('x', None, '>=', 1.0).endswith('n/a')
    assert bench.check('x', 1.0, '>=', 0.9).endswith('(target >= 0.900: met)')
    assert bench.check('x', 0.8, '>=', 0.9).endswith('NOT met)')
    assert bench.check('x', 2.0, '<=', 1.5).endswith('NOT met)')


def test_protocol_node():
    assert bench.protocol_node('nfs://10.0.0.1/node0/c-layer.qcow2') == {
        'driver': 'nfs', 'path': '/node0/c-layer.qcow2',
        'server': {'type': 'inet', 'host': '10.0.0.1'},
        'cache': {'direct': True}}
    assert bench.protocol_node('/var/tmp/top.qcow2') == {
        'driver': 'file', 'filename': '/var/tmp/top.qcow2',
        'cache': {'direct': True}}


def test_daemon_command():
    cmd = ['qsd', '--blockdev', '{}']
    assert bench.daemon_command({}, cmd) == cmd
    assert bench.daemon_command({'module_dir': '/b'}, cmd) == \
        ['env', 'QEMU_MODULE_DIR=/b'] + cmd


def test_rand_daemon_reads_every_layer_direct(monkeypatch):
    # the backing layers inherit cache.direct from the qcow2 node only
    made = []
    monkeypatch.setattr(bench, 'Daemon', lambda binary, blockdev, *a, **kw:
                        made.append(blockdev))
    bench.rand_daemon({'qemu-storage-daemon': 'qsd'}, '/c/layer-0003.qcow2',
                      '/r')
    assert made[-1]['driver'] == 'qcow2'
    assert made[-1]['cache'] == {'direct': True}
    assert made[-1]['file']['cache'] == {'direct': True}
    # over NFS (no page cache) only the top's file, so that the lower
    # layers' allocated sizes come from their open
    bench.rand_daemon({'qemu-storage-daemon': 'qsd'},
                      'nfs://10.0.0.1/node0/l.qcow2', '/r')
    assert 'cache' not in made[-1]
    assert made[-1]['file']['cache'] == {'direct': True}


def test_nfs_options_need_nodes(monkeypatch, capsys):
    monkeypatch.setattr('sys.argv', ['bench', '--nfs-latency', '0.5'])
    with pytest.raises(SystemExit) as e:
        bench.parse_args()
    assert e.value.code == 2
    assert '--nfs-latency and --nfs-bandwidth need --nfs-nodes' in \
        capsys.readouterr().err
    monkeypatch.setattr('sys.argv', ['bench', '--nfs-nodes', '2',
                                     '--nfs-latency', '0.5', '--quick'])
    args = bench.parse_args()
    assert (args.nfs_nodes, args.nfs_latency, args.nfs_names) == \
        (2, 0.5, 'absolute')


def test_targets_of_a_failed_measurement():
    rows = [{'layers': n, 'build': b, 'seq_mbps': 100.0, 'rand_iops': 10.0,
             'seq_rss_kib': 1000, 'qsd_rss_kib': 1000, 'open_time_s': 0.1}
            for n in (1, 1000) for b in ('stock', 'ours')]
    rows[2] = {'layers': 1000, 'build': 'stock',
               'errors': ['chain open: cannot open']}
    text = bench.format_targets(rows)
    assert 'failed ms stock' in text
    assert 'N=1000 stock: chain open: cannot open' in text
    assert bench.format_row(rows[2]).split()[:2] == ['1000', 'stock']


def test_rand_iodepth(monkeypatch, capsys):
    monkeypatch.setattr('sys.argv', ['bench', '--quick'])
    args = bench.parse_args()
    assert args.rand_iodepth == bench.RAND_IODEPTH
    assert bench.parameters(args)['rand_iodepth'] == bench.RAND_IODEPTH
    monkeypatch.setattr('sys.argv', ['bench', '--quick', '--rand-iodepth',
                                     '0'])
    with pytest.raises(SystemExit) as e:
        bench.parse_args()
    assert e.value.code == 2
    assert '--rand-iodepth must be at least 1' in capsys.readouterr().err
    monkeypatch.setattr('sys.argv', ['bench', '--quick', '--rand-iodepth',
                                     '1'])
    args = bench.parse_args()
    assert bench.parameters(args)['rand_iodepth'] == 1

    # fio is asked for that depth
    commands = []

    def fake_execute(cmd):
        commands.append(cmd)
        return ('nbd: connected\n{"jobs": [{"error": 0, '
                '"read": {"iops": 1234.5}}]}\n', 1.0, 0, 0)
    monkeypatch.setattr(bench, 'execute', fake_execute)
    assert bench.run_fio('/s', 5, 1) == 1234.5
    assert '--iodepth=1' in commands[0]


def target_rows(result):
    """bench rows of rand_reads()' @result for N=1 and 1000, stock's at
    N=1000 failed"""
    rows = [dict(result[n][b], layers=n, build=b, seq_mbps=100.0,
                 seq_rss_kib=1000, open_time_s=0.1)
            for n in (1, 1000) for b in ('stock', 'ours')]
    rows[2] = {'layers': 1000, 'build': 'stock', 'errors': ['x']}
    return rows


def test_rand_repeat(monkeypatch, capsys):
    monkeypatch.setattr('sys.argv', ['bench', '--quick'])
    assert bench.parse_args().rand_repeat == 1
    monkeypatch.setattr('sys.argv', ['bench', '--quick', '--rand-repeat',
                                     '0'])
    with pytest.raises(SystemExit):
        bench.parse_args()
    assert '--rand-repeat must be at least 1' in capsys.readouterr().err
    monkeypatch.setattr('sys.argv', ['bench', '--quick', '--rand-repeat',
                                     '3'])
    args = bench.parse_args()
    assert bench.parameters(args)['rand_repeat'] == 3

    # rounds alternate lengths and builds; a failed measurement is not
    # repeated; the median run is reported with every round's IOPS
    calls = []
    iops = {(1, 'stock'): [100, 300, 200], (1, 'ours'): [110, 90, 100],
            (1000, 'ours'): [99, 81, 95]}

    def fake_rand_read(tools, top, runtime, iodepth, workdir):
        layers, build = top
        calls.append(top)
        if (layers, build) == (1000, 'stock'):
            raise bench.BenchError('cannot open')
        return {'rand_iops': iops[top][sum(c == top for c in calls) - 1],
                'qsd_rss_kib': 1000 + len(calls)}

    # each top is its length; the build comes with the binaries
    monkeypatch.setattr(bench, 'rand_read',
                        lambda tools, top, *a: fake_rand_read(
                            tools, (top, tools['build']), *a))
    monkeypatch.setattr(bench, 'progress', lambda text: None)
    args.nfs_nodes = 2
    builds = {b: {'binaries': {'build': b}} for b in bench.BUILDS}
    result = bench.rand_reads(args, builds, {1: 1, 1000: 1000}, '/w')
    assert calls[:4] == [(1, 'stock'), (1, 'ours'), (1000, 'stock'),
                         (1000, 'ours')]
    assert calls.count((1000, 'stock')) == 1
    assert len(calls) == 10
    assert result[1]['stock']['rand_iops'] == 200
    assert result[1]['ours']['rand_iops_all'] == [110, 90, 100]
    assert result[1]['ours']['rand_iops'] == 100
    assert result[1000]['ours']['rand_iops'] == 95
    assert 'cannot open' in result[1000]['stock']['error']

    # the targets: the median's ratio and each round's
    text = bench.format_targets(target_rows(result))
    assert 'rand, ours N=1000 / ours N=1, worst of 3 rounds' in text
    assert '0.900  (target >= 0.950: NOT met)' in text
    assert '0.900 0.900 0.950' in text


class FakeDaemon:
    """A paired round's daemon of chain @key ((length, build)), which
    notes in @events what is done with it; stock's at N=1000 cannot
    start"""

    def __init__(self, key, events):
        self.key, self.nbd, self.events = key, key, events
        self.proc = type('P', (), {'maxrss': 1000 * key[0]})()

    def __enter__(self):
        if self.key == (1000, 'stock'):
            raise bench.BenchError('cannot open')
        self.events.append(('start', self.key))
        return self

    def __exit__(self, *exc):
        self.events.append(('exit', self.key))

    def stop(self, timeout):
        self.events.append(('stop', self.key))


def test_rand_paired(monkeypatch, capsys):
    monkeypatch.setattr('sys.argv', ['bench', '--quick', '--rand-paired'])
    with pytest.raises(SystemExit):
        bench.parse_args()
    assert '--rand-paired needs --rand-repeat 2' in capsys.readouterr().err
    monkeypatch.setattr('sys.argv', ['bench', '--quick', '--rand-repeat',
                                     '2', '--rand-paired', '--runtime', '3'])
    args = bench.parse_args()
    assert bench.parameters(args)['rand_paired'] is True

    # every chain's daemon runs while fio goes round them 1 s at a time;
    # a daemon that cannot start is not tried again; each round's result
    # is the mean of its slices
    events = []
    slice_iops = {(1, 'stock'): 100, (1, 'ours'): 90, (1000, 'ours'): 80}

    def fake_fio(sock, runtime, iodepth):
        assert runtime == 1
        events.append(('fio', sock))
        served = sum(e == ('fio', sock) for e in events)
        return slice_iops[sock] + served        # changes slice by slice

    monkeypatch.setattr(bench, 'rand_daemon', lambda tools, top, rundir:
                        FakeDaemon((top, tools['build']), events))
    monkeypatch.setattr(bench, 'run_fio', fake_fio)
    monkeypatch.setattr(bench, 'progress', lambda text: None)
    monkeypatch.setattr(bench.tempfile, 'mkdtemp', lambda **kw: '/w/none')
    args.nfs_nodes = 2
    builds = {b: {'binaries': {'build': b}} for b in bench.BUILDS}
    result = bench.rand_reads(args, builds, {1: 1, 1000: 1000}, '/w')
    live = [(1, 'stock'), (1, 'ours'), (1000, 'ours')]
    round1 = events[:events.index(('exit', live[0])) + 1]
    assert round1[:3] == [('start', k) for k in live]
    assert [e for e in round1 if e[0] == 'fio'] == \
        [('fio', k) for k in live] * 3
    assert [e for e in events if e == ('fio', (1000, 'stock'))] == []
    assert len([e for e in events if e[0] == 'start']) == 6
    # round 1: slices 1, 2, 3 added; round 2: 4, 5, 6
    assert result[1]['ours']['rand_iops_all'] == [92, 95]
    assert result[1]['ours']['rand_slices'] in ([91, 92, 93], [94, 95, 96])
    assert result[1000]['ours']['qsd_rss_kib'] == 1000000
    assert 'cannot open' in result[1000]['stock']['error']
    text = bench.format_targets(target_rows(result))
    assert 'worst of 2 rounds (paired)' in text
    assert '%.3f %.3f' % (82 / 92, 85 / 95) in text


def test_median_rand():
    assert bench.median_rand([{'rand_iops': 3}, {'rand_iops': 1},
                              {'rand_iops': 2}]) == \
        {'rand_iops': 2, 'rand_iops_all': [3, 1, 2]}
    # a later round's failure fails the measurement
    assert bench.median_rand([{'rand_iops': 3}, {'error': 'rand read: x'}]) \
        == {'error': 'rand read: x'}


def test_rounds():
    rounds = bench.Rounds({1: 'a', 1000: 'b'})
    assert rounds.wanted() == [(1, 'stock'), (1, 'ours'), (1000, 'stock'),
                               (1000, 'ours')]
    assert rounds.wanted(1000) == [(1000, 'stock'), (1000, 'ours')]
    rounds.add((1, 'stock'), {'x': 1})
    rounds.add((1000, 'stock'), {'error': 'cannot open'})
    rounds.add((1000, 'ours'), {'x': 2}, slow=True)
    # a failed or slow key is not measured again; its runs are kept
    assert rounds.wanted() == [(1, 'stock'), (1, 'ours')]
    assert rounds.runs[(1000, 'ours')] == [{'x': 2}]


def test_seq_reads_repeat(monkeypatch):
    # a read slower than SLOW_SEQ_S is not repeated; a failed one fails
    # its measurement; raw reads run only on local disk
    calls = []
    times = {(1, 'stock'): 2.0, (1, 'ours'): 1.0,
             (1000, 'stock'): bench.SLOW_SEQ_S + 1, (1000, 'ours'): 1.5}

    def fake_seq_read(tools, top, size):
        calls.append((top, tools['build']))
        return {'seq_time_s': times[calls[-1]] + len(calls) / 100}

    monkeypatch.setattr(bench, 'seq_read', fake_seq_read)
    monkeypatch.setattr(bench, 'progress', lambda text: None)
    args = type('A', (), {'repeat': 3, 'nfs_nodes': 2, 'size': 1,
                          'seq_paired': False})()
    builds = {b: {'binaries': {'build': b}} for b in bench.BUILDS}
    result = bench.seq_reads(args, builds, {1: 1, 1000: 1000}, '/w')
    assert calls.count((1000, 'stock')) == 1
    assert calls.count((1000, 'ours')) == 3
    assert len(result[1]['ours']['seq_times_s']) == 3
    assert result[1]['ours']['seq_time_s'] == \
        sorted(result[1]['ours']['seq_times_s'])[1]
    assert 'raw_times_s' not in result[1]['ours']


def test_seq_slices():
    block = bench.SEQ_BLOCK
    assert bench.seq_slices(16 * block, 8) == [(2 * k * block, 2 * block)
                                               for k in range(8)]
    # the last piece takes what is left; a small disk has fewer pieces
    assert bench.seq_slices(10 * block, 4) == [
        (0, 3 * block), (3 * block, 3 * block), (6 * block, 3 * block),
        (9 * block, block)]
    assert bench.seq_slices(3 * block, 8) == [(0, block), (block, block),
                                              (2 * block, block)]
    assert sum(n for _, n in bench.seq_slices(1 << 30)) == 1 << 30


def test_run_fio_seq(monkeypatch):
    commands = []
    reply = {'error': 0, 'read': {'io_bytes': 131072,
                                  'lat_ns': {'mean': 250000.0, 'N': 2}}}

    def fake_execute(cmd):
        commands.append(cmd)
        return ('nbd: connected\n' + json.dumps({'jobs': [reply]}), 1.0, 0,
                0)
    monkeypatch.setattr(bench, 'execute', fake_execute)
    assert bench.run_fio_seq('/s', 65536, 131072) == 0.0005
    assert '--offset=65536' in commands[0]
    assert '--size=131072' in commands[0]
    assert '--rw=read' in commands[0] and '--iodepth=1' in commands[0]
    # a short read is an error, not a fast piece
    reply['read']['io_bytes'] = 65536
    with pytest.raises(bench.BenchError, match='read 65536 of 131072'):
        bench.run_fio_seq('/s', 65536, 131072)


def test_seq_paired(monkeypatch, capsys):
    monkeypatch.setattr('sys.argv', ['bench', '--quick', '--repeat', '1',
                                     '--seq-paired'])
    with pytest.raises(SystemExit):
        bench.parse_args()
    assert '--seq-paired needs --repeat 2' in capsys.readouterr().err
    monkeypatch.setattr('sys.argv', ['bench', '--quick', '--repeat', '2',
                                     '--seq-paired', '--size', '1M'])
    args = bench.parse_args()
    assert bench.parameters(args)['seq_paired'] is True

    # every chain's daemon runs while fio reads the same piece of the disk
    # from each before the next; a daemon that cannot start is not tried
    # again; a round's time is the sum of its pieces'
    events = []
    seconds = {(1, 'stock'): 0.010, (1, 'ours'): 0.011,
               (1000, 'ours'): 0.012}

    def fake_fio_seq(sock, offset, length):
        events.append(('fio', sock, offset))
        return seconds[sock]

    monkeypatch.setattr(bench, 'rand_daemon', lambda tools, top, rundir:
                        FakeDaemon((top, tools['build']), events))
    monkeypatch.setattr(bench, 'run_fio_seq', fake_fio_seq)
    monkeypatch.setattr(bench, 'progress', lambda text: None)
    monkeypatch.setattr(bench.tempfile, 'mkdtemp', lambda **kw: '/w/none')
    args.nfs_nodes = 2
    builds = {b: {'binaries': {'build': b}} for b in bench.BUILDS}
    result = bench.seq_reads(args, builds, {1: 1, 1000: 1000}, '/w')
    live = [(1, 'stock'), (1, 'ours'), (1000, 'ours')]
    pieces = bench.seq_slices(1 << 20)
    round1 = events[:events.index(('exit', live[0])) + 1]
    assert round1[:3] == [('start', k) for k in live]
    assert [e for e in round1 if e[0] == 'fio'] == \
        [('fio', k, offset) for offset, _ in pieces for k in live]
    assert len([e for e in events if e[0] == 'start']) == 6
    ours = result[1]['ours']
    assert ours['seq_slices_s'] == [0.011] * len(pieces)
    assert ours['seq_time_s'] == pytest.approx(0.011 * len(pieces))
    assert ours['seq_mbps'] == pytest.approx(
        (1 << 20) / ours['seq_time_s'] / 1e6)
    assert ours['seq_times_s'] == [ours['seq_time_s']] * 2
    assert result[1000]['ours']['seq_qsd_rss_kib'] == 1000000
    assert 'qsd_rss_kib' not in ours
    assert 'cannot open' in result[1000]['stock']['error']
    rows = [dict(result[n][b], layers=n, build=b, rand_iops=100.0,
                 open_time_s=0.1)
            for n in (1, 1000) for b in ('stock', 'ours')]
    rows[2] = {'layers': 1000, 'build': 'stock', 'errors': ['x']}
    text = bench.format_targets(rows)
    assert 'worst of 2 rounds (paired)' in text
    assert '%.3f %.3f' % (11 / 12, 11 / 12) in text
