# SPDX-License-Identifier: GPL-2.0-or-later
#
# nfs_client: reading the directories and the first bytes of the files of
# NFS exports (NFSv3), for pool scan (pool.py), through the installed
# libnfs (Debian package libnfs13, libnfs.so.13) over ctypes: no kernel
# NFS client, no mount point, no root.
#
#   Client().export_for(url)  one mount, so one TCP connection, per server
#                             directory, shared by every URL under it
#   Export.walk(path)         the regular files under a directory,
#                             recursively, with their attributes (READDIRPLUS:
#                             no request per file)
#   Export.open(path)         a File: stat(), pread(), close()
#   Export.stat(path)         a file's attributes, symbolic links followed
#
# and the nfs:// URLs as QEMU 7.2's nfs driver reads them: parse_url()
# (the path percent-decoded, the query's parameters checked as QEMU checks
# them, a port ignored as QEMU ignores it), str(Url) back, and dirname(),
# the directory that a relative backing file name of an image on nfs://
# resolves against (with sQemu's patch 0054: the image's own directory).
#
# The calls are libnfs's synchronous ones, each waiting for its reply,
# with a timeout (TIMEOUT_MS) and without libnfs's reconnection: a server
# that goes away fails the calls on its mount, once each, instead of
# hanging the scan.  If libnfs is missing, LibraryMissing names the
# library and the package.

import ctypes
import errno
import os
import posixpath
import select
import urllib.parse

LIBRARY = 'libnfs.so.13'
PACKAGE = 'libnfs13'
# NFSv3 file types (libnfs-raw-nfs.h's ftype3)
NF3REG, NF3DIR, NF3LNK = 1, 2, 5
# How long one request waits for its reply, in milliseconds (libnfs counts
# whole seconds)
TIMEOUT_MS = 15000
# Connection attempts (SYNs) before connecting gives up: 3 is about 15 s
TCP_SYNCNT = 3
# How many files read_heads() reads at a time over one connection
DEPTH = 64
# The query parameters QEMU 7.2's nfs driver takes (block/nfs.c), each
# with an integer value; uid and gid change who reads the file
QEMU_PARAMETERS = ('uid', 'gid', 'tcp-syncnt', 'readahead', 'pagecache',
                   'debug')
# What a path may hold unescaped in the URLs this module writes
URL_SAFE = "/!$&'()*+,;=:@-._~"


class NfsError(Exception):
    """A request failed; @errno the error number if libnfs gave one"""

    def __init__(self, message, error=None):
        super().__init__(message)
        self.errno = error


class LibraryMissing(NfsError):
    """libnfs cannot be loaded"""


class BadUrl(NfsError):
    """A text that is no nfs:// URL QEMU would open"""


# URLs

class Url:
    """An nfs:// URL: @server (a host name or address, lower case) and
    @path (absolute, percent-decoded, normalised: no '.', '..' or empty
    components, no trailing slash); @parameters its query, checked"""

    def __init__(self, server, path, parameters=None):
        self.server = server
        self.path = path
        self.parameters = parameters or {}

    def __str__(self):
        return 'nfs://%s%s' % (self.server,
                               urllib.parse.quote(self.path, safe=URL_SAFE))

    def __repr__(self):
        return 'Url(%r)' % str(self)

    def __eq__(self, other):
        return isinstance(other, Url) and \
            (self.server, self.path) == (other.server, other.path)

    def __hash__(self):
        return hash((self.server, self.path))

    def join(self, name):
        """The URL of @name (relative) in the directory @self"""
        return Url(self.server, normalise(self.path + '/' + name))

    def within(self, root):
        """True if @self is @root or lies under it"""
        return self.server == root.server and (
            self.path == root.path or root.path == '/' or
            self.path.startswith(root.path + '/'))


def is_url(text):
    """True if @text names an nfs:// URL (QEMU's scheme test: exact)"""
    return text.startswith('nfs://')


def normalise(path):
    """@path (absolute) without '.', '..' and empty components: what the
    server's directories make of it ('..' of the root is the root)"""
    path = posixpath.normpath('/' + path.lstrip('/'))
    return '/' + path.lstrip('/')


