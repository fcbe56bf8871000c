# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.trace_replay (trace replay): option errors, iologs parsed and
# counted (and refused with the line at fault), the log rewritten for
# fio's nbd engine whatever file names it holds, chains walked from their
# qcow2 headers, the throwaway copy removed whatever ends its use, fio's
# command per pace, and the report (table, ratios, the check of the
# operations replayed) from canned fio JSON.  Nothing here needs QEMU or
# fio: the iotest sqemu-trace-replay runs the whole command.

import json
import os
import struct

import pytest

from sqemu import trace as trace_cmd
from sqemu import trace_replay as tr

LOG = '''fio version 3 iolog
0 /dev/vda add
0 /dev/vda open
0 /dev/vda read 0 4096
500 /dev/vda write 8192 4096
700 /dev/vdb add
700 /dev/vdb read 65536 65536
900 /dev/vda trim 131072 65536
900 /dev/vda sync 0 0
2000 /dev/vda read 4096 8192
2000 /dev/vda close
'''


def ops_of(text=LOG):
    return tr.parse_iolog(text.splitlines(True), 'LOG')


# Options.

@pytest.mark.parametrize('argv,why', [
    (['--iodepth', '0'], "argument --iodepth: '0' is not a positive"),
    (['--rounds', 'x'], "argument --rounds: 'x' is not a positive"),
    (['--builds', 'stock,nope'], "bad builds 'stock,nope'"),
    (['--builds', 'ours,ours'], "bad builds 'ours,ours'"),
    (['--pace', 'slow'], "argument --pace: invalid choice: 'slow'"),
])
def test_option_errors(argv, why, capsys):
    with pytest.raises(SystemExit) as e:
        trace_cmd.parse_args(['replay', 'LOG', '--chain', 'TOP'] + argv)
    assert e.value.code == 2
    assert why in capsys.readouterr().err


def test_chain_is_required(capsys):
    with pytest.raises(SystemExit):
        trace_cmd.parse_args(['replay', 'LOG'])
    assert '--chain' in capsys.readouterr().err


def test_defaults():
    args = tr.check_args(trace_cmd.parse_args(['replay', 'LOG', '--chain',
                                               'TOP']))
    assert args.paces == ['recorded', 'max']
    assert args.builds == ['stock', 'ours']
    assert args.iodepth == tr.DEFAULT_IODEPTH and args.rounds == 1
    args = tr.check_args(trace_cmd.parse_args(
        ['replay', 'LOG', '--chain', 'TOP', '--pace', 'max', '--builds',
         'ours, stock']))
    assert args.paces == ['max'] and args.builds == ['stock', 'ours']


# The iolog.

def test_parse_and_count():
    ops, names = ops_of()
    assert names == ['/dev/vda', '/dev/vdb']
    assert [(o.line, o.time, o.action) for o in ops] == [
        (4, 0, 'read'), (5, 500, 'write'), (7, 700, 'read'),
        (8, 900, 'trim'), (9, 900, 'sync'), (10, 2000, 'read')]
    counts = tr.count(ops)
    assert counts == {'read': {'ios': 3, 'bytes': 4096 + 65536 + 8192},
                      'write': {'ios': 1, 'bytes': 4096},
                      'trim': {'ios': 1, 'bytes': 65536},
                      'sync': {'ios': 1, 'bytes': 0}}
    assert tr.transfers(counts) == 5
    assert tr.span_s(ops) == 0.002
    assert tr.format_counts(counts) == (
        '3 reads (76.0 KiB), 1 write (4.0 KiB), 1 trim (64.0 KiB), 1 sync')


@pytest.mark.parametrize('text,why', [
    ('fio version 2 iolog\n', 'not a fio iolog version 3'),
    ('', 'not a fio iolog version 3'),
    ('fio version 3 iolog\n', 'LOG holds no operation'),
    ('fio version 3 iolog\n0 f add\nx f read 0 1\n', "line 3: bad time 'x'"),
    ('fio version 3 iolog\n0 f read 0\n', 'line 2: not an operation'),
    ('fio version 3 iolog\n0 f wait 0 1\n', 'line 2: not an operation'),
    ('fio version 3 iolog\n0 f read -1 4096\n', 'line 2: bad offset'),
    ('fio version 3 iolog\n\n0 f write 0 0\n', 'line 3: write of 0 bytes'),
])
def test_bad_logs_are_refused(text, why):
    with pytest.raises(tr.ReplayError, match=why):
        ops_of(text)


