"""A guard process that outlives its caller and cleans up after it.

The parent-death signal reaches only a sandbox's first process; its children would outlive a
caller that was killed. So each caller process starts one small guard (lazily, at its first
sandbox) and tells it, over a pipe, what every live sandbox consists of: process group, cgroup
directories, its own uid, workspace. The guard only reads. When the pipe reaches end of file,
the caller is gone: the guard kills whatever is still registered, removes the workspaces and
cgroups, and exits. One guard per caller process, not per sandbox.

If the guard itself dies first (killed by someone), the caller notices at once: a watcher thread
(one per caller process, blocked on the guard's pidfd) starts a new guard and tells it every
live sandbox again, so the caller's death never goes unnoticed for longer than a restart takes.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading

_GUARD = r"""
import fcntl, os, shutil, signal, sys, time
live, parents = {}, set()
for line in sys.stdin:  # "+ key pgid uid lease-file workspace cgroup..." or "- key", tab-separated
    op, key, *rest = line.rstrip("\n").split("\t")
    if op == "+":
        pgid, uid, lease, workspace, *groups = rest
        live[key] = {"pgid": int(pgid), "uid": int(uid), "lease": lease, "workspace": workspace, "cgroups": groups}
        parents.update(os.path.dirname(d) for d in groups)
    else:
        live.pop(key, None)

# The caller is gone, and with it its flocks on the sandboxes' uid leases: take them over at once
# so no other evalbox process hands those uids out before their processes are dead.
held = []
for box in live.values():
    if box["lease"]:
        try:
            fd = os.open(box["lease"], os.O_RDWR)
            fcntl.flock(fd, fcntl.LOCK_EX)
            held.append(fd)
        except OSError:
            pass

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

def uid_pids(uid):
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat("/proc/" + name).st_uid == uid:
                    out.append(int(name))
            except OSError:
                pass
    return out

def rmtree_inside(top):
    top = os.path.abspath(top)
    def fix_and_retry(func, path, exc):
        parent = os.path.dirname(os.path.abspath(path))
        try:
            if parent == top or parent.startswith(top + "/"):  # never the base dir (/tmp...)
                os.chmod(parent, 0o700)
            func(path)
        except OSError:
            pass
    if os.path.isdir(top) and not os.path.islink(top):
        shutil.rmtree(top, onerror=fix_and_retry)

for box in live.values():
    try:
        os.killpg(box["pgid"], signal.SIGKILL)
    except OSError:
        pass
    end = time.monotonic() + 5
    if box["uid"] >= 0 and not box["cgroups"]:
        while time.monotonic() < end:  # again and again: a process may fork while we list
            pids = uid_pids(box["uid"])
            if not pids:
                break
            kill_pids(pids)
            time.sleep(0.01)
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
    rmtree_inside(box["workspace"])
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
for fd in held:
    os.close(fd)
"""

_lock = threading.Lock()
_guard: subprocess.Popen[bytes] | None = None
_live: dict[str, bytes] = {}  # registrations, replayed to a new guard if the old one died
_watcher: threading.Thread | None = None
restarts = 0  # guards started again after dying (for tests and diagnostics)


def _start() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _GUARD], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )


def _reap_locked() -> None:
    if _guard is not None:
        try:
            if _guard.stdin is not None:
                _guard.stdin.close()
        except OSError:
            pass
        _guard.wait()


def _restart_locked() -> None:
    """The guard died: start a new one and tell it every live sandbox (caller holds _lock)."""
    global _guard, restarts
    _reap_locked()
    _guard = _start()
    restarts += 1
    assert _guard.stdin is not None
    _write_all(_guard.stdin.fileno(), b"".join(_live.values()))


def _watch() -> None:
    """Wait for the current guard to die; restart it while sandboxes are live."""
    global _guard, _watcher
    me = threading.current_thread()
    while True:
        with _lock:
            if _watcher is not me or _guard is None:
                return  # forked, replaced or stopped
            guard = _guard
        try:
            pidfd = os.pidfd_open(guard.pid)
        except OSError:
            pidfd = -1  # already gone: handled below
        if pidfd >= 0:
            try:
                p = select.poll()
                p.register(pidfd, select.POLLIN)
                p.poll()
            finally:
                os.close(pidfd)
        with _lock:
            if _watcher is not me:
                return
            if _guard is guard:
                if _live:
                    _restart_locked()
                else:  # nothing to guard: the next registration starts a guard again
                    _reap_locked()
                    _guard = _watcher = None
                    return


def _ensure_watcher_locked() -> None:
    global _watcher
    if _watcher is None or not _watcher.is_alive():
        _watcher = threading.Thread(target=_watch, name="evalbox-guard-watch", daemon=True)
        _watcher.start()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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
            if line is None:
                return  # no guard: nothing it would need to forget
            _guard = _start()
        elif _guard.poll() is not None:
            _restart_locked()  # died since we last looked: the replay already reflects `message`
            _ensure_watcher_locked()
            return
        assert _guard.stdin is not None
        try:
            _write_all(_guard.stdin.fileno(), message)
        except BrokenPipeError:
            # the guard died (killed by someone): a new one must learn every live sandbox again
            _restart_locked()
        _ensure_watcher_locked()


def _forget_after_fork() -> None:
    # the child must not write to its parent's guard, nor keep its pipe open (the guard would
    # not see the parent die); the child starts a guard of its own when it needs one
    global _guard, _lock, _watcher
    _lock = threading.Lock()
    _watcher = None  # another thread may have held it at the fork: it will never release it here
    if _guard is not None and _guard.stdin is not None:
        try:
            _guard.stdin.close()
        except OSError:
            pass
    _guard = None
    _live.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def register(key: str, pgid: int, uid: int, lease_file: str, cgroups: list[str], workspace: str) -> None:
    fields = ["+", key, str(pgid), str(uid), lease_file, workspace, *cgroups]
    _send(key, ("\t".join(fields) + "\n").encode())


def unregister(key: str) -> None:
    _send(key, None)
