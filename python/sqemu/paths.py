# SPDX-License-Identifier: GPL-2.0-or-later
#
# Where the checkout, its commands and its builds are.  The modules are
# reached through symlinks (build/src links our files into the assembled
# tree), so paths are taken from the real location of this file.

import os
import shutil
import subprocess
import sys

# python/sqemu/paths.py -> the checkout
REPO_TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.realpath(__file__))))
# the commands (entry points) and the shell tools stock-qemu, install-deps
SCRIPTS = os.path.join(REPO_TOP, 'scripts', 'sqemu')
# our build of QEMU (make), and the tree it was built from
BUILD = os.path.join(REPO_TOP, 'build', 'qemu')
SRC = os.path.join(REPO_TOP, 'build', 'src')
# QEMU's own python/qemu (qemu.qmp, qemu.machine) in the assembled tree
QEMU_PYTHON = os.path.join(SRC, 'python')


def script(name):
    """The path of command @name in scripts/sqemu/"""
    return os.path.join(SCRIPTS, name)


def use_qemu_python():
    """Make QEMU's python/qemu importable (the assembled tree's copy)"""
    if QEMU_PYTHON not in sys.path:
        sys.path.insert(0, QEMU_PYTHON)


def find_tool(directory, name):
    """The executable @name in build directory @directory (or its
    storage-daemon/, where QEMU's build puts qemu-storage-daemon), as an
    absolute path; None if there is none"""
    for where in (directory, os.path.join(directory, 'storage-daemon')):
        path = os.path.join(where, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return os.path.abspath(path)
    return None


def find_builds(directories, tools, error):
    """The builds a measurement compares: for [(build, directory)], the
    map build -> {tool -> path}; exception @error names what is missing,
    so that an operator can act on it: a build's absent @tools, and mkchain
    and fio, which every such run needs"""
    builds = {}
    missing = []
    for build, directory in directories:
        builds[build] = {tool: find_tool(directory, tool) for tool in tools}
        absent = [tool for tool, path in builds[build].items() if not path]
        if absent:
            missing.append('%s %s (looked in %s and its storage-daemon/)' %
                           (build, ', '.join(absent), directory))
    if not os.access(script('mkchain'), os.X_OK):
        missing.append(script('mkchain'))
    if not shutil.which('fio'):
        missing.append('fio (apt-get install fio)')
    if missing:
        raise error('missing: ' + '; '.join(missing))
    return builds


def stock_dir(error=None):
    """The directory of Debian's stock QEMU binaries, which stock-qemu
    unpacks from Debian's packages (the baseline: /usr/bin is sQemu's once
    sQemu's packages are installed); if it failed (and stock-qemu said why
    on stderr), None, or exception @error if given"""
    try:
        out = subprocess.run([script('stock-qemu'), '--quiet'],
                             stdout=subprocess.PIPE, text=True)
        found = out.stdout.strip() if out.returncode == 0 else None
    except OSError:
        found = None
    if not found and error:
        raise error('no stock QEMU: see stock-qemu\'s error above')
    return found or None
