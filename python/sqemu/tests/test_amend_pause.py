# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.amend_pause: every operation --after offers is one it can run;
# failed QMP commands in words.

import argparse

import pytest

from sqemu import amend_pause


def test_offline_operations_have_a_command(tmp_path, monkeypatch):
    """offline_operation() knows every img-* name (its command table is
    separate from the help table), and runs qemu-img with it"""
    ran = []

    def fake_run(cmd, **kw):
        ran.append(cmd)

    monkeypatch.setattr(amend_pause.subprocess, 'run', fake_run)
    for op in amend_pause.OFFLINE:
        ran.clear()
        args = argparse.Namespace(after=op, layers=20)
        amend_pause.offline_operation(args, str(tmp_path / 'top'),
                                      str(tmp_path))
        assert ran[-1][0].endswith('qemu-img')
        assert ran[-1][-1] == str(tmp_path / 'top')


def test_operation_names_do_not_overlap():
    assert not set(amend_pause.OPERATIONS) & set(amend_pause.OFFLINE)
    assert set(amend_pause.SYSTEM_OPS) <= set(amend_pause.OPERATIONS)


class FakeQMP:
    """Answers each command with the next of @replies"""

    def __init__(self, replies):
        self.replies = list(replies)
        self.sent = []

    def cmd(self, cmd, args=None):
        self.sent.append((cmd, args))
        return self.replies.pop(0)


def test_execute():
    qmp = FakeQMP([{'return': {}}, {'error': {'desc': 'no such node'}}])
    amend_pause.execute(qmp, 'blockdev-reopen', {'options': []})
    with pytest.raises(amend_pause.PauseError) as e:
        amend_pause.execute(qmp, 'change-backing-file', {'device': 'top'})
    assert str(e.value) == 'change-backing-file: no such node'
    assert qmp.sent == [('blockdev-reopen', {'options': []}),
                        ('change-backing-file', {'device': 'top'})]
    qmp = FakeQMP([{'error': {'desc': 'busy'}}])
    with pytest.raises(amend_pause.PauseError) as e:
        amend_pause.run_job(qmp, 'block-stream', {'device': 'top'})
    assert str(e.value) == 'block-stream: busy'
    assert qmp.sent == [('block-stream', {'device': 'top', 'job-id': 'op',
                                          'auto-dismiss': False})]
