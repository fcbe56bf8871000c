# SPDX-License-Identifier: GPL-2.0-or-later
#
# trace: block I/O traces for sQemu benchmarks (issue 21).  Each
# subcommand lives in its own module, which gives its parser through
# add_parser(sub) and sets the function that runs it (run) and the
# exceptions it reports as errors (errors):
#
#   trace record    a running QEMU's disk I/O into a trace file, over QMP
#   trace overhead  what recording costs (both in trace_record.py)
#   trace convert   sQemu's and public CSV traces as fio iologs
#                   (trace_convert.py)
#   trace replay    an iolog against stock and ours on one chain, side by
#                   side (trace_replay.py)

import argparse

from sqemu import trace_convert
from sqemu import trace_record
from sqemu import trace_replay
from sqemu import util

SUBCOMMANDS = (trace_record, trace_convert, trace_replay)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog='trace', description='Block I/O traces for sQemu benchmarks.')
    sub = parser.add_subparsers(dest='command', required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    return util.run_main('trace', lambda: args.run(args), args.errors)
