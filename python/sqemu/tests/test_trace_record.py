# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.trace_file, trace convert --from sqemu and sqemu.trace_record:
# trace files read (complete, cut short, foreign, unknown version),
# operations converted for fio, latencies summed up, the disk's name in
# QMP's terms, record's QMP conversation (on a stand-in monitor) and the
# overhead report.

import struct

import pytest

from sqemu import trace as trace_cmd
from sqemu import trace_convert, trace_file, trace_record

HEADER = struct.Struct('<8sIIIIQQQ16x')
RECORD = struct.Struct('<QQQQBBHi')


def write_trace(path, records, complete=True, dropped=0, version=1,
                extra=b''):
    body = b''.join(RECORD.pack(*r) for r in records)
    path.write_bytes(HEADER.pack(b'SQIOTRAC', version, 64, 40,
                                 1 if complete else 0, 1 << 20,
                                 len(records) if complete else 0, dropped)
                     + body + extra)


RECORDS = [
    # issued, completed (ns), offset, length, op, flags, reserved, ret
    (5000, 25000, 4096, 4096, 0, 0, 0, 0),
    (1000, 41000, 0, 65536, 1, 1, 0, 0),
    (30000, 31000, 8192, 4096, 2, 4, 0, 0),
    (50000, 90000, 0, 0, 3, 0, 0, 0),
    (60000, 61000, 1 << 30, 512, 0, 0, 0, -5),
]


def test_a_complete_trace_is_read(tmp_path):
    write_trace(tmp_path / 't', RECORDS)
    t = trace_file.Trace(tmp_path / 't')
    assert t.complete and t.disk_length == 1 << 20 and not t.warnings()
    assert t.requests[1] == (1000, 41000, 0, 65536, 'write', 1, 0)
    assert t.requests[4][6] == -5
    assert trace_file.flag_names(15) == ['fua', 'zeroes', 'unmap',
                                         'prefetch']


def test_a_trace_cut_short_gives_its_whole_records_and_says_so(tmp_path):
    write_trace(tmp_path / 't', RECORDS[:3], complete=False,
                extra=b'\1' * 17)
    t = trace_file.Trace(tmp_path / 't')
    assert len(t.requests) == 3
    assert 'not stopped' in t.warnings()[0]


def test_dropped_requests_are_said(tmp_path):
    write_trace(tmp_path / 't', RECORDS, dropped=7)
    assert '7 requests were not recorded' in \
        trace_file.Trace(tmp_path / 't').warnings()[0]


@pytest.mark.parametrize('content,why', [
    (b'QFI\xfb' + bytes(100), 'not an sQemu I/O trace'),
    (b'SQIOTRAC', 'not an sQemu I/O trace'),
])
def test_foreign_files_are_refused(tmp_path, content, why):
    (tmp_path / 't').write_bytes(content)
    with pytest.raises(trace_file.TraceFileError, match=why):
        trace_file.Trace(tmp_path / 't')


def test_unknown_versions_and_operations_are_refused(tmp_path):
    write_trace(tmp_path / 't', RECORDS, version=2)
    with pytest.raises(trace_file.TraceFileError, match='version 2'):
        trace_file.Trace(tmp_path / 't')
    write_trace(tmp_path / 't', [(0, 1, 0, 512, 9, 0, 0, 0)])
    with pytest.raises(trace_file.TraceFileError, match='operation 9'):
        trace_file.Trace(tmp_path / 't')


def test_records_past_a_complete_header_are_not_read(tmp_path):
    write_trace(tmp_path / 't', RECORDS, extra=RECORD.pack(*RECORDS[0]))
    t = trace_file.Trace(tmp_path / 't')
    assert len(t.requests) == 5
    assert '1 records past the 5' in t.warnings()[0]


def test_a_complete_header_must_not_count_more_records(tmp_path):
    write_trace(tmp_path / 't', RECORDS)
    data = bytearray((tmp_path / 't').read_bytes())
    data[32] = 6            # the header's count of records
    (tmp_path / 't').write_bytes(bytes(data))
    with pytest.raises(trace_file.TraceFileError, match='says 6 records'):
        trace_file.Trace(tmp_path / 't')


