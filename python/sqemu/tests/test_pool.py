# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.pool (pool scan): chains, shared layers, index states and the
# errors of hostile pools, on qcow2 headers written here byte by byte.

import os
import stat
import struct

import pytest

from sqemu import nfs_client, pool

MiB = 1 << 20


def sqbi(depth, layer_id, parent_id=bytes(16), parent_size=0):
    return struct.pack('>II', 1, depth) + layer_id + parent_id + \
        struct.pack('>Q', parent_size)


def write_qcow2(path, size=64 * MiB, backing=None, ext=None, autoclear=0,
                cluster_bits=16, pad=4096, name_bytes=None):
    """A qcow2 version 3 header (no tables: the scan reads headers only)
    with the sQBI extension @ext and backing file name @backing"""
    exts = b''
    if ext is not None:
        exts += struct.pack('>II', pool.EXT_SQBI, len(ext)) + ext
        exts += bytes(-len(ext) % 8)
    exts += struct.pack('>II', 0, 0)
    name = name_bytes if name_bytes is not None else \
        (backing.encode() if backing else b'')
    backing_off = 104 + len(exts) if name else 0
    head = pool.QCOW2_MAGIC + struct.pack(
        '>IQIIQIIQQIIQQQQII', 3, backing_off, len(name), cluster_bits,
        size, 0, 0, 0, 0, 0, 0, 0, 0, 0, autoclear, 4, 104)
    data = head + exts + name
    with open(path, 'wb') as f:
        f.write(data + bytes(max(0, pad - len(data))))


def ids(n):
    return [bytes([i + 1]) * 16 for i in range(n)]


def indexed_chain(d, names, size=64 * MiB):
    """An indexed chain, base first, as sQemu leaves it: every layer's
    depth, parent identity and parent size agree, valid bits set"""
    lid = ids(len(names))
    for depth, name in enumerate(names, 1):
        parent = depth - 2
        write_qcow2(os.path.join(d, name), size,
                    backing=names[parent] if depth > 1 else None,
                    ext=sqbi(depth, lid[depth - 1],
                             lid[parent] if depth > 1 else bytes(16),
                             size if depth > 1 else 0),
                    autoclear=pool.AUTOCLEAR_BI)


def scan(*paths):
    return pool.Scan([str(p) for p in paths]).report()


def by_top(rep):
    return {os.path.basename(c['top']): c for c in rep['chains']}


def errors(rep):
    return {os.path.basename(e['file']): e['error'] for e in rep['errors']}


def test_chains_lengths_and_shared_layers(tmp_path):
    write_qcow2(tmp_path / 'base.qcow2')
    write_qcow2(tmp_path / 'mid.qcow2', backing='base.qcow2')
    write_qcow2(tmp_path / 'a.qcow2', backing='mid.qcow2')
    write_qcow2(tmp_path / 'b.qcow2', backing='mid.qcow2')
    (tmp_path / 'sub').mkdir()
    write_qcow2(tmp_path / 'sub' / 'c.qcow2', backing='../base.qcow2')
    write_qcow2(tmp_path / 'alone.qcow2', size=8 * MiB)
    rep = scan(tmp_path)
    chains = by_top(rep)
    assert rep['files'] == 6 and not rep['errors']
    assert sorted(chains) == ['a.qcow2', 'alone.qcow2', 'b.qcow2',
                              'c.qcow2']
    assert chains['a.qcow2']['length'] == 3
    assert chains['a.qcow2']['shared_layers'] == 2      # mid and base
    assert chains['c.qcow2']['length'] == 2
    assert chains['c.qcow2']['shared_layers'] == 1      # base
    assert chains['alone.qcow2']['length'] == 1
    assert chains['alone.qcow2']['shared_layers'] == 0
    assert chains['alone.qcow2']['virtual_size'] == 8 * MiB
    assert all(c['index'] == 'off' for c in chains.values())


