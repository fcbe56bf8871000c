# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.chain (mkchain): the chain's plan, the lane encoding, layer names,
# where the scratch directory goes.

import collections
import struct

import pytest

from sqemu import chain


def params(**kw):
    p = {'seed': 1, 'size': 64 << 20, 'cluster_size': 64 << 10,
         'fill': 0.5, 'layers': 10, 'dist': 'uniform'}
    p.update(kw)
    return p


def test_plan_is_a_function_of_the_parameters():
    assert chain.plan(params()) == chain.plan(params())
    assert chain.plan(params()) != chain.plan(params(seed=2))


@pytest.mark.parametrize('fill', [0, 0.25, 1])
def test_plan_fill(fill):
    where = chain.plan(params(fill=fill))
    assert len(where) == round(1024 * fill)
    assert all(0 <= c < 1024 for c in where)


@pytest.mark.parametrize('dist', chain.DISTRIBUTIONS)
def test_plan_depths_in_range(dist):
    where = chain.plan(params(dist=dist, fill=1, layers=7))
    assert set(where.values()) <= set(range(1, 8))


def test_plan_skew():
    """'newest' puts most clusters in the upper half, 'oldest' in the
    lower half (about 80% in the 51% nearest the favoured end)"""
    n = 100
    for dist, upper in (('newest', True), ('oldest', False)):
        where = chain.plan(params(dist=dist, fill=1, layers=n,
                                  size=1024 << 16))
        count = collections.Counter(d > n // 2 for d in where.values())
        assert count[upper] > 0.7 * len(where)


@pytest.mark.parametrize('depth,cluster', [
    (1, 0), (1000, 12345), (16383, (1 << 40) - 1)])
def test_lanes_round_trip(depth, cluster):
    lanes = chain.lane_bytes(depth, cluster)
    assert len(lanes) == chain.LANES
    assert all(b & 0x80 for b in lanes)         # never a zero byte
    assert chain.decode_lanes(lanes) == (depth, cluster)


def test_lanes_differ():
    assert chain.lane_bytes(2, 7) != chain.lane_bytes(7, 2)
    assert chain.lane_bytes(1, 1) != chain.lane_bytes(1, 2)


def test_layer_name():
    assert chain.layer_name(7, 500) == 'layer-0007.qcow2'
    assert chain.layer_name(7, 12345) == 'layer-00007.qcow2'


def test_backing_name_slot(tmp_path):
    image = tmp_path / 'x.qcow2'
    image.write_bytes(struct.pack('>4sIQI', b'QFI\xfb', 3, 0x1000, 42) +
                      bytes(100))
    assert chain.backing_name_slot(str(image)) == (0x1000, 42)
    image.write_bytes(struct.pack('>4sIQI', b'QFI\xfb', 3, 0, 0) +
                      bytes(100))
    with pytest.raises(chain.ChainError):
        chain.backing_name_slot(str(image))


def test_scratch_parent(tmp_path):
    good = tmp_path / 'good'
    good.mkdir()
    bad = [tmp_path / n for n in ('a dir', 'a,dir', 'a?dir', 'a&dir')]
    for b in bad:
        b.mkdir()
    assert chain.scratch_parent([str(b) for b in bad] + [str(good)]) == \
        str(good)
    with pytest.raises(chain.ChainError) as e:
        chain.scratch_parent([str(b) for b in bad] +
                             [str(tmp_path / 'missing')])
    assert 'set TMPDIR' in str(e.value)


def test_env_nodes(monkeypatch):
    monkeypatch.delenv('SQEMU_NFS_DIRS', raising=False)
    monkeypatch.delenv('SQEMU_NFS_URLS', raising=False)
    with pytest.raises(chain.ChainError, match='nfs-nodes run'):
        chain.env_nodes()
    monkeypatch.setenv('SQEMU_NFS_DIRS', '/d/node0 /d/node1')
    monkeypatch.setenv('SQEMU_NFS_URLS', 'nfs://a/node0/ nfs://b/node1/')
    nodes = chain.env_nodes()
    assert [n.directory for n in nodes] == ['/d/node0', '/d/node1']
    assert nodes[1].url('x.qcow2') == 'nfs://b/node1/x.qcow2'
    assert chain.top_path('/out', nodes[1].url('x')) == 'nfs://b/node1/x'
    assert chain.top_path('/out', 'layer-0001.qcow2') == \
        '/out/layer-0001.qcow2'


def test_nfs_with_live_is_refused_before_anything_is_made(tmp_path,
                                                          monkeypatch):
    """mkchain --nfs --live: --nfs moves layers whose backing file names are
    relative, which only layers made without --live have; refused before
    the output directory is made"""
    import argparse

    monkeypatch.setattr(chain, 'env_nodes', lambda: ['node0', 'node1'])
    outdir = tmp_path / 'chain'
    args = argparse.Namespace(cluster_size=64 << 10, size=64 << 20, fill=0.5,
                              layers=4, outdir=str(outdir), nfs=True,
                              live=True, base=None)
    with pytest.raises(chain.ChainError, match='--nfs needs layers made '
                       'without --live'):
        chain.cmd_create(args)
    assert not outdir.exists()
