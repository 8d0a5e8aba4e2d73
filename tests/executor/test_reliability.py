"""Reliability under load: nothing leaks, no sandbox can stall the others, callers' deaths kill."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import evalbox
from evalbox.kernel import cgroups
from evalbox.process import netns
from proc_helpers import alive_with, zombie_children


def open_fds() -> int:
    """Open fds after evalbox's per-process caches exist (system rule fds, the guard's pipe),
    not counting the jail's pooled namespaces (bounded: netns.MAX_IDLE, templates.MAX_SHAPES) nor the
    bounded pool of idle warm slots (sized by the most runs at once so far)."""
    from evalbox.process import warm

    evalbox.run(["true"])
    held = warm.held_fds() | netns.held_fds() | cgroups.held_fds()  # (cgroups: a few recycled groups' files)
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += not os.readlink(f"/proc/self/fd/{name}").startswith(("net:[", "mnt:[")) and int(name) not in held
        except OSError:
            pass
    return count


def my_workspaces() -> list[str]:
    prefix = f"evalbox-{os.getpid()}-"
    found = []
    for base in ("/tmp", "/dev/shm", os.environ.get("TMPDIR", "/tmp")):
        try:
            found += [os.path.join(base, n) for n in os.listdir(base) if n.startswith(prefix)]
        except OSError:
            pass
    return found


def busy_cgroups() -> list[str]:
    """Groups holding a process other than a resident slot's launcher (which belongs to no run)."""
    from evalbox.process import warm

    launchers = {str(p) for p in warm.resident_pids()}
    busy = []
    for root in set(cgroups.layout().roots.values()):
        parent = os.path.join(root, f"evalbox-{os.getpid()}")
        if not os.path.isdir(parent):
            continue
        for name in os.listdir(parent):
            procs = os.path.join(parent, name, "cgroup.procs")
            if os.path.exists(procs) and set(open(procs).read().split()) - launchers:
                busy.append(os.path.join(parent, name))
    return busy


def assert_clean(fds_before: int) -> None:
    assert open_fds() == fds_before, "file descriptors leaked"
    assert zombie_children() == [], "zombie children left"
    assert my_workspaces() == [], "workspaces left behind"
    assert busy_cgroups() == [], "cgroups still holding processes"
    assert len(cgroups._pool) <= cgroups.POOL_SIZE
    assert len(netns._idle) <= netns.MAX_IDLE


def test_ten_thousand_sequential_runs_leak_nothing():
    fds = open_fds()
    plan = evalbox.Plan(["/bin/true"])
    with evalbox.Executor() as ex:
        for i in range(10_000):
            out = ex.run(plan)
            assert out.success, (i, out)
    assert_clean(fds)


def test_two_hundred_concurrent_sandboxes():
    fds = open_fds()
    done = {}
    with evalbox.Executor() as ex:
        ids = [ex.spawn(evalbox.Plan(["sh", "-c", f"sleep 1; echo {i}"], timeout=60), close_stdin=True)
               for i in range(200)]
        assert ex.active_count == 200
        while ex.active_count:
            for ev in ex.poll():
                if isinstance(ev, (evalbox.Completed, evalbox.Timeout)):
                    done[ev.id] = ev.output
    assert len(done) == 200 and all(done[i].success for i in ids)
    assert sorted(done[i].stdout for i in ids) == sorted(f"{i}\n".encode() for i in range(200))
    assert_clean(fds)


def test_bad_neighbours_cannot_stall_others():
    """A flood, a fork storm and a SIGTERM-ignorer run while a quick sandbox must finish."""
    bad = [
        evalbox.Plan(["sh", "-c", "yes"], max_output="1G", timeout=20),
        evalbox.Plan(["sh", "-c", "while :; do (sleep 5 &) ; done"], max_pids=32, timeout=20),
        evalbox.Plan(["sh", "-c", "trap '' TERM; while :; do :; done"], timeout=20),
    ]
    with evalbox.Executor() as ex:
        bad_ids = [ex.spawn(p, close_stdin=True) for p in bad]
        time.sleep(0.3)  # let them get going: the point is that they are busy when the quick one runs
        start = time.monotonic()
        quick = ex.spawn(evalbox.Plan(["echo", "ok"], timeout=20), close_stdin=True)
        quick_out = None
        while quick_out is None:
            for ev in ex.poll(timeout=1):
                if isinstance(ev, evalbox.Completed) and ev.id == quick:
                    quick_out = ev.output
        elapsed = time.monotonic() - start
        for sid in bad_ids:
            ex.kill(sid)
    assert quick_out.success and quick_out.stdout == b"ok\n"
    assert elapsed < 5, f"a quick sandbox took {elapsed:.1f}s next to bad neighbours"


def test_killing_the_caller_kills_all_its_sandboxes(tmp_path):
    marker = f"200.{uuid.uuid4().int % 10**9:09d}"  # a unique sleep duration marks the processes
    script = tmp_path / "caller.py"
    script.write_text(textwrap.dedent(f"""
        import sys, evalbox
        with evalbox.Executor() as ex:
            for i in range(3):
                ex.spawn(evalbox.Plan(["sh", "-c", "sleep {marker} & sleep {marker}"], timeout=300))
            print("spawned", flush=True)
            while True:
                ex.poll()
    """))
    caller = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    try:
        assert caller.stdout.readline() == b"spawned\n"
        end = time.monotonic() + 10
        # 3 shells and 6 sleeps; a shell may exec its last command, so at least the 6 sleeps
        while len(alive_with(marker)) < 6 and time.monotonic() < end:
            time.sleep(0.05)
        assert len(alive_with(marker)) >= 6
        caller.send_signal(signal.SIGKILL)
        caller.wait()
        end = time.monotonic() + 10
        while alive_with(marker) and time.monotonic() < end:
            time.sleep(0.05)
        assert alive_with(marker) == [], "sandbox processes outlived their killed caller"
    finally:
        caller.kill()
        caller.wait()
        for pid in alive_with(marker):
            os.kill(pid, signal.SIGKILL)
