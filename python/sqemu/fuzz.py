# SPDX-License-Identifier: GPL-2.0-or-later
#
# fuzz: build the libFuzzer harness tests/unit/fuzz-qcow2-backing-index.c
# with clang against the assembled tree (build/src, build/qemu) and run it.
#
#   fuzz [--seconds N]     fuzz for N seconds (default 60), starting from the
#                          corpus and the crash inputs; a crash is saved in
#                          tests/unit/fuzz-qcow2-backing-index-crashes/ and
#                          the exit status is non-zero
#   fuzz --replay [FILE..] run every corpus and crash input (or the FILEs)
#                          once; non-zero if any of them fails
#
# The binary and libFuzzer's working corpus live in a temporary directory
# that is removed on exit.  The checked-in corpus changes only with --merge.
# CI does not need clang: the cmocka test
# tests/unit/test-qcow2-backing-index-fuzz-corpus replays the same inputs
# through the same checks.

import argparse
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

from sqemu import paths, util

TOP = paths.REPO_TOP
SRC = paths.SRC
OBJ = paths.BUILD
HARNESS = os.path.join(TOP, 'tests', 'unit', 'fuzz-qcow2-backing-index.c')
CORPUS = os.path.join(TOP, 'tests', 'unit', 'fuzz-qcow2-backing-index-corpus')
CRASHES = os.path.join(TOP, 'tests', 'unit',
                       'fuzz-qcow2-backing-index-crashes')
# The code under test, and the objects it needs from the build
SOURCES = [os.path.join(SRC, 'block', 'qcow2-backing-index.c')]
LIBS = [os.path.join(OBJ, 'libqemuutil.a')]     # buffer_is_zero()
NEEDED = [os.path.join(OBJ, 'config-host.h'),
          os.path.join(OBJ, 'qapi', 'qapi-types-block-core.h')] + LIBS

# Largest input worth trying: a chain of the harness's 64 layers of 16
# bytes, plus room for the extension and entry views
MAX_LEN = 1088

ARTIFACT_KINDS = ('crash-', 'leak-', 'timeout-', 'oom-')


class FuzzError(Exception):
    pass


say = util.printer('fuzz')


def run(cmd, **kwargs):
    try:
        return subprocess.run(cmd, **kwargs)
    except FileNotFoundError:
        raise FuzzError('%s not found' % cmd[0])


