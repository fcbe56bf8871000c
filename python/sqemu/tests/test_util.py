# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.util and sqemu.paths: sizes, fio's JSON, sqemu-stats,
# percentiles, JSON files, a command's end, finding tools.

import argparse
import os

import pytest

from sqemu import paths, util


@pytest.mark.parametrize('text,size', [
    ('0', 0), ('512', 512), ('64k', 64 << 10), ('64K', 64 << 10),
    ('256M', 256 << 20), ('1g', 1 << 30), (' 2T ', 2 << 40)])
def test_parse_size(text, size):
    assert util.parse_size(text) == size


@pytest.mark.parametrize('text', ['', '1.5G', '-1', '1GB', 'G', '1 G', '1P'])
def test_parse_size_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError) as e:
        util.parse_size(text, '256M, 1G')
    assert repr(text) in str(e.value) and '256M, 1G' in str(e.value)


def test_fio_job():
    out = 'nbd: connected\nnote: x\n{"jobs": [{"jobname": "j"}]}\ntrailer'
    assert util.fio_job(out, ValueError) == {'jobname': 'j'}
    for bad in ('no json here', '{"jobs": []}', '{broken'):
        with pytest.raises(OSError) as e:
            util.fio_job(bad, OSError, 4)
        assert str(e.value) == 'cannot parse fio output: ' + bad[:4]


def test_stats():
    assert util.stats_command('qemu-io', 'top.qcow2', 100 << 20) == [
        'qemu-io', '-r', '-f', 'qcow2', 'top.qcow2',
        '-c', 'read -q 0 67108864', '-c', 'read -q 67108864 37748736',
        '-c', 'sqemu-stats']
    out = ('qemu-io> direct-access: yes\n  direct-reads: 12\n'
           'reason: no read of the backing chain yet\nNot: a counter\n')
    assert util.parse_stats(out) == {
        'direct-reads': '12', 'reason': 'no read of the backing chain yet'}


def test_write_json(tmp_path):
    path = tmp_path / 'new' / 'dir' / 'r.json'
    util.write_json(str(path), {'a': [1, 2]})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'


def test_percentiles():
    assert util.percentiles([]) == 'no requests'
    values = [i / 1000 for i in range(1, 101)]      # 1..100 ms, shuffled
    values = values[50:] + values[:50]
    assert util.percentiles(values) == \
        'n=100  median 51.00 ms  p99 100.00 ms  max 100.00 ms'


def test_run_main(capsys):
    def fail(exc):
        raise exc

    assert util.run_main('cmd', lambda: None, ValueError) == 0
    assert util.run_main('cmd', lambda: 3, ValueError) == 3
    assert util.run_main('cmd', lambda: fail(ValueError('bad')),
                         (ValueError, OSError)) == 1
    assert capsys.readouterr().err == 'cmd: error: bad\n'
    assert util.run_main('cmd', lambda: fail(KeyboardInterrupt()),
                         ValueError) == 130
    assert util.run_main('cmd', lambda: fail(KeyboardInterrupt()),
                         ValueError, 1) == 1
    assert capsys.readouterr().err == 'cmd: interrupted\n' * 2
    with pytest.raises(OSError):
        util.run_main('cmd', lambda: fail(OSError()), ValueError)
    with pytest.raises(KeyboardInterrupt):
        util.run_main('cmd', lambda: fail(KeyboardInterrupt()), ValueError,
                      None)
    assert capsys.readouterr().err == ''


def test_find_tool(tmp_path):
    (tmp_path / 'storage-daemon').mkdir()
    img = tmp_path / 'qemu-img'
    img.write_text('')
    assert paths.find_tool(str(tmp_path), 'qemu-img') is None  # not +x
    img.chmod(0o755)
    qsd = tmp_path / 'storage-daemon' / 'qemu-storage-daemon'
    qsd.write_text('')
    qsd.chmod(0o755)
    assert paths.find_tool(str(tmp_path), 'qemu-img') == str(img)
    assert paths.find_tool(str(tmp_path), 'qemu-storage-daemon') == str(qsd)
    assert paths.find_tool(str(tmp_path), 'qemu-io') is None


def test_paths_point_into_the_checkout():
    assert os.path.isfile(os.path.join(paths.REPO_TOP, 'configure'))
    assert os.path.isfile(paths.script('mkchain'))
    assert os.path.realpath(paths.__file__) == os.path.join(
        paths.REPO_TOP, 'python', 'sqemu', 'paths.py')


def test_find_builds(tmp_path, monkeypatch):
    ours = tmp_path / 'ours'
    ours.mkdir()
    for tool in ('qemu-img', 'qemu-io'):
        (ours / tool).write_text('')
        (ours / tool).chmod(0o755)
    monkeypatch.setattr(paths.shutil, 'which', lambda name: '/bin/' + name)
    builds = paths.find_builds([('ours', str(ours))],
                               ('qemu-img', 'qemu-io'), ValueError)
    assert builds['ours'] == {'qemu-img': str(ours / 'qemu-img'),
                              'qemu-io': str(ours / 'qemu-io')}
    with pytest.raises(ValueError) as e:
        paths.find_builds(
            [('ours', str(ours)), ('stock', str(tmp_path / 'none'))],
            ('qemu-img', 'qemu-io'), ValueError)
    assert str(e.value) == ('missing: stock qemu-img, qemu-io (looked in %s '
                            'and its storage-daemon/)' % (tmp_path / 'none'))
    monkeypatch.setattr(paths.shutil, 'which', lambda name: None)
    with pytest.raises(ValueError) as e:
        paths.find_builds([], (), ValueError)
    assert str(e.value) == 'missing: fio (apt-get install fio)'


def test_tail():
    assert util.tail('a\n\n b \nc\nd\n') == 'b | c | d'
    assert util.tail('a\nb\n', 1) == 'b'
    assert util.tail('') == ''


def test_describe_status():
    assert util.describe_status(0) == 'exit status 0'
    assert util.describe_status(2) == 'exit status 2'
    assert util.describe_status(-9) == 'killed by signal 9'


def test_qmp_monitor_missing_socket(tmp_path):
    """No monitor: the caller's error, naming the socket, once @wait is
    over"""
    from sqemu import qmp

    class NoMonitor(Exception):
        pass

    path = str(tmp_path / 'qmp.sock')
    with pytest.raises(NoMonitor) as e:
        qmp.Monitor(path, 0.2, NoMonitor)
    assert str(e.value) == 'no QMP monitor at %s' % path


def test_make_workdir(tmp_path):
    class Failed(Exception):
        pass
    new = tmp_path / 'work'
    assert util.make_workdir(str(new), 'x-', Failed) == str(new)
    assert new.is_dir()
    with pytest.raises(Failed, match='--workdir %s already exists' % new):
        util.make_workdir(str(new), 'x-', Failed)