def test_raw_base_counts_and_absolute_names(tmp_path):
    (tmp_path / 'base.img').write_bytes(bytes(8192))
    write_qcow2(tmp_path / 'top.qcow2', backing=str(tmp_path / 'base.img'))
    rep = scan(tmp_path)
    assert by_top(rep)['top.qcow2']['length'] == 2
    assert not rep['errors']


def test_index_states(tmp_path):
    indexed_chain(tmp_path, ['l1.qcow2', 'l2.qcow2', 'l3.qcow2'])
    assert by_top(scan(tmp_path))['l3.qcow2']['index'] == 'valid'

    # a stock read-write open of the middle clears its valid bit
    lid = ids(3)
    write_qcow2(tmp_path / 'l2.qcow2', backing='l1.qcow2',
                ext=sqbi(2, lid[1], lid[0], 64 * MiB))
    c = by_top(scan(tmp_path))['l3.qcow2']
    assert c['index'] == 'invalid' and 'valid bit' in c['index_reason']
    assert c['index_reason'].startswith(str(tmp_path / 'l2.qcow2'))

    # an sQemu read-write open renews the middle's identity
    write_qcow2(tmp_path / 'l2.qcow2', backing='l1.qcow2',
                ext=sqbi(2, b'\x77' * 16, lid[0], 64 * MiB),
                autoclear=pool.AUTOCLEAR_BI)
    c = by_top(scan(tmp_path))['l3.qcow2']
    assert c['index'] == 'invalid' and 'identity' in c['index_reason']


def test_index_depth_and_parent_size(tmp_path):
    indexed_chain(tmp_path, ['l1.qcow2', 'l2.qcow2'])
    # the same top seen over a chain one layer longer
    write_qcow2(tmp_path / 'l0.qcow2', ext=sqbi(1, b'\x55' * 16),
                autoclear=pool.AUTOCLEAR_BI)
    lid = ids(2)
    write_qcow2(tmp_path / 'l1.qcow2', backing='l0.qcow2',
                ext=sqbi(1, lid[0]), autoclear=pool.AUTOCLEAR_BI)
    c = by_top(scan(tmp_path))['l2.qcow2']
    assert c['index'] == 'invalid' and 'recorded depth' in c['index_reason']

    # the parent resized since its overlay was indexed
    os.unlink(tmp_path / 'l0.qcow2')
    write_qcow2(tmp_path / 'l1.qcow2', size=32 * MiB,
                ext=sqbi(1, lid[0]), autoclear=pool.AUTOCLEAR_BI)
    c = by_top(scan(tmp_path))['l2.qcow2']
    assert c['index'] == 'invalid' and '(size)' in c['index_reason']


def test_unusable_extension(tmp_path):
    write_qcow2(tmp_path / 'top.qcow2', ext=bytes(40))
    c = by_top(scan(tmp_path))['top.qcow2']
    assert c['index'] == 'invalid'
    assert 'extension of 40 bytes' in c['index_reason']


def test_loops(tmp_path):
    write_qcow2(tmp_path / 'self.qcow2', backing='self.qcow2')
    write_qcow2(tmp_path / 'a.qcow2', backing='b.qcow2')
    write_qcow2(tmp_path / 'b.qcow2', backing='a.qcow2')
    write_qcow2(tmp_path / 'in.qcow2', backing='a.qcow2')
    rep = scan(tmp_path)
    chains = by_top(rep)
    assert list(chains) == ['in.qcow2']
    assert 'loops' in chains['in.qcow2']['error']
    assert chains['in.qcow2']['length'] == 3
    errs = errors(rep)
    assert 'loops' in errs['self.qcow2']
    assert any('loops' in errs.get(f, '') for f in ('a.qcow2', 'b.qcow2'))


