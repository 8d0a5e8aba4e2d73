"""A supervised program (notify MONITOR/SUPERVISE intercepting opens) reads its own /proc/self as
an unsupervised one does. Its opens are carried out by evalbox's opener thread with the program's
rights; in the jail that thread is outside the program's PID namespace, where /proc/self is not
the program, and hidepid hid the program's /proc/<pid> from it (every /proc/self open was ENOENT).
The jail's init stays hidden through that path too."""

from __future__ import annotations

import textwrap

import pytest

import evalbox
from evalbox import Decision, NotifyMode

PY = "/usr/bin/python3.11"

CODE = textwrap.dedent("""
    import os
    def probe(what, f):
        try:
            print(what, "ok", f())
        except OSError as e:
            print(what, "err", e.errno)
    probe("status", lambda: open("/proc/self/status").read().split()[1])
    probe("cmdline", lambda: open("/proc/self/cmdline", "rb").read().split(b"\\0")[0].decode())
    probe("comm", lambda: open("/proc/thread-self/comm").read().strip())
    probe("fd", lambda: int(len(os.listdir("/proc/self/fd")) > 2))
    probe("stat", lambda: os.stat("/proc/self/status").st_uid == os.getuid())
    proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    probe("relative", lambda: os.read(os.open("self/stat", os.O_RDONLY, dir_fd=proc), 64).split()[0].decode())
    probe("pid", lambda: open(f"/proc/{os.getpid()}/status").read().split()[1])
    probe("init", lambda: open("/proc/1/cmdline", "rb").read())
    probe("init-stat", lambda: os.stat("/proc/1").st_uid)
""")


def _run(mode: NotifyMode) -> dict[str, tuple[str, str]]:
    kw = {"supervisor": lambda req: Decision.ALLOW} if mode is NotifyMode.SUPERVISE else {}
    if mode is not NotifyMode.DISABLED:
        kw["intercept"] = ["openat", "newfstatat"]
    out = evalbox.run([PY, "-I", "-S", "-c", CODE], notify=mode, timeout=30, **kw)
    assert out.success, out.stderr
    return {line.split()[0]: tuple(line.split()[1:3]) for line in out.stdout.decode().splitlines()}


@pytest.mark.parametrize("mode", [NotifyMode.MONITOR, NotifyMode.SUPERVISE])
def test_proc_self_opens_work_under_supervision(mode):
    bare = _run(NotifyMode.DISABLED)
    got = _run(mode)
    pid = bare["relative"][1]
    assert bare["status"] == ("ok", "python3.11") and bare["pid"] == ("ok", "python3.11")
    for what in ("status", "cmdline", "comm", "fd", "stat", "pid"):
        assert got[what][0] == "ok", (what, got)
        assert got[what] == bare[what], (what, got[what], bare[what])
    assert got["relative"][0] == "ok" and got["relative"][1].isdigit(), got
    assert pid.isdigit()
    # what the program cannot see unsupervised, it cannot see supervised (in the jail: its init)
    assert got["init"][0] == bare["init"][0] and got["init-stat"][0] == bare["init-stat"][0], (got, bare)
