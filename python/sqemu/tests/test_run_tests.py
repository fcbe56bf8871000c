# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.run_tests (make check): reading the runner's result lines, the
# lists of known failures, and how results are counted.

import io

import pytest

from sqemu import run_tests


def test_parse_result():
    assert run_tests.parse_result(
        'tests/sqemu-chain  pass       [00:01:02] [00:01:09]   7.1s\n') == \
        ('tests/sqemu-chain', 'pass', None)
    # rewritten in place: only the text after the last carriage return
    assert run_tests.parse_result(
        '040  ...  [00:00:01]\r040  fail  [00:00:01] [00:00:09]  8s\n') == \
        ('040', 'fail', None)
    assert run_tests.parse_result(
        '307  not run    [00:01:02] [00:01:02]   ...   not suitable for '
        'this image format: qcow2\n') == \
        ('307', 'not run', 'not suitable for this image format: qcow2')
    assert run_tests.parse_result('307  not run\n') == \
        ('307', 'not run', 'no reason given')
    assert run_tests.parse_result('QEMU  -- "/x/qemu-system-x86_64"\n') \
        is None
    assert run_tests.parse_result('\n') is None


def test_read_test_list(tmp_path):
    listed = tmp_path / 'list'
    listed.write_text('# comment\n\n232 refuses to run as root\n'
                      '188 CPU time  # in ticks\n')
    assert run_tests.read_test_list(str(listed)) == {
        '232': 'refuses to run as root', '188': 'CPU time'}
    listed.write_text('162\n')
    with pytest.raises(SystemExit):
        run_tests.read_test_list(str(listed))


def test_tally_iotests():
    tally = run_tests.Tally()
    results = {'001': 'pass', '002': 'fail', '003': 'fail', '004': 'fail',
               '005': 'not run', '006': 'not run'}
    reasons = {'005': 'not suitable for this image format: raw',
               '006': 'needs root'}
    run_tests.tally_iotests(tally, 'up', results, {'002': 'environment'},
                            {'003': 'refused with the index'},
                            reasons=reasons)
    assert (tally.passed, tally.failed, tally.skipped) == (1, 1, 4)
    assert tally.failures == ['up: 004']
    assert tally.uncounted['up'] == {
        'known failure': ['002'],
        'excluded with -o backing-index=on': ['003'],
        'not run: needs root': ['006']}


def test_own_tests_must_run():
    tally = run_tests.Tally()
    run_tests.tally_iotests(tally, 'own', {'sqemu-x': 'not run'}, {},
                            reasons={'sqemu-x': 'not suitable for this'},
                            own=True)
    assert tally.failures == ['own: sqemu-x']


def test_read_runner_output():
    lines = ['QEMU  -- "/x/qemu-system-x86_64"\n',
             '001  pass  [00:00:01] [00:00:02]  1s\n',
             '002  fail  [00:00:02] [00:00:03]  1s  output mismatch\n',
             '--- 002.out\n', '+++ 002.out.bad\n', '-a\n', '+b\n',
             '003  ...  [00:00:03]  ...\n',
             '003  not run  [00:00:03] [00:00:03]  ...  needs root\n',
             '004  fail  [00:00:03] [00:00:04]  1s\n', '+c\n',
             'Not run: 003\n', 'Some cases not run in: /x/002\n',
             'Failures: 002 004\n', 'Failed 2 of 4 iotests\n']
    copy = io.StringIO()
    reasons, printed = {}, {}
    results = run_tests.read_runner_output(lines, copy, reasons, printed)
    assert results == {'001': 'pass', '002': 'fail', '003': 'not run',
                       '004': 'fail'}
    assert reasons == {'003': 'needs root'}
    # the diff after the failure, up to the next result line
    assert printed == {'002': ['--- 002.out', '+++ 002.out.bad', '-a',
                               '+b'], '004': ['+c']}
    assert copy.getvalue() == ''.join(lines)
    # a failure keeps it in the tally; a known failure does not
    tally = run_tests.Tally()
    run_tests.tally_iotests(tally, 'up', results, {}, reasons=reasons,
                            printed=printed)
    assert tally.printed == {'up: 002': printed['002'],
                             'up: 004': ['+c']}
    tally = run_tests.Tally()
    run_tests.tally_iotests(tally, 'up', results, {'002': 'environment'},
                            reasons=reasons, printed=printed)
    assert tally.printed == {'up: 004': ['+c']}


def test_rerun_keeps_first_diff(tmp_path, monkeypatch):
    timing = tmp_path / 'timing'
    timing.write_text('127 events race the return\n')
    monkeypatch.setattr(run_tests, 'TIMING', str(timing))
    runs = []

    def run_iotests(args, env=None, reasons=None, printed=None):
        runs.append(args)
        return {args[-1]: 'pass' if len(runs) == 2 else 'fail'}

    monkeypatch.setattr(run_tests, 'run_iotests', run_iotests)
    tally = run_tests.Tally()
    results = {'127': 'fail', '040': 'fail'}
    run_tests.rerun_timing_dependent(tally, 'up', results, [], None,
                                     {'127': ['-x', '+y'], '040': ['-z']})
    # only the listed test runs again; its second re-run passes
    assert runs == [['127'], ['127']]
    assert results == {'127': 'pass', '040': 'fail'}
    assert tally.printed == {'up: 127 (passed on re-run)': ['-x', '+y']}