def pkg_config(*args):
    res = run(['pkg-config', *args, 'glib-2.0'], text=True,
              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if res.returncode != 0:
        raise FuzzError('pkg-config glib-2.0: %s (install libglib2.0-dev)' %
                        res.stderr.strip())
    return res.stdout.split()


def build(clang, tmp):
    """Compile the harness and the code under test into TMP/fuzz."""
    for f in [HARNESS] + SOURCES + NEEDED:
        if not os.path.exists(f):
            raise FuzzError('%s is missing: build first (make)' %
                            os.path.relpath(f, TOP))
    if not shutil.which(clang):
        raise FuzzError('%s not found: install Debian package clang' % clang)
    exe = os.path.join(tmp, 'fuzz-qcow2-backing-index')
    cmd = [clang, '-g', '-O1', '-std=gnu11',
           '-fsanitize=fuzzer,address,undefined',
           '-fno-sanitize-recover=all', '-fno-omit-frame-pointer',
           # what QEMU compiles with (meson's c_args for the tree)
           '-D_GNU_SOURCE', '-D_FILE_OFFSET_BITS=64', '-D_LARGEFILE_SOURCE',
           '-fno-strict-aliasing', '-fno-common', '-fwrapv',
           '-Wall', '-Wmissing-prototypes',
           '-I', os.path.join(SRC, 'include'),
           '-I', OBJ,
           '-I', SRC,
           '-I', os.path.join(OBJ, 'qapi'),
           *pkg_config('--cflags'),
           HARNESS, *SOURCES, *LIBS, *pkg_config('--libs'),
           '-o', exe]
    res = run(cmd, text=True, stdout=subprocess.PIPE,
              stderr=subprocess.STDOUT)
    if res.returncode != 0:
        sys.stderr.write(res.stdout)
        raise FuzzError('could not build the harness with %s (Debian package '
                        'clang provides clang and libFuzzer)' % clang)
    if res.stdout.strip():
        sys.stderr.write(res.stdout)
    return exe


def inputs(dirs):
    """The input files of DIRS, sorted; READMEs and dot files are not."""
    found = []
    for d in dirs:
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            path = os.path.join(d, name)
            if (name.startswith('.') or name.startswith('README') or
                    not os.path.isfile(path)):
                continue
            found.append(path)
    return found


def fuzzer_env():
    env = dict(os.environ)
    env.setdefault('UBSAN_OPTIONS', 'print_stacktrace=1:halt_on_error=1')
    return env


def harness_message(log):
    """What broke, from the harness's or the sanitizer's report."""
    for pattern in (r'^fuzz-qcow2-backing-index: (.*)$',
                    r'^SUMMARY: (.*)$',
                    r'^==\d+==\s*ERROR: (.*)$'):
        m = re.search(pattern, log, re.M)
        if m:
            return m.group(1).strip().replace(TOP + '/', '')
    return 'no report (see the fuzzer output)'


def replay(exe, files, tmp):
    """Run FILES once each; returns the failures as (file, message)."""
    failures = []
    todo = list(files)
    while todo:
        log_path = os.path.join(tmp, 'replay.log')
        with open(log_path, 'w') as log:
            res = run([exe, '-artifact_prefix=%s/' % tmp, *todo],
                      stdout=log, stderr=subprocess.STDOUT, env=fuzzer_env())
        with open(log_path, errors='replace') as log:
            out = log.read()
        if res.returncode == 0:
            break
        # libFuzzer stops at the first failing input: note it, go on after it
        ran = re.findall(r'^Running: (.*)$', out, re.M)
        if not ran or ran[-1] not in todo:
            sys.stderr.write(out)
            raise FuzzError('the harness failed before running any input')
        failures.append((ran[-1], harness_message(out)))
        sys.stderr.write(out)
        todo = todo[todo.index(ran[-1]) + 1:]
    return failures


def final_stats(log):
    stats = {k: v for k, v in re.findall(r'^stat::(\w+):\s*(\S+)', log, re.M)}
    status = re.findall(r'^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) '
                        r'corp: (\d+)/(\S+)', log, re.M)
    if status:
        runs, cov, ft, corp, corp_size = status[-1]
        stats.update(cov=cov, ft=ft, corp=corp, corp_size=corp_size)
    return stats


def save_artifacts(artifacts, log):
    """Copy what libFuzzer saved into CRASHES, one README line each."""
    found = [a for a in sorted(os.listdir(artifacts))
             if a.startswith(ARTIFACT_KINDS)]
    if not found:
        return []
    os.makedirs(CRASHES, exist_ok=True)
    readme = os.path.join(CRASHES, 'README')
    if not os.path.exists(readme):
        with open(readme, 'w') as f:
            f.write('Inputs on which scripts/sqemu/fuzz once failed.  '
                    'tests/unit/test-qcow2-backing-index-fuzz-corpus\n'
                    'replays every one of them; '
                    '"scripts/sqemu/fuzz --replay FILE" runs one under '
                    'libFuzzer.\nOne line per input: what it exercised.\n\n')
    saved = []
    today = datetime.date.today().isoformat()
    with open(readme, 'a') as f:
        for name in found:
            shutil.copyfile(os.path.join(artifacts, name),
                            os.path.join(CRASHES, name))
            f.write('%s: found %s; %s (TODO: say what it exercised)\n' %
                    (name, today, harness_message(log)))
            saved.append(os.path.join(CRASHES, name))
    return saved


def fuzz(exe, seconds, merge, tmp):
    work = os.path.join(tmp, 'corpus')
    artifacts = os.path.join(tmp, 'artifacts')
    os.makedirs(work)
    os.makedirs(artifacts)
    seeds = inputs([CORPUS, CRASHES])
    for path in seeds:
        dst = os.path.join(work, '%s-%s' % (os.path.basename(
            os.path.dirname(path)).rsplit('-', 1)[-1],
            os.path.basename(path)))
        shutil.copyfile(path, dst)
    say('fuzzing for %d s from %d inputs' % (seconds, len(seeds)))
    log_path = os.path.join(tmp, 'fuzz.log')
    with open(log_path, 'w') as log:
        res = run([exe, '-max_total_time=%d' % seconds,
                   '-max_len=%d' % MAX_LEN, '-timeout=10',
                   '-use_value_profile=1', '-print_final_stats=1',
                   '-artifact_prefix=%s/' % artifacts, work],
                  stdout=log, stderr=subprocess.STDOUT, env=fuzzer_env())
    with open(log_path, errors='replace') as log:
        out = log.read()
    stats = final_stats(out)
    runs = stats.get('number_of_executed_units', '?')
    say('%s runs, %s exec/s, coverage %s PCs, %s features, corpus %s '
        'inputs (%s), %s new, peak RSS %s MB' %
        (runs, stats.get('average_exec_per_sec', '?'), stats.get('cov', '?'),
         stats.get('ft', '?'), stats.get('corp', '?'),
         stats.get('corp_size', '?'), stats.get('new_units_added', '?'),
         stats.get('peak_rss_mb', '?')))
    saved = save_artifacts(artifacts, out)
    if res.returncode != 0 or saved:
        sys.stderr.write(out[-20000:])
        for path in saved:
            say('saved %s' % os.path.relpath(path, TOP))
        raise FuzzError('the fuzzer failed (exit %d): %s' %
                        (res.returncode, harness_message(out)))
    if merge:
        before = set(inputs([CORPUS]))
        # Only new edges count, not new hit counts: the corpus stays small
        res = run([exe, '-merge=1', '-use_counters=0', '-max_len=%d' % MAX_LEN,
                   CORPUS, work],
                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                  text=True, env=fuzzer_env())
        if res.returncode != 0:
            sys.stderr.write(res.stdout)
            raise FuzzError('merging into the corpus failed')
        added = sorted(set(inputs([CORPUS])) - before)
        say('merged %d new inputs into %s' %
            (len(added), os.path.relpath(CORPUS, TOP)))


def main():
    ap = argparse.ArgumentParser(
        description='Build the qcow2 backing index libFuzzer harness with '
        'clang and run it: fuzz for --seconds, or --replay the corpus and '
        'the crash inputs once.')
    ap.add_argument('--seconds', type=int, default=60, metavar='N',
                    help='how long to fuzz (default 60)')
    ap.add_argument('--replay', action='store_true',
                    help='only run the corpus and crash inputs (or FILEs) '
                    'once each; fail if any of them fails')
    ap.add_argument('--merge', action='store_true',
                    help='after a clean run, add the inputs that reach new '
                    'coverage to the checked-in corpus')
    ap.add_argument('--clang', default='/usr/bin/clang',
                    help='the compiler (default /usr/bin/clang)')
    ap.add_argument('files', nargs='*', metavar='FILE',
                    help='with --replay: the inputs to run')
    args = ap.parse_args()
    if args.seconds < 1:
        ap.error('--seconds must be at least 1')
    if args.files and not args.replay:
        ap.error('input files go with --replay')

    # Leave through the finally below (and clean up) on SIGTERM too
    util.exit_on(signal.SIGTERM)
    tmp = tempfile.mkdtemp(prefix='sqemu-fuzz.')
    try:
        exe = build(args.clang, tmp)
        if args.replay:
            files = ([os.path.abspath(f) for f in args.files] or
                     inputs([CORPUS, CRASHES]))
            if not files:
                raise FuzzError('no inputs in %s' %
                                os.path.relpath(CORPUS, TOP))
            failures = replay(exe, files, tmp)
            for path, msg in failures:
                say('FAIL %s: %s' % (os.path.relpath(path, TOP), msg))
            say('replayed %d inputs, %d failed' % (len(files),
                                                   len(failures)))
            return 1 if failures else 0
        fuzz(exe, args.seconds, args.merge, tmp)
        return 0
    except FuzzError as e:
        print('fuzz: error: %s' % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('fuzz: interrupted', file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
