# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.evaluation (eval) and evaluation_report: the report's tables, its
# targets and its noise figure, and the cache options given to each build.

import json

import pytest

from sqemu import evaluation, evaluation_report, trace_file, trace_replay


def test_md_table():
    assert evaluation_report.md_table(['a', 'b'], [[1, None], ['x', 2.5]]) == (
        '| a | b |\n|---|---|\n| 1 | None |\n| x | 2.5 |')


def test_fmt_and_mib():
    assert evaluation_report.fmt(None, '.1f') == '-'
    assert evaluation_report.fmt(1.25, '.1f') == '1.2'
    assert evaluation_report.mib(2048) == '2.0'
    assert evaluation_report.mib(None) == '-'
    assert evaluation_report.mib(0) == '0.0'


def test_cache_options():
    entry = evaluation.CACHE_ENTRY
    total = 1000 * 4 * entry
    stock = evaluation.cache_options('stock', total, 1000)
    assert stock == ['--layer-blockdev', 'l2-cache-size=%d,'
                     'l2-cache-entry-size=%d' % (4 * entry, entry)]
    ours = evaluation.cache_options('ours', total, 1000)
    assert ours == ['--extra-drive-opts', 'unified-cache-size=%d,'
                    'l2-cache-size=%d,l2-cache-entry-size=%d' %
                    (total, 4 * entry, entry)]
    # never less than two entries per layer
    assert 'l2-cache-size=%d,' % (2 * entry) in \
        evaluation.cache_options('stock', 1, 1000)[1]


def dd_row(build, layers, mbps, overhead):
    return {'build': build, 'layers': layers, 'mb_per_s': mbps,
            'overhead_kib': overhead}


def test_target_values_dd():
    report = {'dd': [dd_row('ours', 1, 100.0, 1000),
                     dd_row('ours', 1000, 95.0, 1100),
                     dd_row('stock', 1, 100.0, 1000),
                     dd_row('stock', 1000, 20.0, 5500)]}
    for key in ('snapshot', 'boot', 'memory', 'counters', 'cache',
                'rocksdb', 'livesnap'):
        report.setdefault(key, [])
    values = evaluation_report.target_values(report)
    assert values['dd_ratio'] == 0.95
    assert values['memory_ratio'] == 5.0


def test_target_values_need_both_lengths():
    report = {'dd': [dd_row('ours', 1, 100.0, 1000),
                     dd_row('stock', 1, 100.0, 1000)]}
    for key in ('snapshot', 'boot', 'memory', 'counters', 'cache',
                'rocksdb', 'livesnap'):
        report.setdefault(key, [])
    assert 'dd_ratio' not in evaluation_report.target_values(report)


def test_repeat_spread():
    field = evaluation_report.NOISY['dd']
    report = {'dd': [{'build': 'ours', 'layers': 1, field: [10.0, 12.0]},
                     {'build': 'ours', 'layers': 1000, field: [9.0, 9.9]},
                     {'build': 'stock', 'layers': 1, field: [1.0, 50.0]},
                     {'build': 'ours', 'layers': 10, field: [1.0, 50.0]}]}
    assert abs(evaluation_report.repeat_spread(report, 'dd') - 1.2) < 1e-9
    report['dd'] = [{'build': 'ours', 'layers': 1, field: [10.0]}]
    assert evaluation_report.repeat_spread(report, 'dd') is None


def nfs_run(latency, rows):
    return {'latency_ms': latency, 'nodes': 2, 'names': 'absolute',
            'size': 128 << 20, 'repeat': 3, 'results': rows}


def bench_row(build, layers, mbps, iops, open_s, errors=None):
    row = {'build': build, 'layers': layers, 'seq_mbps': mbps,
           'rand_iops': iops, 'open_time_s': open_s}
    if errors:
        row['errors'] = errors
    return row


