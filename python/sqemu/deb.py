# SPDX-License-Identifier: GPL-2.0-or-later
#
# mkdeb: build sQemu as Debian binary packages (make deb).  Starts from
# Debian's own source package qemu (the one configure downloaded), adds the
# sQemu patch series to its quilt series the way Proxmox's pve-qemu carries
# its patch queue in debian/patches, gives it a version above Debian's, and
# builds with Debian's own debian/rules, restricted by the build profile
# pkg.qemu.sqemu to the packages sQemu ships.  Installing the result with
# "apt install ./*.deb" replaces Debian's packages of the same names;
# "apt install qemu-utils=<Debian's version> ..." goes back.
#
# The source tree is build/deb/qemu-<upstream>; the source package (.dsc,
# .debian.tar.xz), the .deb files, the .changes and the build log land in
# build/deb.

import argparse
import datetime
import email.utils
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

from sqemu import paths, util

TOP = paths.REPO_TOP
CACHE = os.environ.get('SQEMU_CACHE',
                       os.path.join(os.path.expanduser('~'), '.cache',
                                    'sqemu'))
PACKAGING = os.path.join(TOP, 'packaging', 'debian')
RULES_PATCH = os.path.join(PACKAGING, 'rules.patch')

# What sQemu ships: the binaries of qemu-utils and qemu-system-x86, and the
# packages those depend on at the same version (qemu-system-common), or
# whose modules must come from the same build (qemu-block-extra,
# qemu-system-gui: QEMU loads only modules built with it).
SHIPPED = ('qemu-utils', 'qemu-system-x86', 'qemu-system-common',
           'qemu-block-extra', 'qemu-system-gui')
PROFILE = 'pkg.qemu.sqemu'
# The maintainer named in the packages: DEBFULLNAME and DEBEMAIL, as
# Debian's own tools take them, else the project's (which has no public
# address: lintian calls localhost a bogus mail host)
MAINTAINER = '%s <%s>' % (os.environ.get('DEBFULLNAME', 'sQemu developers'),
                          os.environ.get('DEBEMAIL', 'sqemu@localhost'))

# The project's own files that the build needs, at their tree paths; our
# top-level meson.build is the build fragment sqemu/meson.build
OWN_DIRS = ('block/', 'include/', 'tests/unit/')
OWN_SUFFIXES = ('.c', '.h')
OWN_RENAMED = {'meson.build': 'sqemu/meson.build'}
OWN_DOCS = ('docs/sqemu.md',)


class MkdebError(Exception):
    pass


say = util.printer('mkdeb')


def run(cmd, **kwargs):
    return subprocess.run(cmd, check=True, **kwargs)


def sqemu_version():
    with open(os.path.join(TOP, 'configure')) as f:
        m = re.search(r'^sqemu_version=(\S+)', f.read(), re.M)
    if not m:
        raise MkdebError('no sqemu_version in configure')
    return m.group(1)


def find_dsc():
    dscs = glob.glob(os.path.join(CACHE, 'download', 'qemu_7.2*.dsc'))
    if not dscs:
        raise MkdebError('no Debian source package in %s/download: run '
                         './configure (make deb does) first' % CACHE)
    out = subprocess.run(['sh', '-c', 'ls "$@" | sort -V | tail -n 1', 'sh',
                          *dscs], check=True, capture_output=True,
                         text=True).stdout.strip()
    return out


def dsc_field(dsc, field):
    with open(dsc) as f:
        for line in f:
            if line.startswith(field + ':'):
                return line.split(':', 1)[1].strip()
    raise MkdebError('%s has no %s field' % (dsc, field))


def git(*args):
    return subprocess.run(['git', '-C', TOP, *args], check=True,
                          capture_output=True, text=True).stdout.strip()


def own_files():
    """[(path in the tree, path in this checkout)]"""
    files = []
    for path in git('ls-files').splitlines():
        if (path.startswith(OWN_DIRS) and path.endswith(OWN_SUFFIXES)) or \
                path in OWN_DOCS:
            files.append((path, path))
        elif path in OWN_RENAMED:
            files.append((OWN_RENAMED[path], path))
    return sorted(files)


