"""Class 7 (and the lease of class 5): within its limits, a sandbox cannot stall or slow host
processes through files it can only read: no locks that block host writers, no leases, no
page-cache eviction; and its /dev/shm is bounded in inodes."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from hardening_kit import run_snippet

HOLD = r'''
import fcntl, mmap, os, struct, sys, time
path = sys.argv[1]
fd = os.open(path, os.O_RDONLY)
results = {}
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); results["flock"] = "ok"
except OSError as e:
    results["flock"] = e.errno
try:
    fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack("hhqqi", fcntl.F_RDLCK, 0, 0, 0, 0)); results["posix"] = "ok"
except OSError as e:
    results["posix"] = e.errno
try:
    fcntl.fcntl(fd, 37, struct.pack("hhqqi", fcntl.F_RDLCK, 0, 0, 0, 0)); results["ofd"] = "ok"
except OSError as e:
    results["ofd"] = e.errno
own = os.open("own.txt", os.O_RDWR | os.O_CREAT)
for what, target in (("lease_host", fd), ("lease_own", own)):
    try:
        fcntl.fcntl(target, fcntl.F_SETLEASE, fcntl.F_RDLCK); results[what] = "ok"
    except OSError as e:
        results[what] = e.errno
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
sum(m[i] for i in range(0, len(m), 4096))
m.madvise(21)  # MADV_PAGEOUT
m.madvise(20)  # MADV_COLD
print("HOLDING", results, flush=True)
time.sleep(30)
'''


def _resident_pages(path: str) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "PAGES", path],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def test_read_only_host_files_cannot_be_locked_leased_or_evicted(caller):
    if not shutil.which("fincore"):
        pytest.skip("needs fincore (util-linux)")
    top = tempfile.mkdtemp(prefix="harden-lock-")
    try:
        target = os.path.join(top, "host.dat")
        with open(target, "wb") as f:
            f.write(os.urandom(4 << 20))
        os.chmod(target, 0o644)
        os.chmod(top, 0o755)
        with open(target, "rb") as f:
            f.read()  # now cached
        cached = _resident_pages(target)
        got = run_snippet(caller, f"""
            import fcntl, struct, time
            ex = evalbox.Executor()
            sid = ex.spawn(evalbox.Plan(["/usr/bin/python3.11", "-I", "-S", "-c", {HOLD!r}, {target!r}],
                                        mounts=[evalbox.Mount.ro({top!r})], timeout=60))
            seen = b""
            end = time.monotonic() + 30
            while b"HOLDING" not in seen and time.monotonic() < end:
                for ev in ex.poll(timeout=0.5):
                    if isinstance(ev, (evalbox.Stdout, evalbox.Stderr)):
                        seen += ev.data
                    if isinstance(ev, (evalbox.Completed, evalbox.Timeout)):
                        seen += ev.output.stdout + ev.output.stderr; end = 0
            # a host writer, while the sandbox says it holds its locks
            host = {{}}
            fd = os.open({target!r}, os.O_RDWR) if os.access({target!r}, os.W_OK) else os.open({target!r}, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); host["flock"] = "ok"
            except OSError as e:
                host["flock"] = e.errno
            kind = fcntl.F_WRLCK if os.access({target!r}, os.W_OK) else fcntl.F_RDLCK
            try:
                fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack("hhqqi", kind, 0, 0, 0, 0)); host["posix"] = "ok"
            except OSError as e:
                host["posix"] = e.errno
            t = time.monotonic()
            fd2 = os.open({target!r}, os.O_RDONLY | os.O_NONBLOCK)  # a lease would make this fail/stall
            host["open_s"] = time.monotonic() - t
            ex.kill(sid)
            while ex.active_count:
                ex.poll(timeout=1)
            emit({{"sandbox": seen.decode(errors="replace"), "host": host}})
        """)
        assert "HOLDING" in got["sandbox"], got
        assert got["host"]["flock"] == "ok" and got["host"]["posix"] == "ok", got
        assert got["host"]["open_s"] < 1.0, got
        assert "'lease_own': 1" in got["sandbox"] and "'lease_host': 1" in got["sandbox"], got  # EPERM
        assert _resident_pages(target) >= cached * 0.9, "the sandbox evicted a host file's page cache"
    finally:
        shutil.rmtree(top)


def test_locks_inside_the_sandbox_still_look_taken_to_the_program(caller):
    got = run_snippet(caller, """
        code = ("import fcntl, os\\nfd = os.open('f', os.O_RDWR | os.O_CREAT)\\n"
                "fcntl.flock(fd, fcntl.LOCK_EX)\\nfcntl.lockf(fd, fcntl.LOCK_EX)\\nfcntl.lockf(fd, fcntl.LOCK_UN)\\n"
                "fcntl.flock(fd, fcntl.LOCK_UN)\\nprint('ok')")
        o = evalbox.run(["/usr/bin/python3.11", "-I", "-S", "-c", code])
        emit({"out": o.stdout.decode(), "err": o.stderr.decode()})
    """)
    assert got["out"] == "ok\n", got


def test_private_dev_shm_is_bounded_in_inodes():
    if os.geteuid() != 0:
        pytest.skip("a private /dev/shm exists on root hosts")
    got = run_snippet("root", """
        code = ("import os\\nn = 0\\ntry:\\n    while n < 100000:\\n        open('/dev/shm/f%d' % n, 'w').close(); n += 1\\n"
                "except OSError as e:\\n    print(n, e.errno)\\nelse:\\n    print(n, 0)")
        o = evalbox.run(["/usr/bin/python3.11", "-I", "-S", "-c", code], disk="64M", timeout=60)
        emit({"out": o.stdout.decode(), "err": o.stderr.decode()[-500:]})
    """)
    made, err = map(int, got["out"].split())
    # ENOSPC at the inode bound: the private tmpfs's own (4096), or in the jail the `disk` one,
    # which /dev/shm shares with the workspace and /tmp (64M / 16 KiB = 4096)
    assert made <= 4096 and err == 28, got