def test_read_iolog_names_the_file(tmp_path):
    with pytest.raises(tr.ReplayError, match='iolog .*nope: No such file'):
        tr.read_iolog(str(tmp_path / 'nope'))
    binary = tmp_path / 'bin'
    binary.write_bytes(b'\xff\xfe\x00' * 10)
    with pytest.raises(tr.ReplayError, match='is not a fio iolog'):
        tr.read_iolog(str(binary))


def test_bounds():
    ops, _ = ops_of()
    tr.check_bounds(ops, 196608, 'LOG')
    with pytest.raises(tr.ReplayError, match='LOG line 8: trim of 65536 '
                       'bytes at 131072 goes past the end of the disk '
                       r'\(196607 bytes\)'):
        tr.check_bounds(ops, 196607, 'LOG')


def test_replay_log_renames_every_file():
    """One file, named as the nbd engine needs, whatever the log held
    (here two names, one too long for fio's parser, one with a space
    would not even parse); operations in order with their times"""
    text = LOG.replace('/dev/vdb', 'x' * 300)
    ops, names = ops_of(text)
    assert len(names[1]) == 300
    out = tr.replay_log(ops).splitlines()
    assert out == ['fio version 3 iolog', '0 nbd add', '0 nbd open',
                   '0 nbd read 0 4096', '500 nbd write 8192 4096',
                   '700 nbd read 65536 65536', '900 nbd trim 131072 65536',
                   '900 nbd sync 0 0', '2000 nbd read 4096 8192',
                   '2000 nbd close']
    again, names = ops_of('\n'.join(out))
    assert names == ['nbd']
    assert tr.count(again) == tr.count(ops)


def test_replay_log_starts_at_the_first_operation():
    ops, _ = ops_of('fio version 3 iolog\n700 a read 0 512\n'
                    '900 a read 512 512\n')
    assert tr.replay_log(ops, 'disk').splitlines()[1:3] == [
        '700 disk add', '700 disk open']


# The chain.

def qcow2(path, backing=None, size=1 << 30, autoclear=0):
    """A qcow2 version 3 header (all the walk reads) at @path"""
    name = backing.encode() if backing else b''
    head = struct.pack('>4sIQIIQ', b'QFI\xfb', 3, 104 if name else 0,
                       len(name), 16, size)
    head += bytes(88 - len(head)) + struct.pack('>QII', autoclear, 4, 104)
    path.write_bytes(head + name)


def test_chain_layers(tmp_path):
    (tmp_path / 'sub').mkdir()
    qcow2(tmp_path / 'base.raw.qcow2')
    (tmp_path / 'raw').write_bytes(bytes(512))
    qcow2(tmp_path / 'base.qcow2', 'raw')
    qcow2(tmp_path / 'sub' / 'mid.qcow2', '../base.qcow2')
    qcow2(tmp_path / 'sub' / 'top.qcow2', 'mid.qcow2', 4 << 20, 1 << 16)
    top = str(tmp_path / 'sub' / 'top.qcow2')
    assert tr.chain_layers(top) == [
        top, str(tmp_path / 'sub' / 'mid.qcow2'),
        str(tmp_path / 'base.qcow2'), str(tmp_path / 'raw')]
    size, name, autoclear = tr.read_header(top)
    assert (size, name, autoclear & tr.INDEX_VALID) == (4 << 20,
                                                        'mid.qcow2',
                                                        tr.INDEX_VALID)


def test_chain_errors(tmp_path):
    with pytest.raises(tr.ReplayError, match='chain .*nope: no such file'):
        tr.chain_layers(str(tmp_path / 'nope'))
    (tmp_path / 'raw').write_bytes(bytes(512))
    with pytest.raises(tr.ReplayError, match='is not a qcow2 image'):
        tr.chain_layers(str(tmp_path / 'raw'))
    qcow2(tmp_path / 'top.qcow2', 'gone.qcow2')
    with pytest.raises(tr.ReplayError, match='is broken: the backing file '
                       '.*gone.qcow2 of .*top.qcow2 does not exist'):
        tr.chain_layers(str(tmp_path / 'top.qcow2'))
    qcow2(tmp_path / 'a.qcow2', 'b.qcow2')
    qcow2(tmp_path / 'b.qcow2', 'a.qcow2')
    with pytest.raises(tr.ReplayError, match='backing files loop'):
        tr.chain_layers(str(tmp_path / 'a.qcow2'))


