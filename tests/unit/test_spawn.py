"""The C clone-and-lockdown child: error reporting, clean state after exec, thread safety."""

import os
import signal
import threading

import pytest

import evalbox
from proc_helpers import zombie_children
from evalbox.errors import SpawnError
from evalbox.kernel import _spawn
from evalbox.process.host import probe
from evalbox.process.lockdown import prepare
from evalbox.process.spawn import STEPS, spawn


def status_field(out, name):
    for line in out.stdout.decode().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{name} not in {out.stdout!r}")


@pytest.fixture
def lockdown():
    """A prepared /bin/true run, with a pipe for its stdio; released afterwards."""
    lock = prepare(evalbox.Plan(["/bin/true"]), probe())
    r, w = os.pipe()
    try:
        yield lock, (r, w, w)
    finally:
        os.close(r)
        os.close(w)
        lock.close()


def test_failing_step_is_reported_with_its_name(lockdown):
    lock, stdio = lockdown
    lock.cwd = "/nonexistent-evalbox-dir"
    with pytest.raises(SpawnError) as e:
        spawn(lock, *stdio)
    assert "chdir" in str(e.value) and e.value.errno == 2


def test_exec_failure_is_command_not_found(lockdown):
    lock, stdio = lockdown
    lock.executable = "/nonexistent/program"
    with pytest.raises(evalbox.CommandNotFound):
        spawn(lock, *stdio)


def test_no_zombie_after_a_failed_spawn(lockdown):
    lock, stdio = lockdown
    lock.cwd = "/nonexistent-evalbox-dir"
    with pytest.raises(SpawnError):
        spawn(lock, *stdio)
    assert not zombie_children()


def test_steps_table_matches_the_extension():
    assert STEPS[20] == "exec" and len(STEPS) == 26


def test_signal_state_is_reset_in_the_program():
    old = signal.signal(signal.SIGUSR1, lambda *a: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    try:
        out = evalbox.run(["cat", "/proc/self/status"])
    finally:
        signal.signal(signal.SIGUSR1, old)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
    assert out.success, out.stderr
    # Python ignores SIGPIPE; the sandboxed program must not inherit that, nor the blocked mask
    assert int(status_field(out, "SigIgn"), 16) == 0
    assert int(status_field(out, "SigBlk"), 16) == 0
    assert int(status_field(out, "SigCgt"), 16) == 0


def test_program_has_own_session_and_process_group():
    out = evalbox.run(["sh", "-c", "echo $$; ps -o pid=,pgid=,sid= -p $$"])
    lines = out.stdout.decode().split("\n")
    pid = lines[0].strip()
    assert lines[1].split() == [pid, pid, pid]


def test_spawns_from_many_threads_at_once():
    errors, outputs = [], []

    def worker(n):
        try:
            for i in range(5):
                outputs.append(evalbox.run(["sh", "-c", f"echo {n}-{i}"]).stdout)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(outputs) == sorted(f"{n}-{i}\n".encode() for n in range(8) for i in range(5))


def test_raw_syscall_helper_raises_oserror():
    with pytest.raises(OSError):
        _spawn.syscall(445, -1, 1, b"\0" * 12, 0)  # landlock_add_rule on a bad fd
    assert _spawn.syscall(39) == os.getpid()  # getpid


def test_stdio_sources_on_low_fds_are_moved_out_of_the_way():
    from evalbox.process.spawn import _high_fd

    moved = _high_fd(0)
    try:
        assert moved > 2 and os.get_inheritable(moved) is False
    finally:
        os.close(moved)
    assert _high_fd(7) == 7
