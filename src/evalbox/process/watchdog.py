"""A guard process that outlives its caller and cleans up after it.

The parent-death signal reaches only a sandbox's first process; its children would outlive a
caller that was killed. So each caller process starts one small guard (lazily, at its first
sandbox) and keeps, in a table the two share (a memfd), what every live sandbox consists of:
process group, cgroup directories, its own uid, workspace. The guard only reads, and only once
its stdin pipe, which nobody writes, reaches end of file: the caller is gone. Then the guard kills whatever is still registered, removes the workspaces and
cgroups, and exits. One guard per caller process, not per sandbox.

If the guard itself dies first (killed by someone), the caller notices at once: each Executor
watches the guard's pidfd in its event loop (`guard_pidfd`, `check`), and every registration
checks too; a new guard is started on the same table, so the caller's death
never goes unnoticed for longer than a restart takes. (No thread: the caller stays as it was.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

PAGE = 4096  # one registration per page of the table (longer ones take several)

_GUARD = f"PAGE = {PAGE}\n" + r"""
import fcntl, os, shutil, signal, sys, time
live, parents = {}, set()

def learn(line):  # "+ key pgid uid lease-file workspace cgroup..." or "- key", tab-separated
    op, key, *rest = line.rstrip("\n").split("\t")
    if op == "+":
        pgid, uid, lease, workspace, *groups = rest
        live[key] = {"pgid": int(pgid), "uid": int(uid), "lease": lease, "workspace": workspace, "cgroups": groups}
        parents.update(os.path.dirname(d) for d in groups)
    else:
        live.pop(key, None)

for line in sys.stdin:  # until the caller is gone (end of file)
    learn(line)
# The caller's table of live runs (argv[1], a memfd it shares with us): one record per page run,
# "+..." up to its newline, or a NUL first byte where no run is registered.
if len(sys.argv) > 1:
    fd, table = int(sys.argv[1]), b""
    while True:
        chunk = os.pread(fd, 1 << 20, len(table))
        if not chunk:
            break
        table += chunk
    start = 0
    while start < len(table):
        end = table.find(b"\n", start) if table[start:start + 2] == b"+\t" else -1
        if end < 0:
            start += PAGE
            continue
        try:
            learn(table[start:end].decode("utf-8", "surrogateescape"))
        except (ValueError, IndexError):
            pass
        start += (end - start) // PAGE * PAGE + PAGE  # past every page the record took

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