def test_throwaway_copy_goes_whatever_ends_its_use(tmp_path, monkeypatch):
    top = tmp_path / 'top.qcow2'
    top.write_bytes(b'data')
    synced = []
    fsync = os.fsync
    monkeypatch.setattr(os, 'fsync', lambda fd: synced.append(
        os.readlink('/proc/self/fd/%d' % fd)) or fsync(fd))
    path = tr.copy_name(str(top), 'ours-max-1')
    assert os.path.dirname(path) == str(tmp_path)
    assert os.path.basename(path).startswith('.top.qcow2.replay-%d-'
                                             % os.getpid())
    for end in (tr.ReplayError, SystemExit, KeyboardInterrupt):
        with pytest.raises(end):
            with tr.Throwaway(str(top), path) as copy:
                with open(copy, 'rb') as f:
                    assert f.read() == b'data'
                raise end()
        assert not os.path.exists(path)
    assert os.listdir(tmp_path) == ['top.qcow2']
    # each copy was on disk before its use
    assert synced == [path] * 3


def test_throwaway_copy_failure_names_the_cause(tmp_path):
    with pytest.raises(tr.ReplayError, match='cannot copy the chain\'s top'
                       '.*No such file'):
        with tr.Throwaway(str(tmp_path / 'nope'), str(tmp_path / 'copy')):
            pass
    assert not os.path.exists(tmp_path / 'copy')


# fio.

def test_fio_command_per_pace():
    rec = tr.fio_command('nbd+unix:///disk?socket=S', 'L', 'recorded', 16,
                         5)
    fast = tr.fio_command('nbd+unix:///disk?socket=S', 'L', 'max', 16, 5)
    assert '--iodepth=1' in rec and '--replay_no_stall=1' not in rec
    assert '--iodepth=16' in fast and '--replay_no_stall=1' in fast
    for cmd in (rec, fast):
        assert '--ioengine=nbd' in cmd and '--read_iolog=L' in cmd
        assert '--uri=nbd+unix:///disk?socket=S' in cmd
        assert '--thinktime_blocks=5' in cmd
        assert '--thinktime_blocks_type=issue' in cmd
        assert '--percentile_list=50:90:99:99.9' in cmd


def direction(ios, nbytes, lat_ms=(), iops=0.0):
    """fio's JSON for one direction (or "mixed"), latencies in ms"""
    stats = {'total_ios': ios, 'io_bytes': nbytes, 'iops': iops,
             'bw_bytes': nbytes * 2, 'runtime': 500,
             'clat_ns': {'N': len(lat_ms), 'min': 0, 'max': 0, 'mean': 0}}
    if lat_ms:
        ns = sorted(int(v * 1e6) for v in lat_ms)
        stats['clat_ns'].update(max=ns[-1], mean=sum(ns) / len(ns))
        stats['clat_ns']['percentile'] = {
            '%f' % p: ns[min(len(ns) - 1, int(len(ns) * p / 100))]
            for p in tr.PERCENTILES}
    return stats


def job(reads=3, read_bytes=77824, writes=1, write_bytes=4096, scale=1.0,
        completed=None):
    lat = [v * scale for v in (1.0, 2.0, 3.0, 4.0)]
    read = direction(reads, read_bytes, lat[:3])
    if completed is not None:
        read['clat_ns']['N'] = completed
    return {'error': 0, 'job_runtime': 500,
            'read': read, 'write': direction(writes, write_bytes, lat[3:]),
            'trim': direction(0, 0), 'sync': {'total_ios': 0},
            'mixed': direction(reads + writes, read_bytes + write_bytes,
                               lat, iops=8.0 / scale)}


def expected():
    return {'read': {'ios': 3, 'bytes': 77824},
            'write': {'ios': 1, 'bytes': 4096},
            'trim': {'ios': 0, 'bytes': 0}, 'sync': {'ios': 0, 'bytes': 0}}


def test_summarize():
    s = tr.summarize(job())
    assert s['issued']['read'] == {'ios': 3, 'bytes': 77824, 'completed': 3}
    assert s['iops'] == 8.0 and s['runtime_s'] == 0.5
    assert s['mb_s'] == (77824 + 4096) * 2 / 1e6
    assert s['clat_ms']['p50'] == 3.0 and s['clat_ms']['max'] == 4.0
    assert s['clat_ms_by_kind']['trim'] is None
    assert tr.mismatches(expected(), s['issued']) == []


def test_mismatches_are_named():
    issued = tr.summarize(job(reads=2, read_bytes=4096))['issued']
    assert tr.mismatches(expected(), issued) == [
        'read operations: 3 in the trace, 2 replayed',
        'read bytes: 77824 in the trace, 4096 replayed',
        'read operations: 2 issued, 3 completed']
    issued = tr.summarize(job(completed=0))['issued']
    assert tr.mismatches(expected(), issued) == [
        'read operations: 3 issued, 0 completed']


