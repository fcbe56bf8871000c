# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.nfs_chain: the backing file name rewrite in a qcow2 header, and
# which node each layer goes to and what it names as its backing file.

import os
import struct

import pytest

from sqemu import nfs_chain


def make_image(path, backing, cluster_bits=16, offset=0x200):
    """A qcow2 header with @backing as its backing file name at @offset"""
    header = struct.pack('>4sIQII', b'QFI\xfb', 3, offset if backing else 0,
                         len(backing), cluster_bits)
    data = bytearray(1 << cluster_bits)
    data[:len(header)] = header
    data[offset:offset + len(backing)] = backing.encode()
    with open(path, 'wb') as f:
        f.write(data)


def backing_of(path):
    with open(path, 'rb') as f:
        data = f.read(4096)
    _, _, offset, size, _ = struct.unpack('>4sIQII', data[:24])
    return data[offset:offset + size].decode()


class FakeNode:
    def __init__(self, directory, prefix):
        self.directory = directory
        self.prefix = prefix

    def url(self, relative=''):
        return self.prefix + relative


def test_set_backing_name_longer_and_shorter(tmp_path):
    image = str(tmp_path / 'l.qcow2')
    make_image(image, 'layer-0001.qcow2')
    nfs_chain.set_backing_name(image, 'nfs://10.0.0.1/node0/x-layer.qcow2')
    assert backing_of(image) == 'nfs://10.0.0.1/node0/x-layer.qcow2'
    nfs_chain.set_backing_name(image, 'b.qcow2')
    assert backing_of(image) == 'b.qcow2'
    with open(image, 'rb') as f:
        data = f.read(0x200 + 64)
    # no byte of the longer name is left after the shorter one
    assert data[0x200 + 7:0x200 + 64] == bytes(57)


def test_set_backing_name_refuses(tmp_path):
    image = str(tmp_path / 'l.qcow2')
    make_image(image, '')
    with pytest.raises(nfs_chain.PlacementError, match='backing file'):
        nfs_chain.set_backing_name(image, 'b.qcow2')
    make_image(image, 'a.qcow2', cluster_bits=9, offset=0x1f0)
    with pytest.raises(nfs_chain.PlacementError, match='no room'):
        nfs_chain.set_backing_name(image, 'a-much-longer-name.qcow2')


@pytest.mark.parametrize('names', nfs_chain.NAMES)
def test_place(tmp_path, names):
    chaindir = tmp_path / 'chain'
    chaindir.mkdir()
    layers = ['layer-%04d.qcow2' % d for d in range(1, 6)]
    for d, name in enumerate(layers, 1):
        make_image(str(chaindir / name), layers[d - 2] if d > 1 else '')
    nodes = []
    for i in range(2):
        (tmp_path / ('node%d' % i)).mkdir()
        nodes.append(FakeNode(str(tmp_path / ('node%d' % i)),
                              'nfs://10.0.%d.1/node%d/' % (i, i)))
    url, ranges = nfs_chain.place(str(chaindir), layers, nodes, 'c5', names)
    # contiguous ranges, the base's first, sizes differing by one at most
    assert ranges == [(0, 1, 3), (1, 4, 5)]
    assert url == 'nfs://10.0.1.1/node1/c5-layer-0005.qcow2'
    assert os.listdir(str(chaindir)) == []
    node0 = sorted(os.listdir(nodes[0].directory))
    assert node0 == ['c5-layer-0001.qcow2', 'c5-layer-0002.qcow2',
                     'c5-layer-0003.qcow2']
    within = backing_of(os.path.join(nodes[1].directory,
                                     'c5-layer-0005.qcow2'))
    across = backing_of(os.path.join(nodes[1].directory,
                                     'c5-layer-0004.qcow2'))
    assert across == 'nfs://10.0.0.1/node0/c5-layer-0003.qcow2'
    if names == 'relative':
        assert within == 'c5-layer-0004.qcow2'
    else:
        assert within == 'nfs://10.0.1.1/node1/c5-layer-0004.qcow2'
    nfs_chain.remove(layers, nodes, 'c5')
    assert os.listdir(nodes[0].directory) == []
    assert os.listdir(nodes[1].directory) == []


def test_place_refuses_unknown_names(tmp_path):
    with pytest.raises(nfs_chain.PlacementError, match='relative'):
        nfs_chain.place(str(tmp_path), [], [], 't', 'other')


def test_protocol_node():
    assert nfs_chain.protocol_node('nfs://10.0.0.1/node0/c-layer.qcow2') == {
        'driver': 'nfs', 'path': '/node0/c-layer.qcow2',
        'server': {'type': 'inet', 'host': '10.0.0.1'}}
    assert nfs_chain.protocol_node('/var/tmp/top.qcow2') == {
        'driver': 'file', 'filename': '/var/tmp/top.qcow2'}
    # a URL without a path is no nfs image: left to the file driver,
    # which names it in its error
    assert nfs_chain.protocol_node('nfs://10.0.0.1')['driver'] == 'file'
