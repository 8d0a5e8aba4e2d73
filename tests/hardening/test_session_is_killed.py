"""A process that made a process group of its own (setpgid(0, 0); setsid is refused) is still
killed with its run: by the caller's guard when the caller dies, and at the normal end of the run,
for a caller with no cgroup and no uid of its own to find the run's processes by (red-team
finding 01: an unprivileged caller's setpgid grandchild outlived it)."""

from __future__ import annotations

import os
import random
import signal
import time

from hardening_kit import run_snippet
from test_guard_dies_first import _pids_with

# the sandboxed program: a grandchild in a group of its own, then the program waits
PROGRAM = r'''
import os, sys, time
if os.fork() == 0:
    os.setpgid(0, 0)
    if os.fork() == 0:
        os.setpgid(0, 0)
        os.chdir("/")
        for fd in (0, 1, 2): os.close(fd)
        os.execv("/bin/sleep", ["sleep", sys.argv[1]])
    os._exit(0)
print("up", flush=True)
time.sleep(600)
'''


def _argv(marker: str) -> list[str]:
    return ["/usr/bin/python3.11", "-I", "-S", "-c", PROGRAM, marker]


def _live(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:  # gone between the listing and the read
        return False


def _wait_gone(marker: str, seconds: float) -> list[int]:
    end = time.monotonic() + seconds
    while True:
        left = [p for p in _pids_with(marker) if _live(p)]
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.05)


def _check_gone(marker: str) -> None:
    left = _wait_gone(marker, 20)
    try:
        assert not left, f"a process group made inside the run survived it: {left}"
    finally:
        for pid in left:
            os.kill(pid, signal.SIGKILL)


def test_caller_killed_mid_run_takes_a_new_process_group_with_it(caller):
    marker = f"{300 + random.random():.6f}"
    got = run_snippet(caller, f"""
        import signal, time
        child = os.fork()
        if child == 0:  # the caller, killed while its run goes on
            evalbox.run({_argv(marker)!r}, timeout=600)
            os._exit(0)
        end, up = time.monotonic() + 30, False
        while not up and time.monotonic() < end:
            for name in os.listdir("/proc"):
                try:
                    if name.isdigit() and b"sleep\\x00{marker}" in open(f"/proc/{{name}}/cmdline", "rb").read():
                        up = True
                except OSError:
                    pass
            time.sleep(0.05)
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        emit({{"up": up}})
    """)
    assert got["up"], got
    _check_gone(marker)


def test_normal_end_of_a_run_takes_a_new_process_group_with_it(caller):
    marker = f"{300 + random.random():.6f}"
    got = run_snippet(caller, f"""
        r = evalbox.run({_argv(marker)!r}, timeout=3)
        emit({{"status": r.status.name, "stdout": r.stdout.decode(errors="replace")}})
    """)
    assert got["status"] == "TIMEOUT" and "up" in got["stdout"], got
    _check_gone(marker)
