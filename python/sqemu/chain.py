# SPDX-License-Identifier: GPL-2.0-or-later
#
# mkchain: make a long qcow2 backing chain with self-verifying content, and
# verify a chain's content through a given qemu-io.
#
# Each cluster that the chain holds is written once, in the layer that its
# seeded distribution picks, and its bytes say which layer and which cluster
# they are: the cluster is cut into 8 lanes, lane j filled with the byte
# 0x80 | bits 7j..7j+6 of tag = layer << 40 | cluster.  No lane byte is ever
# zero, so a cluster read from the wrong layer, the wrong offset or a hole
# never passes.  Clusters left unwritten (fill < 1) must read as zeroes.
#
# Layers are written standalone (each opened without its backing) by one
# qemu-io process, so making N layers costs O(N), not O(N^2) chain opens.
# With --live, the chain is made the way a running VM makes one instead:
# one qemu-storage-daemon keeps the chain open, takes a live snapshot
# (QMP blockdev-snapshot-sync) per layer and each layer's clusters are
# written through its NBD export; with sQemu every snapshot then gets its
# backing index by L2 copy, so the chain comes out indexed, still in O(N).
#
# With --base IMAGE (and --live), layer 1 is a qcow2 copy of IMAGE (a guest's
# root disk, say) and the layers above it are snapshots that hold no data:
# every read goes down to the base, the deepest walk a stock chain makes.
#
# With --nfs (under scripts/sqemu/nfs-nodes run), the layers made in OUTDIR
# are then moved onto the NFS storage nodes that run names, in contiguous
# ranges (nfs_chain); OUTDIR keeps the manifest, whose top is an nfs:// URL.

import argparse
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile

from sqemu import nfs_chain, util
from sqemu.qsd import Daemon

LANES = 8
MANIFEST = 'chain.json'
DISTRIBUTIONS = ('uniform', 'newest', 'oldest')
# Skewed distributions put a cluster at relative depth u**SKEW from the
# favoured end, u uniform in [0, 1): about 80% of clusters land in the
# 51% of layers nearest that end.
SKEW = 3


class ChainError(Exception):
    pass


def layer_name(depth, layers):
    return 'layer-%0*d.qcow2' % (max(4, len(str(layers))), depth)


def plan(params):
    """Map cluster number -> layer depth (1 = base) for every written
    cluster, from the manifest parameters alone."""
    rng = random.Random(params['seed'])
    n_clusters = params['size'] // params['cluster_size']
    n_written = round(n_clusters * params['fill'])
    written = sorted(rng.sample(range(n_clusters), n_written))
    layers = params['layers']
    dist = params['dist']
    where = {}
    for cluster in written:
        u = rng.random()
        if dist == 'uniform':
            depth = 1 + int(u * layers)
        elif dist == 'oldest':
            depth = 1 + int(u ** SKEW * layers)
        else:
            depth = layers - int(u ** SKEW * layers)
        where[cluster] = min(max(depth, 1), layers)
    return where


def lane_bytes(depth, cluster):
    tag = depth << 40 | cluster
    return [0x80 | (tag >> (7 * j)) & 0x7f for j in range(LANES)]


def decode_lanes(lanes):
    tag = 0
    for j, b in enumerate(lanes):
        tag |= (b & 0x7f) << (7 * j)
    return tag >> 40, tag & ((1 << 40) - 1)