def test_section_nfs():
    report = {'nfs': [nfs_run(None, [
        bench_row('stock', 1, 100.0, 50000, 0.02),
        bench_row('ours', 1, 100.0, 50000, 0.02),
        bench_row('stock', 1000, 1.0, 20, 26.0),
        bench_row('ours', 1000, 90.0, 20000, 2.6)]), nfs_run(0.5, [
            bench_row('stock', 1, 80.0, 12000, 0.03),
            bench_row('ours', 1, 80.0, 12000, 0.03),
            bench_row('stock', 1000, None, None, None,
                      errors=['open: mount failed']),
            bench_row('ours', 1000, 76.0, 11400, 7.0)])]}
    text = '\n'.join(evaluation_report.section_nfs(report, {}))
    assert '| 0.5 ms round trip | 1000 | stock | - | - | - | open: ' \
        'mount failed |' in text
    # ours N=1000 / N=1: seq 0.9, rand 0.4; ours / stock seq 90; open
    # stock / ours 10
    assert '| no added latency | N=1000 / N=1 | 0.900 | - | 0.400 | - | ' \
        '90.0 | 10.0 |' in text
    # stock failed: its ratios are not made up
    assert '| 0.5 ms round trip | N=1000 / N=1 | 0.950 | - | 0.950 | - | ' \
        '- | - |' in text
    assert 'side by side' not in text
    assert 'qemu-img bench, the median of 3 reads of the 128 MiB' in text

    # paired rounds: each round's ratio, and the text says how
    for run in report['nfs']:
        run['rand_repeat'] = 3
    rows = report['nfs'][1]['results']
    rows[1]['rand_iops_all'] = [12000, 10000, 12500]
    rows[3]['rand_iops_all'] = [11400, 9000, 12500]
    text = '\n'.join(evaluation_report.section_nfs(report, {}))
    assert '| 0.5 ms round trip | N=1000 / N=1 | 0.950 | - | 0.950 | ' \
        '0.950 0.900 1.000 | - | - |' in text
    assert 'the median of 3 rounds' in text

    # paired sequential rounds: each round's ratio (times: N=1 / N=1000)
    for run in report['nfs']:
        run['seq_slices'] = 8
    rows[1]['seq_times_s'] = [1.0, 1.2, 1.1]
    rows[3]['seq_times_s'] = [1.0, 1.25, 1.0]
    text = '\n'.join(evaluation_report.section_nfs(report, {}))
    assert '| 0.5 ms round trip | N=1000 / N=1 | 0.950 | 1.000 0.960 ' \
        '1.100 | 0.950 |' in text
    assert 'in 8 pieces' in text
    assert 'qemu-img bench' not in text


def test_merge_reports():
    base = {'figures': ['dd', 'boot'], 'dd': ['old dd'], 'boot': ['b'],
            'nfs': [], 'command': 'eval --quick', 'date': '2026-11-21'}
    new = {'figures': ['nfs'], 'dd': [], 'boot': [], 'nfs': ['n'],
           'command': 'eval --quick --figures nfs --merge',
           'date': '2026-12-04', 'seconds': 600.0,
           'builds': {'ours': 'o', 'stock': 's'}}
    merged = evaluation.merge_reports(base, new)
    assert merged['dd'] == ['old dd'] and merged['boot'] == ['b']
    assert merged['nfs'] == ['n']
    assert merged['figures'] == ['dd', 'boot', 'nfs']
    assert merged['command'] == 'eval --quick'
    assert [m['figures'] for m in merged['merged']] == [['nfs']]
    # merging the same figure again replaces the earlier note
    again = evaluation.merge_reports(merged, dict(new, date='2026-12-05'))
    assert [m['date'] for m in again['merged']] == ['2026-12-05']


