# SPDX-License-Identifier: GPL-2.0-or-later
#
# pool: what a storage pool's qcow2 chains look like (issue 21).
#
#   pool scan PATH... [--json FILE] [--plots DIR]
#
# reads every regular file under the PATHs (directories recursively; a
# PATH is a local file or directory or an nfs://SERVER/EXPORT[/DIR] URL,
# read over NFSv3 with libnfs, nfs_client.py, one mount per export),
# headers only, never data: the qcow2 header, its extensions and its
# backing file name (the first 4 KiB of a file, more only where its
# header goes on past them, up to its first cluster).  It follows backing
# names as QEMU resolves them (an absolute name as it is, an nfs:// name as
# a URL, a relative one against the directory of the image that names
# it, for an image on nfs:// its URL's directory as with sQemu's patch
# 0054) and reports every
# chain (a top: a qcow2 file that no other scanned file names as its
# backing file; its length counts the top and every layer below it, a
# raw base included), the layers it shares with other chains, its
# virtual size, and the state of its backing index: "off" (the top has
# no sQBI extension), "valid" (every
# layer's extension, valid bit, depth, parent identity and parent size
# agree with the chain, as sQemu validates it when it opens the chain),
# or "invalid" with the reason.  A file that cannot be followed gets an
# error and the scan goes on: not a qcow2 or raw image, a truncated or
# inconsistent header, a missing backing file, a loop of backing files, a
# backing name outside the scanned paths (not followed: the scan reads
# nothing outside them), a json: or other protocol's backing name, a file
# that changed while it was read, an nfs:// export that cannot be mounted
# (one error naming the URL) or libnfs missing.  Files on nfs:// are named
# by their URL.
#
#   pool index PATH... [--limit N] [--dry-run] [--qemu-img QEMU_IMG]
#
# converts the chains the scan ranks first (python/sqemu/pool_index.py).
#
#   pool generate DIR --files N [--seed S] [--manifest FILE]
#
# makes a synthetic pool (python/sqemu/pool_generator.py).
#
# Also: the intervals between a chain's snapshots (from the modification
# times of its layers below the top), the chains to convert first, and
# with --plots the distributions as PNG figures.

import argparse
import errno
import os
import signal
import stat
import struct

from sqemu import nfs_client, pool_generator, util

QCOW2_MAGIC = b'QFI\xfb'
EXT_END = 0
EXT_SQBI = 0x73514249           # sQemu backing index (docs/sqemu.md)
SQBI_SIZE = 48
AUTOCLEAR_BI = 1 << 16
MAX_DEPTH = 16383
MAX_BACKING_NAME = 1023         # as QEMU's qcow2 driver
# The first read: the header, extensions and backing file name of every
# image qemu-img makes
FIRST_READ = 4096


class PoolError(Exception):
    pass


class BadImage(Exception):
    """A file's header says something no image can"""


class NeedMore(Exception):
    """The header goes on past the bytes read: read up to @size bytes"""

    def __init__(self, size):
        super().__init__(size)
        self.size = size


class Image:
    """What the header of one file says"""

    def __init__(self, path, ident, fmt, size, backing_name=None,
                 autoclear=0, sqbi=None, sqbi_error=None, mtime=0.0):
        self.path = path
        self.mtime = mtime              # when it was last written
        self.ident = ident              # (st_dev, st_ino)
        self.format = fmt               # 'qcow2' or 'raw'
        self.size = size                # virtual size in bytes
        self.backing_name = backing_name
        self.autoclear = autoclear
        self.sqbi = sqbi                # the sQBI extension, parsed
        self.sqbi_error = sqbi_error    # why it cannot be used


def parse_sqbi(data):
    """The sQBI extension's fields, or a reason it cannot be used"""
    if len(data) != SQBI_SIZE:
        return None, 'extension of %d bytes' % len(data)
    version, depth = struct.unpack('>II', data[:8])
    if version != 1:
        return None, 'extension version %d' % version
    if depth > MAX_DEPTH:
        return None, 'recorded depth %d out of range' % depth
    return {'depth': depth, 'layer_id': data[8:24],
            'parent_id': data[24:40],
            'parent_size': struct.unpack('>Q', data[40:48])[0]}, None


