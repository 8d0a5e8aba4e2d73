"""Limits hold and are reported with the right status (SPEC §1 Status, §4.6)."""

from __future__ import annotations

import signal

import pytest

import evalbox
from ft_helpers import describe, live_with_marker, ok, py, sh

S = evalbox.Status
MiB = 1 << 20


# -- wall clock ----------------------------------------------------------------------------------

def test_timeout_status_and_wall_time():
    out = evalbox.run(["sleep", "30"], timeout=1)
    assert out.status is S.TIMEOUT, describe(out)
    assert 1.0 <= out.wall_time < 3.0, describe(out)
    assert not out.success

# RLIMIT_CPU is charged per scheduler tick while rusage is exact: a program stopped by the limit
# can report up to ~0.1 s less than it (seen: 0.953 s for a 1 s limit under load).
CPU_SLACK = 0.25  # rusage vs the kernel's RLIMIT_CPU charge: seen 0.18 s apart on a loaded VM


def test_timeout_keeps_partial_output():
    out = sh("echo before; sleep 30; echo after", timeout=0.5)
    assert out.status is S.TIMEOUT, describe(out)
    assert out.stdout == b"before\n", describe(out)
    assert out.wall_time >= 0.5, describe(out)


def test_timeout_kills_background_grandchild(marker):
    m1, m2 = marker(), marker()
    out = sh(f"sleep {m1} & sleep {m2}", timeout=1)
    assert out.status is S.TIMEOUT, describe(out)
    assert out.wall_time < 3.0, describe(out)
    assert live_with_marker(m1) == {}, "background grandchild survived the timeout"
    assert live_with_marker(m2) == {}, "foreground child survived the timeout"


def test_timeout_kills_program_ignoring_sigterm(marker):
    m = marker()
    code = f"""
import signal, subprocess, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
child = subprocess.Popen(["sh", "-c", "trap '' TERM INT HUP; sleep {m}; sleep {m}"])
print("ready", flush=True)
while True:
    try:
        child.wait()
    except BaseException:
        pass
"""
    out = py(code, timeout=1)
    assert out.status is S.TIMEOUT, describe(out)
    assert out.stdout == b"ready\n", describe(out)
    assert out.wall_time < 3.0, describe(out)
    assert live_with_marker(m) == {}


def test_timeout_with_daemonized_grandchild(marker):
    """A double-forked child whose parent exited (reparented away from the leader) still dies."""
    m = marker()
    out = sh(f"(sleep {m} & ) ; sleep 30", timeout=1)
    assert out.status is S.TIMEOUT, describe(out)
    assert live_with_marker(m) == {}


# -- CPU time ------------------------------------------------------------------------------------

def test_cpu_limit_busy_loop():
    out = evalbox.run(["python3", "-c", "while True: pass"], cpu_time=1, timeout=15)
    assert out.status is S.CPU_LIMIT, describe(out)
    assert out.cpu_time >= 1.0 - CPU_SLACK, describe(out)
    assert out.wall_time < 5.0, describe(out)


def test_cpu_limit_when_sigxcpu_is_caught_and_program_exits_1():
    code = r"""
import signal, sys
def on_xcpu(signum, frame):
    print("caught SIGXCPU", flush=True)
    sys.exit(1)
signal.signal(signal.SIGXCPU, on_xcpu)
print("spinning", flush=True)
while True:
    pass
"""
    out = py(code, cpu_time=1, timeout=15)
    assert out.status is S.CPU_LIMIT, describe(out)
    assert out.cpu_time >= 1.0 - CPU_SLACK, describe(out)
    assert out.stdout.startswith(b"spinning\n"), describe(out)


def test_cpu_limit_spread_over_children():
    """Two busy children each below the limit: the limit is on the run, not per process."""
    code = r"""
import multiprocessing, os, time
pids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        while True:
            pass
    pids.append(pid)
for pid in pids:
    os.waitpid(pid, 0)
"""
    out = py(code, cpu_time=1, timeout=15)
    assert out.status is S.CPU_LIMIT, describe(out)
    assert out.cpu_time >= 1.0 - CPU_SLACK, describe(out)
    # well before the wall clock would have ended it (CPU time accrues slowly on a loaded machine)
    assert out.wall_time < 10.0, describe(out)