def runs():
    """Two rounds of both paces: ours twice as fast as stock"""
    out = []
    for rnd in (1, 2):
        for pace in ('recorded', 'max'):
            for build, scale in (('stock', 2.0), ('ours', 1.0)):
                r = tr.summarize(job(scale=scale * rnd))
                r.update(round=rnd, pace=pace, build=build, mismatches=[],
                         index_counters=None if build == 'stock' else {
                             'direct-access': True, 'direct-reads': 3,
                             'vanilla-fallbacks': 0})
                out.append(r)
    return out


def test_aggregate_medians_and_ratios():
    summary = tr.aggregate(runs(), ['stock', 'ours'], ['recorded', 'max'])
    ours, stock = summary['max']['ours'], summary['max']['stock']
    assert ours['iops'] == (8.0 + 4.0) / 2 and stock['iops'] == 3.0
    assert ours['p50'] == 4.5 and stock['p50'] == 9.0
    ratio = summary['max']['ours/stock']
    assert ratio['iops'] == 2.0 and ratio['p50'] == 0.5
    assert ratio['mb_s'] == 1.0
    only = tr.aggregate(runs(), ['ours'], ['max'])
    assert list(only['max']) == ['ours']


def test_table_and_counters():
    r = runs()
    table = tr.format_table(tr.aggregate(r, ['stock', 'ours'],
                                         ['recorded', 'max']), r)
    lines = table.splitlines()
    assert lines[0].split() == [
        'pace', 'build', 'reads', 'writes', 'trims', 'IOPS', 'MB/s', 'p50',
        'ms', 'p90', 'ms', 'p99', 'ms', 'p99.9', 'ms', 'max', 'ms']
    assert lines[1].split()[:7] == ['recorded', 'stock', '3', '1', '0', '3',
                                    '0.16']
    assert lines[3].split() == ['recorded', 'ours/stock', '2.00', '1.00',
                                '0.50', '0.50', '0.50', '0.50', '0.50']
    assert lines[5].split()[:2] == ['max', 'ours']
    assert tr.format_counters(r) == [
        'ours, recorded pace: direct access yes, 3 direct reads, 0 vanilla '
        'fallbacks', 'ours, max pace: direct access yes, 3 direct reads, 0 '
        'vanilla fallbacks']


def test_missing_latencies_show_as_dashes():
    r = [dict(tr.summarize(job(reads=0, read_bytes=0, writes=0,
                               write_bytes=0)), round=1, pace='max',
              build='ours', mismatches=[])]
    r[0]['clat_ms'] = None
    table = tr.format_table(tr.aggregate(r, ['ours'], ['max']), r)
    assert table.splitlines()[1].split()[-5:] == ['-'] * 5


def test_schedule_alternates():
    assert tr.schedule(['stock', 'ours'], ['recorded', 'max'], 2) == [
        (1, 'recorded', 'stock'), (1, 'recorded', 'ours'),
        (1, 'max', 'stock'), (1, 'max', 'ours'),
        (2, 'recorded', 'ours'), (2, 'recorded', 'stock'),
        (2, 'max', 'ours'), (2, 'max', 'stock')]


# The command's errors, before anything starts.

def run(argv, capsys):
    code = trace_cmd.main(['replay'] + argv)
    return code, capsys.readouterr().err


def test_missing_iolog(tmp_path, capsys):
    code, err = run([str(tmp_path / 'no.iolog'), '--chain', 'x'], capsys)
    assert code == 1
    assert 'trace: error: iolog %s: No such file' % (tmp_path / 'no.iolog') \
        in err


def test_missing_chain(tmp_path, capsys):
    log = tmp_path / 'l.iolog'
    log.write_text(LOG)
    code, err = run([str(log), '--chain', str(tmp_path / 'top.qcow2')],
                    capsys)
    assert code == 1
    assert 'error: chain %s: no such file' % (tmp_path / 'top.qcow2') in err


def test_operation_past_the_disk(tmp_path, capsys):
    log = tmp_path / 'l.iolog'
    log.write_text(LOG)
    qcow2(tmp_path / 'top.qcow2', size=65536)
    code, err = run([str(log), '--chain', str(tmp_path / 'top.qcow2')],
                    capsys)
    assert code == 1
    assert 'l.iolog line 7: read of 65536 bytes at 65536 goes past' in err


def test_missing_fio(tmp_path, capsys, monkeypatch):
    log = tmp_path / 'l.iolog'
    log.write_text(LOG)
    qcow2(tmp_path / 'top.qcow2')
    monkeypatch.setenv('PATH', str(tmp_path))
    code, err = run([str(log), '--chain', str(tmp_path / 'top.qcow2')],
                    capsys)
    assert code == 1
    assert 'error: fio is missing (apt-get install fio)' in err


