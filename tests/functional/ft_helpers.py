"""Shared helpers for evalbox functional tests (fixtures are in conftest.py).

Every test here runs real programs in real sandboxes and asserts what a user would see. Waiting
is always on a real condition with a deadline (no sleep-and-hope).
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import evalbox

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
HOST_PYTHON = sys.executable  # the interpreter running the tests has evalbox installed


# -- running -------------------------------------------------------------------------------------

def sh(script: str, **kw) -> evalbox.Output:
    """Run a POSIX sh script in a sandbox (default timeout 20 s so a broken run cannot hang)."""
    kw.setdefault("timeout", 20)
    return evalbox.run(["sh", "-c", script], **kw)


def bash(script: str, **kw) -> evalbox.Output:
    kw.setdefault("timeout", 20)
    return evalbox.run(["bash", "-c", script], **kw)


def py(code: str, *args: str, **kw) -> evalbox.Output:
    """Run Python code (sandbox's /usr/bin/python3) from a workspace file main.py."""
    kw.setdefault("timeout", 20)
    files = dict(kw.pop("files", {}) or {})
    files["main.py"] = code
    return evalbox.run(["python3", "main.py", *args], files=files, **kw)


def describe(out: evalbox.Output) -> str:
    """A compact description of an Output for assertion messages."""
    return (
        f"status={out.status} exit_code={out.exit_code} signal={out.signal} wall={out.wall_time:.3f} "
        f"cpu={out.cpu_time:.3f}\n--- stdout ({len(out.stdout)} B) ---\n{out.stdout[-1500:]!r}\n"
        f"--- stderr ({len(out.stderr)} B) ---\n{out.stderr[-2500:]!r}"
    )


def ok(out: evalbox.Output) -> evalbox.Output:
    """Assert the run exited 0 and return it."""
    assert out.status is evalbox.Status.EXITED and out.exit_code == 0, describe(out)
    return out


# -- waiting -------------------------------------------------------------------------------------

def wait_until(cond, timeout: float, interval: float = 0.01):
    """Poll `cond()` until truthy or the deadline passes; returns the last value."""
    end = time.monotonic() + timeout
    while True:
        value = cond()
        if value or time.monotonic() >= end:
            return value
        time.sleep(interval)


# -- processes -----------------------------------------------------------------------------------

def unique_seconds() -> str:
    """A unique, valid `sleep` duration (~1000 s) usable as a marker in a process's argv."""
    return f"{random.randint(900, 999)}.{random.randint(10**8, 10**9 - 1)}"


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def proc_state(pid: int) -> str | None:
    """The one-letter state of a process (R, S, Z, ...) or None if it does not exist."""
    data = _read(f"/proc/{pid}/stat")
    if data is None:
        return None
    return data.rsplit(b")", 1)[1].split()[0].decode()


def pids_with_marker(marker: str, exclude: set[int] | None = None) -> dict[int, str]:
    """Processes (pid -> state) whose command line contains `marker`, the test process excluded."""
    exclude = set(exclude or ()) | {os.getpid()}
    needle = marker.encode()
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in exclude:
            continue
        cmdline = _read(f"/proc/{name}/cmdline")
        if cmdline and needle in cmdline:
            state = proc_state(int(name))
            if state is not None:
                found[int(name)] = state
    return found


def live_with_marker(marker: str, exclude: set[int] | None = None) -> dict[int, str]:
    """Like pids_with_marker but without zombies (a dead orphan waiting for init to reap it)."""
    return {p: s for p, s in pids_with_marker(marker, exclude).items() if s not in ("Z", "X")}


def zombie_children() -> list[int]:
    """Zombie processes whose parent is the test process."""
    me = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        data = _read(f"/proc/{name}/stat")
        if not data:
            continue
        fields = data.rsplit(b")", 1)[1].split()
        if fields[0] == b"Z" and int(fields[1]) == me:
            out.append(int(name))
    return out


def open_fds() -> list[str]:
    """Open fds, less the jail's bounded pools of namespaces (network, with their socket counters;
    template mount) and the files a few recycled cgroups keep open."""
    from evalbox.kernel import cgroups
    from evalbox.process import netns

    pooled = {str(fd) for fd in netns.held_fds() | cgroups.held_fds()}  # (cgroups: a few recycled groups' files)
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith(("net:[", "mnt:[")) or name in pooled:
                continue
        except OSError:
            pass
        out.append(name)
    return sorted(out)


def sandbox_cgroups(pid: int | None = None) -> list[str]:
    """Per-sandbox cgroup dirs (evalbox-<pid>/sb-*) of process `pid` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    found = []
    for controller in ("memory", "pids", "cpuacct", "unified", ""):
        root = os.path.join("/sys/fs/cgroup", controller) if controller else "/sys/fs/cgroup"
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, _ in os.walk(root):
            if os.path.basename(dirpath) == f"evalbox-{pid}":
                found += [os.path.join(dirpath, d) for d in dirnames if d.startswith(("sb-", "slot-"))]
                dirnames[:] = []
            elif dirpath.count("/") > 10:
                dirnames[:] = []
    return sorted(set(found))


def cgroup_procs(group_dir: str) -> list[int]:
    try:
        with open(os.path.join(group_dir, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def busy_sandbox_cgroups(pid: int | None = None) -> dict[str, list[int]]:
    """Per-sandbox cgroups of `pid` that still hold processes (a finished run must leave none;
    a resident slot's launcher, in this process, belongs to no run)."""
    from evalbox.process import warm

    launchers = warm.resident_pids() if pid in (None, os.getpid()) else set()
    return {d: p for d in sandbox_cgroups(pid) if (p := [x for x in cgroup_procs(d) if x not in launchers])}


def evalbox_cgroup_parents(pid: int) -> list[str]:
    """Every evalbox-<pid> cgroup directory, in any hierarchy."""
    found = []
    for dirpath, dirnames, _ in os.walk("/sys/fs/cgroup"):
        if os.path.basename(dirpath) == f"evalbox-{pid}":
            found.append(dirpath)
            dirnames[:] = []
        elif dirpath.count("/") > 10:
            dirnames[:] = []
    return sorted(found)
