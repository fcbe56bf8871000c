# SPDX-License-Identifier: GPL-2.0-or-later
# Copyright (c) 2026 The sQemu authors
"""Give every qcow2 layer of a backing chain an sQemu backing index.

Runs `qemu-img amend -o backing-index=on TOP`, which indexes every layer
of TOP's chain that has no valid index, from the base up, and then TOP,
so that any layer can serve as a top.  With --off, strips the index from
every qcow2 layer instead, one amend each (so that stock QEMU's `qemu-img
check` is clean).  A raw base is left as it is.  The chain must not be in
use.
"""

import argparse
import json
import subprocess
import sys

from sqemu import paths


def chain_of(qemu_img, top):
    out = subprocess.run([qemu_img, 'info', '--backing-chain',
                          '--output=json', top],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit('index-chain: qemu-img info failed: ' + out.stderr.strip())
    images = json.loads(out.stdout)
    return images if isinstance(images, list) else [images]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('top', help='the top image of the chain')
    parser.add_argument('--off', action='store_true',
                        help='strip the index from every layer instead')
    parser.add_argument('--qemu-img',
                        default=paths.find_tool(paths.BUILD, 'qemu-img') or
                        'qemu-img',
                        help="sQemu's qemu-img (default: %(default)s)")
    parser.add_argument('-n', '--dry-run', action='store_true',
                        help='print the commands without running them')
    args = parser.parse_args()

    images = chain_of(args.qemu_img, args.top)
    if not args.off:
        # One command indexes the whole chain
        cmd = [args.qemu_img, 'amend', '-f', 'qcow2', '-o',
               'backing-index=on', args.top]
        print(' '.join(cmd), flush=True)
        if args.dry_run:
            return
        if subprocess.run(cmd).returncode != 0:
            sys.exit('index-chain: failed on %s; the layers below the one '
                     'named are done' % args.top)
        print('index-chain: indexed the %d qcow2 layer(s) of %d' %
              (sum(image.get('format') == 'qcow2' for image in images),
               len(images)))
        return
    done = 0
    for image in reversed(images):
        if image.get('format') != 'qcow2':
            print('skipping %s (%s)' % (image['filename'],
                                        image.get('format')))
            continue
        cmd = [args.qemu_img, 'amend', '-f', 'qcow2',
               '-o', 'backing-index=off', image['filename']]
        print(' '.join(cmd), flush=True)
        if args.dry_run:
            continue
        if subprocess.run(cmd).returncode != 0:
            sys.exit('index-chain: failed on %s; the layers below it are '
                     'done, the ones above are not' % image['filename'])
        done += 1
    if not args.dry_run:
        print('index-chain: stripped %d qcow2 layer(s) of %d' %
              (done, len(images)))