def parse_url(text):
    """The Url of @text, or BadUrl saying why QEMU 7.2's nfs driver would
    not open it: no host, no path, a query parameter it does not know or
    whose value is not a number"""
    if not is_url(text):
        raise BadUrl('%s is not an nfs:// URL' % text)
    try:
        parts = urllib.parse.urlsplit(text)
        host = parts.hostname
    except ValueError as e:
        raise BadUrl('%s: %s' % (text, e))
    if not host:
        raise BadUrl('%s: no host name' % text)
    if not parts.path or parts.path == '/':
        raise BadUrl('%s: no path' % text)
    if parts.fragment:
        raise BadUrl('%s: a fragment (#%s)' % (text, parts.fragment))
    parameters = {}
    if parts.query:
        for item in parts.query.split('&'):
            name, equals, value = item.partition('=')
            if not equals:
                raise BadUrl('%s: no value for parameter %s' % (text, name))
            if name not in QEMU_PARAMETERS:
                raise BadUrl('%s: unknown NFS parameter %s' % (text, name))
            try:
                parameters[name] = int(value, 0)
            except ValueError:
                raise BadUrl('%s: bad value for parameter %s' % (text, name))
    return Url(host.lower(), normalise(urllib.parse.unquote(parts.path)),
               parameters)


def dirname(url):
    """The directory a relative backing file name of the image at @url
    resolves against, as QEMU 7.2 with patch 0054 makes it: the image's
    own directory ('nfs://HOST/DIR/'; stock 7.2 makes it the image's own
    path, 'nfs://HOST/DIR/IMAGE/')"""
    return Url(url.server, posixpath.dirname(url.path))


# The library

class Stat:
    """A file's attributes: @ident (server, device, inode), @kind ('file',
    'dir', 'link' or 'other'), @size in bytes, @mtime_ns"""

    def __init__(self, ident, kind, size, mtime_ns):
        self.ident = ident
        self.kind = kind
        self.size = size
        self.mtime_ns = mtime_ns


KINDS = {NF3REG: 'file', NF3DIR: 'dir', NF3LNK: 'link'}
# S_IFMT of nfs_stat_64's mode: libnfs builds it from the file type
MODE_KINDS = {0o100000: 'file', 0o040000: 'dir', 0o120000: 'link'}


class Timeval(ctypes.Structure):
    _fields_ = [('tv_sec', ctypes.c_long), ('tv_usec', ctypes.c_long)]


class NfsDirent(ctypes.Structure):
    """struct nfsdirent of libnfs 4.0 (libnfs.h; tests check the offsets)"""


NfsDirent._fields_ = [
    ('next', ctypes.POINTER(NfsDirent)),
    ('name', ctypes.c_char_p),
    ('inode', ctypes.c_uint64),
    ('type', ctypes.c_uint32),
    ('mode', ctypes.c_uint32),
    ('size', ctypes.c_uint64),
    ('atime', Timeval),
    ('mtime', Timeval),
    ('ctime', Timeval),
    ('uid', ctypes.c_uint32),
    ('gid', ctypes.c_uint32),
    ('nlink', ctypes.c_uint32),
    ('dev', ctypes.c_uint64),
    ('rdev', ctypes.c_uint64),
    ('blksize', ctypes.c_uint64),
    ('blocks', ctypes.c_uint64),
    ('used', ctypes.c_uint64),
    ('atime_nsec', ctypes.c_uint32),
    ('mtime_nsec', ctypes.c_uint32),
    ('ctime_nsec', ctypes.c_uint32),
]


class NfsStat64(ctypes.Structure):
    """struct nfs_stat_64 of libnfs 4.0"""
    _fields_ = [(name, ctypes.c_uint64) for name in (
        'dev', 'ino', 'mode', 'nlink', 'uid', 'gid', 'rdev', 'size',
        'blksize', 'blocks', 'atime', 'mtime', 'ctime', 'atime_nsec',
        'mtime_nsec', 'ctime_nsec', 'used')]


# void (*nfs_cb)(int err, struct nfs_context *nfs, void *data,
#                void *private_data)
NFS_CB = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p,
                          ctypes.c_void_p, ctypes.c_void_p)