def new_file_patch(files, header):
    """A patch (-p1) that adds @files, [(tree path, checkout path)]."""
    out = [header, '---\n']
    for tree_path, path in files:
        with open(os.path.join(TOP, path)) as f:
            lines = f.read().split('\n')
        no_eol = lines[-1] != ''
        if not no_eol:
            lines.pop()
        out.append('--- /dev/null\n+++ b/%s\n' % tree_path)
        out.append('@@ -0,0 +1,%d @@\n' % len(lines))
        for line in lines:
            out.append('+%s\n' % line)
        if no_eol:
            out.append('\\ No newline at end of file\n')
    return ''.join(out)


def restrict_control(text):
    """debian/control (or control-in): the packages sQemu does not ship are
    left out by the build profile; the maintainer is sQemu's, Debian's is
    kept as the original; cmocka is a build dependency (sQemu's unit
    tests)."""
    parts = text.split('\n\n')
    result = []
    seen = set()
    for part in parts:
        m = re.search(r'^Package:\s*(\S+)', part, re.M)
        if m:
            seen.add(m.group(1))
            if m.group(1) not in SHIPPED:
                if 'Build-Profiles:' in part:
                    raise MkdebError('package %s already has build profiles'
                                     % m.group(1))
                part = re.sub(r'^(Package:.*)$', r'\1\nBuild-Profiles: <!%s>'
                              % PROFILE, part, count=1, flags=re.M)
        elif re.search(r'^(:debian:)?Source:', part, re.M):
            part, n = re.subn(
                r'^((?::debian:)?)Maintainer: (.*)$',
                lambda mm: '# Debian\'s maintainer: %s\n%sMaintainer: %s'
                % (mm.group(2), mm.group(1), MAINTAINER),
                part, count=1, flags=re.M)
            if n != 1:
                raise MkdebError('no Maintainer field in the source stanza')
            part = re.sub(r'^Uploaders:.*\n', '', part, flags=re.M)
            part, n = re.subn(
                r'^(Build-Depends: debhelper-compat \(= \d+\),)$',
                r"\1\n# sQemu's cmocka unit tests (sqemu/meson.build)\n"
                r" libcmocka-dev,", part, count=1, flags=re.M)
            if n != 1:
                raise MkdebError('Build-Depends does not start as expected')
        result.append(part)
    missing = set(SHIPPED) - seen
    if missing:
        raise MkdebError('Debian\'s control has no package %s' %
                         ', '.join(sorted(missing)))
    return '\n\n'.join(result)


def changelog_entry(version, upstream_head, dirty, n_patches):
    date = email.utils.format_datetime(datetime.datetime.now(
        datetime.timezone.utc))
    state = ' with uncommitted changes' if dirty else ''
    items = [
        'sQemu %s (git %s%s): qcow2 backing chains with a backing index, '
        'one unified L2 cache per chain top and L2 copy at snapshot time; '
        '%d patches in debian/patches/sqemu/.' %
        (sqemu_version(), upstream_head, state, n_patches),
        'Build profile %s builds only the packages sQemu ships: %s.' %
        (PROFILE, ', '.join(SHIPPED)),
    ]
    body = ''.join(textwrap.fill(item, width=76, initial_indent='  * ',
                                 break_on_hyphens=False,
                                 subsequent_indent='    ') + '\n'
                   for item in items)
    return ('qemu (%s) bookworm; urgency=medium\n\n%s\n -- %s  %s\n\n' %
            (version, body, MAINTAINER, date))


