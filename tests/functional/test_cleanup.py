"""Nothing is left behind: processes, zombies, workspaces, temp dirs, cgroups, fds (SPEC §4.6-4.7)."""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time

import pytest

import evalbox
from ft_helpers import (
    HOST_PYTHON,
    describe,
    live_with_marker,
    ok,
    open_fds,
    busy_sandbox_cgroups,
    evalbox_cgroup_parents,
    pids_with_marker,
    proc_state,
    sandbox_cgroups,
    wait_until,
    zombie_children,
)

S = evalbox.Status


def _workspace_of(out: evalbox.Output) -> str:
    """The workspace root, from a program whose first stdout line is its `pwd` (…/work)."""
    pwd = out.stdout.split(b"\n", 1)[0].decode()
    assert pwd.endswith("/work"), describe(out)
    return os.path.dirname(pwd)


def _assert_clean(marker: str, workspace: str, private_tmp) -> None:
    """Every cleanup promise, checked together so one failure does not hide another."""
    problems = []
    live = live_with_marker(marker)
    if live:
        problems.append(f"processes of a finished run are still alive: {live}")
    if os.path.exists(workspace):
        problems.append(f"workspace {workspace} still exists after the run: {sorted(os.listdir(workspace))}")
    if os.listdir(private_tmp):
        problems.append(f"leftover temp dirs in {private_tmp}: {os.listdir(private_tmp)}")
    if zombie_children():
        problems.append(f"zombie children of the test process: {zombie_children()}")
    busy = busy_sandbox_cgroups()
    if busy:
        problems.append(f"sandbox cgroups still holding processes after the run: {busy}")
    assert not problems, "\n".join(problems)


def test_cleanup_after_normal_run(marker, private_tmp):
    m = marker()
    out = ok(evalbox.run(["sh", "-c", f"pwd; sleep {m} & echo started"], timeout=10))
    assert out.stdout.endswith(b"started\n")
    _assert_clean(m, _workspace_of(out), private_tmp)


def test_cleanup_after_timeout(marker, private_tmp):
    m = marker()
    out = evalbox.run(["sh", "-c", f"pwd; sleep {m} & sleep {m}"], timeout=0.5)
    assert out.status is S.TIMEOUT, describe(out)
    _assert_clean(m, _workspace_of(out), private_tmp)


def test_cleanup_after_executor_kill(marker, private_tmp):
    m = marker()
    with evalbox.Executor() as ex:
        sid = ex.spawn(evalbox.Plan(["sh", "-c", f"pwd; sleep {m} & sleep {m}"], timeout=30))
        seen = b""
        done = None
        deadline = time.monotonic() + 10
        while done is None and time.monotonic() < deadline:
            for ev in ex.poll(timeout=1):
                if isinstance(ev, evalbox.Stdout):
                    seen += ev.data
                    if seen.endswith(b"\n") and wait_until(lambda: len(pids_with_marker(m)) >= 2, 5):
                        ex.kill(sid)
                elif isinstance(ev, (evalbox.Completed, evalbox.Timeout)):
                    done = ev.output
        assert done is not None, "the killed sandbox never completed"
    assert done.status is S.SIGNALED and done.signal == signal.SIGKILL, describe(done)
    _assert_clean(m, _workspace_of(done), private_tmp)


def test_cleanup_after_output_limit(marker, private_tmp):
    m = marker()
    out = evalbox.run(["sh", "-c", f"pwd; sleep {m} & yes"], max_output="1M", timeout=10)
    assert out.status is S.OUTPUT_LIMIT, describe(out)
    _assert_clean(m, _workspace_of(out), private_tmp)


def test_cleanup_after_fork_storm(marker, private_tmp):
    m = marker()
    code = textwrap.dedent("""
        import os, sys, time
        print(os.getcwd(), flush=True)
        while True:
            try:
                os.fork()
            except OSError:
                time.sleep(0.001)
    """)
    out = evalbox.run(["python3", "main.py", m], files={"main.py": code}, max_pids=32, timeout=1.5)
    assert out.status is S.TIMEOUT, describe(out)
    _assert_clean(m, _workspace_of(out), private_tmp)


def test_cleanup_after_daemonized_grandchild(marker, private_tmp):
    """A child that double-forks and closes its stdio is still killed when the leader exits."""
    m = marker()
    script = f"pwd; (sleep {m} </dev/null >/dev/null 2>&1 &) ; echo leader-done"
    out = ok(evalbox.run(["sh", "-c", script], timeout=10))
    assert out.wall_time < 5
    _assert_clean(m, _workspace_of(out), private_tmp)


def test_cleanup_after_program_deletes_its_permissions(private_tmp):
    """A program that makes its workspace unwritable or unreadable does not make it stick."""
    script = "pwd; mkdir -p d/e && touch d/e/f && chmod 000 d/e d && chmod 500 . ; echo done"
    out = ok(evalbox.run(["sh", "-c", script], timeout=10))
    assert out.stdout.endswith(b"done\n")
    assert not os.path.exists(_workspace_of(out))
    assert os.listdir(private_tmp) == []


