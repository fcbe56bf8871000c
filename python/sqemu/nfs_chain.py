# SPDX-License-Identifier: GPL-2.0-or-later
#
# Placing a made chain's layers on NFS storage nodes (nfs_nodes.Nodes):
# contiguous ranges of layers per node, the base's range on node 0 (as a
# provider grows a disk onto another node with a snapshot), each layer's
# file moved into its node's directory and its backing file name
# rewritten in its header:
#
#   - relative: within a node the name of the layer below as it is in
#     that directory; across nodes its nfs:// URL.  QEMU 7.2 resolves a
#     relative name under nfs:// against the wrong directory (sQemu's patch
#     0054 fixes it), so stock QEMU cannot open such a chain.
#   - absolute: every name an nfs:// URL, which both open.
#
# The rewrite touches nothing but the name (qcow2 keeps it in cluster 0,
# after the header extensions), so the layers keep their identities and an
# indexed chain stays indexed.  Node directories are flat (QEMU's nfs
# driver mounts a URL's directory): each file name gets the chain's tag.

import os
import re
import shutil
import struct

from sqemu.nfs_nodes import (Nodes, NodesError, parse_latency,
                             split_layers)

NAMES = ('relative', 'absolute')


class PlacementError(Exception):
    pass


def set_backing_name(image, name):
    """Write @name as the backing file name of the qcow2 @image, in place"""
    data = name.encode()
    with open(image, 'r+b') as f:
        header = f.read(24)
        magic, _version, offset, size, cluster_bits = \
            struct.unpack('>4sIQII', header)
        if magic != b'QFI\xfb' or not offset:
            raise PlacementError('%s: not a qcow2 image with a backing file'
                                 % image)
        if offset + len(data) > 1 << cluster_bits or len(data) > 1023:
            raise PlacementError('%s: no room for the backing file name %s'
                                 % (image, name))
        f.seek(offset)
        f.write(data)
        if len(data) < size:
            f.write(b'\0' * (size - len(data)))
        f.seek(16)
        f.write(struct.pack('>I', len(data)))


def protocol_node(top):
    """The protocol node (blockdev options) of the image @top: an nfs://
    URL (nfs driver), or a local file"""
    m = re.fullmatch(r'nfs://([^/]+)(/.*)', top)
    if m:
        return {'driver': 'nfs', 'path': m.group(2),
                'server': {'type': 'inet', 'host': m.group(1)}}
    return {'driver': 'file', 'filename': top}


def add_placement_options(parser, what):
    """--nfs-nodes and --nfs-latency, for a command that places @what on
    NFS storage nodes it starts itself"""
    parser.add_argument('--nfs-nodes', type=int, default=0, metavar='K',
                        help='put %s on K NFS storage nodes '
                             '(scripts/sqemu/nfs-nodes; needs root and '
                             'network namespaces), layers in contiguous '
                             'ranges, and open them by nfs:// URL '
                             '(default 0: local files)' % what)
    parser.add_argument('--nfs-latency', type=parse_latency, metavar='MS',
                        help='with --nfs-nodes: round-trip time a proxy '
                             'adds to every node (default none)')


def start_nodes(count, directory, latency, error, bandwidth=None,
                log=None):
    """@count storage nodes serving under @directory (made here), started;
    if they cannot start, everything is stopped and @error raised"""
    os.makedirs(directory)
    nodes = Nodes(count, directory, latency, bandwidth, log=log)
    try:
        nodes.start()
    except NodesError as e:
        nodes.stop()
        raise error('NFS storage nodes: %s' % e)
    return nodes


def place(chaindir, layer_names, nodes, tag, names='relative'):
    """Move the layers @layer_names (base first) of the chain in @chaindir
    onto @nodes, file names prefixed with @tag; return the top's URL and a
    list of (node, first layer, last layer), layers counted from 1"""
    if names not in NAMES:
        raise PlacementError('backing names must be one of %s, not %s'
                             % (', '.join(NAMES), names))
    where = split_layers(len(layer_names), len(nodes))
    placed = {}
    for depth, name in enumerate(layer_names, 1):
        node = nodes[where[depth]]
        placed[depth] = (node, '%s-%s' % (tag, name))
        shutil.move(os.path.join(chaindir, name),
                    os.path.join(node.directory, placed[depth][1]))
    for depth in range(2, len(layer_names) + 1):
        node, fname = placed[depth]
        below_node, below = placed[depth - 1]
        if names == 'relative' and below_node is node:
            backing = below
        else:
            backing = below_node.url(below)
        set_backing_name(os.path.join(node.directory, fname), backing)
    ranges = []
    for depth in range(1, len(layer_names) + 1):
        node = where[depth]
        if ranges and ranges[-1][0] == node:
            ranges[-1][2] = depth
        else:
            ranges.append([node, depth, depth])
    top_node, top = placed[len(layer_names)]
    return top_node.url(top), [tuple(r) for r in ranges]


def remove(layer_names, nodes, tag):
    """Remove what place() put on @nodes"""
    for node in nodes:
        for name in layer_names:
            path = os.path.join(node.directory, '%s-%s' % (tag, name))
            if os.path.exists(path):
                os.unlink(path)
