# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.series: which patches make the series, and the hash configure
# compares to know whether build/src holds the series as it is now.

from sqemu import series


def test_patch_files_and_hash(tmp_path, monkeypatch):
    monkeypatch.setattr(series, 'PATCHES', str(tmp_path))
    (tmp_path / '0002-b.patch').write_text('two\n')
    (tmp_path / '0001-a.patch').write_text('one\n')
    (tmp_path / 'README').write_text('not a patch\n')
    assert [p.rsplit('/', 1)[1] for p in series.patch_files()] == \
        ['0001-a.patch', '0002-b.patch']
    first = series.series_hash()
    assert first == series.series_hash()
    (tmp_path / '0002-b.patch').write_text('two, changed\n')
    assert series.series_hash() != first
    (tmp_path / '0002-b.patch').write_text('two\n')
    assert series.series_hash() == first
    (tmp_path / '0003-c.patch').write_text('')
    assert [p.rsplit('/', 1)[1] for p in series.patch_files()][-1] == \
        '0003-c.patch'
