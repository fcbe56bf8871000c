# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.amend_pause: every operation --after offers is one it can run.

import argparse

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