def session_pids(sid):
    # A run cannot leave its session (setsid is refused), but it can make process groups of its
    # own: its processes are those of the caller's uid whose session id is the leader's pid.
    out, me = [], os.getpid()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me:
            try:
                # (status, not the /proc entry's owner: that is root for a non-dumpable process)
                with open("/proc/" + name + "/status", "rb") as f:
                    uids = [l for l in f.read().splitlines() if l.startswith(b"Uid:")][0].split()[1:3]
                if any(int(u) != os.getuid() for u in uids):
                    continue
                with open("/proc/" + name + "/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                if int(fields[3]) == sid and fields[0] not in (b"Z", b"X"):
                    out.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return out

def rmtree_inside(top):
    # (its processes are dead: nothing changes the tree meanwhile.) Directories the program
    # chmod'ed to 0 are opened up first, from the top down, never through a symlink and never
    # above `top` (the base dir, /tmp...).
    if not top:
        return  # (a jail's workspace: it was never on the host)
    top = os.path.abspath(top)
    if not os.path.isdir(top) or os.path.islink(top):
        return
    stack, seen = [top], 0
    while stack and seen < 1000000:
        d = stack.pop()
        seen += 1
        try:
            os.chmod(d, 0o700)
            for e in os.scandir(d):
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
        except OSError:
            pass
    shutil.rmtree(top, ignore_errors=True)

for box in live.values():
    try:
        os.killpg(box["pgid"], signal.SIGKILL)
    except OSError:
        pass
    end = time.monotonic() + 5
    if box["uid"] < 0 and not box["cgroups"]:
        while time.monotonic() < end:  # the session's processes, until none is left
            pids = session_pids(box["pgid"])
            if not pids:
                break
            kill_pids(pids)
            time.sleep(0.01)
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
# Workspaces only once every run's processes are dead: a tree one program made too deep to remove
# here must not stop the kills of the others (a later sweep removes what is left).
for box in live.values():
    try:
        rmtree_inside(box["workspace"])
    except BaseException:  # (RecursionError on a very deep tree)
        pass
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
# The live runs are kept in a table the guard shares (a memfd) rather than sent down its pipe: a
# registration is then a write to memory that wakes nobody, and the guard reads the table only
# once its pipe ends (the caller is gone). Each run holds whole pages of it (`_slots`).
_table = -1
_slots: dict[str, tuple[int, int]] = {}  # key -> (offset, pages)
_free: dict[int, list[int]] = {}  # pages -> offsets of released runs' places
_end = 0  # the table's size so far
restarts = 0  # guards started again after dying (for tests and diagnostics)


def _start() -> subprocess.Popen[bytes]:
    global _table
    if _table < 0:
        _table = os.memfd_create("evalbox-guard", os.MFD_CLOEXEC)
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _GUARD, str(_table)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True, pass_fds=(_table,),
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
    """The guard died: start a new one; it reads the same table (caller holds _lock)."""
    global _guard, restarts
    _reap_locked()
    _guard = _start()
    restarts += 1


def guard_pidfd() -> int:
    """A new pidfd (the caller closes it) of the current guard, readable once it dies; -1 when
    there is none."""
    with _lock:
        if _guard is None:
            return -1
        try:
            return os.pidfd_open(_guard.pid)
        except OSError:
            return -1


def check() -> bool:
    """Restart the guard if it died while sandboxes are live (call when its pidfd is readable).
    False: it died and no new one could be started (the caller must end its sandboxes)."""
    global _guard
    with _lock:
        if _guard is None or _guard.poll() is None:
            return True
        if not _slots:
            _reap_locked()
            _guard = None
            return True
        try:
            _restart_locked()
        except OSError:
            _guard = None  # (reaped by _restart_locked); the next registration tries again
            return False
        return True


def _forget_after_fork() -> None:
    # the child must not write to its parent's guard or table, nor keep its pipe open (the guard
    # would not see the parent die); the child starts a guard of its own when it needs one
    global _guard, _lock, _table, _end
    _lock = threading.Lock()  # another thread may have held it at the fork: it will never release it here
    if _guard is not None and _guard.stdin is not None:
        try:
            _guard.stdin.close()
        except OSError:
            pass
    _guard = None
    if _table >= 0:
        try:
            os.close(_table)
        except OSError:
            pass
    _table = -1
    _slots.clear()
    _free.clear()
    _end = 0


os.register_at_fork(after_in_child=_forget_after_fork)


def register(key: str, pgid: int, uid: int, lease_file: str, cgroups: list[str], workspace: str) -> None:
    """Tell the guard (starting it, or a new one if it died, as needed) that `key` is live."""
    global _guard, _end
    fields = ["+", key, str(pgid), str(uid), lease_file, workspace, *cgroups]
    record = ("\t".join(fields) + "\n").encode("utf-8", "surrogateescape")
    with _lock:
        if _guard is None:
            _guard = _start()
        elif _guard.poll() is not None:
            _restart_locked()
        if key in _slots:
            _clear_locked(key)
        pages = (len(record) + PAGE - 1) // PAGE
        offsets = _free.get(pages)
        if offsets:
            offset = offsets.pop()
        else:
            offset, _end = _end, _end + pages * PAGE
        # the body first, its mark last: a record is whole whenever the guard may read it
        _pwrite_all(record[1:], offset + 1)
        _pwrite_all(record[:1], offset)
        _slots[key] = (offset, pages)


def unregister(key: str) -> None:
    """Tell the guard that `key` ended (its processes are dead)."""
    with _lock:
        _clear_locked(key)


def _clear_locked(key: str) -> None:
    place = _slots.pop(key, None)
    if place is None:
        return
    offset, pages = place
    for page in range(pages):  # (every page: none may later read as the start of a record)
        os.pwrite(_table, b"\0", offset + page * PAGE)
    _free.setdefault(pages, []).append(offset)


def _pwrite_all(data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(_table, view, offset)
        view, offset = view[n:], offset + n
