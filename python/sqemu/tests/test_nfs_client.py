# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.nfs_client: nfs:// URLs as QEMU 7.2 reads them, the directory a
# relative backing name resolves against, the layout of libnfs 4.0's
# structures, and the error when libnfs is missing.  Reading from a real
# server is the iotest sqemu-pool-scan-nfs's.

import ctypes

import pytest

from sqemu import nfs_client
from sqemu.nfs_client import BadUrl, Url, parse_url


def test_parse_url():
    u = parse_url('nfs://Server.Example/export/dir/disk.qcow2')
    assert (u.server, u.path) == ('server.example', '/export/dir/disk.qcow2')
    assert str(u) == 'nfs://server.example/export/dir/disk.qcow2'
    # QEMU decodes %-escapes, ignores the port, normalises nothing; the
    # server does resolve '.' and '..', so the scan compares paths so
    assert parse_url('nfs://h:2049/e/a%20b.qcow2').path == '/e/a b.qcow2'
    assert str(parse_url('nfs://h/e/a%20b.qcow2')) == 'nfs://h/e/a%20b.qcow2'
    assert parse_url('nfs://h/e/./d/../x.qcow2').path == '/e/x.qcow2'
    assert parse_url('nfs://h//e//x.qcow2/').path == '/e/x.qcow2'
    assert parse_url('nfs://h/../../x').path == '/x'
    assert parse_url('nfs://h/e?uid=0&readahead=0x1000').parameters == \
        {'uid': 0, 'readahead': 4096}
    assert parse_url('nfs://h/e/x') == parse_url('nfs://H/e/y/../x')
    assert len({parse_url('nfs://h/e/x'), parse_url('nfs://h/e//x')}) == 1


@pytest.mark.parametrize('text, why', [
    ('/local/path', 'not an nfs:// URL'),
    ('NFS://h/e', 'not an nfs:// URL'),
    ('nfs:///e/x', 'no host'),
    ('nfs://h', 'no path'),
    ('nfs://h/', 'no path'),
    ('nfs://h/e/x?version=4', 'unknown NFS parameter version'),
    ('nfs://h/e/x?uid', 'no value for parameter uid'),
    ('nfs://h/e/x?uid=me', 'bad value for parameter uid'),
    ('nfs://h/e/x#frag', 'fragment'),
])
def test_bad_urls(text, why):
    with pytest.raises(BadUrl) as e:
        parse_url(text)
    assert why in str(e.value)


def test_dirname_and_join():
    # patch 0054: the image's own directory (stock 7.2: the image's path)
    top = parse_url('nfs://h/node0/vm1/l2.qcow2')
    assert str(nfs_client.dirname(top)) == 'nfs://h/node0/vm1'
    assert nfs_client.dirname(top).join('l1.qcow2') == \
        parse_url('nfs://h/node0/vm1/l1.qcow2')
    assert nfs_client.dirname(top).join('../base.qcow2') == \
        parse_url('nfs://h/node0/base.qcow2')
    assert str(nfs_client.dirname(parse_url('nfs://h/x.qcow2'))) == \
        'nfs://h/'


def test_within():
    root = parse_url('nfs://h/node0/pool')
    assert parse_url('nfs://h/node0/pool').within(root)
    assert parse_url('nfs://h/node0/pool/a/b.qcow2').within(root)
    assert not parse_url('nfs://h/node0/pool2/b.qcow2').within(root)
    assert not parse_url('nfs://h/node0/b.qcow2').within(root)
    assert not parse_url('nfs://g/node0/pool/b.qcow2').within(root)
    assert parse_url('nfs://h/x/y').within(Url('h', '/'))


def test_structure_layouts():
    """struct nfsdirent and struct nfs_stat_64 as libnfs 4.0's libnfs.h
    lays them out on x86-64 (offsets printed by a C program with
    offsetof against /usr/include/nfsc/libnfs.h, libnfs-dev 4.0.0)"""
    offsets = {'next': 0, 'name': 8, 'inode': 16, 'type': 24, 'mode': 28,
               'size': 32, 'atime': 40, 'mtime': 56, 'ctime': 72,
               'uid': 88, 'gid': 92, 'nlink': 96, 'dev': 104, 'rdev': 112,
               'blksize': 120, 'blocks': 128, 'used': 136,
               'atime_nsec': 144, 'mtime_nsec': 148, 'ctime_nsec': 152}
    d = nfs_client.NfsDirent
    assert {f: getattr(d, f).offset for f in offsets} == offsets
    assert ctypes.sizeof(d) == 160
    assert ctypes.sizeof(nfs_client.NfsStat64) == 136
    assert nfs_client.NfsStat64.mtime_nsec.offset == 14 * 8