def test_hostile_files_each_get_an_error(tmp_path):
    outside = tmp_path / 'outside'
    outside.mkdir()
    (outside / 'secret.img').write_bytes(bytes(512))
    d = tmp_path / 'pool'
    d.mkdir()
    write_qcow2(d / 'missing.qcow2', backing='nothere.qcow2')
    write_qcow2(d / 'out.qcow2', backing='../outside/secret.img')
    write_qcow2(d / 'json.qcow2', backing='json:{"file": {}}')
    write_qcow2(d / 'nfs.qcow2', backing='nfs://10.0.0.1/e/x.qcow2')
    write_qcow2(d / 'http.qcow2', backing='http://10.0.0.1/x.qcow2')
    write_qcow2(d / 'bits.qcow2', cluster_bits=30)
    write_qcow2(d / 'utf.qcow2', name_bytes=b'\xff\xfe.qcow2')
    write_qcow2(d / 'good.qcow2')
    write_qcow2(d / 'bytrunc.qcow2', backing='trunc.qcow2')
    (d / 'trunc.qcow2').write_bytes(pool.QCOW2_MAGIC + bytes(20))
    (d / 'notes.txt').write_text('not an image\n')
    rep = scan(d)
    errs = errors(rep)
    assert 'does not exist' in errs['missing.qcow2']
    assert 'outside the scanned pool' in errs['out.qcow2']
    assert 'json:' in errs['json.qcow2']
    # an nfs:// name is a URL, outside the pool unless it was scanned
    assert 'outside the scanned pool' in errs['nfs.qcow2']
    assert 'protocol' in errs['http.qcow2']
    assert 'cluster bits' in errs['bits.qcow2']
    assert 'UTF-8' in errs['utf.qcow2']
    assert 'truncated' in errs['trunc.qcow2']
    assert 'trunc.qcow2' in errs['bytrunc.qcow2']
    assert 'good.qcow2' not in errs and 'notes.txt' not in errs
    chains = by_top(rep)
    # a top whose chain ends early is still a chain, with its error
    assert chains['missing.qcow2']['length'] == 1
    assert 'does not exist' in chains['missing.qcow2']['error']
    assert chains['good.qcow2']['length'] == 1
    assert 'bits.qcow2' not in chains
    assert rep['files'] == 11


def test_a_file_that_changes_while_read(tmp_path, monkeypatch):
    write_qcow2(tmp_path / 'busy.qcow2')
    real = os.fstat
    calls = []

    def fstat(fd):
        st = real(fd)
        calls.append(1)
        if len(calls) % 2 == 0:
            return os.stat_result((st.st_mode, st.st_ino, st.st_dev,
                                   st.st_nlink, st.st_uid, st.st_gid,
                                   st.st_size + 512, 0, 0, 0))
        return st
    monkeypatch.setattr(pool.os, 'fstat', fstat)
    rep = scan(tmp_path)
    assert 'changed while it was read' in errors(rep)['busy.qcow2']


def test_summary_and_missing_path(tmp_path):
    indexed_chain(tmp_path, ['l1.qcow2', 'l2.qcow2'])
    rep = scan(tmp_path, tmp_path / 'nope')
    text = pool.summary(rep)
    assert text.splitlines()[0] == '2 files, 1 chains, 1 errors'
    assert 'backing index: valid 1' in text
    assert errors(rep) == {'nope': 'no such file or directory'}


def test_command_line(tmp_path, capsys):
    write_qcow2(tmp_path / 'a.qcow2')
    out = tmp_path / 'out' / 'r.json'
    assert pool.main(['scan', str(tmp_path), '--json', str(out)]) == 0
    assert out.exists()
    with pytest.raises(SystemExit) as e:
        pool.main(['scan'])
    assert e.value.code == 2


