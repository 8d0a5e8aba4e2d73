"""Shared test helpers that look at processes through /proc."""

import os
import time


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...
    except OSError:
        return None


def alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def zombie_children() -> list[int]:
    """Zombies whose parent is this (test) process."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(name)
            if fields and fields[0] == "Z" and int(fields[1]) == os.getpid():
                out.append(int(name))
    return out


def alive_with(marker: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains `marker`."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if marker.encode() not in f.read():
                        continue
            except OSError:
                continue
            if alive(int(name)):
                found.append(int(name))
    return found


def wait_until(cond, deadline: float = 10.0) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def kill_and_reap(pids) -> None:
    """A failed test's clean-up: SIGKILL `pids`, then reap every zombie child of this process."""
    import signal

    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in [*zombie_children(), *pids]:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
