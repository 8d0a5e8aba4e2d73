"""Supervision through seccomp user notification: monitor, supervise, virtualize (SPEC §5)."""

import asyncio
import errno
import os
import shutil
import tempfile
import time

import pytest

import evalbox
from evalbox import Decision, NotifyMode

MONITOR, SUPERVISE, VIRTUALIZE = NotifyMode.MONITOR, NotifyMode.SUPERVISE, NotifyMode.VIRTUALIZE


def test_monitor_records_exec_and_opens_with_paths():
    out = evalbox.run(["sh", "-c", "cat /etc/hostname >/dev/null; ls /usr >/dev/null"],
                      notify=MONITOR, intercept=["openat", "execve"], timeout=10)
    assert out.success, out.stderr
    calls = [(r.syscall, r.path) for r in out.syscalls]
    assert ("openat", "/etc/hostname") in calls
    assert ("execve", "/usr/bin/cat") in calls or ("execve", "/bin/cat") in calls
    assert all(r.decision == "continued" or r.decision.startswith("failed E") for r in out.syscalls)
    # recorded in order: the cat exec comes before its open of /etc/hostname
    names = [c for c in calls if c[1] and ("cat" in c[1] or c[1] == "/etc/hostname")]
    assert names[0][0] == "execve"


def test_only_intercepted_calls_are_routed():
    out = evalbox.run(["sh", "-c", "cat /etc/hostname >/dev/null"], notify=MONITOR, intercept=["execve"], timeout=10)
    assert {r.syscall for r in out.syscalls} == {"execve"}


def test_supervise_denies_one_file_and_allows_another():
    def policy(req):
        if req.path == "/etc/hostname":
            return Decision.deny(errno.EACCES)
        return Decision.ALLOW

    out = evalbox.run(["sh", "-c", "cat /etc/hostname; echo rc=$?; head -1 /etc/passwd"],
                      notify=SUPERVISE, intercept=["openat"], supervisor=policy, timeout=10)
    assert b"Permission denied" in out.stderr
    assert b"rc=1" in out.stdout and b"root:" in out.stdout
    assert ("openat", "/etc/hostname", "denied EACCES") in [(r.syscall, r.path, r.decision) for r in out.syscalls]


def test_kill_decision_ends_the_run():
    out = evalbox.run(["sh", "-c", "cat /etc/hostname; echo survived"], notify=SUPERVISE, intercept=["openat"],
                      supervisor=lambda r: Decision.KILL if r.path == "/etc/hostname" else Decision.ALLOW, timeout=10)
    assert out.status is evalbox.Status.SIGNALED and out.signal == 9
    assert b"survived" not in out.stdout


def test_raising_supervisor_ends_the_run_quickly_with_the_error():
    def broken(req):
        raise RuntimeError("policy crashed")

    start = time.monotonic()
    out = evalbox.run(["cat", "/etc/hostname"], notify=SUPERVISE, intercept=["openat"], supervisor=broken, timeout=30)
    assert time.monotonic() - start < 5
    assert out.status is evalbox.Status.SIGNALED
    assert "policy crashed" in out.error


def test_executor_event_and_respond():
    plan = evalbox.Plan(["sh", "-c", "cat /etc/hostname >/dev/null && echo opened"], notify=SUPERVISE,
                        intercept=["openat"], timeout=10)
    asked = []
    with evalbox.Executor() as ex:
        sid = ex.spawn(plan, close_stdin=True)
        out = None
        while out is None:
            for ev in ex.poll():
                if isinstance(ev, evalbox.Syscall):
                    asked.append(ev.request.path)
                    ex.respond(ev.request, Decision.ALLOW)
                elif isinstance(ev, evalbox.Completed) and ev.id == sid:
                    out = ev.output
    assert out.stdout == b"opened\n"
    assert "/etc/hostname" in asked


def test_pending_request_blocks_only_its_sandbox():
    waiting = evalbox.Plan(["cat", "/etc/hostname"], notify=SUPERVISE, intercept=["openat"], timeout=2)
    with evalbox.Executor() as ex:
        stuck = ex.spawn(waiting, close_stdin=True)
        free = ex.spawn(evalbox.Plan(["echo", "free"], timeout=10), close_stdin=True)
        outs = {}
        while ex.active_count:
            for ev in ex.poll():
                if isinstance(ev, (evalbox.Completed, evalbox.Timeout)):
                    outs[ev.id] = ev.output
    assert outs[free].stdout == b"free\n"
    assert outs[stuck].status is evalbox.Status.TIMEOUT
    assert "waiting for a decision on openat" in outs[stuck].error


def test_async_supervision():
    async def main():
        async with evalbox.AsyncExecutor() as ex:
            sb = await ex.spawn(evalbox.Plan(["cat", "/etc/hostname"], notify=SUPERVISE, intercept=["openat"],
                                             timeout=10), close_stdin=True)
            async for ev in sb.events():
                if isinstance(ev, evalbox.Syscall):
                    ex.respond(ev.request, Decision.deny(errno.EPERM) if ev.request.path == "/etc/hostname"
                               else Decision.ALLOW)
            return await sb.wait()

    out = asyncio.run(main())
    assert b"Operation not permitted" in out.stderr


