# SPDX-License-Identifier: GPL-2.0-or-later
#
# demo: the main job (make demo).  Installs what it needs, builds sQemu,
# benchmarks it against stock Debian QEMU at 1 and 500 layers, makes a
# 500-layer chain, boots a VM from our build on it, times dd over the whole
# disk inside the guest (and the same with stock QEMU for comparison), and
# says which accelerator ran.  Removes the chain at the end.

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from sqemu import paths


def step(msg):
    print('\n=== demo: %s ===' % msg, flush=True)


def run(*cmd):
    subprocess.run(cmd, check=True)


def boot(qemu, top, workdir, name, accel, args):
    """Boot the test guest on @top with @qemu; return vmrun's JSON."""
    result = os.path.join(workdir, name + '.json')
    run(paths.script('vmrun'), '--disk', top, '--qemu', qemu,
        '--workload', 'dd', '--accel', accel,
        '--kvm-probe-timeout', str(args.kvm_probe_timeout),
        '--guest-dir', os.path.join(paths.REPO_TOP, 'build', 'guest'),
        '--json', result)
    with open(result) as f:
        return json.load(f)


def has_sqemu_io_path():
    """The I/O path comes with its qemu-io counters command (issue 4)"""
    help_text = subprocess.run(
        [os.path.join(paths.BUILD, 'qemu-io'), '-c', 'help'],
        text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT).stdout
    return 'sqemu-stats' in help_text


def _main():
    parser = argparse.ArgumentParser(
        description='The main job: build sQemu, benchmark it against stock '
                    'QEMU at 1 and N layers, and boot a VM on an N-layer '
                    'chain.')
    parser.add_argument('--layers', type=int, default=500,
                        help='chain length (default 500)')
    parser.add_argument('--size', default='1G',
                        help='virtual disk size (default 1G)')
    parser.add_argument('--accel', choices=('auto', 'kvm', 'tcg'),
                        default='auto',
                        help='accelerator for the VM (default: KVM if a '
                             'guest boots under it, else TCG)')
    parser.add_argument('--kvm-probe-timeout', type=int, default=20,
                        help='seconds a KVM probe guest may take to boot')
    parser.add_argument('--no-build', action='store_true',
                        help='use the existing build')
    args = parser.parse_args()

    step('installing what is needed')
    run(paths.script('install-deps'), 'runtime')
    if not args.no_build:
        step('building sQemu')
        run('make', '-C', paths.REPO_TOP, '--no-print-directory')

    step('benchmark: stock QEMU against sQemu at 1 and %d layers'
         % args.layers)
    # One sequential pass per build: at 500 layers one pass of stock QEMU
    # over 1 GiB takes minutes here.
    run(paths.script('bench'), '--lengths', '1,%d' % args.layers,
        '--size', args.size, '--repeat', '1')

    workdir = tempfile.mkdtemp(prefix='sqemu-demo-', dir='/var/tmp')
    try:
        step('making a %d-layer chain of a %s disk' % (args.layers, args.size))
        chain = os.path.join(workdir, 'chain')
        mkchain = [paths.script('mkchain'), chain,
                   '-n', str(args.layers), '-s', args.size,
                   '--qemu-img', os.path.join(paths.BUILD, 'qemu-img'),
                   '--qemu-io', os.path.join(paths.BUILD, 'qemu-io')]
        if has_sqemu_io_path():
            # As a cloud makes it: live snapshots, each indexed by L2 copy
            mkchain += ['--live', '-o', 'backing-index=on',
                        '--qemu-storage-daemon',
                        os.path.join(paths.BUILD, 'storage-daemon',
                                     'qemu-storage-daemon')]
        top = subprocess.run(mkchain, check=True, text=True,
                             stdout=subprocess.PIPE).stdout.strip()

        step('booting sQemu\'s qemu-system-x86_64 on the chain')
        ours = boot(os.path.join(paths.BUILD, 'qemu-system-x86_64'), top,
                    workdir, 'ours', args.accel, args)
        step('booting stock QEMU on the same chain, for comparison')
        # Debian's stock QEMU, from its packages (/usr/bin is sQemu's once
        # it is installed)
        stock_bin = paths.stock_dir()
        if not stock_bin:
            print('demo: error: no stock QEMU: see stock-qemu\'s error '
                  'above', file=sys.stderr)
            return 1
        stock = boot(os.path.join(stock_bin, 'qemu-system-x86_64'), top,
                     workdir, 'stock', ours['accelerator'], args)

        step('result')
        for name, r in (('sQemu', ours), ('stock', stock)):
            print('%-6s guest dd over %d bytes at %d layers: %.2f s '
                  '(%.1f MiB/s), accelerator: %s, QEMU peak RSS %d MiB' %
                  (name, r['guest_bytes'], args.layers, r['guest_seconds'],
                   r['guest_bytes'] / r['guest_seconds'] / 2**20,
                   r['accelerator'],
                   r['peak_rss_kib'] // 1024))
        print('sQemu/stock guest dd time: %.2f' %
              (ours['guest_seconds'] / stock['guest_seconds']))
        if not has_sqemu_io_path():
            print('note: this sQemu build has no sQemu I/O path yet (its '
                  'qemu-io has no sqemu-stats command): both VMs read the '
                  'chain with the same upstream code, so any difference is '
                  'noise')
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main():
    try:
        return _main()
    except subprocess.CalledProcessError as e:
        print('demo: error: %s exited with status %d' %
              (os.path.basename(e.cmd[0]), e.returncode), file=sys.stderr)
        return 1