def test_cpu_time_reported_for_normal_run():
    out = ok(evalbox.run(["python3", "-c", "sum(range(3_000_000))"], timeout=15))
    assert 0 < out.cpu_time < 5, describe(out)


# -- memory --------------------------------------------------------------------------------------

def test_memory_limit_python():
    code = "chunks = []\nwhile len(chunks) < 512:\n    chunks.append(b'x' * (1 << 20))\nprint('allocated 512M')\n"
    out = py(code, memory="64M", timeout=20)
    assert out.status is S.MEMORY_LIMIT, describe(out)
    assert b"allocated" not in out.stdout, describe(out)


def test_memory_limit_c(cbin):
    out = evalbox.run(["./alloc", "512"], files={"alloc": evalbox.File(cbin["alloc"], executable=True)}, memory="64M", timeout=20)
    assert out.status is S.MEMORY_LIMIT, describe(out)
    assert out.stdout.startswith(b"start\n") and b"done" not in out.stdout, describe(out)


def test_memory_within_limit_succeeds(cbin):
    out = ok(evalbox.run(["./alloc", "100"], files={"alloc": evalbox.File(cbin["alloc"], executable=True)}, memory="256M", timeout=20))
    assert out.stdout == b"start\ndone\n"


def test_memory_limit_can_grow_between_runs():
    """Runs with different memory limits, smaller first, in one process (cgroups may be reused)."""
    for memory in ("64M", "256M", "1G", "32M", None):
        out = evalbox.run(["true"], memory=memory, timeout=10)
        assert out.success, f"memory={memory}: {describe(out)}"


def test_max_rss_plausible():
    code = "b = b'x' * (100 << 20)\nprint(len(b))\n"
    out = ok(py(code, memory="512M", timeout=20))
    if out.max_rss == 0 and not out.protections.cgroup.startswith("v"):
        # No memory cgroup: the figure comes from rusage, which folds in the caller's own peak (the
        # spawn child shares its memory until exec), so below that peak it is unknown (0).
        import resource

        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 >= 100 * MiB, describe(out)
        return
    assert 100 * MiB <= out.max_rss < 512 * MiB, describe(out) + f"\nmax_rss={out.max_rss}"


def test_a_recycled_cgroup_starts_every_run_at_zero():
    # One process recycles its cgroups run after run: the memory peak, CPU time and OOM kill of a
    # run never show in the next one's Output.
    heavy = py("import time\nb = b'x' * (150 << 20)\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\n",
               memory="512M", timeout=20)
    oom = py("b = [b'x' * (1 << 20) for _ in range(400)]\n", memory="64M", timeout=20)
    assert oom.status is S.MEMORY_LIMIT, describe(oom)
    for memory in ("512M", "64M"):  # (a recycled group takes the new run's limit)
        light = py("print(1)\n", memory=memory, timeout=20)
        assert light.status is S.EXITED, describe(light)
        assert light.cpu_time < 0.3, describe(light)
        if heavy.max_rss and light.max_rss:
            assert light.max_rss < 100 * MiB, describe(light) + f"\nmax_rss={light.max_rss}"
    assert heavy.success and heavy.cpu_time >= 0.4, describe(heavy)


# -- output --------------------------------------------------------------------------------------

def test_output_limit_stdout_flood():
    out = evalbox.run(["yes"], max_output="1M", timeout=15)
    assert out.status is S.OUTPUT_LIMIT, describe(out)
    assert len(out.stdout) + len(out.stderr) <= MiB
    assert len(out.stdout) >= MiB // 2, f"only {len(out.stdout)} bytes of output kept"
    assert out.stdout_truncated is True and out.stderr_truncated is False
    assert out.stdout == (b"y\n" * MiB)[: len(out.stdout)], "the kept output is not the program's prefix"
    assert out.wall_time < 5


def test_output_limit_counts_stdout_and_stderr_together():
    out = sh("echo start; yes err >&2", max_output="1M", timeout=15)
    assert out.status is S.OUTPUT_LIMIT, describe(out)
    assert out.stdout == b"start\n", describe(out)
    assert len(out.stdout) + len(out.stderr) <= MiB
    assert out.stderr_truncated is True
    assert out.stderr.startswith(b"err\nerr\n")


