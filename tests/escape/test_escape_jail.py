"""SPEC §4.9: the sandbox sees only what it is given (the namespace tier, where the host allows it).

Real attempts at seeing the host: its processes (a secret in a command line), its network state,
and at leaving zombies with the caller. Skipped, with the reason, where the host has no jail.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
import time

import pytest

import evalbox
from evalbox.process.host import probe

PY = "/usr/bin/python3.11"

pytestmark = pytest.mark.skipif(not probe().jail, reason="no jail on this host (needs root with CAP_SYS_ADMIN; "
                                "`evalbox check` says why); promise 9 is reported as not held there")


def run_py(code: str, **kw) -> evalbox.Output:
    return evalbox.run([PY, "-I", "-S", "-c", textwrap.dedent(code)], timeout=20, **kw)


def test_protections_name_the_namespaces():
    out = evalbox.run(["/bin/true"])
    assert out.success
    assert {"pid", "mount", "ipc", "uts"} <= set(out.protections.namespaces)


def test_host_process_with_a_secret_in_argv_is_invisible():
    secret = "evalbox-secret-" + secrets.token_hex(8)
    host = subprocess.Popen(["sh", "-c", "sleep 300", secret])
    try:
        end = time.monotonic() + 10
        while time.monotonic() < end:  # until the host process has exec'd: the target is real
            with open(f"/proc/{host.pid}/cmdline", "rb") as f:
                if secret.encode() in f.read():
                    break
        else:
            pytest.fail("the host process never showed its secret")
        out = evalbox.run(["sh", "-c", "ps -eo pid,args; cat /proc/[0-9]*/cmdline | tr '\\0' ' '; ls /proc"],
                          timeout=20)
        assert out.success, out.stderr
        assert secret.encode() not in out.stdout
        assert str(host.pid).encode() + b"\n" not in out.stdout.split(b"cmdline")[-1]
        pids = sorted(int(w) for w in out.stdout.split() if w.isdigit())
        # only the sandbox's own processes: sh, ps/cat/ls (its PID 1 is hidden from it)
        assert pids and max(pids) < 20, out.stdout
        # the caller's own command line (shared with the sandbox's init) is not visible either
        assert b"pytest" not in out.stdout
    finally:
        host.kill()
        host.wait()


def test_init_is_hidden_and_the_program_is_pid_2():
    out = evalbox.run(["sh", "-c", "echo $$; test -e /proc/1 && echo visible; cat /proc/1/cmdline; true"])
    assert out.stdout.split(b"\n")[0] == b"2"
    assert b"visible" not in out.stdout


def test_hostname_is_the_sandbox_own():
    out = evalbox.run(["cat", "/proc/sys/kernel/hostname"])
    assert out.stdout == b"sandbox\n"


@pytest.mark.parametrize("code,status,exit_code,signal", [
    ("exit 7", evalbox.Status.EXITED, 7, None),
    ("kill -SEGV $$", evalbox.Status.SIGNALED, None, 11),
    ("kill -TERM $$", evalbox.Status.SIGNALED, None, 15),
    ("kill -ABRT $$", evalbox.Status.SIGNALED, None, 6),
])
def test_program_verdict_passes_through_the_init(code, status, exit_code, signal):
    out = evalbox.run(["sh", "-c", code])
    assert (out.status, out.exit_code, out.signal) == (status, exit_code, signal)


def test_orphans_die_with_the_program_and_are_not_counted_as_its_verdict():
    out = evalbox.run(["sh", "-c", "(sleep 100 &) ; (trap '' TERM; sleep 100 &); echo started"], timeout=20)
    assert out.success and out.stdout == b"started\n"
    assert out.wall_time < 10


SUBREAPER_CALLER = r"""
import ctypes, os, sys
import evalbox
PR_SET_CHILD_SUBREAPER = 36
assert ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
for i in range(5):
    out = evalbox.run(["sh", "-c", "for i in 1 2 3 4 5 6; do (sleep 100 &); done; sleep 100 & exit 0"], timeout=10)
    assert out.success, out
    out = evalbox.run(["sh", "-c", "for i in 1 2 3; do (sleep 100 &); done; sleep 100"], timeout=0.5)
    assert out.status is evalbox.Status.TIMEOUT, out
out = evalbox.run(["sh", "-c", "for i in $(seq 30); do (true &); done; echo forked"], timeout=10)
assert out.success and out.stdout == b"forked\n", out
# every child of this subreaper that is left is the guard (a Python process), none is a zombie
me = str(os.getpid())
left = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                left.append((pid, fields[0], f.read()[:60]))
bad = [p for p in left if p[1] == "Z" or b"sleep" in p[2] or b"sh\0" in p[2]]
print("LEFT", left)
sys.exit(1 if bad else 0)
"""


def test_subreaper_caller_gets_no_zombies_and_can_run_again():
    result = subprocess.run([sys.executable, "-c", SUBREAPER_CALLER], capture_output=True, timeout=120)
    assert result.returncode == 0, (result.stdout, result.stderr)
