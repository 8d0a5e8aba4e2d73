"""Red team 7, finding 04: a signal handler's exception while a warm template starts
(`Template.__init__` -> `_spawner().call(self._start)`, no undo: the template imports its
preload modules, tens of ms - the largest window of a first run) leaves the started template
process nobody holds: it lives until its Template object is collected, then exits as a zombie
nobody reaps; its pidfd stays open (an int) and so may its control socket. Every cut there
leaks one more (the next run makes a new template). Reached for real by
`MODE=exec SIG=usr1 WARM=0 python findings/stress_rt7.py 10` (cold runs with slots make the
launcher template: 4 cuts, 4 template processes/zombies, 8 fds; also WARM=1 for the python
template) - any caller with another thread, or a helper thread's signal.

Here the handler's exception reaches the waiting caller while the spawner thread starts the
template (as `_Spawner.call` then re-raises it once the job is done).

Run: .venv/bin/python -m pytest tests/executor/test_cut_while_a_template_starts.py -q -p no:cacheprovider"""
import gc
import os
import sys


import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import evalbox  # noqa: E402
from evalbox.process import warm  # noqa: E402
from proc_helpers import zombie_children  # noqa: E402

# (an unprivileged caller's jail, in a user namespace, has no warm copies yet: every run is cold)
pytestmark = pytest.mark.skipif(bool(warm.why_cold_here()), reason=str(warm.why_cold_here()))


def template_children():
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    cmd = f.read()
            except (OSError, ValueError, IndexError):
                continue
            if ppid == os.getpid() and b"warm Python template" in cmd:
                out.add(int(name))
    return out


def test_cut_while_a_template_starts(monkeypatch):
    warm.close_all()
    evalbox.python.run("pass", warm=False)  # (pools, guard: made before counting)
    warm.close_all()
    base_fds = set(os.listdir("/proc/self/fd"))
    real_call = warm._Spawner.call
    hit = []

    def call(self, fn, undo=None):
        result = real_call(self, fn, undo)
        if getattr(fn, "__name__", "") == "_start" and isinstance(getattr(fn, "__self__", None), warm.Template) and not hit:
            hit.append(fn.__self__.pid)
            raise KeyboardInterrupt  # reached the caller while it waited for the job
        return result

    monkeypatch.setattr(warm._Spawner, "call", call)
    with pytest.raises(KeyboardInterrupt):
        evalbox.python.run("print(1)", warm=["colorsys"], timeout=10)
    monkeypatch.setattr(warm._Spawner, "call", real_call)
    assert hit
    gc.collect()
    with warm._lock:
        known = {t.pid for t in warm._templates.values() if isinstance(t, warm.Template)}
    stray = {p for p in template_children() if p not in known and p not in warm.resident_pids()}
    zombies = [z for z in zombie_children() if z == hit[0]]
    left = {fd: os.readlink(f"/proc/self/fd/{fd}") for fd in set(os.listdir("/proc/self/fd")) - base_fds
            - {str(fd) for fd in warm.held_fds()} if os.path.exists(f"/proc/self/fd/{fd}")}
    try:
        assert not stray and not zombies, f"the cut template ({hit[0]}) is left: alive {stray}, zombie {zombies}"
        assert not any("pidfd" in t or "socket" in t for t in left.values()), f"its fds are left: {left}"
    finally:
        for pid in stray | set(zombies):
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