def run_qemu_io(qemu_io, args, commands):
    """Feed @commands to one qemu-io process; return the lines it printed
    other than its prompts."""
    proc = subprocess.run([qemu_io, *args], input='\n'.join(commands) + '\n',
                          text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    out = proc.stdout.replace('qemu-io> ', '')
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if proc.returncode != 0 and not lines:
        lines = ['qemu-io exited with status %d' % proc.returncode]
    return lines


def make_templates(args, outdir, tmp):
    """Create an empty base layer and an empty overlay template with
    qemu-img, so every creation option goes through qemu-img itself."""
    opts = 'cluster_size=%d' % args.cluster_size
    if args.options:
        opts += ',' + args.options
    base = os.path.join(tmp, 'base.qcow2')
    overlay = os.path.join(tmp, 'overlay.qcow2')
    placeholder = layer_name(1, args.layers)
    for path, backing in ((base, []),
                          (overlay, ['-u', '-b', placeholder, '-F', 'qcow2'])):
        qemu_img(args.qemu_img, 'create', '-q', '-f', 'qcow2', '-o', opts,
                 *backing, path, str(args.size))
    return base, overlay


def backing_name_slot(image):
    """Where the backing file name of a qcow2 image is stored."""
    with open(image, 'rb') as f:
        header = f.read(20)
    magic, _version, offset, size = struct.unpack('>4sIQI', header)
    if magic != b'QFI\xfb' or offset == 0:
        raise ChainError('%s: not a qcow2 image with a backing file' % image)
    return offset, size


def create_layers(args, outdir, tmp):
    """Create every layer, empty and linked to the one below.  Layers above
    the base are copies of one overlay template whose backing file name is
    rewritten in place (all names have the same length)."""
    base, overlay = make_templates(args, outdir, tmp)
    shutil.copyfile(base, os.path.join(outdir, layer_name(1, args.layers)))
    offset, size = backing_name_slot(overlay)
    with open(overlay, 'rb') as f:
        template = bytearray(f.read())
    for depth in range(2, args.layers + 1):
        name = layer_name(depth - 1, args.layers).encode()
        assert len(name) == size
        template[offset:offset + size] = name
        with open(os.path.join(outdir, layer_name(depth, args.layers)),
                  'wb') as f:
            f.write(template)


def write_layers(args, outdir, where):
    cs = args.cluster_size
    lane = cs // LANES
    by_layer = {}
    for cluster, depth in where.items():
        by_layer.setdefault(depth, []).append(cluster)
    commands = []
    for depth in sorted(by_layer):
        spec = {'driver': 'qcow2', 'backing': None,
                'file': {'driver': 'file',
                         'filename': os.path.join(outdir,
                                                  layer_name(depth,
                                                             args.layers))},
                'cache': {'no-flush': True}}
        commands.append('open json:' + json.dumps(spec, separators=(',', ':')))
        for cluster in by_layer[depth]:
            for j, b in enumerate(lane_bytes(depth, cluster)):
                commands.append('write -q -P 0x%02x %d %d' %
                                (b, cluster * cs + j * lane, lane))
        commands.append('close')
    errors = run_qemu_io(args.qemu_io, [], commands)
    if errors:
        raise ChainError('writing layers failed: ' + '; '.join(errors[:5]))


def cluster_writes(args, depth, clusters, tmp):
    """qemu-io commands writing @clusters of layer @depth through the top
    of a live chain, and the pattern files in @tmp they read.  One write
    of the whole cluster each (write -s FILE): a write of part of a new
    cluster would first copy the rest up from the layers below, and the
    lanes as eight writes cost eight such requests (3.5x the time of the
    whole chain's making, 200 layers of 256 MiB)."""
    cs = args.cluster_size
    lane = cs // LANES
    commands, files = [], []
    for cluster in clusters:
        path = os.path.join(tmp, 'cluster-%d' % cluster)
        with open(path, 'wb') as f:
            f.write(b''.join(bytes([b]) * lane
                             for b in lane_bytes(depth, cluster)))
        files.append(path)
        commands.append('write -q -s %s %d %d' % (path, cluster * cs, cs))
    return commands, files


def create_live(args, outdir, where, tmp):
    """Make the chain through live snapshots of one qemu-storage-daemon."""
    by_layer = {}
    for cluster, depth in where.items():
        by_layer.setdefault(depth, []).append(cluster)
    opts = 'cluster_size=%d' % args.cluster_size
    if args.options:
        opts += ',' + args.options
    base = os.path.join(outdir, layer_name(1, args.layers))
    if args.base:
        qemu_img(args.qemu_img, 'convert', '-O', 'qcow2', '-o', opts,
                 args.base, base)
    else:
        qemu_img(args.qemu_img, 'create', '-q', '-f', 'qcow2', '-o', opts,
                 base, str(args.size))
    blockdev = {'driver': 'qcow2', 'node-name': 'layer1',
                'file': {'driver': 'file', 'filename': base}}
    # The daemon prints a line per snapshot: into its log file, not a pipe
    # that nobody reads until it exits (it would block once full)
    with Daemon(args.qemu_storage_daemon, blockdev, tmp, ChainError,
                writable=True, start_timeout=30) as daemon:
        qmp = daemon.monitor()
        try:
            for depth in range(1, args.layers + 1):
                if depth > 1:
                    qmp.cmd('blockdev-snapshot-sync',
                            **{'node-name': 'layer%d' % (depth - 1),
                               'snapshot-file': os.path.join(
                                   outdir, layer_name(depth, args.layers)),
                               'snapshot-node-name': 'layer%d' % depth,
                               'format': 'qcow2'})
                if by_layer.get(depth):
                    commands, files = cluster_writes(args, depth,
                                                     by_layer[depth], tmp)
                    errors = run_qemu_io(args.qemu_io, ['-f', 'raw',
                                                        daemon.uri],
                                         commands)
                    for path in files:
                        os.unlink(path)
                    if errors:
                        raise ChainError('writing layer %d failed: %s' %
                                         (depth, '; '.join(errors[:5])))
        finally:
            qmp.close()
        daemon.stop(60)


def qemu_img(binary, command, *args, image=None):
    """Run qemu-img @command; its output (stdout and stderr).  A failure
    is a ChainError with the output (naming @image if given)."""
    res = subprocess.run([binary, command, *args], text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if res.returncode != 0:
        raise ChainError('qemu-img %s failed: %s' % (
            command + (' ' + image if image else ''), res.stdout.strip()))
    return res.stdout


def image_size(binary, image):
    """Virtual size of an image, from qemu-img info."""
    return json.loads(qemu_img(binary, 'info', '--output=json', image,
                               image=image))['virtual-size']


def scratch_parent(candidates=None):
    """Where the scratch directory goes: its paths end up in qemu-io
    commands (split on whitespace), an NBD URI (where '?' and '&' start
    its query) and -chardev options (split on commas), so the first of
    @candidates (default $TMPDIR, /var/tmp and /tmp) that is a directory
    and whose path has none of those."""
    if candidates is None:
        candidates = (tempfile.gettempdir(), '/var/tmp', '/tmp')
    for parent in candidates:
        if os.path.isdir(parent) and \
                not any(c.isspace() or c in ',?&' for c in parent):
            return parent
    raise ChainError('no temporary directory without whitespace, commas, '
                     '"?" or "&" in its path among %s: set TMPDIR to one' %
                     ', '.join(candidates))


def cmd_create(args):
    if args.cluster_size < 512 or args.cluster_size & (args.cluster_size - 1):
        raise ChainError('--cluster-size must be a power of two >= 512')
    if args.size % args.cluster_size:
        raise ChainError('--size must be a multiple of --cluster-size')
    if not 0 <= args.fill <= 1:
        raise ChainError('--fill must be between 0 and 1')
    if args.layers < 1:
        raise ChainError('--layers must be at least 1')
    if os.path.exists(args.outdir) and os.listdir(args.outdir):
        raise ChainError('%s exists and is not empty' % args.outdir)
    nodes = env_nodes() if args.nfs else None
    if nodes and args.live:
        raise ChainError('--nfs needs layers made without --live (their '
                         'backing file names are relative)')
    if args.base:
        if not args.live:
            raise ChainError('--base needs --live')
        args.size = image_size(args.qemu_img, args.base)
        args.fill = 0.0
    created_dir = not os.path.exists(args.outdir)
    os.makedirs(args.outdir, exist_ok=True)
    params = {'layers': args.layers, 'size': args.size,
              'cluster_size': args.cluster_size, 'fill': args.fill,
              'dist': args.dist, 'seed': args.seed,
              'options': args.options or ''}
    if args.live:
        params['live'] = True
    if args.base:
        params['base'] = os.path.abspath(args.base)
    try:
        where = plan(params)
        with tempfile.TemporaryDirectory(prefix='mkchain-',
                                         dir=scratch_parent()) as tmp:
            if args.live:
                create_live(args, os.path.abspath(args.outdir), where, tmp)
            else:
                create_layers(args, args.outdir, tmp)
        if not args.live:
            write_layers(args, os.path.abspath(args.outdir), where)
        params['top'] = layer_name(args.layers, args.layers)
        if nodes:
            names = [layer_name(d, args.layers)
                     for d in range(1, args.layers + 1)]
            params['top'], ranges = nfs_chain.place(
                args.outdir, names, nodes,
                os.path.basename(os.path.abspath(args.outdir)),
                args.nfs_names)
            params['nodes'] = [{'url': nodes[n].url(), 'first': first,
                                'last': last} for n, first, last in ranges]
        util.write_json(os.path.join(args.outdir, MANIFEST), params)
    except BaseException:
        if nodes:
            nfs_chain.remove([layer_name(d, args.layers)
                              for d in range(1, args.layers + 1)], nodes,
                             os.path.basename(os.path.abspath(args.outdir)))
        if created_dir:
            shutil.rmtree(args.outdir, ignore_errors=True)
        else:
            for name in os.listdir(args.outdir):
                os.unlink(os.path.join(args.outdir, name))
        raise
    print(top_path(args.outdir, params['top']))


class EnvNode:
    """A storage node as scripts/sqemu/nfs-nodes run names it"""

    def __init__(self, directory, url_prefix):
        self.directory = directory
        self.prefix = url_prefix

    def url(self, relative=''):
        return self.prefix + relative


def env_nodes():
    dirs = os.environ.get('SQEMU_NFS_DIRS', '').split()
    urls = os.environ.get('SQEMU_NFS_URLS', '').split()
    if not dirs or len(dirs) != len(urls):
        raise ChainError('--nfs: no storage nodes (SQEMU_NFS_DIRS and '
                         'SQEMU_NFS_URLS); run under scripts/sqemu/nfs-nodes '
                         'run -- mkchain ...')
    return [EnvNode(d, u) for d, u in zip(dirs, urls)]


def top_path(outdir, top):
    """The top's path, or its URL once placed on storage nodes"""
    return top if '://' in top else os.path.join(outdir, top)


def first_mismatch(args, image, params, where):
    cs = params['cluster_size']
    lane = cs // LANES
    commands = []
    for cluster in range(params['size'] // cs):
        if cluster in where:
            for j, b in enumerate(lane_bytes(where[cluster], cluster)):
                commands.append('read -q -P 0x%02x %d %d' %
                                (b, cluster * cs + j * lane, lane))
        else:
            commands.append('read -q -P 0 %d %d' % (cluster * cs, cs))
    qemu_io_args = ['-r', '-f', args.format, image]
    for line in run_qemu_io(args.qemu_io, qemu_io_args, commands):
        m = re.search(r'Pattern verification failed at offset (\d+)', line)
        if not m:
            return None, line
        return int(m.group(1)), line
    return None, None


def describe_actual(args, image, offset, cs):
    """Decode which layer and cluster the bytes at @offset came from."""
    lane = cs // LANES
    start = offset - offset % cs
    reads = ['read -v %d 1' % (start + j * lane) for j in range(LANES)]
    out = run_qemu_io(args.qemu_io, ['-r', '-f', args.format, image], reads)
    lanes = []
    for line in out:
        m = re.match(r'[0-9a-f]{8}:\s+([0-9a-f]{2})', line)
        if m:
            lanes.append(int(m.group(1), 16))
    if len(lanes) != LANES:
        return 'unreadable'
    if not any(lanes):
        return 'zeroes'
    if not all(b & 0x80 for b in lanes):
        return 'foreign data'
    depth, cluster = decode_lanes(lanes)
    checks = ['read -q -P 0x%02x %d %d' % (b, start + j * lane, lane)
              for j, b in enumerate(lanes)]
    if run_qemu_io(args.qemu_io, ['-r', '-f', args.format, image], checks):
        return 'foreign data (lanes start %s)' % ' '.join(
            '%02x' % b for b in lanes)
    return 'layer %d, cluster %d' % (depth, cluster)


def cmd_verify(args):
    path = os.path.join(args.outdir, MANIFEST)
    try:
        with open(path) as f:
            params = json.load(f)
    except OSError as e:
        raise ChainError('cannot read %s: %s' % (path, e.strerror))
    except ValueError as e:
        raise ChainError('%s is not a chain manifest: %s' % (path, e))
    image = args.image or top_path(args.outdir, params['top'])
    if 'base' in params:
        raise ChainError('%s was made from %s (--base): its content is that '
                         'image\'s, which mkchain cannot verify' %
                         (args.outdir, params['base']))
    where = plan(params)
    offset, message = first_mismatch(args, image, params, where)
    if message is None:
        n = params['size'] // params['cluster_size']
        print('verified %d clusters (%d written, %d zero) of %s' %
              (n, len(where), n - len(where), image))
        return 0
    if offset is None:
        raise ChainError('reading %s failed: %s' % (image, message))
    cs = params['cluster_size']
    cluster = offset // cs
    expected = ('layer %d, cluster %d' % (where[cluster], cluster)
                if cluster in where else 'zeroes')
    print('MISMATCH at offset %d (cluster %d): expected %s, read %s' %
          (offset, cluster, expected,
           describe_actual(args, image, offset, cs)))
    return 1


def main():
    # SIGTERM and SIGHUP unwind like an error: the daemon is stopped and
    # what was created is removed
    util.exit_on(signal.SIGTERM, signal.SIGHUP)
    parser = argparse.ArgumentParser(
        description='Make a qcow2 backing chain whose clusters say which '
                    'layer holds them, or verify one (--verify).',
        epilog='Creates OUTDIR/layer-0001.qcow2 (the base) to '
               'layer-N.qcow2 (the top) and OUTDIR/chain.json, and prints '
               'the top\'s path.')
    parser.add_argument('outdir', metavar='OUTDIR',
                        help='directory for the chain (new or empty)')
    parser.add_argument('-n', '--layers', type=int, default=10,
                        help='number of layers (default 10)')
    parser.add_argument('-s', '--size', type=util.parse_size, default=1 << 30,
                        help='virtual disk size (default 1G)')
    parser.add_argument('-f', '--fill', type=float, default=1.0,
                        help='fraction of clusters written (default 1.0)')
    parser.add_argument('-c', '--cluster-size', type=util.parse_size,
                        default=65536, help='cluster size (default 64k)')
    parser.add_argument('-d', '--dist', choices=DISTRIBUTIONS,
                        default='uniform',
                        help='which layer holds each cluster: uniform over '
                             'the chain (the default), or skewed towards '
                             'the newest or the oldest layers')
    parser.add_argument('--seed', type=int, default=1,
                        help='random seed (default 1)')
    parser.add_argument('-o', '--options', default='',
                        help='extra qcow2 creation options for every layer, '
                             'as for qemu-img create -o')
    parser.add_argument('--qemu-img', default='qemu-img',
                        help='qemu-img to create layers with')
    parser.add_argument('--qemu-io', default='qemu-io',
                        help='qemu-io to write (or verify) with')
    parser.add_argument('--qemu-storage-daemon',
                        default='qemu-storage-daemon',
                        help='with --live: the daemon that takes the '
                             'snapshots')
    parser.add_argument('--live', action='store_true',
                        help='make the layers by live snapshots '
                             '(blockdev-snapshot-sync) in one '
                             'qemu-storage-daemon, writing through its NBD '
                             'export; backing file names are then absolute')
    parser.add_argument('--base', metavar='IMAGE',
                        help='with --live: layer 1 is a qcow2 copy of IMAGE '
                             '(its virtual size is the disk size) and the '
                             'layers above hold no data')
    parser.add_argument('--nfs', action='store_true',
                        help='move the layers onto the NFS storage nodes '
                             'that scripts/sqemu/nfs-nodes run names '
                             '(SQEMU_NFS_DIRS, SQEMU_NFS_URLS), in '
                             'contiguous ranges, the base\'s on the first '
                             'node; the manifest and the printed top are '
                             'then an nfs:// URL')
    parser.add_argument('--nfs-names', choices=nfs_chain.NAMES,
                        default='relative',
                        help='with --nfs: backing file names within a node '
                             '(default relative; across nodes they are '
                             'nfs:// URLs; stock QEMU 7.2 needs absolute)')
    parser.add_argument('--verify', action='store_true',
                        help='read every cluster of the chain in OUTDIR '
                             'through --qemu-io and report the first '
                             'mismatch')
    parser.add_argument('--image',
                        help='with --verify: the image to read (default: '
                             'the chain\'s top)')
    parser.add_argument('--format', default='qcow2',
                        help='with --verify: format of --image')
    args = parser.parse_args()
    try:
        return cmd_verify(args) if args.verify else cmd_create(args) or 0
    except ChainError as e:
        print('mkchain: error: %s' % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
