# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.pool_index (pool index): QEMU image locks seen from outside, the
# chains chosen and their order, what a failed or skipped conversion
# reports, and that an interruption stops the conversion in progress.

import argparse
import fcntl
import os
import subprocess
import sys
import textwrap

import pytest

from sqemu import pool, pool_index
from sqemu.tests.test_pool import write_qcow2


def hold_lock(path, kind, first=101):
    """A child process holding an OFD lock of @kind on byte @first of
    @path, as QEMU holds its image locks; returns it once the lock is
    held"""
    code = textwrap.dedent('''
        import fcntl, os, struct, sys, time
        fd = os.open(sys.argv[1], os.O_RDWR)
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(
            'hhqqi', int(sys.argv[2]), 0, int(sys.argv[3]), 1, 0))
        print('held', flush=True)
        time.sleep(60)
    ''')
    child = subprocess.Popen([sys.executable, '-c', code, str(path),
                              str(kind), str(first)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == 'held'
    return child


@pytest.mark.parametrize('kind,first,seen', [
    (fcntl.F_RDLCK, 101, 'read'),
    (fcntl.F_WRLCK, 201, 'write'),
    (fcntl.F_RDLCK, 263, 'read'),
    (fcntl.F_WRLCK, 99, None),          # outside QEMU's lock bytes
    (fcntl.F_WRLCK, 264, None),
])
def test_lock_holder(tmp_path, kind, first, seen):
    img = tmp_path / 'a.qcow2'
    write_qcow2(img)
    assert pool_index.lock_holder(str(img)) is None
    child = hold_lock(img, kind, first)
    try:
        assert pool_index.lock_holder(str(img)) == seen
    finally:
        child.kill()
        child.wait()
    assert pool_index.lock_holder(str(img)) is None


def chain_pool(tmp_path):
    write_qcow2(tmp_path / 'base.qcow2')
    write_qcow2(tmp_path / 'deep1.qcow2', backing='base.qcow2')
    write_qcow2(tmp_path / 'deep2.qcow2', backing='deep1.qcow2')
    write_qcow2(tmp_path / 'short.qcow2', backing='base.qcow2')
    write_qcow2(tmp_path / 'other-base.qcow2')
    write_qcow2(tmp_path / 'other.qcow2', backing='other-base.qcow2')


def test_selected_order_and_limit(tmp_path):
    chain_pool(tmp_path)
    chosen = pool_index.selected(pool.Scan([str(tmp_path)]), 0)
    assert [os.path.basename(c['top']) for c in chosen] == \
        ['deep2.qcow2', 'other.qcow2', 'short.qcow2']
    assert chosen[0]['layers'] == [str(tmp_path / n) for n in
                                   ('deep2.qcow2', 'deep1.qcow2',
                                    'base.qcow2')]
    assert len(pool_index.selected(pool.Scan([str(tmp_path)]), 2)) == 2


def fake_qemu_img(tmp_path, fail_on=None):
    """A qemu-img that records its arguments and fails for @fail_on"""
    script = tmp_path / 'qemu-img'
    log = tmp_path / 'ran'
    script.write_text('#!/bin/sh\necho "$@" >> %s\n%s\nexit 0\n' % (
        log, 'case "$*" in *%s*) echo "lock failure" >&2; exit 1;; esac' %
        fail_on if fail_on else ''))
    script.chmod(0o755)
    return str(script), log


def run_index(tmp_path, qemu_img, *extra):
    args = argparse.Namespace(paths=[str(tmp_path / 'pool')], limit=0,
                              dry_run=False, qemu_img=qemu_img)
    for k, v in extra:
        setattr(args, k, v)
    return pool_index.cmd_index(args)


def test_conversion_skips_what_is_in_use_and_reports_failures(tmp_path,
                                                              capsys):
    (tmp_path / 'pool').mkdir()
    chain_pool(tmp_path / 'pool')
    qemu_img, log = fake_qemu_img(tmp_path, fail_on='other.qcow2')
    child = hold_lock(tmp_path / 'pool' / 'deep1.qcow2', fcntl.F_RDLCK)
    try:
        rc = run_index(tmp_path, qemu_img)
    finally:
        child.kill()
        child.wait()
    out = capsys.readouterr().out
    assert rc == 1                              # one conversion failed
    ran = log.read_text().splitlines()
    assert ran == ['amend -f qcow2 -o backing-index=on %s' %
                   (tmp_path / 'pool' / n) for n in ('other.qcow2',
                                                     'short.qcow2')]
    assert 'deep1.qcow2 is in use' in out
    assert 'failed: lock failure' in out
    assert 'converted 1 chains, skipped 1 (in use), failed 1' in out


def test_dry_run_runs_nothing(tmp_path, capsys):
    (tmp_path / 'pool').mkdir()
    chain_pool(tmp_path / 'pool')
    qemu_img, log = fake_qemu_img(tmp_path)
    assert run_index(tmp_path, qemu_img, ('dry_run', True)) == 0
    assert not log.exists()
    assert 'dry run: 3 chains would be converted, 0 skipped' in \
        capsys.readouterr().out


def test_interrupted_conversion_stops_its_child(tmp_path, capsys,
                                                monkeypatch):
    (tmp_path / 'pool').mkdir()
    chain_pool(tmp_path / 'pool')
    qemu_img, log = fake_qemu_img(tmp_path)
    stopped = []

    def interrupted(self, chains, dry_run):
        self.stop = lambda: stopped.append(True)
        raise KeyboardInterrupt
    monkeypatch.setattr(pool_index.Converter, 'run', interrupted)
    assert run_index(tmp_path, qemu_img) == 130
    assert stopped and 'interrupted' in capsys.readouterr().out


def test_a_qemu_img_that_is_not_there_is_refused_first(tmp_path, capsys):
    (tmp_path / 'pool').mkdir()
    chain_pool(tmp_path / 'pool')
    assert pool.main(['index', str(tmp_path / 'pool'), '--qemu-img',
                      str(tmp_path / 'no-such-qemu-img')]) == 1
    err = capsys.readouterr().err
    assert 'no-such-qemu-img is not an executable' in err


@pytest.mark.parametrize('argv', [
    ['index', 'x', '--limit', '-1'],
    ['generate', 'x', '--files', '0'],
    ['generate', 'x'],                  # --files is required
])
def test_bad_options_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as e:
        pool.main(argv)
    assert e.value.code == 2
    assert 'pool' in capsys.readouterr().err


def test_generate_refuses_a_directory_in_use(tmp_path, capsys):
    (tmp_path / 'pool').mkdir()
    (tmp_path / 'pool' / 'disk.qcow2').write_bytes(b'x')
    assert pool.main(['generate', str(tmp_path / 'pool'), '--files',
                      '10']) == 1
    assert 'exists and is not empty' in capsys.readouterr().err
    assert os.listdir(tmp_path / 'pool') == ['disk.qcow2']
