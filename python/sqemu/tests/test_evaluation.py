# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.evaluation (eval) and evaluation_report: the report's tables, its
# targets and its noise figure, and the cache options given to each build.

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