def _prototypes(lib):
    vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    pvp = ctypes.POINTER(ctypes.c_void_p)
    u64 = ctypes.c_uint64
    for name, res, args in (
            ('nfs_get_fd', i, [vp]),
            ('nfs_which_events', i, [vp]),
            ('nfs_service', i, [vp, i]),
            ('nfs_open_async', i, [vp, cp, i, NFS_CB, vp]),
            ('nfs_pread_async', i, [vp, vp, u64, u64, NFS_CB, vp]),
            ('nfs_fstat64_async', i, [vp, vp, NFS_CB, vp]),
            ('nfs_close_async', i, [vp, vp, NFS_CB, vp]),
            ('nfs_init_context', vp, []),
            ('nfs_destroy_context', None, [vp]),
            ('nfs_get_error', cp, [vp]),
            ('nfs_set_timeout', None, [vp, i]),
            ('nfs_set_tcp_syncnt', None, [vp, i]),
            ('nfs_set_autoreconnect', None, [vp, i]),
            ('nfs_mount', i, [vp, cp, cp]),
            ('nfs_opendir', i, [vp, cp, pvp]),
            ('nfs_readdir', ctypes.POINTER(NfsDirent), [vp, vp]),
            ('nfs_closedir', None, [vp, vp]),
            ('nfs_stat64', i, [vp, cp, ctypes.POINTER(NfsStat64)]),
            ('nfs_open', i, [vp, cp, i, pvp]),
            ('nfs_fstat64', i, [vp, vp, ctypes.POINTER(NfsStat64)]),
            ('nfs_pread', i, [vp, vp, ctypes.c_uint64, ctypes.c_uint64,
                              vp]),
            ('nfs_close', i, [vp, vp])):
        func = getattr(lib, name)
        func.restype = res
        func.argtypes = args
    return lib


_library = None


def load_library(name=None):
    """libnfs, its functions typed; LibraryMissing if it cannot be loaded"""
    global _library
    if name is None and _library is not None:
        return _library
    try:
        lib = _prototypes(ctypes.CDLL(name or LIBRARY))
    except (OSError, AttributeError) as e:
        raise LibraryMissing('cannot load %s, which reads nfs:// exports '
                             '(install Debian package %s): %s' %
                             (name or LIBRARY, PACKAGE, e))
    if name is None:
        _library = lib
    return lib


def _kind(mode):
    return MODE_KINDS.get(mode & 0o170000, 'other')


