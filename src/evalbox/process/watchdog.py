"""A guard process that outlives its caller and cleans up after it.

The parent-death signal reaches only a sandbox's first process; its children would outlive a
caller that was killed. So each caller process starts one small guard (lazily, at its first
sandbox) and tells it, over a pipe, what every live sandbox consists of: process group, cgroup
directories, its own uid, workspace. The guard only reads. When the pipe reaches end of file,
the caller is gone: the guard kills whatever is still registered, removes the workspaces and
cgroups, and exits. One guard per caller process, not per sandbox.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any

_GUARD = r"""
import json, os, shutil, signal, sys, time
live, parents = {}, set()
for line in sys.stdin:
    msg = json.loads(line)
    if msg[0] == "+":
        live[msg[1]] = msg[2]
        parents.update(os.path.dirname(d) for d in msg[2]["cgroups"])
    else:
        live.pop(msg[1], None)

def kill_pids(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass

def cgroup_pids(d):
    try:
        with open(os.path.join(d, "cgroup.procs")) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []

for box in live.values():
    try:
        os.killpg(box["pgid"], signal.SIGKILL)
    except OSError:
        pass
    if box["uid"] >= 0 and not box["cgroups"]:
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    if os.stat("/proc/" + name).st_uid == box["uid"]:
                        kill_pids([int(name)])
                except OSError:
                    pass
    end = time.monotonic() + 5
    for d in box["cgroups"]:
        while time.monotonic() < end:
            pids = cgroup_pids(d)
            if not pids:
                break
            kill_pids(pids)
            time.sleep(0.01)
        for _ in range(100):
            try:
                os.rmdir(d)
                break
            except OSError:
                time.sleep(0.01)
    def fix_and_retry(func, path, exc):
        try:
            os.chmod(os.path.dirname(path), 0o700)
            func(path)
        except OSError:
            pass
    shutil.rmtree(box["workspace"], onerror=fix_and_retry)
for parent in parents:  # recycled groups of finished sandboxes are kept there too
    for name in os.listdir(parent) if os.path.isdir(parent) else ():
        d = os.path.join(parent, name)
        if os.path.isdir(d):
            kill_pids(cgroup_pids(d))
            try:
                os.rmdir(d)
            except OSError:
                pass
    try:
        os.rmdir(parent)
    except OSError:
        pass
"""

_lock = threading.Lock()
_guard: subprocess.Popen[str] | None = None


def _send(msg: list[Any]) -> None:
    global _guard
    line = json.dumps(msg) + "\n"
    with _lock:
        if _guard is None or _guard.poll() is not None:
            _guard = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _GUARD], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True, text=True,
            )
        assert _guard.stdin is not None
        try:
            _guard.stdin.write(line)
            _guard.stdin.flush()
        except BrokenPipeError:
            _guard = None


def _forget_after_fork() -> None:
    # the child must not write to its parent's guard, nor keep its pipe open (the guard would
    # not see the parent die); the child starts a guard of its own when it needs one
    global _guard
    if _guard is not None and _guard.stdin is not None:
        try:
            os.close(_guard.stdin.fileno())
        except OSError:
            pass
    _guard = None


os.register_at_fork(after_in_child=_forget_after_fork)


def register(key: str, pgid: int, uid: int, cgroups: list[str], workspace: str) -> None:
    _send(["+", key, {"pgid": pgid, "uid": uid, "cgroups": cgroups, "workspace": workspace}])


def unregister(key: str) -> None:
    _send(["-", key])
