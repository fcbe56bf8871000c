# SPDX-License-Identifier: GPL-2.0-or-later
#
# run-tests: the project's test command (make check).  Builds sQemu
# (installing build dependencies when run as root), then runs
#   1. the cmocka unit tests (meson suite "sqemu"),
#   2. the project's own iotests (group "sqemu"),
#   3. upstream's "./check -qcow2 -g quick" against the built binaries,
#   4. the same quick group again with "-o backing-index=on", so that every
#      image the tests create carries an sQemu backing index,
# and prints a summary per stage, the diff each failed iotest printed
# (again, at the end) and one closing summary line.  A failure
# of an upstream iotest counts unless tests/qemu-iotests/sqemu-known-failures
# names it with its environmental reason or, in stage 4 only,
# tests/qemu-iotests/sqemu-backing-index-excluded names it with the reason
# it cannot pass with the option; such a failure is reported, counted as
# skipped and listed apart in the summary.  A failing test that
# tests/qemu-iotests/sqemu-timing-dependent names is run again alone, up to
# twice, and counts as passed if a re-run passes (listed apart too).
#
# Upstream's iotests runner takes its binaries and scratch directory from
# the environment when they are set (QEMU_PROG, QEMU_IMG_PROG, QEMU_IO_PROG,
# QEMU_NBD_PROG, QSD_PROG, TEST_DIR).  Stage 4 runs in TEST_DIR (default:
# build/qemu/tests/qemu-iotests/scratch) with "-backing-index" appended, so
# that the .out.bad files of both runs are kept.

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from xml.etree import ElementTree

from sqemu import paths, util

TOP = paths.REPO_TOP
IOTESTS = os.path.join(paths.BUILD, 'tests', 'qemu-iotests')
KNOWN = os.path.join(TOP, 'tests', 'qemu-iotests', 'sqemu-known-failures')
BI_EXCLUDED = os.path.join(TOP, 'tests', 'qemu-iotests',
                           'sqemu-backing-index-excluded')
TIMING = os.path.join(TOP, 'tests', 'qemu-iotests',
                      'sqemu-timing-dependent')
# Re-runs of a failed timing-dependent test
RERUNS = 2
# Lines of what a failed test printed repeated at the end of the output
PRINTED_LINES = 60
BI_OPTION = 'backing-index=on'

# The stages in the order they run, as --only names them
STAGES = ('python', 'unit', 'sqemu-iotests', 'iotests', 'iotests-bi')

# A result line of upstream's iotests runner, e.g.
#   "tests/sqemu-chain  pass       [00:01:02] [00:01:09]   7.1s"
#   "307                not run    [00:01:02] [00:01:02]   ...   not suitable"
RESULT_RE = re.compile(r'^(\S+)\s+(pass|fail|not run)\b')
# The line the runner prints when a test starts (the result rewrites it
# after a carriage return, which universal newlines read as a line break)
START_RE = re.compile(r'^\S+\s+\.\.\.\s+\[')
# The runner's closing lines (testrunner.py prints them in this order)
CLOSING = ('Not run: ', 'Some cases not run in: ', 'Failures: ',
           'Failed ', 'Passed all ')
# The reason at the end of a "not run" line, after the time columns
NOTRUN_REASON_RE = re.compile(r'\.\.\.\s+(\S.*?)\s*$')
# Reasons for "not run" that only say the test is for other image formats,
# protocols or options: listed by count, not test by test
NOT_SUITABLE_RE = re.compile(r'^not suitable for this')


class Tally:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0
        self.failures = []
        # failure ('suite: test') -> what its runner printed about it
        self.printed = {}
        # suite -> [passed, failed, skipped], in the order the suites ran
        self.suites = {}
        # suite -> {why: [test, ...]}: the failures that were not counted
        self.uncounted = {}
        # suite -> {why: [test, ...]}: results worth listing apart
        self.noted = {}

    def add(self, suite, name, status, why=None, printed=None):
        counts = self.suites.setdefault(suite, [0, 0, 0])
        if status == 'pass':
            self.passed += 1
            counts[0] += 1
        elif status == 'skip':
            self.skipped += 1
            counts[2] += 1
            if why:
                self.uncounted.setdefault(suite, {}).setdefault(
                    why, []).append(name)
        else:
            self.failed += 1
            counts[1] += 1
            self.failures.append('%s: %s' % (suite, name))
            if printed:
                self.printed['%s: %s' % (suite, name)] = printed

    def note(self, suite, why, name):
        """List @name apart in @suite's summary line for @why."""
        self.noted.setdefault(suite, {}).setdefault(why, []).append(name)

    def summary(self):
        for suite, (passed, failed, skipped) in self.suites.items():
            log('%s: %d passed, %d failed, %d skipped' %
                (suite, passed, failed, skipped))
            for why, tests in self.uncounted.get(suite, {}).items():
                log('%s:   skipped, %s (%d): %s' %
                    (suite, why, len(tests), ' '.join(tests)))
            for why, tests in self.noted.get(suite, {}).items():
                log('%s:   passed, %s (%d): %s' %
                    (suite, why, len(tests), ' '.join(tests)))


