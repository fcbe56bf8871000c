# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.snapshot_cost: its options, the discard script that makes a 90%
# allocated disk, the alternation of the builds, and the report.

import pytest

from sqemu import snapshot_cost


def test_discard_script_leaves_nine_clusters_in_ten():
    size = 100 * snapshot_cost.CLUSTER
    lines = snapshot_cost.discard_script(size).splitlines()
    assert lines[-1] == 'quit'
    offsets = [int(ln.split()[1]) for ln in lines[:-1]]
    assert len(offsets) == 10
    assert offsets == [c * snapshot_cost.CLUSTER for c in range(0, 100, 10)]
    assert all(ln.split()[2] == str(snapshot_cost.CLUSTER)
               for ln in lines[:-1])


@pytest.mark.parametrize('argv', [
    ['--size', '1000k'],        # not a multiple of 64 KiB
    ['--size', '64k'],          # too small for every tenth to be discarded
    ['--size', 'big'],
    ['--runs', '0'],
    ['--cases', 'base,nope'],
    ['--cases', ','],
])
def test_bad_options_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as e:
        snapshot_cost.parse_args(argv)
    assert e.value.code == 2
    assert 'snapshot-cost: error:' in capsys.readouterr().err


def test_options():
    args = snapshot_cost.parse_args(['--size', '4G', '--cases', 'middle'])
    assert args.size == 4 << 30
    assert args.cases == ['middle']
    assert args.runs == 9


def test_measure_alternates_and_takes_medians(monkeypatch, tmp_path):
    calls = []
    times = {'stock': iter([0.010, 0.030, 0.020]),
             'ours': iter([0.050, 0.040, 0.060])}

    def fake_snapshot(tools, build, parent, snap):
        calls.append((build, parent))
        return next(times[build]), 4096 if build == 'stock' else 8192

    monkeypatch.setattr(snapshot_cost, 'snapshot', fake_snapshot)
    result = snapshot_cost.measure({}, {'middle': 'P'}, 3, str(tmp_path))
    assert [b for b, _ in calls] == ['stock', 'ours'] * 3
    assert all(p == 'P' for _, p in calls)
    assert result['middle']['stock']['ms'] == pytest.approx(20)
    assert result['middle']['ours']['ms'] == pytest.approx(50)
    assert result['middle']['ours']['bytes'] == 8192


def test_report_says_which_cases_miss_the_target():
    result = {'base': {'stock': {'ms': 10.0, 'bytes': 200 << 10},
                       'ours': {'ms': 25.0, 'bytes': 6 << 20}},
              'middle': {'stock': {'ms': 10.0, 'bytes': 200 << 10},
                         'ours': {'ms': 35.0, 'bytes': 12 << 20}}}
    lines = snapshot_cost.report(result).splitlines()
    base = next(ln for ln in lines if ln.startswith('base'))
    middle = next(ln for ln in lines if ln.startswith('middle'))
    assert '2.50x' in base and 'over' not in base
    assert '3.50x' in middle and 'over the 3x target' in middle
    assert '6144 K' in base


def test_discard_script_from_a_cluster_on():
    size = 6 * snapshot_cost.CLUSTER
    odd = snapshot_cost.discard_script(size, 2, 1).splitlines()[:-1]
    assert [int(ln.split()[1]) // snapshot_cost.CLUSTER for ln in odd] == \
        [1, 3, 5]


@pytest.mark.parametrize('period,keep', [(2, 0), (2, 1), (8, 0), (8, 5),
                                         (8, 7)])
def test_keep_script_discards_all_other_clusters(period, keep):
    clusters = 37
    kept = set(range(clusters))
    for ln in snapshot_cost.keep_script(clusters * snapshot_cost.CLUSTER,
                                        period, keep).splitlines()[:-1]:
        _, offset, length = ln.split()
        first = int(offset) // snapshot_cost.CLUSTER
        n = int(length) // snapshot_cost.CLUSTER
        assert n > 0 and set(range(first, first + n)) <= kept
        kept -= set(range(first, first + n))
    assert kept == {c for c in range(clusters) if c % period == keep}


def test_missing_tools_are_named(tmp_path):
    args = snapshot_cost.parse_args(['--ours', str(tmp_path), '--stock',
                                     str(tmp_path)])
    with pytest.raises(snapshot_cost.CostError) as e:
        snapshot_cost.find_tools(args)
    assert 'missing: stock, ours, qemu-io' in str(e.value)
