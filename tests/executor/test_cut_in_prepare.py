"""Red team 7, finding 03: a signal handler's exception during `prepare()` (reached whenever the
caller has another thread: deferral holds only the calling thread) leaks what prepare had just
made but not yet recorded: a network namespace and its five /proc/net fds (made on a helper
thread in `namespaces.new_network_namespace`: the cut lands in t.start()/t.join(), the thread
still makes the namespace, its result is dropped), or an fd that was just opened (the
workspace's root fd in Workspace.__init__, cgroup.procs fds in the Lockdown(...) call). Seen for
real: `MODE=exec SIG=alrm THREAD=1 python findings/stress_rt7.py 60` (branch redteam7b), `MODE=many SIG=usr1
EVALBOX_SLOTS=0 ...`, and red team 6's stress_interrupt.py with THREAD=1.

Run: .venv/bin/python -m pytest tests/executor/test_cut_in_prepare.py -q -p no:cacheprovider"""
import os
import sys
import threading

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import evalbox  # noqa: E402
from evalbox.kernel import cgroups  # noqa: E402
from evalbox.process import netns, warm  # noqa: E402
from evalbox.process.host import probe  # noqa: E402


def loose_fds(base):
    with netns._lock:
        pool = set(netns._idle) | set(netns._unchecked) | set(netns._stats)
    held = warm.held_fds() | netns.held_fds() | pool | cgroups.held_fds()
    out = {}
    for fd in (int(x) for x in os.listdir("/proc/self/fd")):
        if fd not in base and fd not in held:
            try:
                out[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                pass
    return out


def test_cut_while_a_network_namespace_is_made(monkeypatch):
    if not probe().jail or os.getuid() != 0:
        pytest.skip("needs the jail (root): only jailed runs get a pooled network namespace")
    evalbox.python.run("pass")
    base = set(int(x) for x in os.listdir("/proc/self/fd"))
    join = threading.Thread.join
    hit = []

    def cut_join(self, *a, **k):
        join(self, *a, **k)
        if self.name == "evalbox-netns" and not hit:
            hit.append(1)
            raise KeyboardInterrupt  # the handler ran while the caller waited for the thread

    # no idle namespace: the run makes one
    with netns._lock:
        idle = list(netns._idle)
        netns._idle.clear()
    monkeypatch.setattr(threading.Thread, "join", cut_join)
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in range(4):  # (a pool with spare ones checks them instead: make it make one)
                evalbox.python.run("pass", timeout=10)
    finally:
        monkeypatch.setattr(threading.Thread, "join", join)
        with netns._lock:
            netns._idle.extend(idle)
    assert hit
    left = loose_fds(base)
    assert not left, f"left open after the cut: {left}"
