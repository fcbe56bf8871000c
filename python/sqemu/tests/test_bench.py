# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.bench: its argument parsing, failure text, ratios and targets.

import argparse

import pytest

from sqemu import bench


def test_parse_lengths():
    assert bench.parse_lengths('500,1,10,10') == [1, 10, 500]
    for bad in ('', '0,1', 'a', '1,,2'):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.parse_lengths(bad)


def test_describe_exit():
    assert bench.describe_exit('qemu-img', 1, 'a\n\nlast words\n\n') == \
        'qemu-img failed (exit status 1): last words'
    assert bench.describe_exit('qemu-io', -9, '') == \
        'qemu-io failed (killed by signal 9)'


def test_ratio():
    assert bench.ratio(3.0, 2.0) == 1.5
    assert bench.ratio(None, 2.0) is None
    assert bench.ratio(3.0, 0) is None


def test_check():
    assert bench.check('x', None, '>=', 1.0).endswith('n/a')
    assert bench.check('x', 1.0, '>=', 0.9).endswith('(target >= 0.900: met)')
    assert bench.check('x', 0.8, '>=', 0.9).endswith('NOT met)')
    assert bench.check('x', 2.0, '<=', 1.5).endswith('NOT met)')