def test_a_dirent_read_through_the_structure():
    name = ctypes.create_string_buffer(b'layer-0001.qcow2')
    raw = bytearray(160)
    ctypes.c_uint64.from_buffer(raw, 8).value = ctypes.addressof(name)
    ctypes.c_uint64.from_buffer(raw, 16).value = 4242
    ctypes.c_uint32.from_buffer(raw, 24).value = nfs_client.NF3REG
    ctypes.c_uint64.from_buffer(raw, 32).value = 196608
    ctypes.c_long.from_buffer(raw, 56).value = 1700000000
    ctypes.c_uint64.from_buffer(raw, 104).value = 77
    ctypes.c_uint32.from_buffer(raw, 148).value = 123
    e = nfs_client.NfsDirent.from_buffer(raw)
    assert (e.name, e.inode, e.type, e.size, e.mtime.tv_sec, e.dev,
            e.mtime_nsec) == (b'layer-0001.qcow2', 4242, 1, 196608,
                              1700000000, 77, 123)


def test_library_missing(monkeypatch):
    monkeypatch.setattr(nfs_client, '_library', None)
    monkeypatch.setattr(nfs_client, 'LIBRARY', 'libnfs-not-here.so.99')
    with pytest.raises(nfs_client.LibraryMissing) as e:
        nfs_client.load_library()
    assert 'libnfs-not-here.so.99' in str(e.value)
    assert 'Debian package libnfs13' in str(e.value)
    # a Client says so when it first needs to mount
    with pytest.raises(nfs_client.LibraryMissing):
        nfs_client.Client().export_for(parse_url('nfs://192.0.2.1/e'))


def test_a_library_without_the_functions(monkeypatch):
    """An older or other libnfs.so.13 lacking a function is missing too"""
    class Empty:
        pass

    monkeypatch.setattr(nfs_client, '_library', None)
    monkeypatch.setattr(nfs_client.ctypes, 'CDLL', lambda name: Empty())
    with pytest.raises(nfs_client.LibraryMissing) as e:
        nfs_client.load_library()
    assert 'libnfs13' in str(e.value)


class FakeLib:
    """Just enough of libnfs for Client.export_for: mounts succeed only
    for @exports (server, path), the others are refused or unreachable"""

    def __init__(self, exports, unreachable=()):
        self.exports = exports
        self.unreachable = unreachable
        self.mounts = []
        self.error = b''

    def nfs_init_context(self):
        return 1

    def nfs_destroy_context(self, ctx):
        pass

    def nfs_set_timeout(self, *a):
        pass

    nfs_set_tcp_syncnt = nfs_set_autoreconnect = nfs_set_timeout

    def nfs_get_error(self, ctx):
        return self.error

    def nfs_mount(self, ctx, server, path):
        self.mounts.append((server.decode(), path.decode()))
        if server.decode() in self.unreachable:
            self.error = b'connect() to server failed'
            return -5
        if (server.decode(), path.decode()) in self.exports:
            return 0
        self.error = b'Mount failed with error MNT3ERR_ACCES(13)'
        return -13


def test_one_mount_per_export():
    lib = FakeLib({('h', '/srv/pool')}, unreachable=('dead',))
    c = nfs_client.Client(lib)
    e = c.export_for(parse_url('nfs://h/srv/pool/vm1'))
    assert e.export == '/srv/pool'
    # tried from the top down: /srv refused, /srv/pool mounted
    assert lib.mounts == [('h', '/srv'), ('h', '/srv/pool')]
    assert c.export_for(parse_url('nfs://h/srv/pool/vm2')) is e
    assert c.find(parse_url('nfs://h/srv/pool/vm2/x.qcow2')) is e
    assert c.find(parse_url('nfs://h/srv/other')) is None
    assert len(lib.mounts) == 2
    assert e.relative('/srv/pool/vm2/x') == '/vm2/x'
    assert e.relative('/srv/pool') == '/'
    with pytest.raises(nfs_client.NfsError):
        e.relative('/srv/poolx/y')
    # refused all the way down: the error of the deepest
    with pytest.raises(nfs_client.NfsError) as err:
        c.export_for(parse_url('nfs://h/nope/x'))
    assert 'h:/nope/x' in str(err.value) and 'MNT3ERR' in str(err.value)
    # a server that cannot be reached is tried once
    for _ in range(2):
        with pytest.raises(nfs_client.NfsError) as err:
            c.export_for(parse_url('nfs://dead/srv/pool'))
        assert 'connect() to server failed' in str(err.value)
    assert lib.mounts.count(('dead', '/srv')) == 1
    assert ('dead', '/srv/pool') not in lib.mounts