def test_a_header_longer_than_the_first_read(tmp_path):
    """A header whose extensions push the backing name past the first
    4 KiB is read again, up to its first cluster"""
    write_qcow2(tmp_path / 'base.qcow2')
    write_qcow2(tmp_path / 'top.qcow2', backing='base.qcow2',
                ext=sqbi(2, b'\x01' * 16), pad=16384)
    # move the name 5000 bytes on: a big unknown extension before it
    data = bytearray((tmp_path / 'top.qcow2').read_bytes())
    unknown = struct.pack('>II', 0x12345678, 5000) + bytes(5000)
    name_at = struct.unpack('>Q', data[8:16])[0]
    name_len = struct.unpack('>I', data[16:20])[0]
    name = bytes(data[name_at:name_at + name_len])
    data[104:104] = unknown
    data[8:16] = struct.pack('>Q', name_at + len(unknown))
    data = data[:name_at + len(unknown)] + name + bytes(16384)
    (tmp_path / 'top.qcow2').write_bytes(bytes(data))
    rep = scan(tmp_path)
    assert not rep['errors']
    assert by_top(rep)['top.qcow2']['length'] == 2


def test_generated_pool_matches_its_manifest(tmp_path):
    from sqemu import pool_generator

    d = tmp_path / 'pool'
    gen = pool_generator.Generator(str(d), 400, seed=3)
    man = gen.run()
    assert os.path.exists(str(d) + '.manifest.json')
    files = [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs]
    assert len(files) == man['files'] >= 400
    # every file is a qcow2 image with 64 KiB clusters, sparse
    for f in files[:50]:
        img = pool.read_image(f)
        assert img.format == 'qcow2'
        assert os.stat(f).st_blocks * 512 <= 64 << 10
    rep = scan(d)
    assert not rep['errors'] and rep['files'] == man['files']
    assert {c['top']: c['length'] for c in rep['chains']} == \
        {c['top']: c['length'] for c in man['chains']}
    assert {c['top']: c['virtual_size'] for c in rep['chains']} == \
        {c['top']: c['virtual_size'] for c in man['chains']}
    # base images of 5 layers under every VM disk: every chain shares
    assert all(c['shared_layers'] >= pool_generator.BASE_LAYERS
               for c in rep['chains'] if c['length'] > 5)
    # the same seed makes the same pool
    again = pool_generator.Generator(str(tmp_path / 'again'), 400, seed=3)
    assert [c['length'] for c in again.run()['chains']] == \
        [c['length'] for c in man['chains']]


def test_own_layers_distribution():
    import random
    from sqemu import pool_generator

    rng = random.Random(7)
    n = [pool_generator.own_layers(rng) for _ in range(20000)]
    short = sum(1 for x in n if x < 10) / len(n)
    bump = sum(1 for x in n if 26 <= x <= 30) / len(n)
    tail = sum(1 for x in n if x > 200) / len(n)
    assert short > 0.5
    assert 0.12 < bump < 0.25
    assert 0.01 < tail < 0.06
    assert max(n) < 1000


def test_ranking_and_snapshot_intervals(tmp_path):
    # a deep unindexed chain, a shallow one, an indexed one, a lone image
    for i in range(1, 6):
        write_qcow2(tmp_path / ('deep%d.qcow2' % i),
                    backing='deep%d.qcow2' % (i - 1) if i > 1 else None)
        os.utime(tmp_path / ('deep%d.qcow2' % i), (1000 + 3600 * i,) * 2)
    write_qcow2(tmp_path / 'sh1.qcow2', size=128 * MiB)
    write_qcow2(tmp_path / 'sh2.qcow2', size=128 * MiB, backing='sh1.qcow2')
    indexed_chain(tmp_path, ['ix1.qcow2', 'ix2.qcow2', 'ix3.qcow2'])
    write_qcow2(tmp_path / 'lone.qcow2')
    rep = scan(tmp_path)
    chains = by_top(rep)
    assert chains['deep5.qcow2']['convert_rank'] == 1
    assert chains['sh2.qcow2']['convert_rank'] == 2
    assert chains['ix3.qcow2']['convert_rank'] is None    # valid already
    assert chains['lone.qcow2']['convert_rank'] is None   # no chain
    # deep1..deep4 were frozen an hour apart (deep5, the top, is not a
    # snapshot)
    assert chains['deep5.qcow2']['median_snapshot_interval_s'] == 3600
    assert chains['lone.qcow2']['median_snapshot_interval_s'] is None
    text = pool.summary(rep)
    assert '1. %s (5 layers, off)' % (tmp_path / 'deep5.qcow2') in text