log = util.printer('run-tests')


def build():
    subprocess.run([paths.script('install-deps'), 'tests'], check=True)
    log('building (make)')
    subprocess.run(['make', '-C', TOP, '--no-print-directory'], check=True)


def python_sources():
    """The package and the commands written in Python"""
    commands = []
    for name in sorted(os.listdir(paths.SCRIPTS)):
        with open(paths.script(name), 'rb') as f:
            if f.readline().startswith(b'#!/usr/bin/python3'):
                commands.append(paths.script(name))
    return [os.path.join(TOP, 'python', 'sqemu')] + commands


def run_python_tests(tally):
    """The package's unit tests (Debian's pytest, the system python3 the
    commands run with), one result per test, and flake8 over the package
    and the commands"""
    log('Python unit tests (pytest python/sqemu/tests) and flake8')
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, 'junit.xml')
        res = subprocess.run(['/usr/bin/python3', '-m', 'pytest', '-q',
                              '-p', 'no:cacheprovider', '--junitxml',
                              report, os.path.join('sqemu', 'tests')],
                             cwd=os.path.join(TOP, 'python'))
        seen = 0
        if os.path.exists(report):
            for case in ElementTree.parse(report).iter('testcase'):
                seen += 1
                name = '%s::%s' % (case.get('classname'), case.get('name'))
                if case.find('failure') is not None or \
                        case.find('error') is not None:
                    tally.add('python', name, 'fail')
                elif case.find('skipped') is not None:
                    tally.add('python', name, 'skip')
                else:
                    tally.add('python', name, 'pass')
    if seen == 0 or (res.returncode != 0 and not tally.failures):
        tally.add('python', 'pytest', 'fail')
    res = subprocess.run(['/usr/bin/python3', '-m', 'flake8',
                          *python_sources()])
    tally.add('python', 'flake8', 'pass' if res.returncode == 0 else 'fail')


def run_unit_tests(tally):
    log('cmocka unit tests (meson suite sqemu)')
    res = subprocess.run(['meson', 'test', '-C', paths.BUILD, '--no-rebuild',
                          '--suite', 'sqemu', '--print-errorlogs'])
    logfile = os.path.join(paths.BUILD, 'meson-logs', 'testlog.json')
    seen = 0
    with open(logfile) as f:
        for line in f:
            entry = json.loads(line)
            seen += 1
            status = {'OK': 'pass', 'SKIP': 'skip'}.get(entry['result'],
                                                        'fail')
            tally.add('unit', entry['name'], status)
    if seen == 0 or (res.returncode != 0 and not tally.failures):
        tally.add('unit', 'meson test', 'fail')


def parse_result(line):
    """(test, status, reason) of a result line of the iotests runner,
    the reason only for "not run"; None for any other line"""
    # The runner rewrites a test's line in place with a carriage return
    last = line.split('\r')[-1]
    m = RESULT_RE.match(last)
    if not m:
        return None
    why = None
    if m.group(2) == 'not run':
        r = NOTRUN_REASON_RE.search(last)
        why = r.group(1) if r else 'no reason given'
    return m.group(1), m.group(2), why


def read_runner_output(lines, out, reasons=None, printed=None):
    """{test: status} from the iotests runner's output @lines, each copied
    to @out.  The reason of each "not run" goes into @reasons ({test:
    reason}) and what the runner printed after each failure (its diff) into
    @printed ({test: [line, ...]}) when given."""
    results = {}
    failed = None
    for line in lines:
        out.write(line)
        result = parse_result(line)
        if result:
            test, status, why = result
            results[test] = status
            if why and reasons is not None:
                reasons[test] = why
            failed = test if status == 'fail' else None
        elif line.startswith(CLOSING) or START_RE.match(line):
            # the runner's closing lines, or the next test
            failed = None
        elif failed and printed is not None:
            printed.setdefault(failed, []).append(line.rstrip('\n'))
    return results


def run_iotests(args, env=None, reasons=None, printed=None):
    """Run upstream's iotests runner; return {test: status}.  @reasons and
    @printed as read_runner_output() fills them."""
    # The runner runs Python tests with the interpreter that runs it: this
    # one (Debian's python3, as the '#!' above says), not whichever python3
    # comes first on PATH.
    cmd = [sys.executable, './check', '-qcow2', *args]
    log('iotests: %s' % ' '.join(cmd[1:]))
    proc = subprocess.Popen(cmd, cwd=IOTESTS, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=env or iotests_env())
    results = read_runner_output(proc.stdout, sys.stdout, reasons, printed)
    proc.wait()
    if not results:
        results['./check ' + ' '.join(args)] = 'fail'
    return results