def test_output_just_under_limit_is_not_truncated():
    out = ok(sh("head -c 1000000 /dev/zero", max_output="1M"))
    assert len(out.stdout) == 1_000_000 and not out.stdout_truncated


# -- file size -----------------------------------------------------------------------------------

def test_max_file_size_dd_gets_sigxfsz():
    out = sh("dd if=/dev/zero of=big bs=64k count=160 2>/dev/null; echo rc=$?; stat -c %s big", max_file_size="1M")
    assert out.status is S.EXITED and out.exit_code == 0, describe(out)
    rc, size = out.stdout.decode().split()
    assert rc == f"rc={128 + signal.SIGXFSZ}", describe(out)
    assert int(size) <= MiB, describe(out)


def test_max_file_size_efbig_when_sigxfsz_ignored():
    code = r"""
import errno, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
written = 0
try:
    with open("big", "wb", buffering=0) as f:
        for _ in range(160):
            written += f.write(b"z" * 65536)
    print("wrote all", written)
except OSError as e:
    print("error", errno.errorcode[e.errno], written)
"""
    out = ok(py(code, max_file_size="1M"))
    words = out.stdout.decode().split()
    assert words[:2] == ["error", "EFBIG"], describe(out)
    assert int(words[2]) <= MiB


# -- open files ----------------------------------------------------------------------------------

def test_max_open_files():
    code = r"""
import errno, resource
held = []
try:
    while True:
        held.append(open("/dev/null"))
except OSError as e:
    print(len(held), errno.errorcode[e.errno], resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""
    out = ok(py(code, max_open_files=32))
    count, err, soft = out.stdout.decode().split()
    assert err == "EMFILE", describe(out)
    assert soft == "32", describe(out)
    assert 20 <= int(count) <= 29, describe(out)
    shell = ok(sh("ulimit -n", max_open_files=32))
    assert shell.stdout == b"32\n"


# -- processes -----------------------------------------------------------------------------------

def test_max_pids_bounds_forks_and_run_completes(marker):
    m = marker()
    code = f"""
import subprocess
started = failed = 0
children = []
for _ in range(50):
    try:
        children.append(subprocess.Popen(["sleep", "{m}"]))
        started += 1
    except OSError:
        failed += 1
print(started, failed, flush=True)
"""
    out = ok(py(code, max_pids=8, timeout=20))
    started, failed = map(int, out.stdout.split())
    assert 1 <= started <= 7, describe(out)
    assert failed == 50 - started
    assert out.wall_time < 10
    assert live_with_marker(m) == {}, "children of a finished run are still alive"


def test_fork_bomb_stays_inside_limit():
    code = r"""
import os, time
print("bomb", flush=True)
while True:
    try:
        os.fork()
    except OSError:
        time.sleep(0.01)
"""
    out = py(code, max_pids=16, timeout=2)
    assert out.status is S.TIMEOUT, describe(out)
    assert out.stdout.startswith(b"bomb\n")
    assert out.wall_time < 5.0, describe(out)
    # the host can still run sandboxes normally right after
    assert ok(sh("echo alive")).stdout == b"alive\n"


# -- exit codes and signals ----------------------------------------------------------------------

def test_exit_code():
    out = sh("echo out; echo err >&2; exit 3")
    assert out.status is S.EXITED and out.exit_code == 3 and out.signal is None, describe(out)
    assert out.stdout == b"out\n" and out.stderr == b"err\n"
    assert not out.success


def test_success():
    out = sh("true")
    assert out.success and out.status is S.EXITED and out.exit_code == 0 and out.signal is None


def test_killed_by_own_signal():
    out = sh("kill -SEGV $$")
    assert out.status is S.SIGNALED, describe(out)
    assert out.signal == signal.SIGSEGV and out.exit_code is None, describe(out)
    assert not out.success


@pytest.mark.parametrize("sig", [signal.SIGABRT, signal.SIGKILL, signal.SIGTERM])
def test_other_signals(sig):
    out = evalbox.run(["python3", "-c", f"import os; os.kill(os.getpid(), {int(sig)})"], timeout=10)
    assert out.status is S.SIGNALED and out.signal == sig, describe(out)


def test_real_segfault():
    out = evalbox.run(["python3", "-c", "import ctypes; ctypes.string_at(0)"], timeout=10)
    assert out.status is S.SIGNALED and out.signal == signal.SIGSEGV, describe(out)