class File:
    """An open file of an Export"""

    def __init__(self, export, path, handle):
        self.export = export
        self.path = path
        self.handle = handle

    def stat(self):
        st = NfsStat64()
        self.export.check(self.export.lib.nfs_fstat64(
            self.export.context, self.handle, ctypes.byref(st)),
            'fstat', self.path)
        return self.export.stat_of(st)

    def pread(self, size, offset=0):
        """Up to @size bytes from @offset: fewer only at the end of the
        file (libnfs splits a read larger than the server's maximum)"""
        buf = ctypes.create_string_buffer(size)
        got = self.export.check(self.export.lib.nfs_pread(
            self.export.context, self.handle, offset, size, buf),
            'read', self.path)
        return buf.raw[:got]

    def close(self):
        if self.handle:
            self.export.lib.nfs_close(self.export.context, self.handle)
            self.handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Export:
    """The directory @export of NFS server @server, mounted (NFSv3): one
    libnfs context, one TCP connection.  Paths are absolute paths on the
    server (under @export), as in nfs:// URLs."""

    def __init__(self, server, export, lib=None, timeout_ms=TIMEOUT_MS):
        self.lib = lib or load_library()
        self.server = server
        self.export = export
        self.context = self.lib.nfs_init_context()
        if not self.context:
            raise NfsError('cannot make an NFS context for %s' % server)
        self.lib.nfs_set_timeout(self.context, timeout_ms)
        self.lib.nfs_set_tcp_syncnt(self.context, TCP_SYNCNT)
        self.lib.nfs_set_autoreconnect(self.context, 0)
        self.lost = None            # why the connection is gone
        self.callbacks = []         # what libnfs may call back
        ret = self.lib.nfs_mount(self.context, server.encode(),
                                 export.encode())
        if ret < 0:
            error = self.error(ret)
            if error == 'nfs_service failed':
                # what libnfs says of a connection refused or reset
                error = 'no connection (server down or unreachable; ' \
                    'libnfs: %s)' % error
            self.close()
            raise NfsError('cannot mount %s:%s: %s' % (server, export, error),
                           -ret)

    def url(self, path=''):
        return Url(self.server, path or self.export)

    def error(self, ret):
        text = self.lib.nfs_get_error(self.context)
        text = text.decode(errors='replace') if text else ''
        return text or os.strerror(-ret)

    def check(self, ret, what, path):
        """@ret of a call, or NfsError naming @path and the reason"""
        if ret >= 0:
            return ret
        if self.lost:
            raise NfsError(self.lost, -ret)
        error = self.error(ret)
        self.check_lost(-ret, error)
        raise NfsError('%s %s: %s' % (what, path, error), -ret)

    def check_lost(self, error, message):
        """Note the connection as lost if error @error (an errno) and
        @message say it is: the calls after fail at once, not each after
        its timeout"""
        if error in (errno.ETIMEDOUT, errno.EIO, errno.ENOTCONN,
                     errno.ECONNRESET, errno.EPIPE) and \
                'NFS3ERR' not in message:
            self.lost = 'connection to %s lost: %s' % (self.server, message)

    def relative(self, path):
        """@path as libnfs takes it: relative to the export's root"""
        if self.export == '/':
            return path
        if path == self.export:
            return '/'
        if not path.startswith(self.export + '/'):
            raise NfsError('%s is not under export %s' % (path, self.export))
        return path[len(self.export):]

    def stat_of(self, st):
        return Stat((self.server, st.dev, st.ino), _kind(st.mode), st.size,
                    st.mtime * 10**9 + st.mtime_nsec)

    def stat(self, path):
        """The attributes of @path, symbolic links followed"""
        st = NfsStat64()
        self.check(self.lib.nfs_stat64(self.context,
                                       self.relative(path).encode(),
                                       ctypes.byref(st)), 'stat', path)
        return self.stat_of(st)

    def listdir(self, path):
        """[(name, Stat)] of directory @path, '.' and '..' left out"""
        handle = ctypes.c_void_p()
        self.check(self.lib.nfs_opendir(self.context,
                                        self.relative(path).encode(),
                                        ctypes.byref(handle)),
                   'opendir', path)
        entries = []
        try:
            while True:
                ent = self.lib.nfs_readdir(self.context, handle)
                if not ent:
                    break
                e = ent.contents
                name = e.name.decode('utf-8', errors='surrogateescape')
                if name in ('.', '..'):
                    continue
                entries.append((name, Stat(
                    (self.server, e.dev, e.inode),
                    KINDS.get(e.type, 'other'), e.size,
                    e.mtime.tv_sec * 10**9 + e.mtime_nsec)))
        finally:
            self.lib.nfs_closedir(self.context, handle)
        return entries

    def walk(self, path, onerror=None):
        """(path, Stat) of every regular file under directory @path,
        recursively, sorted by path; symbolic links are not followed; a
        directory that cannot be read goes to @onerror(path, NfsError)"""
        found = []
        todo = [path]
        while todo:
            d = todo.pop()
            try:
                entries = self.listdir(d)
            except NfsError as e:
                if onerror:
                    onerror(d, e)
                if self.lost:
                    break
                continue
            for name, st in entries:
                p = d.rstrip('/') + '/' + name
                if st.kind == 'dir':
                    todo.append(p)
                elif st.kind == 'file':
                    found.append((p, st))
        return sorted(found, key=lambda f: f[0])

    def open(self, path):
        """A File of @path, read-only"""
        handle = ctypes.c_void_p()
        self.check(self.lib.nfs_open(self.context,
                                     self.relative(path).encode(),
                                     os.O_RDONLY, ctypes.byref(handle)),
                   'open', path)
        return File(self, path, handle)

    def read_heads(self, paths, size, depth=DEPTH):
        """Read the first @size bytes of each file of @paths, up to @depth
        files at a time (open, read, attributes, close each, pipelined
        over the one connection); yields (path, data, Stat after the read,
        None) or (path, None, None, NfsError) for each, in the order they
        complete"""
        events = []

        def callback(err, _context, data, private):
            # runs inside libnfs: copy what the event carries, nothing
            # else (an exception here would be lost)
            token = private or 0
            op = ops.get(token, (None, 'close'))[1]
            if err < 0:
                payload = ctypes.string_at(data).decode(errors='replace') \
                    if data else os.strerror(-err)
            elif op == 'open':
                payload = data
            elif op == 'read':
                payload = ctypes.string_at(data, err) if err else b''
            elif op == 'stat':
                payload = NfsStat64.from_buffer_copy(ctypes.string_at(
                    data, ctypes.sizeof(NfsStat64)))
            else:
                payload = None
            events.append((token, err, payload))

        cb = NFS_CB(callback)
        # libnfs may call it as long as the context lives
        self.callbacks.append(cb)
        ops = {}                # token -> [path, step, handle, data]
        todo = iter(paths)
        tokens = iter(range(1, 1 << 62))
        poller = select.poll()
        more = True

        def fail(token, message, error=None):
            path, _, handle, _ = ops.pop(token)
            if handle:
                self.lib.nfs_close_async(self.context, handle, cb, None)
            return (path, None, None, NfsError(message, error))

        while True:
            while more and len(ops) < depth and not self.lost:
                path = next(todo, None)
                if path is None:
                    more = False
                    break
                token = next(tokens)
                ops[token] = [path, 'open', None, None]
                if self.lib.nfs_open_async(
                        self.context, self.relative(path).encode(),
                        os.O_RDONLY, cb, token) < 0:
                    yield fail(token, 'open %s: %s' %
                               (path, self.error(-errno.EIO)))
            if self.lost:
                for token in list(ops):
                    yield fail(token, self.lost)
                for path in todo:
                    yield (path, None, None, NfsError(self.lost))
                return
            if not events:
                if not ops:
                    return
                poller.register(self.lib.nfs_get_fd(self.context),
                                self.lib.nfs_which_events(self.context))
                ready = poller.poll(100)
                revents = ready[0][1] if ready else 0
                if self.lib.nfs_service(self.context, revents) < 0:
                    self.lost = 'connection to %s lost: %s' % (
                        self.server, self.error(-errno.EIO))
                continue
            token, err, payload = events.pop(0)
            if token not in ops:
                continue            # a close
            op = ops[token]
            path, step = op[0], op[1]
            if err < 0:
                self.check_lost(-err, payload)
                yield fail(token, '%s %s: %s' % (step, path, payload), -err)
            elif step == 'open':
                op[1], op[2] = 'read', payload
                if self.lib.nfs_pread_async(self.context, payload, 0, size,
                                            cb, token) < 0:
                    yield fail(token, 'read %s: %s' %
                               (path, self.error(-errno.EIO)))
            elif step == 'read':
                op[1], op[3] = 'stat', payload
                if self.lib.nfs_fstat64_async(self.context, op[2], cb,
                                              token) < 0:
                    yield fail(token, 'fstat %s: %s' %
                               (path, self.error(-errno.EIO)))
            else:
                ops.pop(token)
                self.lib.nfs_close_async(self.context, op[2], cb, None)
                yield (path, op[3], self.stat_of(payload), None)

    def close(self):
        if self.context:
            self.lib.nfs_destroy_context(self.context)
            self.context = None