# Set by main(): Debian's stock QEMU for the tests that compare with it
STOCK_BIN = None


def iotests_env():
    env = dict(os.environ)
    if STOCK_BIN:
        env['SQEMU_STOCK_BIN'] = STOCK_BIN
    return env


# The iotests runner's variables for each binary it runs
BINARY_VARS = {
    'QEMU_PROG': 'qemu-system-x86_64',
    'QEMU_IMG_PROG': 'qemu-img',
    'QEMU_IO_PROG': 'qemu-io',
    'QEMU_NBD_PROG': 'qemu-nbd',
    'QSD_PROG': 'qemu-storage-daemon',
}


def use_binaries(directory):
    """Make the iotests run the binaries in @directory: each must be
    there and be sQemu's."""
    for var, name in BINARY_VARS.items():
        path = os.path.join(os.path.abspath(directory), name)
        version = subprocess.run([path, '--version'], check=True,
                                 capture_output=True, text=True).stdout
        first = version.splitlines()[0] if version else ''
        # sQemu's builds say "(sQemu VERSION, ...)", its packages
        # "(Debian ...+sqemuVERSION)"
        if not re.search(r'\((sQemu |[^)]*\+sqemu)', version):
            raise ValueError('%s is not sQemu\'s: %s' % (path, first))
        log('%s=%s (%s)' % (var, path, first))
        os.environ[var] = path


def read_test_list(path):
    """{test: reason} from a file of "TEST REASON..." lines."""
    tests = {}
    with open(path) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line:
                test, _, reason = line.partition(' ')
                if not reason.strip():
                    sys.exit('run-tests: %s: %s has no reason' % (path, test))
                tests[test] = reason.strip()
    return tests


def rerun_timing_dependent(tally, suite, results, args, env, printed=None):
    """Run each failed test of @results that sqemu-timing-dependent names
    again alone, up to RERUNS times; a pass replaces its result, and what
    its first run printed (@printed) is kept for the end of the output."""
    timing = read_test_list(TIMING)
    for test, status in sorted(results.items()):
        if status != 'fail' or test not in timing:
            continue
        log('%s failed; it is timing-dependent (%s): running it again' %
            (test, timing[test]))
        for attempt in range(1, RERUNS + 1):
            again = run_iotests([*args, test], env).get(test, 'fail')
            log('%s: re-run %d of %d: %s' % (test, attempt, RERUNS, again))
            if again == 'pass':
                results[test] = 'pass'
                tally.note(suite, 'timing-dependent, passed on re-run', test)
                if printed and printed.get(test):
                    tally.printed['%s: %s (passed on re-run)' %
                                  (suite, test)] = printed[test]
                break


def tally_iotests(tally, suite, results, known, excluded=None,
                  reasons=None, own=False, printed=None):
    """Count @results.  A failure of a test that @known names (environmental)
    or @excluded names (cannot pass with -o backing-index=on) is reported
    and counted as skipped.  A "not run" is a skip with its reason from
    @reasons, except for the project's own tests (@own), which this
    command gives everything they need: there it is a failure.  A failure
    keeps what the runner printed about it (@printed, {test: lines})."""
    excluded = excluded or {}
    reasons = reasons or {}
    printed = printed or {}
    for test, status in sorted(results.items()):
        if status == 'not run':
            why = reasons.get(test, 'no reason given')
            if own:
                log('%s was not run (%s): counted as a failure, the '
                    'project\'s tests must run here' % (test, why))
                tally.add(suite, test, 'fail')
            elif NOT_SUITABLE_RE.match(why):
                tally.add(suite, test, 'skip')
            else:
                tally.add(suite, test, 'skip', 'not run: %s' % why)
        elif status == 'fail' and test in known:
            log('%s fails for a known environmental reason: %s' %
                (test, known[test]))
            tally.add(suite, test, 'skip', 'known failure')
        elif status == 'fail' and test in excluded:
            log('%s fails with -o %s, excluded: %s' %
                (test, BI_OPTION, excluded[test]))
            tally.add(suite, test, 'skip', 'excluded with -o %s' % BI_OPTION)
        else:
            tally.add(suite, test, status,
                      printed=printed.get(test) if status == 'fail' else None)
    for what, listed in (('known failure', known),
                         ('excluded test', excluded)):
        for test in sorted(set(listed) - set(results)):
            log('note: %s %s was not run' % (what, test))
        for test in sorted(listed):
            if results.get(test) == 'pass':
                log('note: %s %s passed; is its entry stale?' % (what, test))


