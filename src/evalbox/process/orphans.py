"""A run's orphans, where the caller inherits them: without the jail (whose init reaps them), a
process whose parent died is reparented to the nearest subreaper, which is the caller when it is
a container's PID 1 or set PR_SET_CHILD_SUBREAPER. Killed at the run's end, such processes stay
zombies of the caller for ever (nobody waits for them) and count against its uid's process limit.
So after a run the caller reaps its zombie children that were the run's: those of the run's own
uid, or of the run's session (a run cannot leave it) that are not a session leader (a later run's
program, whose status its own Sandbox waits for). No other child of the caller is touched.
"""

from __future__ import annotations

import ctypes
import os
import time

PR_GET_CHILD_SUBREAPER = 37
SETTLE = 1.0  # seconds at most to wait for killed processes to die and be reparented


_prctl = None


def caller_adopts() -> bool:
    """Are orphans reparented to this process (PID 1 of a namespace, or a subreaper)?"""
    global _prctl
    if os.getpid() == 1:
        return True
    if _prctl is None:
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
        _prctl.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    flag = ctypes.c_int(0)
    return _prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(flag), 0, 0, 0) == 0 and flag.value != 0


def _run_processes(uid: int, sid: int) -> tuple[list[int], bool]:
    """(our zombie children that were the run's, whether any process of the run is still alive)."""
    me = os.getpid()
    zombies, alive = [], False
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            state, ppid, session = fields[0], int(fields[1]), int(fields[3])
            ours = session == sid and pid != sid
            if uid >= 0 and not ours:
                with open(f"/proc/{name}/status", "rb") as f:
                    line = next(ln for ln in f.read().splitlines() if ln.startswith(b"Uid:"))
                ours = int(line.split()[1]) == uid
        except (OSError, IndexError, ValueError, StopIteration):
            continue
        if not ours:
            continue
        if state == b"Z" and ppid == me:
            zombies.append(pid)
        elif state not in (b"Z", b"X"):
            alive = True
    return zombies, alive


def reap(uid: int, sid: int) -> None:
    """Reap the run's zombies among our children (`uid`: the run's own uid, or -1; `sid`: its
    session). Waits up to SETTLE for processes still dying to become zombies."""
    end = time.monotonic() + SETTLE
    while True:
        zombies, alive = _run_processes(uid, sid)
        for pid in zombies:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        if not alive or time.monotonic() > end:
            return
        time.sleep(0.005)
