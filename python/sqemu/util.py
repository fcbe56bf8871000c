# SPDX-License-Identifier: GPL-2.0-or-later
#
# Small pure helpers that several commands share: sizes on the command
# line, fio's JSON output and sQemu's qemu-io counters, percentiles of
# latencies, results as JSON files, the end of a command on an error.

import argparse
import json
import os
import re
import signal
import sys
import tempfile


def parse_size(text, example='512M, 1G'):
    """Bytes of a size as the commands take it: a number with an optional
    binary suffix k, M, G or T (either case); an argparse error otherwise,
    with @example in it"""
    m = re.fullmatch(r'(\d+)([kKmMgGtT]?)', text.strip())
    if not m:
        raise argparse.ArgumentTypeError('bad size %r (e.g. %s)' %
                                         (text, example))
    shift = {'': 0, 'k': 10, 'm': 20, 'g': 30, 't': 40}[m.group(2).lower()]
    return int(m.group(1)) << shift


def printer(prefix, stderr=False):
    """A function that prints one line "@prefix: message", flushed, on
    stdout (or stderr): a command's progress"""
    return lambda message: print('%s: %s' % (prefix, message), flush=True,
                                 file=sys.stderr if stderr else sys.stdout)


def describe_status(code):
    """A child's end as subprocess gives it (a negative code: the
    signal that killed it), in words"""
    return ('exit status %d' % code if code >= 0
            else 'killed by signal %d' % -code)


def tail(text, lines=3):
    """The last @lines non-empty lines of @text, stripped, on one line"""
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return ' | '.join(kept[-lines:])


def fio_job(output, error, shown=300):
    """The job of fio's JSON output (the nbd engine prints lines of its
    own before the JSON); exception @error, with the first @shown
    characters of the output, if there is none"""
    m = re.search(r'^\{', output, re.M)
    try:
        if not m:
            raise ValueError('no JSON')
        return json.JSONDecoder().raw_decode(output, m.start())[0]['jobs'][0]
    except (ValueError, KeyError, IndexError):
        raise error('cannot parse fio output: ' + output[:shown])


def stats_command(qemu_io, image, size, chunk=64 << 20):
    """The command that reads the whole disk (@size bytes) of qcow2
    @image through @qemu_io, then prints its sqemu-stats counters"""
    cmd = [qemu_io, '-r', '-f', 'qcow2', image]
    for off in range(0, size, chunk):
        cmd += ['-c', 'read -q %d %d' % (off, min(chunk, size - off))]
    return cmd + ['-c', 'sqemu-stats']


def parse_stats(output):
    """The counters in sqemu-stats' @output, {name: value as printed}"""
    counters = {}
    for line in output.splitlines():
        m = re.fullmatch(r'([a-z-]+): (\S.*)', line.strip())
        if m:
            counters[m.group(1)] = m.group(2)
    return counters


def percentiles(values):
    """'n=.. median .. p99 .. max ..' of @values in seconds, shown in ms"""
    if not values:
        return 'no requests'
    v = sorted(values)
    return 'n=%d  median %.2f ms  p99 %.2f ms  max %.2f ms' % (
        len(v), v[len(v) // 2] * 1e3, v[int(len(v) * 0.99)] * 1e3,
        v[-1] * 1e3)


def write_json(path, data):
    """@data as indented JSON into file @path, its directory made first
    if need be"""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(data, f, indent=2)
        f.write('\n')


def make_workdir(path, prefix, error):
    """A new work directory: @path, which must not exist yet (else
    exception @error), or a new one under /var/tmp named @prefix..."""
    if path is None:
        return tempfile.mkdtemp(prefix=prefix, dir='/var/tmp')
    try:
        os.makedirs(path)
    except FileExistsError:
        raise error('--workdir %s already exists' % os.path.abspath(path))
    return os.path.abspath(path)


def run_main(prog, work, errors, interrupt_rc=130):
    """Command @prog's exit status: @work()'s (None: 0), or 1 after
    "@prog: error: MESSAGE" on stderr for an exception of @errors, or
    @interrupt_rc after "@prog: interrupted" on Ctrl-C (if None, Ctrl-C
    is not caught)"""
    try:
        return work() or 0
    except errors as e:
        print('%s: error: %s' % (prog, e), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if interrupt_rc is None:
            raise
        print('%s: interrupted' % prog, file=sys.stderr)
        return interrupt_rc


def _exit(signum, _frame):
    sys.exit(128 + signum)


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def exit_on(*signums):
    """Make each of @signums unwind the command as sys.exit(128 + signum)
    does, so that its finally clauses remove what it made and stop what it
    started"""
    for signum in signums:
        signal.signal(signum, _exit)


def interrupt_on(*signums):
    """Make each of @signums unwind the command as Ctrl-C does (it reports
    "interrupted" and cleans up)"""
    for signum in signums:
        signal.signal(signum, _interrupt)