def test_merge_options(tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluation.parse_args(['--merge', '--from-json', 'x.json'])
    assert '--merge measures' in capsys.readouterr().err
    # no earlier run to merge into: the error names the file
    with pytest.raises(SystemExit):
        evaluation.parse_args(['--merge', '--out', str(tmp_path)])
    assert str(tmp_path / 'eval' / 'eval.json') in capsys.readouterr().err
    (tmp_path / 'eval').mkdir()
    (tmp_path / 'eval' / 'eval.json').write_text(
        json.dumps({'scale': 'full', 'figures': ['dd']}))
    with pytest.raises(SystemExit):
        evaluation.parse_args(['--merge', '--quick', '--out', str(tmp_path)])
    assert 'a --full run, this one --quick' in capsys.readouterr().err
    args = evaluation.parse_args(['--merge', '--full', '--figures', 'nfs',
                                  '--out', str(tmp_path)])
    assert args.merge_base['figures'] == ['dd']
    assert args.figures == ['nfs']


def write_trace(path, requests):
    """An sQemu trace file holding @requests (issued_us, op number,
    offset, length, latency_us), completed by QEMU"""
    body = b''.join(trace_file.RECORD.pack(t * 1000, (t + lat) * 1000, off,
                                           length, op, 0, 0, length)
                    for t, op, off, length, lat in requests)
    path.write_bytes(trace_file.HEADER.pack(
        trace_file.MAGIC, 1, trace_file.HEADER.size, trace_file.RECORD.size,
        trace_file.COMPLETE, 1 << 30, len(requests), 0) + body)


def test_convert_trace(tmp_path):
    write_trace(tmp_path / 't.iotrace', [
        (1000, 0, 0, 4096, 100), (1500, 0, 8192, 65536, 300),
        (3000, 3, 0, 0, 50), (500, 0, 4096, 4096, 200)])
    iolog = tmp_path / 't.iolog'
    info = evaluation.convert_trace(str(tmp_path / 't.iotrace'), str(iolog))
    assert info['records'] == 4 and info['operations'] == 4
    assert info['complete'] and not info['dropped'] and not info['warnings']
    assert info['counts'] == {'read': {'ios': 3, 'bytes': 73728},
                              'sync': {'ios': 1, 'bytes': 0}}
    assert info['span_s'] == 0.0025
    assert info['recorded_latency_ms']['read']['max'] == 0.3
    lines = iolog.read_text().splitlines()
    assert lines[:3] == ['fio version 3 iolog', '0 disk add', '0 disk open']
    # sorted by issue time, from the first
    assert lines[3] == '0 disk read 4096 4096'
    assert lines[-2:] == ['2500 disk sync 0 0', '2500 disk close']
    # trace replay reads it back with the same counts
    ops, names = trace_replay.parse_iolog(lines)
    counts = trace_replay.count(ops)
    assert counts['read'] == info['counts']['read']
    assert counts['sync']['ios'] == 1


def test_convert_empty_trace(tmp_path):
    write_trace(tmp_path / 't.iotrace', [])
    with pytest.raises(evaluation.EvalError) as e:
        evaluation.convert_trace(str(tmp_path / 't.iotrace'),
                                 str(tmp_path / 'x'))
    assert 'holds no request' in str(e.value)


def replay_output(match=True):
    """trace replay's JSON for one chain length: both paces, both builds,
    ours twice as fast"""
    runs, summary = [], {}
    for pace in ('recorded', 'max'):
        summary[pace] = {}
        for build, scale in (('stock', 2.0), ('ours', 1.0)):
            metrics = {'iops': 100 / scale, 'mb_s': 1 / scale,
                       'p50': 0.1 * scale, 'p90': 0.2 * scale,
                       'p99': 0.4 * scale, 'p99.9': 0.8 * scale,
                       'max': 1.0 * scale}
            summary[pace][build] = metrics
            runs.append({'pace': pace, 'build': build, 'round': 1,
                         'wall_s': 10 * scale,
                         'issued': {'read': {'ios': 5, 'bytes': 20480},
                                    'write': {'ios': 0, 'bytes': 0},
                                    'trim': {'ios': 0, 'bytes': 0},
                                    'sync': {'ios': 1, 'bytes': 0}},
                         'mismatches': [] if match or build == 'stock'
                         else ['read operations: 5 in the trace, 4 '
                               'replayed'],
                         'index_counters': None if build == 'stock' else
                         {'direct-access': True, 'direct-reads': 5,
                          'vanilla-fallbacks': 0}})
        summary[pace]['ours/stock'] = {'iops': 2.0}
    return {'summary': summary, 'runs': runs,
            'operations_match': match}


def test_replay_rows():
    rows = evaluation.replay_rows(replay_output(), 'root', 100)
    assert [(r['pace'], r['build']) for r in rows] == [
        ('recorded', 'stock'), ('recorded', 'ours'), ('max', 'stock'),
        ('max', 'ours')]
    ours = rows[1]
    assert ours['trace'] == 'root' and ours['layers'] == 100
    assert ours['iops'] == 100 and ours['p99'] == 0.4
    assert ours['issued'] == {'read': 5, 'write': 0, 'trim': 0, 'sync': 1}
    assert ours['operations_match'] and ours['wall_s'] == 10
    assert ours['index_counters']['direct-reads'] == 5
    assert rows[0]['index_counters'] is None
    bad = evaluation.replay_rows(replay_output(match=False), 'data', 1)
    assert [r['operations_match'] for r in bad] == [True, False] * 2


def test_replay_json_keeps_a_mismatch(monkeypatch):
    def child(status, data):
        def run(cmd, *rest):
            with open(cmd[-1], 'w') as f:
                json.dump(data, f)
            return status, 'trace replay: error: it differs\n'
        return run
    monkeypatch.setattr(evaluation, 'run_child',
                        child(1, replay_output(match=False)))
    assert evaluation.replay_json(['trace'], 'x')['operations_match'] is \
        False
    # a failure without a report is an error
    monkeypatch.setattr(evaluation, 'run_child', child(1, {}))
    with pytest.raises(evaluation.EvalError) as e:
        evaluation.replay_json(['trace'], 'trace replay (root trace, N=1)')
    assert 'trace replay (root trace, N=1) failed (status 1): trace ' \
        'replay: error: it differs' in str(e.value)


def replay_report():
    rows = []
    for layers in (1, 500):
        rows += evaluation.replay_rows(replay_output(layers != 1), 'root',
                                       layers)
        rows += evaluation.replay_rows(replay_output(), 'data', layers)
    trace = {'trace': 'root', 'base': 'debian.qcow2', 'records': 6,
             'dropped': 0, 'operations': 6,
             'counts': {'read': {'ios': 5, 'bytes': 5 << 20},
                        'sync': {'ios': 1, 'bytes': 0}},
             'span_s': 42.5, 'recorded_latency_ms': {'read': {
                 'n': 5, 'p50': 0.25, 'p99': 2.5, 'max': 3.0}},
             'guest_boot_s': 30.2, 'rocksdb_ops_per_s': 900.0}
    return {'replay': rows, 'replay_traces': [
        dict(trace, trace='data', base='rocksdb.qcow2'), trace],
        'replay_lengths': [1, 500], 'rocksdb_seconds': 5}


def test_section_replay():
    text = '\n'.join(evaluation_report.section_replay(replay_report(),
                                                      {'replay': 'r.png'}))
    assert 'at N=1, 500:' in text
    assert '(30.2 s to the shell)' in text and '900 ops/s' in text
    # the boot trace first
    assert text.index('| boot (root disk) | debian.qcow2 | 6 | 0 | 5 | '
                      '5.0 | 0 | 1 | 0 | 42.5 | 0.250 | 2.500 |') < \
        text.index('| RocksDB (data disk) | rocksdb.qcow2 |')
    assert '| boot (root disk) | 500 | recorded | stock | 50 | 0.50 | ' \
        '0.200 | 0.400 | 0.800 | 2.000 | 20.0 |  |  |  | yes | - |' in text
    assert '| boot (root disk) | 500 | recorded | ours | 100 | 1.00 | ' \
        '0.100 | 0.200 | 0.400 | 1.000 | 10.0 | 2.00 | 0.50 | 0.50 | yes | ' \
        '5 / 0 |' in text
    assert '| boot (root disk) | 1 | max | ours | 100 |' in text
    assert '| **no** |' in text
    assert 'Paper: not reported in the paper.' in text
    assert '![replay](eval/r.png)' in text
    assert 'one replay per point.' in text
    report = dict(replay_report(), replay_rounds=3)
    text = '\n'.join(evaluation_report.section_replay(report, {}))
    assert 'each point the median of 3 replays (`--rounds 3`' in text


def test_replay_plot_and_report(tmp_path):
    pytest.importorskip('matplotlib')
    report = dict(replay_report(), command='eval', date='d', seconds=1.0,
                  machine={'nproc': 2, 'cpu': 'c', 'kernel': 'k'},
                  accelerator='tcg', accel_note='n',
                  builds={'stock': 's', 'ours': 'o'}, figures=['replay'])
    for key in ('dd', 'boot', 'snapshot', 'counters', 'cache', 'rocksdb',
                'livesnap', 'nfs'):
        report[key] = []
    evaluation_report.write_report(report, str(tmp_path), lambda m: None)
    assert (tmp_path / 'eval' / 'eval-replay.png').stat().st_size > 0
    assert '## Trace replay' in (tmp_path / 'evaluation.md').read_text()


def test_replay_figure_options_and_merge(tmp_path):
    args = evaluation.parse_args(['--figures', 'replay'])
    assert args.figures == ['replay']
    assert args.scale['replay_lengths'] == (1, 100, 500)
    assert evaluation.SCALES['full']['replay_lengths'] == (1, 100, 500)
    assert 'replay' in evaluation.DEBIAN_FIGURES
    base = {'figures': ['dd', 'nfs'], 'dd': ['old'], 'nfs': ['n'],
            'command': 'eval --quick', 'date': '2026-11-21'}
    new = dict(replay_report(), figures=['replay'], dd=[], replay_rounds=3,
               command='eval --quick --figures replay --merge',
               date='2026-12-04', seconds=9.0, builds={'ours': 'o'})
    merged = evaluation.merge_reports(base, new)
    assert merged['figures'] == ['dd', 'nfs', 'replay']
    assert merged['dd'] == ['old']
    assert merged['replay'] == new['replay']
    assert merged['replay_traces'] == new['replay_traces']
    assert merged['replay_lengths'] == [1, 500]
    assert merged['replay_rounds'] == 3
    assert 'replayed at N=1,100,500 (medians of 3 rounds)' in \
        evaluation.describe_scale('quick')


def test_round_ratios():
    assert evaluation_report.round_ratios([1.0, 3.0], [2.0, 2.0]) == \
        '0.500 1.500'
    # a round whose base failed (0) has no ratio; the others keep theirs
    assert evaluation_report.round_ratios([1.0, 2.0], [0, 1.0]) == '- 2.000'
    assert evaluation_report.round_ratios([1.0], [1.0, 2.0]) == '-'
    assert evaluation_report.round_ratios(None, [1.0]) == '-'