def parse_qcow2(head, file_size):
    """The fields of a qcow2 header in @head (the file's first bytes; the
    file has @file_size bytes): (size, backing name or None,
    autoclear bits, extensions {magic: data}); BadImage if inconsistent"""
    if len(head) < 72:
        raise BadImage('qcow2 header truncated (%d bytes)' % len(head))
    (version, backing_offset, backing_len, cluster_bits,
     size) = struct.unpack('>IQIIQ', head[4:32])
    if version not in (2, 3):
        raise BadImage('qcow2 version %d' % version)
    if not 9 <= cluster_bits <= 21:
        raise BadImage('cluster bits %d out of range' % cluster_bits)
    autoclear, header_len = 0, 72
    if version == 3:
        if len(head) < 104:
            raise BadImage('qcow2 version 3 header truncated')
        autoclear, _, header_len = struct.unpack('>QII', head[88:104])
        if header_len < 104 or header_len % 8:
            raise BadImage('header length %d' % header_len)
    exts = {}
    off = header_len
    cluster = 1 << cluster_bits
    # what the header may use: the first cluster, or the whole file
    limit = min(cluster, file_size)
    while True:
        if off + 8 > limit:
            raise BadImage('header extensions run past the first cluster')
        if off + 8 > len(head):
            raise NeedMore(limit)
        magic, length = struct.unpack('>II', head[off:off + 8])
        if magic == EXT_END:
            break
        end = off + 8 + length
        if end > limit:
            raise BadImage('header extension 0x%08x runs past the first '
                           'cluster' % magic)
        if end > len(head):
            raise NeedMore(limit)
        exts[magic] = head[off + 8:end]
        off = off + 8 + (length + 7) // 8 * 8
    name = None
    if backing_offset:
        if backing_len > MAX_BACKING_NAME or not backing_len:
            raise BadImage('backing file name of %d bytes' % backing_len)
        if backing_offset + backing_len > limit:
            raise BadImage('backing file name outside the first cluster')
        if backing_offset + backing_len > len(head):
            raise NeedMore(limit)
        raw = head[backing_offset:backing_offset + backing_len]
        if len(raw) != backing_len:
            raise BadImage('backing file name truncated')
        try:
            name = raw.decode('utf-8')
        except UnicodeDecodeError:
            raise BadImage('backing file name is not UTF-8')
        if '\0' in name:
            raise BadImage('backing file name holds a NUL byte')
    return size, name, autoclear, exts


def image_of(path, ident, file_size, mtime, pread):
    """The Image of the file @path (@ident, @file_size bytes, written at
    @mtime) whose first bytes @pread(size) returns; BadImage if it is no
    image this scan can follow"""
    head = pread(FIRST_READ)
    parsed = None
    if head[:4] == QCOW2_MAGIC:
        try:
            parsed = parse_qcow2(head, file_size)
        except NeedMore as more:
            head = pread(more.size)
            parsed = parse_qcow2(head, file_size)
    if parsed is None:
        return Image(path, ident, 'raw', file_size, mtime=mtime)
    size, name, autoclear, exts = parsed
    sqbi = sqbi_error = None
    if EXT_SQBI in exts:
        sqbi, sqbi_error = parse_sqbi(exts[EXT_SQBI])
    return Image(path, ident, 'qcow2', size, name, autoclear, sqbi,
                 sqbi_error, mtime)


def read_image(path):
    """The Image of file @path; BadImage if it is no image this scan can
    follow, OSError if it cannot be read"""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY)
    try:
        before = os.fstat(fd)
        img = image_of(path, (before.st_dev, before.st_ino),
                       before.st_size, before.st_mtime_ns / 1e9,
                       lambda size: os.pread(fd, size, 0))
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if (before.st_size, before.st_mtime_ns) != \
            (after.st_size, after.st_mtime_ns):
        raise BadImage('changed while it was read (being written?)')
    return img


