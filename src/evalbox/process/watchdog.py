"""A guard process that outlives its caller and cleans up after it.

The parent-death signal reaches only a sandbox's first process; its children would outlive a
caller that was killed. So each caller process starts one small guard (lazily, at its first
sandbox) and tells it, over a pipe, what every live sandbox consists of: process group, cgroup
directories, its own uid, workspace. The guard only reads. When the pipe reaches end of file,
the caller is gone: the guard kills whatever is still registered, removes the workspaces and
cgroups, and exits. One guard per caller process, not per sandbox.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

_GUARD = r"""
import os, shutil, signal, sys, time
live, parents = {}, set()
for line in sys.stdin:  # "+ key pgid uid workspace cgroup..." or "- key", tab-separated
    op, key, *rest = line.rstrip("\n").split("\t")
    if op == "+":
        pgid, uid, workspace, *groups = rest
        live[key] = {"pgid": int(pgid), "uid": int(uid), "workspace": workspace, "cgroups": groups}
        parents.update(os.path.dirname(d) for d in groups)
    else:
        live.pop(key, None)

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
_guard: subprocess.Popen[bytes] | None = None
_live: dict[str, bytes] = {}  # registrations, replayed to a new guard if the old one died


def _start() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _GUARD], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )


def _send(key: str, line: bytes | None) -> None:
    """Tell the guard (starting it if needed) that `key` is live (`line`) or gone (None)."""
    global _guard
    with _lock:
        if line is None:
            _live.pop(key, None)
            message = b"-\t" + key.encode() + b"\n"
        else:
            _live[key] = message = line
        if _guard is None:
            _guard = _start()
        assert _guard.stdin is not None
        try:
            os.write(_guard.stdin.fileno(), message)
        except BrokenPipeError:
            # the guard died (killed by someone): a new one must learn every live sandbox again
            _guard.wait()
            _guard = _start()
            assert _guard.stdin is not None
            os.write(_guard.stdin.fileno(), b"".join(_live.values()))


def _forget_after_fork() -> None:
    # the child must not write to its parent's guard, nor keep its pipe open (the guard would
    # not see the parent die); the child starts a guard of its own when it needs one
    global _guard
    if _guard is not None and _guard.stdin is not None:
        try:
            _guard.stdin.close()
        except OSError:
            pass
    _guard = None
    _live.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def register(key: str, pgid: int, uid: int, cgroups: list[str], workspace: str) -> None:
    fields = ["+", key, str(pgid), str(uid), workspace, *cgroups]
    _send(key, ("\t".join(fields) + "\n").encode())


def unregister(key: str) -> None:
    _send(key, None)