def test_conversion_orders_by_issue_time_in_fio_actions(tmp_path):
    write_trace(tmp_path / 't', RECORDS)
    ops, _ = trace_convert.read_sqemu(tmp_path / 't')
    log = trace_convert.fio_iolog(ops, 'disk').splitlines()
    assert log[3:8] == ['0 disk write 0 65536', '4 disk read 4096 4096',
                        '29 disk trim 8192 4096', '49 disk sync 0 0',
                        '59 disk read 1073741824 512']


def test_convert_prints_latencies_and_refuses_volume(tmp_path, capsys):
    write_trace(tmp_path / 't', RECORDS)
    out = tmp_path / 'o'
    assert trace_cmd.main(['convert', '--from', 'sqemu', '--target', 'd',
                           str(tmp_path / 't'), str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'recorded read latency: n=2  p50 20 us' in printed
    assert 'recorded flush latency: n=1  p50 40 us' in printed
    assert trace_cmd.main(['convert', '--from', 'sqemu', '--volume', '3',
                           '--target', 'd', str(tmp_path / 't'),
                           str(out)]) == 1
    assert 'records one disk' in capsys.readouterr().err


class FakeMonitor:
    def __init__(self, stop_reply):
        self.calls = []
        self.stop_reply = stop_reply

    def cmd(self, name, **args):
        self.calls.append((name, args))
        if name == 'query-block-io-traces':
            return [{'filename': '/t', 'records': 3, 'dropped': 0}]
        if name == 'block-io-trace-stop':
            return self.stop_reply
        return {}


def test_record_starts_polls_and_stops():
    mon = FakeMonitor({'records': 3, 'dropped': 0})
    said = []
    info = trace_record.record(mon, {'id': 'disk0'}, '/t', 0.05,
                               said.append, interval=0.01)
    assert info['records'] == 3
    names = [c[0] for c in mon.calls]
    assert names[0] == 'block-io-trace-start' and \
        names[-1] == 'block-io-trace-stop'
    assert 'query-block-io-traces' in names
    assert mon.calls[0][1] == {'filename': '/t', 'id': 'disk0'}
    assert any('3 requests recorded' in s for s in said)


def test_record_stops_the_trace_when_interrupted(monkeypatch):
    mon = FakeMonitor({'records': 1, 'dropped': 0})

    def interrupted(_):
        raise KeyboardInterrupt
    monkeypatch.setattr(trace_record.time, 'sleep', interrupted)
    info = trace_record.record(mon, {'export': 'exp0'}, '/t', None,
                               lambda _: None)
    assert info['records'] == 1
    assert mon.calls[-1] == ('block-io-trace-stop', {'export': 'exp0'})


def test_record_needs_one_disk_name(capsys):
    with pytest.raises(SystemExit):
        trace_cmd.parse_args(['record', '--qmp', 's', '--id', 'a',
                              '--export', 'b', 'out'])
    assert 'not allowed with' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        trace_cmd.parse_args(['record', '--qmp', 's', 'out'])


def test_overhead_report_takes_medians_and_judges_the_target():
    runs = [(False, 1000, 50), (True, 980, 52), (True, 900, 60),
            (False, 1000, 50), (False, 1100, 40), (True, 1090, 41)]
    lines = trace_record.overhead_report(runs, 16)
    assert 'medians of 3 runs each' in lines[0]
    assert 'trace off: 1000 IOPS' in lines[1]
    assert 'trace on:  980 IOPS' in lines[2]
    assert '0.980 (per round 0.980 0.900 0.991)' in lines[3]
    assert lines[3].endswith('met')
    runs[1] = (True, 900, 52)
    assert trace_record.overhead_report(runs, 16)[3].endswith('NOT met')


def test_overhead_takes_sizes_as_the_other_commands_do(capsys):
    assert trace_cmd.parse_args(['overhead', '--size', '256M']).size == \
        256 << 20
    with pytest.raises(SystemExit):
        trace_cmd.parse_args(['overhead', '--size', 'big'])
    assert '--size' in capsys.readouterr().err


def test_record_without_a_monitor_is_an_error(monkeypatch, capsys):
    def no_monitor(path, wait, error, timeout=None):
        raise error('no QMP monitor at %s' % path)
    monkeypatch.setattr(trace_record.qmp, 'Monitor', no_monitor)
    assert trace_cmd.main(['record', '--qmp', '/nonexistent.sock',
                           '--export', 'exp0', 'out.iotrace']) == 1
    assert 'trace: error: no QMP monitor at /nonexistent.sock' in \
        capsys.readouterr().err