def prepare(dsc, srcdir, version):
    """Unpack Debian's source package into @srcdir and add sQemu."""
    shutil.rmtree(srcdir, ignore_errors=True)
    say('unpacking %s into %s' % (os.path.basename(dsc), srcdir))
    run(['dpkg-source', '--no-check', '-x', dsc, srcdir],
        stdout=subprocess.DEVNULL)
    debian = os.path.join(srcdir, 'debian')

    # The patch series: our files first, then patches/ in order
    sqemu_dir = os.path.join(debian, 'patches', 'sqemu')
    os.makedirs(sqemu_dir)
    files = own_files()
    for tree_path, _ in files:
        if os.path.lexists(os.path.join(srcdir, tree_path)):
            raise MkdebError('%s is an upstream file: sQemu changes it '
                             'through patches/' % tree_path)
    header = ('Description: sQemu\'s own source files\n'
              ' The backing index, direct access and unified L2 cache code,\n'
              ' its build fragment (sqemu/meson.build, hooked in by the\n'
              ' next patch), its unit tests and its documentation, as new\n'
              ' files at their tree paths.\n'
              'Author: %s\n' % MAINTAINER)
    series = ['sqemu/0000-sqemu-own-files.patch']
    with open(os.path.join(sqemu_dir, series[0][len('sqemu/'):]), 'w') as f:
        f.write(new_file_patch(files, header))
    patches = sorted(glob.glob(os.path.join(TOP, 'patches', '*.patch')))
    for p in patches:
        shutil.copy(p, sqemu_dir)
        series.append('sqemu/' + os.path.basename(p))
    with open(os.path.join(debian, 'patches', 'series'), 'a') as f:
        f.write('# sQemu\n' + ''.join(s + '\n' for s in series))

    for name in ('control', 'control-in'):
        path = os.path.join(debian, name)
        with open(path) as f:
            text = f.read()
        with open(path, 'w') as f:
            f.write(restrict_control(text))

    run(['patch', '-s', '-p1', '-d', srcdir, '-i', RULES_PATCH])
    # The qtest accelerator modules that the rules now keep
    with open(os.path.join(debian, 'qemu-system-common.install'), 'a') as f:
        f.write('# sQemu: qemu-iotests run their VMs under -accel qtest\n'
                'debian/tmp/usr/lib/*/qemu/accel-qtest-*.so\n')
    # debian/rules regenerates control from control-in when it is older
    # than either: keep the generated one newer
    os.utime(os.path.join(debian, 'control'))

    head = git('rev-parse', '--short', 'HEAD')
    dirty = bool(git('status', '--porcelain', '--untracked-files=no'))
    changelog = os.path.join(debian, 'changelog')
    with open(changelog) as f:
        old = f.read()
    with open(changelog, 'w') as f:
        f.write(changelog_entry(version, head, dirty, len(patches) + 1))
        f.write(old)
    return len(series)


def install_build_deps(srcdir):
    unmet = subprocess.run(['dpkg-checkbuilddeps', '-B', '-P', PROFILE],
                           cwd=srcdir, capture_output=True, text=True)
    if unmet.returncode == 0:
        return
    if os.getuid() != 0:
        raise MkdebError('%s\n  as root: apt-get build-dep --arch-only -P %s '
                         '%s' % (unmet.stderr.strip(), PROFILE, srcdir))
    say('installing the build dependencies')
    run(['apt-get', 'build-dep', '-y', '-qq', '--arch-only', '-P', PROFILE,
         srcdir], env=dict(os.environ, DEBIAN_FRONTEND='noninteractive'),
        stdout=subprocess.DEVNULL)


def build(srcdir, jobs, log_path):
    """dpkg-buildpackage: the source package and the arch packages."""
    env = dict(os.environ)
    env['DEB_BUILD_OPTIONS'] = 'parallel=%d nocheck' % jobs
    env['PATH'] = '/usr/lib/ccache:' + env.get('PATH', '/usr/bin:/bin')
    env['CCACHE_BASEDIR'] = srcdir
    env['CCACHE_NOHASHDIR'] = '1'
    env.pop('MAKEFLAGS', None)
    env.pop('MAKELEVEL', None)
    cmd = ['dpkg-buildpackage', '--build=source,any', '-us', '-uc',
           '-P' + PROFILE, '-j%d' % jobs]
    say('building: %s (log: %s)' % (' '.join(cmd), log_path))
    start = time.time()
    last = ['']
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(cmd, cwd=srcdir, env=env,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

        def stop(signum, frame):
            os.killpg(proc.pid, signal.SIGTERM)
            raise SystemExit(128 + signum)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, stop)
        done = threading.Event()

        def report():
            while not done.wait(60):
                say('... %d s: %s' % (time.time() - start, last[0][:100]))
        threading.Thread(target=report, daemon=True).start()
        for line in proc.stdout:
            log.write(line)
            stripped = line.strip()
            if stripped.startswith(('[', 'dh_', 'dpkg-')):
                last[0] = stripped
        proc.wait()
        done.set()
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read().splitlines()[-25:]
        raise MkdebError('dpkg-buildpackage failed (exit %d); the end of %s:'
                         '\n%s' % (proc.returncode, log_path,
                                   '\n'.join(tail)))
    say('built in %d s' % (time.time() - start))


