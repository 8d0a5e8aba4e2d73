"""The caller-death guard: what it does when its caller's pipe closes."""

import os
import stat
import subprocess
import sys
import tempfile
import threading

from evalbox.process import watchdog


def run_guard(lines: list[str]) -> None:
    guard = subprocess.Popen([sys.executable, "-I", "-S", "-c", watchdog._GUARD], stdin=subprocess.PIPE)
    guard.communicate("".join(lines).encode(), timeout=30)


def test_guard_never_touches_the_base_directory():
    base = tempfile.mkdtemp(prefix="evalbox-guard-base-")
    try:
        os.chmod(base, 0o1777)
        gone = os.path.join(base, "evalbox-1-gone")  # removed before the caller died
        sticky = os.path.join(base, "evalbox-1-sticky")  # still there, with an unremovable... nothing
        os.mkdir(sticky)
        os.mkdir(os.path.join(sticky, "work"))
        os.chmod(os.path.join(sticky, "work"), 0)
        run_guard([f"+\t1\t999999\t-1\t\t{gone}\n", f"+\t2\t999998\t-1\t\t{sticky}\n"])
        assert stat.S_IMODE(os.stat(base).st_mode) == 0o1777
        assert not os.path.exists(sticky)  # a chmod 000 directory inside is still removed
    finally:
        os.chmod(base, 0o700)
        for name in os.listdir(base):
            subprocess.run(["rm", "-rf", os.path.join(base, name)])
        os.rmdir(base)


def test_guard_forgets_unregistered_runs():
    d = tempfile.mkdtemp(prefix="evalbox-guard-ws-")
    run_guard([f"+\t7\t999997\t-1\t\t{d}\n", "-\t7\n"])
    assert os.path.isdir(d)
    os.rmdir(d)


def test_fork_while_another_thread_talks_to_the_guard():
    held = threading.Event()
    release = threading.Event()

    def hold():
        with watchdog._lock:
            held.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    pid = os.fork()
    if pid == 0:
        os._exit(0 if watchdog._lock.acquire(timeout=3) else 1)
    release.set()
    t.join()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_guard_reads_the_callers_table_once_the_caller_is_gone():
    # A caller registers three runs (one with cgroup paths longer than a page of the table) and
    # unregisters one, then dies without a word: the guard removes the workspaces of the two
    # still registered and leaves the other alone.
    dirs = [tempfile.mkdtemp(prefix=f"evalbox-guard-table-{i}-") for i in range(3)]
    long_groups = [f"/nonexistent-evalbox-test/{'g' * 2500}-{i}" for i in range(2)]  # > 4096 bytes
    caller = (
        "import os, sys\n"
        "from evalbox.process import watchdog\n"
        f"dirs = {dirs!r}\n"
        "watchdog.register('a', 999999, -1, '', [], dirs[0])\n"
        f"watchdog.register('b', 999998, -1, '', {long_groups!r}, dirs[1])\n"
        "watchdog.register('c', 999997, -1, '', [], dirs[2])\n"
        "watchdog.unregister('a')\n"
        "print(watchdog._guard.pid, flush=True)\n"
        "os._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", caller], capture_output=True, text=True, timeout=30, check=True)
    guard = int(out.stdout)
    try:
        deadline = 600
        while deadline and os.path.exists(f"/proc/{guard}") and open(f"/proc/{guard}/stat").read().split()[2] != "Z":
            threading.Event().wait(0.05)  # the guard is not our child: wait for it to finish its work
            deadline -= 1
        assert os.path.isdir(dirs[0])
        assert not os.path.exists(dirs[1]) and not os.path.exists(dirs[2])
    finally:
        for d in dirs:
            if os.path.isdir(d):
                os.rmdir(d)


def test_guard_removes_nothing_for_a_run_without_a_host_workspace():
    # A jailed run whose workspace lives only in its own tmpfs is registered with an empty
    # workspace: the guard must not take that for its own working directory.
    cwd = tempfile.mkdtemp(prefix="evalbox-guard-cwd-")
    keep = os.path.join(cwd, "keep")
    open(keep, "w").close()
    try:
        guard = subprocess.Popen([sys.executable, "-I", "-S", "-c", watchdog._GUARD], stdin=subprocess.PIPE, cwd=cwd)
        guard.communicate(b"+\t1\t999999\t-1\t\t\n", timeout=30)
        assert os.path.exists(keep)
    finally:
        subprocess.run(["rm", "-rf", cwd])