def test_plots(tmp_path):
    write_qcow2(tmp_path / 'a.qcow2')
    write_qcow2(tmp_path / 'b.qcow2', backing='a.qcow2')
    written = pool.plot(scan(tmp_path), str(tmp_path / 'plots'))
    assert len(written) == 4
    for p in written:
        with open(p, 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n'


# nfs:// roots, on a fake client that serves local directories as exports
# (nfs_client's own tests cover URLs and the library; the iotest
# sqemu-pool-scan-nfs reads real NFS servers)

class FakeFile:
    def __init__(self, export, path):
        self.export = export
        self.local = export.local(path)

    def pread(self, size, offset=0):
        with open(self.local, 'rb') as f:
            f.seek(offset)
            return f.read(size)

    def stat(self):
        return self.export.stat_local(os.stat(self.local))

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class FakeExport:
    """Export @export of server @server, its files those of directory
    @directory; @fail: paths whose reads fail; @changes: paths whose
    modification time changes while they are read"""

    def __init__(self, server, export, directory):
        self.server = server
        self.export = export
        self.directory = str(directory)
        self.fail = set()
        self.changes = set()

    def url(self, path=''):
        return nfs_client.Url(self.server, path or self.export)

    def local(self, path):
        assert path == self.export or path.startswith(self.export + '/')
        return self.directory + path[len(self.export):]

    def stat_local(self, st, mtime_ns=None):
        kind = 'file' if stat.S_ISREG(st.st_mode) else \
            'dir' if stat.S_ISDIR(st.st_mode) else 'other'
        return nfs_client.Stat((self.server, st.st_dev, st.st_ino), kind,
                               st.st_size, mtime_ns or st.st_mtime_ns)

    def stat(self, path):
        try:
            return self.stat_local(os.stat(self.local(path)))
        except FileNotFoundError:
            raise nfs_client.NfsError('stat %s: NFS3ERR_NOENT' % path, 2)

    def walk(self, path, onerror=None):
        found = []
        for d, _, files in os.walk(self.local(path)):
            for f in files:
                local = os.path.join(d, f)
                st = os.lstat(local)
                if stat.S_ISREG(st.st_mode):
                    found.append((self.export + local[len(self.directory):],
                                  self.stat_local(st)))
        return sorted(found, key=lambda f: f[0])

    def open(self, path):
        return FakeFile(self, path)

    def read_heads(self, paths, size):
        for path in paths:
            if path in self.fail:
                yield (path, None, None,
                       nfs_client.NfsError('read %s: NFS3ERR_IO' % path, 5))
                continue
            after = self.stat(path)
            if path in self.changes:
                after.mtime_ns += 1
            yield (path, FakeFile(self, path).pread(size), after, None)


class FakeClient:
    """Mounts the FakeExports given; any other server cannot be reached"""

    def __init__(self, *exports):
        self.exports = exports
        self.mounted = []

    def find(self, url):
        for e in self.exports:
            if url.within(e.url()) and e in self.mounted:
                return e
        return None

    def export_for(self, url):
        for e in self.exports:
            if url.within(e.url()):
                self.mounted.append(e)
                return e
        raise nfs_client.NfsError('cannot mount %s:%s: connect() to server '
                                  'failed' % (url.server, url.path))

    def close(self):
        pass


def nfs_scan(client, *paths):
    return pool.Scan([str(p) for p in paths], nfs=client).report()


def nfs_pool(tmp_path):
    """Two nodes: n0 serving tmp/node0 as /node0, n1 tmp/node1 as /node1"""
    for d in ('node0/pool/vm1', 'node1'):
        (tmp_path / d).mkdir(parents=True)
    return (FakeExport('n0', '/node0', tmp_path / 'node0'),
            FakeExport('n1', '/node1', tmp_path / 'node1'))


def test_nfs_chains_relative_and_across_nodes(tmp_path):
    n0, n1 = nfs_pool(tmp_path)
    p0 = tmp_path / 'node0' / 'pool'
    write_qcow2(p0 / 'base.qcow2')
    write_qcow2(p0 / 'mid.qcow2', backing='base.qcow2')
    write_qcow2(p0 / 'top.qcow2', backing='mid.qcow2')
    write_qcow2(p0 / 'vm1' / 'disk.qcow2', backing='../mid.qcow2')
    # across nodes: an nfs:// name, then relative names on node 1
    write_qcow2(tmp_path / 'node1' / 'n1a.qcow2',
                backing='nfs://n0/node0/pool/top.qcow2')
    write_qcow2(tmp_path / 'node1' / 'n1b.qcow2', backing='n1a.qcow2')
    client = FakeClient(n0, n1)
    rep = nfs_scan(client, 'nfs://n0/node0/pool', 'nfs://N1/node1/')
    assert not rep['errors'] and rep['files'] == 6
    chains = {c['top']: c for c in rep['chains']}
    assert sorted(chains) == ['nfs://n0/node0/pool/vm1/disk.qcow2',
                              'nfs://n1/node1/n1b.qcow2']
    assert chains['nfs://n1/node1/n1b.qcow2']['length'] == 5
    assert chains['nfs://n1/node1/n1b.qcow2']['shared_layers'] == 2
    assert chains['nfs://n0/node0/pool/vm1/disk.qcow2']['length'] == 3


def test_nfs_hostile_files_each_get_an_error(tmp_path):
    n0, n1 = nfs_pool(tmp_path)
    p0 = tmp_path / 'node0' / 'pool'
    write_qcow2(p0 / 'good.qcow2')
    write_qcow2(p0 / 'loop-a.qcow2', backing='loop-b.qcow2')
    write_qcow2(p0 / 'loop-b.qcow2', backing='loop-a.qcow2')
    write_qcow2(p0 / 'into-loop.qcow2', backing='loop-a.qcow2')
    write_qcow2(p0 / 'orphan.qcow2', backing='gone.qcow2')
    (p0 / 'trunc.qcow2').write_bytes(pool.QCOW2_MAGIC + bytes(20))
    write_qcow2(p0 / 'on-trunc.qcow2', backing='trunc.qcow2')
    # out of the root: up a directory, another server, a local file
    write_qcow2(tmp_path / 'node0' / 'secret.qcow2')
    write_qcow2(p0 / 'up.qcow2', backing='../secret.qcow2')
    write_qcow2(p0 / 'far.qcow2', backing='nfs://n9/e/x.qcow2')
    write_qcow2(p0 / 'local.qcow2', backing='/etc/passwd')
    write_qcow2(p0 / 'query.qcow2', backing='good.qcow2?version=4')
    write_qcow2(p0 / 'bad-read.qcow2')
    write_qcow2(p0 / 'busy.qcow2')
    n0.fail.add('/node0/pool/bad-read.qcow2')
    n0.changes.add('/node0/pool/busy.qcow2')
    client = FakeClient(n0, n1)
    rep = nfs_scan(client, 'nfs://n0/node0/pool', 'nfs://dead/e')
    errs = {e['file'].replace('nfs://n0/node0/pool/', ''): e['error']
            for e in rep['errors']}
    assert 'loops back' in errs['loop-b.qcow2']
    assert 'gone.qcow2 does not exist' in errs['orphan.qcow2']
    assert 'truncated' in errs['trunc.qcow2']
    assert 'trunc.qcow2' in errs['on-trunc.qcow2']
    for f in ('up.qcow2', 'far.qcow2', 'local.qcow2'):
        assert 'outside the scanned pool' in errs[f], f
    assert 'unknown NFS parameter version' in errs['query.qcow2']
    assert 'NFS3ERR_IO' in errs['bad-read.qcow2']
    assert 'changed while it was read' in errs['busy.qcow2']
    # the server that cannot be reached: one error naming the URL
    assert errs['nfs://dead/e'].startswith('cannot mount dead:/e')
    assert 'good.qcow2' not in errs
    chains = {c['top'].replace('nfs://n0/node0/pool/', ''): c
              for c in rep['chains']}
    assert chains['good.qcow2']['length'] == 1
    assert chains['into-loop.qcow2']['length'] == 3
    assert 'loops' in chains['into-loop.qcow2']['error']
    assert rep['files'] == 13


def test_a_mix_of_local_and_nfs_roots(tmp_path):
    n0, _ = nfs_pool(tmp_path)
    p0 = tmp_path / 'node0' / 'pool'
    local = tmp_path / 'local'
    local.mkdir()
    write_qcow2(local / 'base.qcow2')
    # on nfs:// an absolute name is a local path, as QEMU opens it
    write_qcow2(p0 / 'mid.qcow2', backing=str(local / 'base.qcow2'))
    write_qcow2(local / 'top.qcow2', backing='nfs://n0/node0/pool/mid.qcow2')
    rep = nfs_scan(FakeClient(n0), local, 'nfs://n0/node0/pool')
    assert not rep['errors'] and rep['files'] == 3
    assert [(c['top'], c['length']) for c in rep['chains']] == \
        [(str(local / 'top.qcow2'), 3)]
    # without the nfs:// root, the nfs:// name is outside the pool
    rep = nfs_scan(FakeClient(n0), local)
    assert 'outside the scanned pool' in \
        errors(rep)['top.qcow2']


def test_nfs_backing_name_through_a_symbolic_link(tmp_path):
    n0, _ = nfs_pool(tmp_path)
    p0 = tmp_path / 'node0' / 'pool'
    write_qcow2(p0 / 'base.qcow2')
    os.symlink('base.qcow2', p0 / 'current.qcow2')
    os.symlink('nothere.qcow2', p0 / 'dangling.qcow2')
    write_qcow2(p0 / 'top.qcow2', backing='current.qcow2')
    write_qcow2(p0 / 'top2.qcow2', backing='dangling.qcow2')
    rep = nfs_scan(FakeClient(n0), 'nfs://n0/node0/pool')
    chains = {c['top']: c for c in rep['chains']}
    assert chains['nfs://n0/node0/pool/top.qcow2']['length'] == 2
    assert 'does not exist' in chains['nfs://n0/node0/pool/top2.qcow2'][
        'error']
    assert rep['files'] == 3


def test_nfs_roots_without_libnfs(tmp_path, monkeypatch):
    monkeypatch.setattr(nfs_client, '_library', None)
    monkeypatch.setattr(nfs_client, 'LIBRARY', 'libnfs-not-here.so.99')
    write_qcow2(tmp_path / 'a.qcow2')
    rep = scan(tmp_path, 'nfs://192.0.2.1/export')
    assert [os.path.basename(c['top']) for c in rep['chains']] == ['a.qcow2']
    assert len(rep['errors']) == 1
    e = rep['errors'][0]
    assert e['file'] == 'nfs://192.0.2.1/export'
    assert 'libnfs-not-here.so.99' in e['error'] and 'libnfs13' in e['error']


def test_index_refuses_nfs_paths(capsys):
    with pytest.raises(SystemExit) as e:
        pool.main(['index', 'nfs://h/e'])
    assert e.value.code == 2
    assert 'nfs://' in capsys.readouterr().err
