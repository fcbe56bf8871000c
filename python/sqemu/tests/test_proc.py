# SPDX-License-Identifier: GPL-2.0-or-later
#
# sqemu.proc: the three ways the commands run children, on /bin/sh.

import os

import pytest

from sqemu import proc


class Failed(Exception):
    pass


def test_run_child():
    assert proc.run_child(['/bin/sh', '-c', 'echo out; echo err >&2; '
                           'exit 3']) == (3, 'out\nerr\n')


def test_process_measures_the_command():
    with proc.Process(['/bin/sh', '-c', 'echo hello']) as p:
        assert p.wait() == 0
        assert p.read_output() == 'hello\n'
        assert p.maxrss > 0
        assert p.pid != os.getpid()


def test_process_group_killed_on_exit():
    with proc.Process(['/bin/sh', '-c', 'sleep 60']) as p:
        assert p.poll() is None
    assert p.returncode == -9


def test_processes_run_and_must():
    procs = proc.Processes(Failed)
    assert procs.run(['/bin/sh', '-c', 'echo a; echo b >&2'],
                     merge=False) == (0, 'a\n', 'b\n')
    assert procs.must(['/bin/sh', '-c', 'echo ok']) == 'ok\n'
    with pytest.raises(Failed) as e:
        procs.must(['/bin/sh', '-c', 'echo why; exit 2'])
    assert 'exit status 2' in str(e.value) and 'why' in str(e.value)
    with pytest.raises(Failed):
        procs.run(['/bin/sh', '-c', 'sleep 60'], timeout=0.2)
    assert procs.children == []
    procs.kill_all()
