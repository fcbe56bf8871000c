# SPDX-License-Identifier: GPL-2.0-or-later
#
# series: move changes to upstream QEMU files between the assembled tree
# (build/src, a git repository) and the numbered patch series (patches/).
#
# The loop: edit upstream files in build/src, commit there (one commit per
# patch, the message saying why), then "series export" writes patches/ anew
# from those commits.  "series check" applies patches/ to a pristine
# upstream tree and runs upstream's checkpatch.pl on every patch and on the
# project's own C files.

import argparse
import hashlib
import glob
import os
import subprocess
import tempfile

from sqemu import paths, util

TOP = paths.REPO_TOP
SRC = paths.SRC
PATCHES = os.path.join(TOP, 'patches')
IDENT = ['-c', 'user.name=sQemu developers',
         '-c', 'user.email=sqemu@localhost']


class SeriesError(Exception):
    pass


def git(*args, cwd=SRC, capture=True):
    res = subprocess.run(['git', *IDENT, *args], cwd=cwd, text=True,
                         stdout=subprocess.PIPE if capture else None,
                         stderr=subprocess.PIPE if capture else None)
    if res.returncode != 0:
        raise SeriesError('git %s failed: %s' %
                          (' '.join(args), (res.stderr or '').strip()))
    return (res.stdout or '').strip()


def require_src():
    if not os.path.isdir(os.path.join(SRC, '.git')):
        raise SeriesError('build/src does not exist: run ./configure first')


def patch_files():
    return sorted(glob.glob(os.path.join(PATCHES, '*.patch')))


def series_hash():
    h = hashlib.sha256()
    for p in patch_files():
        with open(p, 'rb') as f:
            h.update(f.read())
    return h.hexdigest()


def record_applied():
    """Tell configure that build/src matches patches/ as they now are."""
    gitdir = os.path.join(SRC, '.git')
    with open(os.path.join(gitdir, 'sqemu-head'), 'w') as f:
        f.write(git('rev-parse', 'HEAD') + '\n')
    with open(os.path.join(gitdir, 'sqemu-series'), 'w') as f:
        f.write(series_hash() + '\n')


def cmd_status(_args):
    require_src()
    commits = git('log', '--reverse', '--format=%h %s', 'upstream..HEAD')
    dirty = git('status', '--porcelain', '--untracked-files=no')
    applied = open(os.path.join(SRC, '.git', 'sqemu-head')).read().strip()
    print('commits on top of upstream in build/src:')
    print('\n'.join('  ' + c for c in commits.splitlines()) or '  (none)')
    print('patches in patches/: %d' % len(patch_files()))
    if git('rev-parse', 'HEAD') != applied:
        print('build/src has commits not yet exported: run "make patches"')
    if dirty:
        print('uncommitted changes to upstream files in build/src:')
        print('\n'.join('  ' + d for d in dirty.splitlines()))


def cmd_export(_args):
    require_src()
    if git('status', '--porcelain', '--untracked-files=no'):
        raise SeriesError('build/src has uncommitted changes to upstream '
                          'files: commit them first (git -C build/src commit)')
    with tempfile.TemporaryDirectory(prefix='sqemu-series-') as tmp:
        git('format-patch', '--quiet', '--no-numbered', '--zero-commit',
            '--no-signature', '--keep-subject', '-o', tmp, 'upstream..HEAD')
        new = sorted(os.listdir(tmp))
        for old in patch_files():
            os.unlink(old)
        os.makedirs(PATCHES, exist_ok=True)
        for name in new:
            os.replace(os.path.join(tmp, name), os.path.join(PATCHES, name))
    record_applied()
    print('exported %d patches to patches/' % len(new))
    for name in new:
        print('  ' + name)


def checkpatch(tree, paths, as_files):
    script = os.path.join(tree, 'scripts', 'checkpatch.pl')
    flags = ['--no-tree', '--terse']
    if as_files:
        flags.append('-f')
    else:
        flags.append('--no-signoff')
    failed = 0
    for p in paths:
        res = subprocess.run(['perl', script, *flags, p], cwd=tree, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if res.returncode != 0:
            failed += 1
            print('checkpatch: %s' % os.path.relpath(p, TOP))
            print(res.stdout.rstrip())
    return failed


def own_c_files():
    out = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard',
                          '*.c', '*.h'], cwd=TOP, text=True,
                         stdout=subprocess.PIPE, check=True).stdout
    return [os.path.join(TOP, f) for f in out.split()]


def cmd_check(_args):
    require_src()
    patches = patch_files()
    with tempfile.TemporaryDirectory(prefix='sqemu-series-check-') as tmp:
        tree = os.path.join(tmp, 'tree')
        git('worktree', 'add', '--quiet', '--detach', tree, 'upstream')
        try:
            if patches:
                try:
                    git('am', '--quiet', '--keep-cr', *patches, cwd=tree)
                except SeriesError:
                    name = git('am', '--show-current-patch=diff', cwd=tree)
                    raise SeriesError('the series does not apply to upstream;'
                                      ' stopped at:\n' + name[:2000])
            print('series applies: %d patches' % len(patches))
            failed = checkpatch(tree, patches, as_files=False)
            failed += checkpatch(tree, own_c_files(), as_files=True)
        finally:
            git('worktree', 'remove', '--force', tree)
    if failed:
        raise SeriesError('checkpatch found problems in %d files' % failed)
    print('checkpatch: clean (%d patches, %d own C files)' %
          (len(patches), len(own_c_files())))


def cmd_reset(_args):
    require_src()
    applied = open(os.path.join(SRC, '.git', 'sqemu-head')).read().strip()
    git('reset', '--quiet', '--hard', applied)
    print('build/src reset to the applied series (%s)' % applied[:12])


def main():
    parser = argparse.ArgumentParser(
        description='Move changes to upstream files between build/src and '
                    'the patch series in patches/.',
        epilog='The loop: edit upstream files in build/src; commit there, '
               'one commit per patch (or "git commit --fixup" and '
               '"git rebase -i --autosquash upstream" to amend one); '
               '"series export"; "series check"; commit patches/.')
    sub = parser.add_subparsers(dest='command', required=True)
    sub.add_parser('status', help='show what build/src holds beyond the '
                   'exported series').set_defaults(fn=cmd_status)
    sub.add_parser('export', help='write patches/ anew from the commits on '
                                  'top of upstream in build/src'
                   ).set_defaults(fn=cmd_export)
    sub.add_parser('check', help='apply patches/ to pristine upstream and '
                                 'run checkpatch on them and on our C files'
                   ).set_defaults(fn=cmd_check)
    sub.add_parser('reset', help='discard uncommitted and unexported work in '
                                 'build/src').set_defaults(fn=cmd_reset)
    args = parser.parse_args()
    return util.run_main('series', lambda: args.fn(args), SeriesError, None)
