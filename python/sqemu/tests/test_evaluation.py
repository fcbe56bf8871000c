# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.evaluation (eval) and evaluation_report: the report's tables, its
# targets and its noise figure, and the cache options given to each build.

import json

import pytest

from sqemu import evaluation, evaluation_report


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
    assert '| no added latency | N=1000 / N=1 | 0.900 | 0.400 | 90.0 | ' \
        '10.0 |' in text
    # stock failed: its ratios are not made up
    assert '| 0.5 ms round trip | N=1000 / N=1 | 0.950 | 0.950 | - | - |' \
        in text


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