def read_nfs_image(export, url, listed, first=None):
    """The Image of the file at @url (an nfs_client.Url) on mount
    @export, whose attributes the directory listing gave as @listed (an
    nfs_client.Stat); @first, if given, is (its first FIRST_READ bytes,
    its attributes once they were read), as Export.read_heads() gives
    them.  BadImage if it is no image this scan can follow,
    nfs_client.NfsError if it cannot be read"""
    opened = []

    def pread(size):
        if first is not None and size == FIRST_READ:
            return first[0]
        if not opened:
            opened.append(export.open(url.path))
        return opened[0].pread(size)

    try:
        img = image_of(str(url), listed.ident, listed.size,
                       listed.mtime_ns / 1e9, pread)
        after = opened[0].stat() if opened else first[1]
    finally:
        for f in opened:
            f.close()
    if (listed.ident, listed.size, listed.mtime_ns) != \
            (after.ident, after.size, after.mtime_ns):
        raise BadImage('changed while it was read (being written?)')
    return img


def resolve_backing(image_path, name):
    """What QEMU opens for backing file name @name of the image at
    @image_path (a local path or, for an image on nfs://, its URL's
    text): a local path or an nfs_client.Url; BadImage for a name this
    scan does not follow"""
    if name.startswith('json:'):
        raise BadImage('json: backing file name (not followed)')
    if nfs_client.is_url(name):
        return parse_backing_url(name, name)
    head = name.split('/', 1)[0]
    if ':' in head and not name.startswith('/'):
        raise BadImage('backing file name %r names a protocol (not '
                       'followed)' % name)
    if os.path.isabs(name):
        return name
    if nfs_client.is_url(image_path):
        # QEMU joins the texts: the image's directory's URL and the name
        # (which may hold %-escapes or a query, as any URL)
        directory = nfs_client.dirname(nfs_client.parse_url(image_path))
        return parse_backing_url(str(directory).rstrip('/') + '/' + name,
                                 name)
    return os.path.join(os.path.dirname(image_path), name)


def parse_backing_url(text, name):
    try:
        return nfs_client.parse_url(text)
    except nfs_client.BadUrl as e:
        raise BadImage('backing file %s: %s' % (name, e))


def walk(paths, errors):
    """Every regular file under @paths (directories recursively), each
    once, sorted; unreadable directories go to @errors"""
    found = []
    for top in paths:
        if os.path.isfile(top):
            found.append(top)
            continue
        if not os.path.isdir(top):
            errors.append({'file': top, 'error': 'no such file or '
                           'directory'})
            continue

        def onerror(e, top=top):
            errors.append({'file': e.filename or top, 'error': e.strerror})
        for d, dirs, files in os.walk(top, onerror=onerror):
            dirs.sort()
            for f in sorted(files):
                p = os.path.join(d, f)
                try:
                    if stat.S_ISREG(os.lstat(p).st_mode):
                        found.append(p)
                except OSError as e:
                    errors.append({'file': p, 'error': e.strerror})
    return sorted(set(found))


def within(path, roots):
    real = os.path.realpath(path)
    return any(real == r or real.startswith(r.rstrip('/') + '/')
               for r in roots)


