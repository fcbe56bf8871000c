# SPDX-License-Identifier: GPL-2.0-or-later
#
# pool generate: a synthetic storage pool for tests and demos, modelled on
# the distributions the paper reports for a cloud's disk pool.
#
#   pool generate DIR --files N [--seed S]
#
# makes about N qcow2 files under DIR (one directory per base image and
# per VM disk), all with 64 KiB clusters and no data, each as small on
# disk as qemu-img create makes it (sparse: header, refcount table and
# refcount block), and a manifest (by default DIR.manifest.json, outside
# the pool): every chain the generator made (its top, its layers, their
# virtual size), so that a scan can be checked against it.
#
#   - base images: chains of about 5 layers (an OS image and its updates),
#     each shared by many VM disks;
#   - a VM disk's own layers above its base: most chains short, a bump
#     just under the streaming threshold near 30 layers, a tail to 1000;
#   - one disk in ten is a copy of another: a new top over the other
#     disk's chain (the two share every layer below the tops);
#   - virtual sizes from 10 to 200 GiB, most 20-50 GiB;
#   - each layer's modification time is the time its overlay was made
#     (the snapshot that froze it), hours to days apart.

import json
import math
import os
import random
import struct
import time

CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
GiB = 1 << 30
BASE_LAYERS = 5
SIZES_GIB = (10, 20, 30, 40, 50, 100, 200)
SIZE_WEIGHTS = (10, 30, 15, 20, 15, 7, 3)
EXT_BACKING_FORMAT = 0xe2792aca


def qcow2_image(size, backing=None, backing_fmt='qcow2'):
    """The non-zero parts of a new, empty qcow2 image of @size bytes over
    @backing, as qemu-img create lays it out: [(offset, bytes)] and the
    file's length"""
    l1_entries = max(1, -(-size // (CLUSTER * (CLUSTER // 8))))
    l1_bytes = -(-l1_entries * 8 // CLUSTER) * CLUSTER
    exts = b''
    if backing:
        fmt = backing_fmt.encode()
        exts += struct.pack('>II', EXT_BACKING_FORMAT, len(fmt)) + fmt
        exts += bytes(-len(fmt) % 8)
    exts += struct.pack('>II', 0, 0)
    name = backing.encode() if backing else b''
    backing_off = 104 + len(exts) if name else 0
    header = b'QFI\xfb' + struct.pack(
        '>IQIIQIIQQIIQQQQII', 3, backing_off, len(name), CLUSTER_BITS,
        size, 0, l1_entries, 3 * CLUSTER, CLUSTER, 1, 0, 0, 0, 0, 0, 4,
        104) + exts + name
    # refcount table: one block at cluster 2; the block counts clusters
    # 0-3 (header, table, block, L1) and the rest of the L1 table
    clusters = 3 + l1_bytes // CLUSTER
    refcounts = struct.pack('>%dH' % clusters, *([1] * clusters))
    return ([(0, header), (CLUSTER, struct.pack('>Q', 2 * CLUSTER)),
             (2 * CLUSTER, refcounts)], 3 * CLUSTER + l1_bytes)


def write_image(path, size, backing=None, mtime=None):
    parts, length = qcow2_image(size, backing)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for offset, data in parts:
            os.pwrite(fd, data, offset)
        os.ftruncate(fd, length)
    finally:
        os.close(fd)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def own_layers(rng):
    """How many layers a VM disk has above its base image"""
    r = rng.random()
    if r < 0.70:
        return min(1 + int(rng.expovariate(1 / 3)), 29)
    if r < 0.85:
        return rng.randint(26, 30)          # under the streaming threshold
    if r < 0.97:
        return rng.randint(31, 200)
    return int(math.exp(rng.uniform(math.log(200), math.log(995))))


class Generator:
    def __init__(self, directory, files, seed=1, progress=None,
                 manifest=None):
        self.dir = directory
        self.manifest = manifest or directory.rstrip('/') + '.manifest.json'
        self.target = files
        self.rng = random.Random(seed)
        self.made = 0
        self.chains = []
        self.progress = progress
        self.now = time.time()

    def image(self, rel, size, backing_rel=None, mtime=None):
        path = os.path.join(self.dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        backing = (os.path.relpath(os.path.join(self.dir, backing_rel),
                                   os.path.dirname(path))
                   if backing_rel else None)
        write_image(path, size, backing, mtime)
        self.made += 1
        if self.progress and self.made % 10000 == 0:
            self.progress('%d of %d files' % (self.made, self.target))
        return rel

    def layers(self, prefix, count, size, below, start):
        """@count layers named @prefix-NNNN over @below (a list of
        relative paths, base first); their times run from @start on"""
        chain = list(below)
        t = start
        for i in range(count):
            t += self.rng.expovariate(1 / (36 * 3600))   # hours to days
            chain.append(self.image('%s-%04d.qcow2' % (prefix, i + 1), size,
                                    chain[-1] if chain else None,
                                    mtime=min(t, self.now)))
        return chain, t

    def run(self):
        rng = self.rng
        bases = []
        disks = []
        while self.made < self.target:
            if not bases or (rng.random() < 0.02 and len(bases) < 50):
                size = rng.choices(SIZES_GIB, SIZE_WEIGHTS)[0] * GiB
                chain, _ = self.layers('base%03d/layer' % len(bases),
                                       BASE_LAYERS, size, [],
                                       self.now - 400 * 86400)
                bases.append((chain, size))
                continue
            if disks and rng.random() < 0.1:
                # a copy of a disk: a new top over its whole chain
                src = rng.choice(disks)
                chain = src['layers'] + [self.image(
                    'vm%05d/copy.qcow2' % len(disks), src['size'],
                    src['layers'][-1])]
                disks.append({'layers': chain, 'size': src['size']})
                continue
            base, size = rng.choice(bases)
            n = min(own_layers(rng), max(1, self.target - self.made))
            chain, _ = self.layers('vm%05d/layer' % len(disks), n, size,
                                   base, self.now - 300 * 86400)
            disks.append({'layers': chain, 'size': size})
        # a disk whose top another disk copied is no top any more
        below = {layer for d in disks for layer in d['layers'][:-1]}
        self.chains = [d for d in disks if d['layers'][-1] not in below]
        for b, size in bases:
            if b[-1] not in below:
                self.chains.append({'layers': b, 'size': size})
        manifest = {
            'files': self.made,
            'chains': [{'top': os.path.join(self.dir, c['layers'][-1]),
                        'length': len(c['layers']),
                        'layers': c['layers'],
                        'virtual_size': c['size']}
                       for c in self.chains],
        }
        with open(self.manifest, 'w') as f:
            json.dump(manifest, f, indent=1)
        return manifest