@pytest.mark.parametrize("collect", [(), ("out.txt",)])
def test_cleanup_after_program_replaces_the_plans_files(tmp_path, collect):
    """The plan's files are removed by name: a program that replaced one with a directory, one
    with a link to a file outside, and deleted another, still leaves no workspace, and nothing
    outside is touched. (With collect, work/ is the host's directory itself.)"""
    outside = tmp_path / "sacrificial.txt"
    outside.write_text("keep me")
    os.chmod(tmp_path, 0o755)
    os.chmod(outside, 0o666)
    script = (f"pwd; rm a.txt && mkdir a.txt && touch a.txt/inner; rm b.txt && ln -s {outside} b.txt; "
              "rm c.txt; echo x > out.txt; echo done")
    out = ok(evalbox.run(["sh", "-c", script], files={"a.txt": "a", "b.txt": "b", "c.txt": "c"},
                         collect=list(collect), timeout=10))
    assert out.stdout.endswith(b"done\n"), describe(out)
    assert not os.path.exists(_workspace_of(out))
    assert outside.read_text() == "keep me"


def test_no_fd_leak_over_200_runs():
    ok(evalbox.run(["true"], timeout=10))  # warm caches (probes, pools)
    before = open_fds()
    groups_before = sandbox_cgroups()
    for i in range(200):
        out = evalbox.run(["true"], timeout=10)
        assert out.success, f"run {i}: {describe(out)}"
    after = open_fds()
    assert len(after) <= len(before), f"fds before {before}, after {after}"
    assert zombie_children() == []
    # Recycled (empty) cgroups may be kept for reuse, but their number must not grow with runs.
    groups_after = sandbox_cgroups()
    assert len(groups_after) <= max(len(groups_before), 3), f"{groups_before} -> {groups_after}"
    assert busy_sandbox_cgroups() == {}


def test_no_fd_leak_with_failing_runs():
    ok(evalbox.run(["true"], timeout=10))
    before = open_fds()
    for _ in range(20):
        with pytest.raises(evalbox.CommandNotFound):
            evalbox.run(["no-such-program-evalbox"], timeout=5)
        evalbox.run(["sh", "-c", "exit 1"], timeout=5)
        evalbox.run(["sleep", "5"], timeout=0.05)
    after = open_fds()
    assert len(after) <= len(before), f"fds before {before}, after {after}"
    assert zombie_children() == []
    assert busy_sandbox_cgroups() == {}


EXITING_HELPER = r"""
import os, sys
import evalbox

outs = [
    evalbox.run(["true"], timeout=10),
    evalbox.run(["sleep", "10"], timeout=0.3),
    evalbox.run(["yes"], max_output="64K", timeout=10),
    evalbox.run(["sh", "-c", "exit 3"], memory="64M", max_pids=8, timeout=10),
]
print(os.getpid(), " ".join(o.status.name for o in outs))
"""


def test_no_cgroups_or_temp_dirs_after_caller_exits(tmp_path):
    """Whatever evalbox keeps for reuse while a process lives is gone when that process exits."""
    script = tmp_path / "helper.py"
    script.write_text(EXITING_HELPER)
    private = tmp_path / "tmp"
    private.mkdir()
    os.chmod(private, 0o755)
    env = dict(os.environ, TMPDIR=str(private))
    done = subprocess.run([HOST_PYTHON, str(script)], capture_output=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    pid, statuses = done.stdout.decode().split(" ", 1)
    assert statuses.split() == ["EXITED", "TIMEOUT", "OUTPUT_LIMIT", "EXITED"], done.stdout
    assert evalbox_cgroup_parents(int(pid)) == [], "cgroups left behind by an evalbox process that exited"
    assert os.listdir(private) == [], f"temp dirs left behind: {os.listdir(private)}"


# -- the caller dies -----------------------------------------------------------------------------

HELPER = r"""
import sys
import evalbox

marker = sys.argv[1]
plan = evalbox.Plan(["sh", "-c", f"echo $$; sleep {marker} & echo $!; sleep {marker}"], timeout=60)
with evalbox.Executor() as ex:
    ex.spawn(plan)
    while True:
        for ev in ex.poll(timeout=None):
            if isinstance(ev, evalbox.Stdout):
                sys.stdout.buffer.write(ev.data)
                sys.stdout.flush()
"""


def test_sandbox_dies_with_its_caller(marker, tmp_path):
    m = marker()
    script = tmp_path / "helper.py"
    script.write_text(HELPER)
    helper = subprocess.Popen([HOST_PYTHON, str(script), m], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = []
        while len(lines) < 2:
            line = helper.stdout.readline()
            if not line:
                pytest.fail(f"helper exited early: rc={helper.wait()} stderr={helper.stderr.read()!r}")
            lines.append(int(line))
        leader, background = lines
        assert wait_until(lambda: len(pids_with_marker(m, exclude={helper.pid})) >= 2, 5), "sandbox not running"
        for pid in (leader, background):
            assert proc_state(pid) not in (None, "Z"), f"sandbox process {pid} is not alive before the kill"
        helper.send_signal(signal.SIGKILL)
        helper.wait(timeout=10)
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait()
        helper.stdout.close()
        helper.stderr.close()

    def gone() -> bool:
        return not live_with_marker(m, exclude={helper.pid})

    assert wait_until(gone, 5), (
        f"sandbox processes survived their caller's death: {live_with_marker(m)} "
        f"(leader {leader}: {proc_state(leader)}, background {background}: {proc_state(background)})"
    )


def test_runs_survive_external_removal_of_temp_dirs():
    """A tmp cleaner (or a user's `rm -rf /tmp/evalbox-*`) between runs must not break later runs."""
    import shutil

    out = ok(evalbox.run(["pwd"], timeout=10))
    root = _workspace_of(out)
    shutil.rmtree(root, ignore_errors=True)
    for _ in range(3):
        again = evalbox.run(["pwd"], timeout=10)
        assert again.success, describe(again)
