# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.trace_convert (trace convert): the Alibaba and Tencent CSV
# formats read, volumes kept apart, fio iolog version 3 written, and bad
# lines refused with their number.

import subprocess

import pytest

from sqemu import trace as trace_cmd
from sqemu import trace_convert

ALIBABA = '''device_id,opcode,offset,length,timestamp
3,W,8192,4096,1577808000000500
3,R,0,4096,1577808000000000
7,R,65536,512,1577808000000200
3,R,4096,8192,1577808000002000
'''

TENCENT = '''1538323200,0,8,0,1063
1538323200.5,16,16,1,1063
1538323201,24,8,0,2000
'''


def test_alibaba_one_volume():
    ops = trace_convert.read_trace(ALIBABA.splitlines(), 'alibaba', '3')
    assert ops == [(1577808000000500, 'write', 8192, 4096),
                   (1577808000000000, 'read', 0, 4096),
                   (1577808000002000, 'read', 4096, 8192)]
    assert len(trace_convert.read_trace(ALIBABA.splitlines(),
                                        'alibaba')) == 4


def test_tencent_units():
    ops = trace_convert.read_trace(TENCENT.splitlines(), 'tencent', '1063')
    assert ops == [(1538323200000000, 'read', 0, 4096),
                   (1538323200500000, 'write', 8192, 8192)]


def test_fio_iolog_is_sorted_and_relative():
    ops = trace_convert.read_trace(ALIBABA.splitlines(), 'alibaba', '3')
    log = trace_convert.fio_iolog(ops, '/dev/nbd0').splitlines()
    assert log == ['fio version 3 iolog', '0 /dev/nbd0 add',
                   '0 /dev/nbd0 open', '0 /dev/nbd0 read 0 4096',
                   '500 /dev/nbd0 write 8192 4096',
                   '2000 /dev/nbd0 read 4096 8192', '2000 /dev/nbd0 close']


@pytest.mark.parametrize('line,fmt,why', [
    ('3,X,0,4096,1', 'alibaba', 'opcode'),
    ('3,R,zero,4096,1', 'alibaba', 'invalid literal'),
    ('3,R,0,0,1', 'alibaba', 'length 0'),
    ('1,0,8,7,1063', 'tencent', 'IOType'),
    ('1,0,8', 'tencent', 'not enough values'),
])
def test_bad_lines_are_refused_with_their_number(line, fmt, why):
    with pytest.raises(trace_convert.TraceError, match='line 2: .*' + why):
        trace_convert.read_trace(['header', line], fmt)


def test_fio_replays_the_converted_log(tmp_path):
    """fio takes the log: it issues exactly the trace's operations"""
    target = tmp_path / 'disk.raw'
    target.write_bytes(bytes(1 << 20))
    trace = tmp_path / 'alibaba.csv'
    trace.write_text(ALIBABA)
    log = tmp_path / 'replay.iolog'
    assert trace_cmd.main(['convert', '--from', 'alibaba', '--volume',
                           '3', '--target', str(target), str(trace),
                           str(log)]) == 0
    out = subprocess.run(['fio', '--name=replay', '--read_iolog=%s' % log,
                          '--ioengine=psync', '--output-format=json'],
                         capture_output=True, text=True, check=True).stdout
    import json
    job = json.loads(out[out.index('{'):])['jobs'][0]
    assert job['read']['total_ios'] == 2
    assert job['write']['total_ios'] == 1
    assert job['read']['io_bytes'] == 4096 + 8192


def test_no_operation_is_an_error(tmp_path, capsys):
    trace = tmp_path / 't.csv'
    trace.write_text(ALIBABA)
    assert trace_cmd.main(['convert', '--from', 'alibaba', '--volume',
                           '99', '--target', 'x', str(trace),
                           str(tmp_path / 'o')]) == 1
    assert 'no operation of volume 99' in capsys.readouterr().err