class Scan:
    """A scan of the pool under @paths (local paths and nfs:// URLs);
    @nfs an nfs_client.Client to read nfs:// URLs with (default: a new
    one, closed once the scan is done)"""

    def __init__(self, paths, nfs=None):
        self.errors = []
        local = [p for p in paths if not nfs_client.is_url(p)]
        self.roots = [os.path.realpath(p) for p in local]
        self.files = walk(local, self.errors)
        self.nfs = nfs or nfs_client.Client()
        self.nfs_roots = []             # nfs_client.Url
        self.nfs_files = {}             # URL text -> (Export, Url, Stat)
        try:
            for p in paths:
                if nfs_client.is_url(p):
                    self.walk_nfs(p)
            self.files = sorted(set(self.files) | set(self.nfs_files))
            self.images = {}            # path -> Image
            self.by_ident = {}          # (dev, ino) -> Image
            self.broken = {}            # path -> why it cannot be used
            self.below = {}             # ident -> backing_of() result
            heads = self.read_nfs_heads()
            for p in self.files:
                self.load(p, heads.pop(p, None))
            self.chains = self.find_chains()
        finally:
            if nfs is None:
                self.nfs.close()

    def error(self, path, text):
        self.errors.append({'file': path, 'error': text})

    def walk_nfs(self, text):
        """List the regular files under the nfs:// URL @text (a file or
        a directory) into nfs_files"""
        try:
            url = nfs_client.parse_url(text)
            export = self.nfs.export_for(url)
            st = export.stat(url.path)
        except nfs_client.NfsError as e:
            self.error(text, str(e))
            return
        self.nfs_roots.append(url)
        if st.kind == 'file':
            found = [(url.path, st)]
        elif st.kind == 'dir':
            found = export.walk(url.path, lambda d, e: self.error(
                str(nfs_client.Url(url.server, d)), str(e)))
        else:
            self.error(text, 'not a regular file or directory')
            return
        for path, st in found:
            f = nfs_client.Url(url.server, path)
            self.nfs_files[str(f)] = (export, f, st)

    def read_nfs_heads(self):
        """{URL text: (first bytes, attributes after) or NfsError} of the
        files on nfs://, read many at a time over each mount"""
        heads = {}
        by_export = {}
        for text, (export, url, _) in self.nfs_files.items():
            by_export.setdefault(id(export), (export, []))[1].append(url)
        for export, urls in by_export.values():
            server = urls[0].server
            for path, data, after, error in export.read_heads(
                    sorted(u.path for u in urls), FIRST_READ):
                text = str(nfs_client.Url(server, path))
                heads[text] = error or (data, after)
        return heads

    def load(self, path, head=None):
        """The Image of file @path, or None with its error noted; @head
        what read_nfs_heads() read of it, for a file on nfs://"""
        try:
            if isinstance(head, Exception):
                raise head
            if path in self.nfs_files:
                img = read_nfs_image(*self.nfs_files[path], first=head)
            else:
                img = read_image(path)
        except (BadImage, OSError, nfs_client.NfsError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror \
                else str(e)
            self.broken[path] = why
            self.error(path, why)
            return None
        self.images[path] = img
        self.by_ident.setdefault(img.ident, img)
        return img

    def backing_of(self, img):
        """The Image of @img's backing file, None at the base; BadImage
        with the reason if it cannot be followed (each image is resolved
        once: chains share their lower layers)"""
        if img.ident not in self.below:
            try:
                self.below[img.ident] = self.resolve(img)
            except BadImage as e:
                self.below[img.ident] = e
        found = self.below[img.ident]
        if isinstance(found, BadImage):
            raise found
        return found

    def resolve(self, img):
        if img.format != 'qcow2' or img.backing_name is None:
            return None
        path = resolve_backing(img.path, img.backing_name)
        if isinstance(path, nfs_client.Url):
            return self.resolve_url(img, path)
        if not within(path, self.roots):
            raise BadImage('backing file %s is outside the scanned pool '
                           '(not followed)' % img.backing_name)
        try:
            st = os.stat(path)
        except OSError:
            raise BadImage('backing file %s does not exist' %
                           img.backing_name)
        found = self.by_ident.get((st.st_dev, st.st_ino))
        if found:
            return found
        if path in self.broken:
            raise BadImage('backing file %s: %s' %
                           (img.backing_name, self.broken[path]))
        raise BadImage('backing file %s is not a regular file' %
                       img.backing_name)

    def resolve_url(self, img, url):
        """The Image of backing file @url (an nfs_client.Url) of @img"""
        name = img.backing_name
        if not any(url.within(root) for root in self.nfs_roots):
            raise BadImage('backing file %s is outside the scanned pool '
                           '(not followed)' % name)
        text = str(url)
        if text in self.images:
            return self.by_ident[self.images[text].ident]
        if text in self.broken:
            raise BadImage('backing file %s: %s' % (name, self.broken[text]))
        # not listed: a symbolic link, or missing
        export = self.nfs.find(url)
        try:
            if export is None:
                raise nfs_client.NfsError('no mount')
            st = export.stat(url.path)
        except nfs_client.NfsError as e:
            if e.errno == errno.ENOENT:
                raise BadImage('backing file %s does not exist' % name)
            raise BadImage('backing file %s cannot be read: %s' % (name, e))
        found = self.by_ident.get(st.ident)
        if found:
            return found
        raise BadImage('backing file %s is not a regular file' % name)

    def chain_of(self, top):
        """The layers of the chain whose top is @top, top first, and the
        error that ended it early (None if it reaches a base)"""
        layers, seen = [top], {top.ident}
        while True:
            try:
                below = self.backing_of(layers[-1])
            except BadImage as e:
                return layers, str(e)
            if below is None:
                return layers, None
            if below.ident in seen:
                return layers, 'backing chain loops back to %s' % below.path
            seen.add(below.ident)
            layers.append(below)

    def find_chains(self):
        named = set()
        for img in self.images.values():
            try:
                below = self.backing_of(img)
            except BadImage:
                continue
            if below is not None:
                named.add(below.ident)
        tops = sorted((img for img in self.images.values()
                       if img.format == 'qcow2' and img.ident not in named),
                      key=lambda i: i.path)
        tops = list({t.ident: t for t in tops}.values())
        chains = []
        reported = set()
        for top in tops:
            layers, err = self.chain_of(top)
            if err and (layers[-1].path, err) not in reported:
                reported.add((layers[-1].path, err))
                self.error(layers[-1].path, err)
            chains.append({'top': top, 'layers': layers, 'error': err})
        # loops with no top: every file in them is named by another
        in_chain = {i.ident for c in chains for i in c['layers']}
        for img in sorted(self.images.values(), key=lambda i: i.path):
            if img.format == 'qcow2' and img.ident not in in_chain:
                layers, err = self.chain_of(img)
                in_chain.update(i.ident for i in layers)
                self.error(img.path, err or 'no top names it')
        users = {}
        for c in chains:
            for i in c['layers']:
                users[i.ident] = users.get(i.ident, 0) + 1
        for c in chains:
            c['shared'] = sum(1 for i in c['layers'] if users[i.ident] > 1)
            c['index'], c['index_reason'] = index_state(c['layers'],
                                                        c['error'])
            c['intervals'] = snapshot_intervals(c['layers'])
        rank_chains(chains)
        return chains

    def report(self):
        return {
            'files': len(self.files),
            'chains': [{'top': c['top'].path, 'length': len(c['layers']),
                        'shared_layers': c['shared'],
                        'virtual_size': c['top'].size,
                        'median_snapshot_interval_s':
                            median(c['intervals']),
                        'convert_rank': c['rank'],
                        'index': c['index'],
                        **({'index_reason': c['index_reason']}
                           if c['index_reason'] else {}),
                        **({'error': c['error']} if c['error'] else {})}
                       for c in self.chains],
            'errors': sorted(self.errors, key=lambda e: e['file']),
        }


def median(values):
    values = sorted(values)
    return values[len(values) // 2] if values else None


def snapshot_intervals(layers):
    """Seconds between the snapshots that froze the layers of a chain
    (top first): a layer below the top is not written after its overlay
    was made, so its modification time is when that snapshot was taken;
    the top's is its last write, not a snapshot"""
    times = [img.mtime for img in reversed(layers[1:])]
    return [b - a for a, b in zip(times, times[1:]) if b >= a]


def rank_chains(chains):
    """Set each chain's 'rank' among those worth converting (1 first;
    None for one whose index is valid, or that cannot be followed): the
    deeper first, as a read that leaves the top pays for every layer it
    walks without the index; then the larger disk, then the path"""
    todo = [c for c in chains if c['index'] != 'valid' and not c['error']
            and len(c['layers']) > 1]
    todo.sort(key=lambda c: (-len(c['layers']), -c['top'].size,
                             c['top'].path))
    for c in chains:
        c['rank'] = None
    for i, c in enumerate(todo, 1):
        c['rank'] = i


def index_state(layers, chain_error):
    """'off', 'valid' or 'invalid' for the chain @layers (top first), and
    why not valid (None when it is)"""
    top = layers[0]
    if top.sqbi is None and top.sqbi_error is None:
        return 'off', 'the top has no backing index'
    if chain_error:
        return 'invalid', 'the chain cannot be followed: %s' % chain_error
    n = len(layers)
    for pos, img in enumerate(layers):
        depth = n - pos
        if img.format != 'qcow2':
            if pos != n - 1:
                return 'invalid', '%s: a raw layer above the base' % img.path
            continue
        if img.sqbi_error:
            return 'invalid', '%s: %s' % (img.path, img.sqbi_error)
        if img.sqbi is None:
            return 'invalid', '%s: no backing index' % img.path
        if not img.autoclear & AUTOCLEAR_BI:
            return 'invalid', '%s: the valid bit is clear' % img.path
        if img.sqbi['depth'] != depth:
            return 'invalid', ('%s: recorded depth %d, depth %d in this '
                               'chain' % (img.path, img.sqbi['depth'], depth))
        parent = layers[pos + 1] if pos + 1 < n else None
        want_id = bytes(16)
        if parent is not None and parent.format == 'qcow2' and parent.sqbi:
            want_id = parent.sqbi['layer_id']
        if img.sqbi['parent_id'] != want_id:
            return 'invalid', ('%s: its parent changed since it was indexed '
                               '(identity)' % img.path)
        if img.sqbi['parent_size'] != (parent.size if parent else 0):
            return 'invalid', ('%s: its parent changed since it was indexed '
                               '(size)' % img.path)
    if n > MAX_DEPTH:
        return 'invalid', 'more than %d layers' % MAX_DEPTH
    return 'valid', None


def summary(rep):
    """The human summary of report @rep"""
    chains = rep['chains']
    lengths = sorted(c['length'] for c in chains)
    lines = ['%d files, %d chains, %d errors' %
             (rep['files'], len(chains), len(rep['errors']))]
    if lengths:
        lines.append('chain length: min %d, median %d, max %d' %
                     (lengths[0], lengths[len(lengths) // 2], lengths[-1]))
        states = {}
        for c in chains:
            states[c['index']] = states.get(c['index'], 0) + 1
        lines.append('backing index: ' + ', '.join(
            '%s %d' % (k, states[k]) for k in ('off', 'valid', 'invalid')
            if k in states))
        lines.append('chains sharing layers with others: %d' %
                     sum(1 for c in chains if c['shared_layers']))
        gaps = [c['median_snapshot_interval_s'] for c in chains
                if c['median_snapshot_interval_s'] is not None]
        if gaps:
            lines.append('median interval between snapshots: %.1f h '
                         '(median over chains)' % (median(gaps) / 3600))
        first = sorted((c for c in chains if c['convert_rank']),
                       key=lambda c: c['convert_rank'])[:10]
        if first:
            lines.append('convert first (deepest chains without a valid '
                         'index):')
            lines.extend('  %d. %s (%d layers, %s)' %
                         (c['convert_rank'], c['top'], c['length'],
                          c['index']) for c in first)
    for e in rep['errors']:
        lines.append('error: %s: %s' % (e['file'], e['error']))
    return '\n'.join(lines)


def plot(rep, directory):
    """PNG figures of report @rep in @directory: chain lengths (paper
    Fig. 6), virtual sizes (Fig. 4), layers shared per chain (Fig. 7-8),
    intervals between snapshots (Fig. 9); the paths written"""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib import pyplot

    os.makedirs(directory, exist_ok=True)
    chains = rep['chains']
    figures = [
        ('pool-chain-lengths.png', 'chain length (layers)',
         [c['length'] for c in chains], True),
        ('pool-disk-sizes.png', 'virtual disk size (GiB)',
         [c['virtual_size'] / (1 << 30) for c in chains], False),
        ('pool-shared-layers.png', 'layers shared with other chains',
         [c['shared_layers'] for c in chains], False),
        ('pool-snapshot-intervals.png',
         'median interval between snapshots of a chain (hours)',
         [c['median_snapshot_interval_s'] / 3600 for c in chains
          if c['median_snapshot_interval_s'] is not None], True),
    ]
    written = []
    for name, label, values, log_x in figures:
        fig, ax = pyplot.subplots(figsize=(6, 3.5))
        if values:
            values = sorted(values)
            ax.plot(values, [(i + 1) / len(values)
                             for i in range(len(values))])
            if log_x and values[0] > 0:
                ax.set_xscale('log')
        ax.set_xlabel(label)
        ax.set_ylabel('fraction of chains (CDF)')
        ax.set_title('%d chains, %d files' % (len(chains), rep['files']))
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = os.path.join(directory, name)
        fig.savefig(path, dpi=100)
        pyplot.close(fig)
        written.append(path)
    return written


def cmd_generate(args):
    progress = util.printer('pool generate')
    if os.path.exists(args.dir) and os.listdir(args.dir):
        raise PoolError('%s exists and is not empty' % args.dir)
    gen = pool_generator.Generator(args.dir, args.files, args.seed,
                                   progress, args.manifest)
    man = gen.run()
    progress('%d files, %d chains; manifest %s' %
             (man['files'], len(man['chains']), gen.manifest))


def cmd_scan(args):
    rep = Scan(args.paths).report()
    print(summary(rep))
    if args.json:
        util.write_json(args.json, rep)
    if args.plots:
        for path in plot(rep, args.plots):
            print('wrote %s' % path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog='pool', description='What a storage pool\'s qcow2 chains look '
        'like: headers only, never data.')
    sub = parser.add_subparsers(dest='command', required=True)
    scan = sub.add_parser('scan', help='find and describe every chain under '
                          'the paths', description='Read every regular file '
                          'under PATH (directories recursively; headers '
                          'only; a PATH may be an nfs://SERVER/EXPORT[/DIR] '
                          'URL, read over NFSv3 with libnfs) and report '
                          'each chain, its length, the layers it shares '
                          'with other chains and its '
                          'backing index state; files that cannot be '
                          'followed are reported as errors and the scan '
                          'goes on.')
    scan.add_argument('paths', nargs='+', metavar='PATH')
    scan.add_argument('--json', metavar='FILE',
                      help='also write the report as JSON to FILE')
    scan.add_argument('--plots', metavar='DIR',
                      help='also draw the pool\'s distributions as PNG '
                      'files in DIR')
    index = sub.add_parser('index', help='convert the chains a scan ranks '
                           'first', description='Scan the pool and give '
                           'the chains worth converting (deepest first) '
                           'their backing index with sQemu\'s qemu-img '
                           'amend; chains with a layer in use (a QEMU image '
                           'lock) are skipped with the reason.')
    index.add_argument('paths', nargs='+', metavar='PATH')
    index.add_argument('--limit', type=int, default=0,
                       help='convert at most this many chains')
    index.add_argument('-n', '--dry-run', action='store_true',
                       help='say what would be converted, convert nothing')
    index.add_argument('--qemu-img', help='sQemu\'s qemu-img (default: the '
                       'build\'s)')
    gen = sub.add_parser('generate', help='make a synthetic pool',
                         description='Make about FILES empty qcow2 images '
                         'under DIR in chains shaped like a cloud\'s disk '
                         'pool (shared base images, mostly short chains, a '
                         'bump near 30 layers, a tail to 1000, disk copies '
                         'sharing whole chains), and a manifest of the '
                         'chains made.')
    gen.add_argument('dir', metavar='DIR')
    gen.add_argument('--files', type=int, required=True,
                     help='how many files to make (about)')
    gen.add_argument('--seed', type=int, default=1)
    gen.add_argument('--manifest', metavar='FILE',
                     help='where the manifest goes (default DIR.manifest.json'
                     ', outside the pool)')
    args = parser.parse_args(argv)
    if args.command == 'generate' and args.files < 1:
        parser.error('--files must be at least 1')
    if args.command == 'index' and args.limit < 0:
        parser.error('--limit must be at least 0')
    if args.command == 'index' and any(nfs_client.is_url(p)
                                       for p in args.paths):
        parser.error('index converts local chains only (nfs:// paths can '
                     'be scanned, not converted)')
    return args


def main(argv=None):
    args = parse_args(argv)
    util.exit_on(signal.SIGTERM, signal.SIGHUP)
    from sqemu import pool_index     # it uses this module's Scan

    command = {'scan': cmd_scan, 'generate': cmd_generate,
               'index': pool_index.cmd_index}[args.command]
    return util.run_main('pool', lambda: command(args),
                         (PoolError, pool_index.PoolIndexError, OSError))