def run_upstream_bi(tally):
    """Upstream's quick group again, every image it creates indexed."""
    env = iotests_env()
    scratch = env.get('TEST_DIR') or os.path.join(IOTESTS, 'scratch')
    env['TEST_DIR'] = scratch.rstrip('/') + '-backing-index'
    reasons, printed = {}, {}
    results = run_iotests(['-o', BI_OPTION, '-g', 'quick'], env, reasons,
                          printed)
    rerun_timing_dependent(tally, 'upstream-iotests-bi', results,
                           ['-o', BI_OPTION], env, printed)
    tally_iotests(tally, 'upstream-iotests-bi', results,
                  read_test_list(KNOWN), read_test_list(BI_EXCLUDED),
                  reasons, printed=printed)


def main():
    parser = argparse.ArgumentParser(
        description='Build sQemu and run its tests: the Python package\'s '
                    'unit tests and flake8, cmocka unit tests, the '
                    'project\'s iotests, upstream\'s qcow2 quick group, and '
                    'the quick group again with -o %s.' % BI_OPTION)
    parser.add_argument('--no-build', action='store_true',
                        help='use the existing build')
    parser.add_argument('--skip-upstream', action='store_true',
                        help='do not run upstream\'s quick group (neither '
                             'run)')
    parser.add_argument('--binaries', metavar='DIR',
                        help='run the iotests with the QEMU binaries in DIR '
                             '(for example /usr/bin once sQemu\'s packages '
                             'are installed) instead of the build\'s; they '
                             'must be sQemu\'s')
    parser.add_argument('--only', metavar='STAGE[,STAGE...]',
                        help='run only these stages (%s); the build still '
                             'runs unless --no-build' % ', '.join(STAGES))
    args = parser.parse_args()

    stages = list(STAGES)
    if args.only:
        stages = [s.strip() for s in args.only.split(',') if s.strip()]
        unknown = [s for s in stages if s not in STAGES]
        if unknown or not stages:
            parser.error('--only: unknown stage %s (stages: %s)' %
                         (', '.join(unknown) or "''", ', '.join(STAGES)))
    if args.skip_upstream:
        stages = [s for s in stages if s not in ('iotests', 'iotests-bi')]

    start = time.time()
    tally = Tally()
    if not args.no_build:
        try:
            build()
        except subprocess.CalledProcessError:
            print('run-tests: 0 passed, 1 failed (the build failed)')
            return 1
    if args.binaries:
        try:
            use_binaries(args.binaries)
        except (OSError, ValueError) as e:
            print('run-tests: 0 passed, 1 failed (%s)' % e)
            return 1
    if any(s not in ('python', 'unit') for s in stages):
        global STOCK_BIN
        log('stock QEMU: %s --quiet' % paths.script('stock-qemu'))
        STOCK_BIN = paths.stock_dir()
        if not STOCK_BIN:
            print('run-tests: 0 passed, 1 failed (no stock QEMU: see '
                  'stock-qemu\'s error above)')
            return 1
        log('stock QEMU: %s' % STOCK_BIN)
    if 'python' in stages:
        run_python_tests(tally)
    if 'unit' in stages:
        run_unit_tests(tally)
    if 'sqemu-iotests' in stages:
        reasons, printed = {}, {}
        tally_iotests(tally, 'sqemu-iotests',
                      run_iotests(['-g', 'sqemu'], None, reasons, printed),
                      {}, reasons=reasons, own=True, printed=printed)
    if 'iotests' in stages:
        reasons, printed = {}, {}
        results = run_iotests(['-g', 'quick'], None, reasons, printed)
        rerun_timing_dependent(tally, 'upstream-iotests', results, [], None,
                               printed)
        tally_iotests(tally, 'upstream-iotests', results,
                      read_test_list(KNOWN), reasons=reasons, printed=printed)
    if 'iotests-bi' in stages:
        run_upstream_bi(tally)
    tally.summary()
    # What each failure printed, again at the end where a log's tail
    # shows it (CI keeps only the tail)
    for failure in [f for f in tally.printed if f not in tally.failures] + \
            tally.failures:
        lines = tally.printed.get(failure, [])
        if lines:
            log('%s printed (%s):' % (failure, 'its %d lines' % len(lines)
                                      if len(lines) <= PRINTED_LINES else
                                      'the first %d of %d lines' %
                                      (PRINTED_LINES, len(lines))))
            for line in lines[:PRINTED_LINES]:
                log('| %s' % line)
    for failure in tally.failures:
        log('FAILED %s' % failure)
    log('finished in %d s' % (time.time() - start))
    print('run-tests: %d passed, %d failed, %d skipped' %
          (tally.passed, tally.failed, tally.skipped))
    return 1 if tally.failed else 0