def lintian(changes):
    if not shutil.which('lintian'):
        say('lintian is not installed (apt-get install lintian): not run')
        return None
    say('lintian %s' % os.path.basename(changes))
    proc = subprocess.run(['lintian', '--no-tag-display-limit', changes],
                          capture_output=True, text=True)
    tags = [line for line in proc.stdout.splitlines() if line[:2] in
            ('E:', 'W:')]
    for line in tags:
        print('  ' + line)
    errors = [t for t in tags if t.startswith('E:')]
    say('lintian: %d errors, %d warnings' % (len(errors),
                                             len(tags) - len(errors)))
    return errors


def main():
    parser = argparse.ArgumentParser(
        description='Build Debian packages of sQemu from Debian\'s source '
                    'package qemu with the sQemu patch series added to its '
                    'quilt series: %s, versioned above Debian\'s.' %
                    ', '.join(SHIPPED))
    parser.add_argument('--jobs', '-j', type=int, default=os.cpu_count(),
                        help='parallel jobs (default: %(default)s)')
    parser.add_argument('--out', default=os.path.join(TOP, 'build', 'deb'),
                        metavar='DIR', help='where the source tree and the '
                        'packages go (default: build/deb)')
    parser.add_argument('--prepare-only', action='store_true',
                        help='prepare the source tree and stop')
    parser.add_argument('--no-lintian', action='store_true',
                        help='do not run lintian on the result')
    args = parser.parse_args()

    try:
        dsc = find_dsc()
        debian_version = dsc_field(dsc, 'Version')
        upstream = debian_version.split(':', 1)[-1].rsplit('-', 1)[0]
        count = git('rev-list', '--count', 'HEAD')
        version = '%s+sqemu%s.%s' % (debian_version, sqemu_version(), count)
        out = os.path.abspath(args.out)
        srcdir = os.path.join(out, 'qemu-%s' % upstream)
        os.makedirs(out, exist_ok=True)
        for old in glob.glob(os.path.join(out, '*.deb')) + \
                glob.glob(os.path.join(out, 'qemu_*')):
            os.unlink(old)
        n = prepare(dsc, srcdir, version)
        say('version %s: Debian %s with %d sQemu patches' %
            (version, debian_version, n))
        if args.prepare_only:
            return 0
        # dpkg-source -b wants the original tarball beside the tree
        for orig in glob.glob(os.path.join(os.path.dirname(dsc),
                                           'qemu_*.orig.tar.*')):
            shutil.copy(orig, out)
        install_build_deps(srcdir)
        build(srcdir, args.jobs, os.path.join(out, 'build.log'))
        changes = glob.glob(os.path.join(out, 'qemu_*_source+amd64.changes'))
        if not changes:
            changes = glob.glob(os.path.join(out, 'qemu_*.changes'))
        debs = sorted(glob.glob(os.path.join(out, '*.deb')))
        if not args.no_lintian and changes:
            lintian(changes[0])
        say('packages:')
        for deb in debs:
            print('  %s' % deb)
        say('install with: apt install %s' %
            ' '.join(os.path.relpath(d) for d in debs
                     if not d.endswith('-dbgsym.deb') and
                     '-dbgsym_' not in d))
    except MkdebError as e:
        print('mkdeb: error: %s' % e, file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as e:
        print('mkdeb: error: %s failed (exit %d)' %
              (' '.join(e.cmd), e.returncode), file=sys.stderr)
        return 1
    return 0