def test_the_program_holds_no_listener():
    out = evalbox.run(["ls", "-l", "/proc/self/fd"], notify=MONITOR, intercept=["execve"], timeout=10)
    assert b"seccomp" not in out.stdout and b"anon_inode" not in out.stdout, out.stdout


@pytest.fixture
def data_dir():
    d = tempfile.mkdtemp(prefix="evalbox-vdata-")
    outside = tempfile.mkdtemp(prefix="evalbox-voutside-")
    try:
        os.chmod(d, 0o755)
        os.mkdir(os.path.join(d, "sub"))
        with open(os.path.join(d, "hello.txt"), "w") as f:
            f.write("virtual hello\n")
        with open(os.path.join(outside, "secret.txt"), "w") as f:
            f.write("outside secret\n")
        os.symlink(os.path.join(outside, "secret.txt"), os.path.join(d, "link-out"))
        os.symlink("../../" + os.path.basename(outside) + "/secret.txt", os.path.join(d, "sub", "rel-out"))
        yield d, outside
    finally:
        shutil.rmtree(d)
        shutil.rmtree(outside)


def vrun(script, data):
    return evalbox.run(["sh", "-c", script], notify=VIRTUALIZE, virtual_paths={"/data": data}, timeout=10)


def test_virtualize_maps_a_host_directory(data_dir):
    data, _ = data_dir
    out = vrun("cat /data/hello.txt; ls /data; test -d /data/sub && echo isdir; cat /data/sub/../hello.txt", data)
    assert out.stdout.startswith(b"virtual hello\n"), out.stderr
    assert b"hello.txt" in out.stdout and b"isdir" in out.stdout
    assert out.stdout.endswith(b"virtual hello\n")


@pytest.mark.parametrize("path", ["/data/../etc/hostname", "/data/link-out", "/data/sub/rel-out",
                                  "/data/../../etc/passwd", "/proc/self/root/data/hello.txt"])
def test_virtualize_never_resolves_out(data_dir, path):
    data, outside = data_dir
    out = vrun(f"cat {path}", data)
    assert out.exit_code != 0
    assert b"outside secret" not in out.stdout and b"root:" not in out.stdout


def test_virtual_paths_are_read_only(data_dir):
    data, _ = data_dir
    out = vrun("echo x > /data/new.txt; echo x >> /data/hello.txt", data)
    assert not os.path.exists(os.path.join(data, "new.txt"))
    with open(os.path.join(data, "hello.txt")) as f:
        assert f.read() == "virtual hello\n"
    assert b"Read-only" in out.stderr


def test_virtualize_stat_answers_consistently(data_dir):
    data, _ = data_dir
    out = evalbox.run(["python3", "-c", "import os; s = os.stat('/data/hello.txt'); print(s.st_size, os.path.isdir('/data/sub'), os.path.exists('/data/nope'))"],
                      notify=VIRTUALIZE, virtual_paths={"/data": data}, timeout=10)
    assert out.stdout == b"14 True False\n", out.stderr


def test_supervised_fork_storm_does_not_wedge_the_loop():
    storm = evalbox.Plan(["sh", "-c", "for i in $(seq 100); do cat /etc/hostname >/dev/null & done; wait"],
                         notify=MONITOR, intercept=["openat"], max_pids=256, timeout=20)
    with evalbox.Executor() as ex:
        a = ex.spawn(storm, close_stdin=True)
        b = ex.spawn(evalbox.Plan(["echo", "quick"], timeout=20), close_stdin=True)
        outs, finished = {}, []
        while ex.active_count:
            for ev in ex.poll():
                if isinstance(ev, (evalbox.Completed, evalbox.Timeout)):
                    outs[ev.id] = ev.output
                    finished.append(ev.id)
    assert outs[b].stdout == b"quick\n"
    assert finished[0] == b  # the quick sandbox did not wait for the storm's notifications
    assert outs[a].success, outs[a].stderr
    assert sum(1 for r in outs[a].syscalls if r.path == "/etc/hostname") == 100


def test_plan_validation():
    with pytest.raises(evalbox.ValidationError, match="intercept"):
        evalbox.Plan(["true"], notify=MONITOR)
    with pytest.raises(evalbox.ValidationError, match="SUPERVISE"):
        evalbox.Plan(["true"], notify=MONITOR, intercept=["openat"], supervisor=lambda r: Decision.ALLOW)
    with pytest.raises(evalbox.ValidationError, match="virtual_paths"):
        evalbox.Plan(["true"], notify=VIRTUALIZE)
    with pytest.raises(evalbox.ValidationError, match="absolute"):
        evalbox.Plan(["true"], notify=VIRTUALIZE, virtual_paths={"data": "/tmp"})
    with pytest.raises(evalbox.ValidationError):
        evalbox.Plan(["true"], intercept=["openat"])
    with pytest.raises(ValueError):
        Decision.deny(0)


def test_blocking_run_needs_a_supervisor_for_supervise():
    with pytest.raises(evalbox.ValidationError, match="supervisor="):
        evalbox.run(["true"], notify=SUPERVISE, intercept=["openat"])
