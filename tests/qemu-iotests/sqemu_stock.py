# SPDX-License-Identifier: GPL-2.0-or-later
#
# sQemu's Python iotests: Debian's stock QEMU, the baseline they compare
# sQemu with.  run-tests passes its directory in SQEMU_STOCK_BIN; otherwise
# scripts/sqemu/stock-qemu provides it (Debian's packages, unpacked once).
# /usr/bin is not used: once sQemu's packages are installed, it is sQemu's.

import os
import re
import subprocess

# sQemu's builds say "(sQemu VERSION, ...)" in --version, its packages
# "(Debian ...+sqemuVERSION)"; a path in the text may hold anything
SQEMU_VERSION_RE = re.compile(r'\((sQemu |[^)]*\+sqemu)')

_TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.realpath(__file__))))
STOCK_QEMU = os.path.join(_TOP, 'scripts', 'sqemu', 'stock-qemu')


def is_sqemu(prog):
    """Whether the QEMU binary @prog is sQemu's."""
    version = subprocess.run([prog, '--version'], check=True,
                             capture_output=True, text=True).stdout
    return bool(SQEMU_VERSION_RE.search(version))


def stock_bin(*progs):
    """The directory of Debian's stock binaries; raises if one of @progs
    is missing there or is sQemu's, so that sQemu is never compared with
    itself."""
    found = os.environ.get('SQEMU_STOCK_BIN')
    if not found:
        found = subprocess.run([STOCK_QEMU, '--quiet'], check=True,
                               capture_output=True, text=True).stdout.strip()
    for prog in progs:
        if is_sqemu(os.path.join(found, prog)):
            raise RuntimeError('%s/%s is sQemu\'s, not Debian\'s' %
                               (found, prog))
    return found
