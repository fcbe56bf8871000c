# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.stress: parsing fio's logs, comparing images, and the texts of its
# verdicts.

import sys

import pytest

from sqemu import stress


def test_human_size():
    assert stress.human_size(1 << 30) == '1 GiB'
    assert stress.human_size(256 << 20) == '256 MiB'
    assert stress.human_size(1536 << 20) == '1.5 GiB'
    assert stress.human_size(4096) == '4 KiB'
    assert stress.human_size(1000) == '1000 bytes'


def test_read_iolog(tmp_path):
    log = tmp_path / 'iolog'
    log.write_text('fio version 3 iolog\n'
                   '0 /dev/x add\n'
                   '0 /dev/x open\n'
                   '10 /dev/x write 4096 4096\n'
                   '20 /dev/x read 0 512\n'
                   '30 /dev/x close\n')
    assert stress.read_iolog(str(log)) == [('write', 4096, 4096),
                                           ('read', 0, 512)]


def test_diff_blocks(tmp_path):
    a = bytearray(3 * stress.BLOCK * 4)
    b = bytearray(a)
    b[stress.BLOCK + 5] = 1
    b[len(b) - 1] = 2
    pa, pb = tmp_path / 'a', tmp_path / 'b'
    pa.write_bytes(a)
    pb.write_bytes(b)
    # a chunk smaller than the image: differences in later chunks count too
    assert stress.diff_blocks(str(pa), str(pb), chunk=2 * stress.BLOCK) == \
        [stress.BLOCK, len(b) - stress.BLOCK]
    assert stress.diff_blocks(str(pa), str(pa)) == []
    pb.write_bytes(b[:-1])
    with pytest.raises(stress.StressError):
        stress.diff_blocks(str(pa), str(pb))


def test_describe_diff():
    assert stress.describe_diff([0, 4096]) == \
        '2 4k blocks differ, at offsets 0, 4096'
    assert stress.describe_diff(list(range(0, 7 * 4096, 4096))).endswith(
        '0, 4096, 8192, 12288, 16384, ...')


def parse(monkeypatch, *argv):
    monkeypatch.setattr(sys, 'argv', ['stress', *argv])
    return stress.parse_args()


def test_nfs_options(monkeypatch, capsys):
    args = parse(monkeypatch, '-n', '20', '--nfs-nodes', '2',
                 '--nfs-latency', '0.5')
    assert (args.nfs_nodes, args.nfs_latency) == (2, 0.5)
    assert parse(monkeypatch).nfs_nodes == 0
    for argv in (('--nfs-latency', '0.5'),
                 ('-n', '4', '--nfs-nodes', '5'),
                 ('--nfs-nodes', '-1')):
        with pytest.raises(SystemExit):
            parse(monkeypatch, *argv)
        assert 'nfs' in capsys.readouterr().err