class Client:
    """The mounts of one scan: one per server export, each shared by every
    URL under it.  For a URL, the mount of a directory above it is used if
    there is one; otherwise the directories on the way to it are tried
    from the top down and the first the server lets mount is mounted (the
    export itself, whatever directory under it the URL names)."""

    def __init__(self, lib=None):
        self.lib = lib
        self.exports = []
        self.failed = {}            # (server, path) -> NfsError

    def find(self, url):
        """The mount that holds @url, or None"""
        best = None
        for export in self.exports:
            if url.within(export.url()) and (
                    best is None or len(export.export) > len(best.export)):
                best = export
        return best

    def export_for(self, url, directory=True):
        """The Export that holds @url (a directory if @directory, else a
        file), mounted if needed; NfsError (LibraryMissing) if none can
        be"""
        found = self.find(url)
        if found:
            return found
        if self.lib is None:
            self.lib = load_library()
        path = url.path if directory else posixpath.dirname(url.path)
        parts = [p for p in path.split('/') if p]
        tries = ['/' + '/'.join(parts[:n]) for n in range(1, len(parts) + 1)]
        error = None
        for attempt in tries or ['/']:
            # a server that cannot be reached is tried once per scan
            error = self.failed.get((url.server, '')) or \
                self.failed.get((url.server, attempt))
            if error is None:
                try:
                    export = Export(url.server, attempt, self.lib)
                    self.exports.append(export)
                    return export
                except NfsError as e:
                    error = e
                    refused = 'MNT3ERR' in str(e)
                    self.failed[(url.server,
                                 attempt if refused else '')] = e
            # only a refused mount is worth trying one further down;
            # anything else (no server, no connection) fails again the
            # same way
            if 'MNT3ERR' not in str(error):
                break
        raise error

    def close(self):
        for export in self.exports:
            export.close()
        self.exports = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
