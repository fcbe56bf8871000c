# SPDX-License-Identifier: GPL-2.0-or-later
#
# debian-features: the configure options that give sQemu's build the
# feature set of Debian's own build of the same source package, derived
# from that package's debian/ directory:
#
#   1. the configure command of Debian's main build (b/qemu), as Debian's
#      debian/rules runs it (make -n: the options it writes itself plus
#      those debian/extract-config-opts takes from comments in
#      debian/control);
#   2. options those comments name for amd64 that extract-config-opts does
#      not pass because its patterns are Debian architecture names
#      ("amd64|arm64", "linux-any") that it compares with "linux-amd64" as
#      plain shell patterns: on Debian's buildds these features are built
#      anyway, auto-detected because their build dependency is installed,
#      so here they are enabled explicitly;
#   3. features Debian's binary packages show (a module or a library they
#      link) that no option names, auto-detected on Debian's buildds:
#      AUTO_DETECTED below, each with its evidence.
#
# Install-layout options (prefix, directories, flags, version string) and
# the options of other build kinds (docs, linux-user, the target list) are
# left to the caller: DROPPED says which and why.  The iotest
# sqemu-debian-parity checks the result against Debian's binaries.

import argparse
import fnmatch
import os
import re
import shlex
import subprocess
import sys

# Options of Debian's configure command that are not features: the caller
# chooses them for its own kind of build.
DROPPED = {
    '--with-pkgversion': 'the version string is the caller\'s',
    '--extra-cflags': 'compiler flags are the caller\'s',
    '--extra-ldflags': 'linker flags are the caller\'s',
    '--prefix': 'install layout',
    '--sysconfdir': 'install layout',
    '--libdir': 'install layout',
    '--libexecdir': 'install layout',
    '--localstatedir': 'install layout',
    '--firmwarepath': 'install layout (the caller passes Debian\'s)',
    '--interp-prefix': 'linux-user only',
    '--disable-install-blobs': 'install layout',
    '--disable-strip': 'install layout',
    '--with-git-submodules': 'source layout',
    '--enable-docs': 'documentation, not a feature of the binaries',
    '--disable-user': 'targets: the caller gives --target-list',
    '--enable-system': 'targets: the caller gives --target-list',
    '--enable-linux-user': 'targets: the caller gives --target-list',
    '--disable-linux-user': 'targets: the caller gives --target-list',
}

# Features Debian's amd64 binaries have that no configure option of
# Debian's names: meson found them on the buildd.  Evidence in Debian
# 1:7.2+dfsg-7+deb12u18+b3.
AUTO_DETECTED = (
    ('--enable-sndio', 'qemu-system-common ships audio-sndio.so'),
    ('--enable-dbus-display',
     'qemu-system-common ships ui-dbus.so and audio-dbus.so'),
    ('--enable-selinux', 'qemu-utils depends on libselinux1 (qemu-nbd)'),
)

CONFIGURE_RE = re.compile(r'(^|\s)\S*/configure\s')


def debian_arch_matches(pattern, os_name, arch):
    """Whether one Debian architecture pattern (e.g. "amd64", "linux-any",
    "linux-*", "any") names @os_name-@arch."""
    full = '%s-%s' % (os_name, arch)
    if pattern in ('any', full, arch if os_name == 'linux' else None):
        return True
    if pattern in ('%s-any' % os_name, 'any-%s' % arch):
        return True
    return fnmatch.fnmatchcase(full, pattern)


def control_options(control_text, os_name, arch):
    """[(option, matched_by_debian_script)] from "# --option<TAB>patterns"
    comments of debian/control, as Debian's extract-config-opts reads them
    (a tab separates the option from its patterns; no pattern: every
    architecture)."""
    result = []
    for line in control_text.splitlines():
        m = re.match(r'^# ?(--\S.*)$', line)
        if not m:
            continue
        fields = m.group(1).split('\t')
        option = fields[0].strip()
        patterns = next((f.strip() for f in fields[1:] if f.strip()), '')
        # A comment after the patterns ("# is it ...") is not a pattern
        patterns = patterns.split('#')[0].strip()
        alts = [p.strip() for p in patterns.split('|') if p.strip()]
        full = '%s-%s' % (os_name, arch)
        by_script = not alts or any(fnmatch.fnmatchcase(full, p)
                                    for p in alts)
        by_debian = any(debian_arch_matches(p, os_name, arch) for p in alts)
        if by_script or by_debian:
            for opt in option.split():
                result.append((opt, by_script))
    return result


def rules_configure_command(srcdir):
    """The argument list of Debian's main configure command (b/qemu), as
    "make -n -f debian/rules" prints it."""
    env = dict(os.environ)
    for var in ('DEB_BUILD_OPTIONS', 'DEB_BUILD_PROFILES', 'MAKEFLAGS',
                'MAKELEVEL', 'MFLAGS'):
        env.pop(var, None)
    try:
        out = subprocess.run(
            ['make', '-s', '-n', '-f', 'debian/rules', 'b/qemu/configured'],
            cwd=srcdir, env=env, check=True, capture_output=True,
            text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        err = getattr(e, 'stderr', '') or str(e)
        sys.exit('debian-features: make -n -f debian/rules in %s failed '
                 '(are dpkg-dev and debhelper installed?): %s' %
                 (srcdir, err.strip()))
    text = out.replace('\\\n', ' ')
    for line in text.splitlines():
        if CONFIGURE_RE.search(line):
            words = shlex.split(line)
            idx = next(i for i, w in enumerate(words)
                       if w.endswith('/configure'))
            return words[idx + 1:]
    sys.exit('debian-features: no configure command in make -n output of '
             '%s/debian/rules' % srcdir)


def option_name(opt):
    return opt.split('=', 1)[0]


def derive(srcdir, os_name='linux', arch='amd64'):
    """[(option, source)] in order, without duplicates."""
    with open(os.path.join(srcdir, 'debian', 'control')) as f:
        control = f.read()
    seen = set()
    result = []

    def add(opt, source):
        name = option_name(opt)
        if name in DROPPED or name in seen:
            return
        seen.add(name)
        result.append((opt, source))

    for opt in rules_configure_command(srcdir):
        add(opt, 'debian/rules')
    for opt, by_script in control_options(control, os_name, arch):
        if not by_script:
            add(opt, 'debian/control, for %s by Debian architecture '
                'matching' % arch)
    for opt, why in AUTO_DETECTED:
        add(opt, 'auto-detected on Debian\'s buildd: %s' % why)
    return result


def main():
    parser = argparse.ArgumentParser(
        description='Print the configure options that give a QEMU build '
                    'the feature set of Debian\'s build of the source '
                    'package unpacked in SRCDIR, one per line.')
    parser.add_argument('srcdir', metavar='SRCDIR',
                        help='unpacked Debian source package qemu (with '
                             'debian/)')
    parser.add_argument('--explain', action='store_true',
                        help='say where each option comes from, and which '
                             'options of Debian\'s command are left out '
                             'and why')
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.srcdir, 'debian', 'rules')):
        parser.error('%s has no debian/rules' % args.srcdir)
    options = derive(args.srcdir)
    for opt, source in options:
        if args.explain:
            print('%-40s %s' % (opt, source))
        else:
            print(opt)
    if args.explain:
        for name, why in DROPPED.items():
            print('%-40s left out: %s' % (name, why))
    return 0
