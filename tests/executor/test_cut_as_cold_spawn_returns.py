"""Red team 7, finding 08: a signal that arrives while the C spawn of a cold run works (clone,
lockdown, exec: ~1-2 ms) has its raising handler run as `_spawn.spawn(...)` returns, before
`pid, pidfd = ...` is stored (CPython checks for pending signals right after a C call). The
program already runs; its pid and pidfd are dropped (process/spawn.py), `Sandbox._abandon_start`
finds no `self.pid` and only releases the lock (cgroup, workspace, uid lease). The program is
killed only if its cgroup release happens to kill it; it is never reaped (zombie), and where
no cgroup holds it, it runs on unwatched. Seen for real: `MODE=exec SIG=alrm THREAD=1
EVALBOX_JAIL=0 SEED=6 python findings/stress_rt7.py 60` (iteration 27: cut at spawn.py
`_spawn.spawn(...)`, a zombie left).

Here the handler's exception is raised as the C spawn returns.

Run: .venv/bin/python -m pytest tests/executor/test_cut_as_cold_spawn_returns.py -q -p no:cacheprovider"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
sys.path.insert(0, os.path.dirname(__file__))
import evalbox  # noqa: E402
from evalbox.process import spawn as spawn_module  # noqa: E402
from proc_helpers import zombie_children  # noqa: E402
from test_warm_start_overlap import our_children  # noqa: E402


class CutSpawn:
    def __init__(self, real):
        self.real, self.pids = real, []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def spawn(self, **kw):
        result = self.real.spawn(**kw)
        if not self.pids and kw.get("path", b"").endswith((b"python", b"python3", b"python3.11")):
            self.pids.append(result[0])
            raise KeyboardInterrupt  # the handler ran as the C call returned
        return result


def test_cut_as_a_cold_spawn_returns(monkeypatch, tmp_path):
    # (slots off: with slots, a launcher spawns the run and the caller's exchange with it runs
    # on the spawner thread, where no handler's exception lands)
    monkeypatch.setenv("EVALBOX_SLOTS", "0")
    evalbox.python.run("pass", warm=False)
    cut = CutSpawn(spawn_module._spawn)
    monkeypatch.setattr(spawn_module, "_spawn", cut)
    os.chmod(tmp_path, 0o777)
    marker = tmp_path / "alive"
    code = f"import time\nfor i in range(60):\n    open({str(marker)!r}, 'w').write(str(i))\n    time.sleep(0.1)"
    try:
        evalbox.python.run(code, warm=False, timeout=1, mounts=[evalbox.Mount(str(tmp_path), writable=True)])
    except KeyboardInterrupt:
        pass
    finally:
        monkeypatch.setattr(spawn_module, "_spawn", cut.real)
    assert cut.pids, "the run's spawn did not go through process/spawn.py"
    pid = cut.pids[0]
    # (run() raised: whatever it started is dead and reaped by now, not running on past its timeout)
    left, zombies = our_children(), zombie_children()
    for p in left | set(zombies):
        try:
            os.kill(p, 9)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(p, 0)
        except ChildProcessError:
            pass
    assert pid not in left, f"the program ({pid}) runs on unwatched"
    assert pid not in zombies, f"the program ({pid}) was killed but never reaped (zombie)"
