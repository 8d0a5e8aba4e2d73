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