def test_missing_build(tmp_path, capsys, monkeypatch):
    log = tmp_path / 'l.iolog'
    log.write_text(LOG)
    qcow2(tmp_path / 'top.qcow2')
    monkeypatch.setattr(tr, 'fio_version', lambda: 'fio-3.33')
    code, err = run([str(log), '--chain', str(tmp_path / 'top.qcow2'),
                     '--builds', 'ours', '--ours', str(tmp_path)], capsys)
    assert code == 1
    assert 'missing: ours qemu-storage-daemon (looked in %s' % tmp_path \
        in err


def test_trims_refused_when_fio_skips_them(tmp_path, capsys, monkeypatch):
    log = tmp_path / 'l.iolog'
    log.write_text(LOG)
    qcow2(tmp_path / 'top.qcow2')
    daemon = tmp_path / 'qemu-storage-daemon'
    daemon.write_text('#!/bin/sh\n')
    daemon.chmod(0o755)
    monkeypatch.setattr(tr, 'fio_version', lambda: 'fio-3.33')
    monkeypatch.setattr(tr, 'fio_replays_trims', lambda workdir: False)
    work = tmp_path / 'work'
    code, err = run([str(log), '--chain', str(tmp_path / 'top.qcow2'),
                     '--builds', 'ours', '--ours', str(tmp_path),
                     '--workdir', str(work)], capsys)
    assert code == 1
    assert 'holds 1 trim, which fio-3.33 does not replay from an iolog' \
        in err and '--skip-trims' in err
    assert not work.exists()


def test_stock_chain_of_another_size(tmp_path, capsys):
    log = tmp_path / 'l.iolog'
    log.write_text(LOG)
    qcow2(tmp_path / 'top.qcow2')
    qcow2(tmp_path / 'stock.qcow2', size=2 << 30)
    code, err = run([str(log), '--chain', str(tmp_path / 'top.qcow2'),
                     '--stock-chain', str(tmp_path / 'stock.qcow2')], capsys)
    assert code == 1
    assert '--stock-chain %s is a disk of %d bytes, --chain %s one of %d' % (
        tmp_path / 'stock.qcow2', 2 << 30, tmp_path / 'top.qcow2',
        1 << 30) in err


def test_each_build_replays_its_chain(tmp_path, capsys, monkeypatch):
    log = tmp_path / 'l.iolog'
    log.write_text(LOG.replace('900 /dev/vda trim 131072 65536\n', ''))
    qcow2(tmp_path / 'base.qcow2')
    qcow2(tmp_path / 'top.qcow2', 'base.qcow2', autoclear=1 << 16)
    qcow2(tmp_path / 'stock.qcow2', 'base.qcow2')
    monkeypatch.setattr(tr, 'fio_version', lambda: 'fio-3.33')
    monkeypatch.setattr(tr, 'find_binaries', lambda args: {
        'stock': '/stock/qsd', 'ours': '/ours/qsd'})
    monkeypatch.setattr(tr, 'version', lambda binary: binary)
    replayed = []

    def fake_replay(binary, top, *rest):
        replayed.append((binary, top))
        result = tr.summarize(job(reads=3, read_bytes=77824))
        result['issued']['sync']['ios'] = 1
        result.update(wall_s=1.0, index_counters=None)
        return result

    monkeypatch.setattr(tr, 'replay', fake_replay)
    out = tmp_path / 'r.json'
    code = trace_cmd.main(['replay', str(log), '--chain',
                           str(tmp_path / 'top.qcow2'), '--stock-chain',
                           str(tmp_path / 'stock.qcow2'), '--pace', 'max',
                           '--json', str(out), '--workdir',
                           str(tmp_path / 'work')])
    printed = capsys.readouterr().out
    assert code in (0, None)
    assert replayed == [('/stock/qsd', str(tmp_path / 'stock.qcow2')),
                        ('/ours/qsd', str(tmp_path / 'top.qcow2'))]
    assert 'chain %s: 2 layers, 1024 MiB, backing index valid' % (
        tmp_path / 'top.qcow2') in printed
    assert 'stock\'s chain %s: 2 layers, 1024 MiB, backing index not ' \
        'valid' % (tmp_path / 'stock.qcow2') in printed
    report = json.loads(out.read_text())
    assert report['stock_chain']['top'] == str(tmp_path / 'stock.qcow2')
    assert report['chain']['top'] == str(tmp_path / 'top.qcow2')
