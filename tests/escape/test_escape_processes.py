"""SPEC §4.4-4.6: no privilege, no reach outside (signals, scheduling, fds), process limits and
the end of every process of a run (daemons, fork bombs), isolation between sandboxes."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import stat
import subprocess
import time

import pytest

import evalbox
from evalbox.process.host import probe
from portability import needs_root
from escape_kit import (
    SANDBOX_UID_RANGE,
    assert_clean,
    children_of_caller,
    processes_matching,
    proc_ppid,
    proc_state,
)

SIGURG = int(signal.SIGURG)


# -- helpers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def catch_sigurg():
    """Report whether SIGURG reached this process: SIGURG is harmless to every process, so the
    payload may send it anywhere a broken sandbox could reach. Blocked in this thread (it stays
    pending); a thread of someone else's (a Ray driver, evalbox's warm-template spawner) that does
    not block it would take it instead, which the handler records."""
    arrived: list[bool] = []
    old_handler = signal.signal(signal.SIGURG, lambda *_: arrived.append(True))
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGURG})
    got: list[bool] = []
    try:
        yield got
        pending = signal.SIGURG in signal.sigpending()
        time.sleep(0.01)  # (a handler already triggered in another thread runs at this call's return)
        got.append(pending or bool(arrived))
    finally:
        while signal.sigtimedwait({signal.SIGURG}, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        signal.signal(signal.SIGURG, old_handler)


def _proc_fields(pid: int) -> dict:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    with open(f"/proc/{pid}/limits") as f:
        limits = f.read()
    with open(f"/proc/{pid}/status") as f:
        cpus = [ln for ln in f if ln.startswith("Cpus_allowed_list")]
    # after ")": state=0 ... nice is field 19 overall = index 16 here, policy field 41 = index 38
    return {"nice": fields[16], "policy": fields[38], "limits": limits, "cpus": cpus}


class Events:
    """Collects executor events per sandbox; waits on real conditions."""

    def __init__(self, ex: evalbox.Executor) -> None:
        self.ex = ex
        self.out: dict[int, bytearray] = {}
        self.done: dict[int, evalbox.Output] = {}

    def pump(self, timeout: float) -> None:
        for ev in self.ex.poll(timeout=timeout):
            if isinstance(ev, evalbox.Stdout):
                self.out.setdefault(ev.id, bytearray()).extend(ev.data)
            elif isinstance(ev, (evalbox.Completed, evalbox.Timeout)):
                self.done[ev.id] = ev.output
                self.out.setdefault(ev.id, bytearray()).extend(b"")

    def until(self, cond, timeout: float, what: str):
        end = time.monotonic() + timeout
        while True:
            value = cond()
            if value:
                return value
            left = end - time.monotonic()
            if left <= 0:
                pytest.fail(f"timed out after {timeout}s waiting for {what}; outputs so far: "
                            f"{ {k: bytes(v[-500:]) for k, v in self.out.items()} }")
            self.pump(min(left, 0.5))

    def stdout(self, sid) -> str:
        return bytes(self.out.get(sid, b"")).decode(errors="replace")

    def finish(self, timeout: float = 15.0) -> None:
        self.until(lambda: not self.ex.active_count, timeout, "all sandboxes to finish")


# -- privileges -----------------------------------------------------------------------------------


def test_lockdown_as_seen_by_the_kernel(box):
    r = box.run("proc_attacks", "status")
    info = {ln.split("=", 1)[0]: ln.split("=", 1)[1] for ln in r.lines("INFO")}
    assert info.get("NoNewPrivs") == "1", f"NoNewPrivs is not set\n{r.describe()}"
    # Not root: nothing is held, and without CAP_SETPCAP the bounding set cannot be cleared (NO_NEW_PRIVS
    # keeps file capabilities and setuid from adding any).
    for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb") + (("CapBnd",) if os.geteuid() == 0 else ()):
        assert info.get(cap) == "0000000000000000", f"{cap} is {info.get(cap)}: capabilities left\n{r.describe()}"
    assert info.get("Seccomp") == "2", f"no seccomp filter in force (Seccomp: {info.get('Seccomp')})\n{r.describe()}"
    uids = info.get("Uid", "").split()
    assert uids and "0" not in uids, f"the program runs with uid 0 somewhere (Uid: {uids})\n{r.describe()}"
    gids = info.get("Gid", "").split()
    assert gids and "0" not in gids, f"the program runs with gid 0 somewhere (Gid: {gids})\n{r.describe()}"
    assert "0" not in info.get("Groups", "").split(), f"supplementary group 0 kept\n{r.describe()}"
    if os.geteuid() == 0:
        assert all(int(u) in SANDBOX_UID_RANGE for u in uids), f"a root host must give the sandbox its own uid: {uids}"
        bits = int(info.get("securebits", "-1"))
        locked = 0b10101010  # NOROOT_LOCKED | NO_SETUID_FIXUP_LOCKED | KEEP_CAPS_LOCKED | NO_CAP_AMBIENT_RAISE_LOCKED
        assert bits >= 0 and bits & locked == locked, f"securebits not locked: {bits:#x}\n{r.describe()}"


@needs_root("a setuid-root binary can only be made by root")
def test_setuid_root_binary_gains_nothing(box, payloads, targets):
    d = targets.dir("/tmp", 0o755)
    path = os.path.join(d, f"suid-evx{secrets.token_hex(5)}")
    with open(path, "wb") as f:
        f.write(payloads["proc_attacks"])
    os.chown(path, 0, 0)
    os.chmod(path, 0o6755)
    assert os.stat(path).st_mode & (stat.S_ISUID | stat.S_ISGID), "could not prepare the setuid binary"
    out = evalbox.run(evalbox.Plan([path, "ids"], mounts=[evalbox.Mount.ro(d)], timeout=10))
    text = out.stdout.decode(errors="replace")
    assert "ESCAPED" not in text, f"ESCAPE: a setuid-root binary gained root:\n{text}\n{out.stderr!r}"
    m = re.search(r"ruid=(\d+) euid=(\d+) suid=(\d+) egid=(\d+)", text)
    assert m, f"the setuid payload did not run: {out.status} {text!r} {out.stderr!r}"
    ruid, euid, suid, egid = map(int, m.groups())
    assert euid == ruid == suid and euid != 0 and egid != 0, f"ESCAPE: ids changed on exec: {m.group(0)}"
    if os.geteuid() == 0:
        assert euid in SANDBOX_UID_RANGE, f"not the sandbox's own uid: {euid}"
    assert re.search(r"BLOCKED setuid0 ", text), f"setuid(0) did not fail: {text}"


@pytest.mark.parametrize("cmd", [["/usr/bin/mount", "-t", "tmpfs", "evalbox-test", "."], ["/usr/bin/su", "-c", "id"],
                                 ["/usr/bin/newgrp", "root"]])
def test_system_setuid_programs_gain_nothing(box, cmd):
    if not os.path.exists(cmd[0]):
        pytest.skip(f"{cmd[0]} is not installed")
    r = box.run_argv(cmd, timeout=10)
    text = r.out.stdout + r.out.stderr
    assert b"uid=0" not in text, f"ESCAPE: {cmd[0]} ran as root inside the sandbox\n{r.describe()}"
    with open("/proc/self/mountinfo") as f:
        assert "evalbox-test" not in f.read(), "ESCAPE: the setuid mount binary mounted a tmpfs"
    assert not r.out.success, f"{cmd} succeeded inside the sandbox\n{r.describe()}"


# -- signals and scheduling of other processes --------------------------------------------------


def test_sigkill_host_process(box, sleeper):
    r = box.run("proc_attacks", "kill", str(sleeper.pid), "9")
    assert sleeper.alive(), f"ESCAPE: the sandbox killed the host process {sleeper.pid}\n{r.describe()}"
    r.blocked_how(f"kill_{sleeper.pid}_9", {"EPERM", "EACCES", "ESRCH"})


def test_signal_the_calling_process(box):
    pid = os.getpid()
    for target in (str(pid), str(-os.getpgrp())):
        with catch_sigurg() as got:
            r = box.run("proc_attacks", "kill", target, str(SIGURG))
        assert got == [False], f"ESCAPE: the sandbox signalled the test process (kill {target})\n{r.describe()}"
        r.blocked_how(f"kill_{target}_{SIGURG}", {"EPERM", "EACCES", "ESRCH"})


def test_kill_minus_one(box, sleeper):
    with catch_sigurg() as got:
        r = box.run("proc_attacks", "killall", str(SIGURG))
    assert got == [False], f"ESCAPE: kill(-1, SIGURG) reached the test process\n{r.describe()}"
    r.assert_no_escape("kill(-1)")
    r = box.run("proc_attacks", "killall", "9")
    r.assert_no_escape("kill(-1, SIGKILL)")
    assert sleeper.alive(), f"ESCAPE: kill(-1, SIGKILL) killed the host sleep process\n{r.describe()}"
    # this test process survived too, evidently: it is running this line


def test_scheduling_of_host_process(box, sleeper):
    before = _proc_fields(sleeper.pid)
    r = box.run("proc_attacks", "sched", str(sleeper.pid))
    after = _proc_fields(sleeper.pid)
    assert after == before, f"ESCAPE: the sandbox changed a host process: {before} -> {after}\n{r.describe()}"
    for call in ("setpriority", "prlimit64", "sched_setaffinity", "sched_setscheduler", "ioprio_set"):
        r.blocked_how(call, {"EPERM", "EACCES", "ESRCH"})
        if r.sigsys:
            break


def test_scheduling_of_the_calling_process(box):
    pid = os.getpid()
    before = _proc_fields(pid)
    r = box.run("proc_attacks", "sched", str(pid))
    after = _proc_fields(pid)
    assert after == before, f"ESCAPE: the sandbox changed the calling process: {before} -> {after}\n{r.describe()}"
    r.assert_no_escape("sched on the caller")


# -- fds ------------------------------------------------------------------------------------------


def test_no_inherited_fds(box, targets):
    path, secret = targets.file("/tmp", 0o600)
    fd = os.open(path, os.O_RDONLY)  # inheritable (no O_CLOEXEC)
    os.set_inheritable(fd, True)
    r_pipe, w_pipe = os.pipe()
    os.set_inheritable(r_pipe, True)
    os.set_inheritable(w_pipe, True)
    os.write(w_pipe, secret)
    try:
        r = box.run("proc_attacks", "fds")
    finally:
        for f in (fd, r_pipe, w_pipe):
            os.close(f)
    assert secret.strip() not in r.out.stdout, f"ESCAPE: the sandbox read an fd of the host\n{r.describe()}"
    r.assert_no_escape("inherited fds")
    assert r.info("fds") == "0,1,2", f"the program holds fds beyond 0,1,2: {r.info('fds')}\n{r.describe()}"


# -- the end of every process -------------------------------------------------------------------


def test_daemonized_grandchild_dies_with_the_run(box):
    r = box.run("proc_attacks", "daemon", check_clean=False)
    daemon = r.info("daemon")
    assert daemon, f"the payload did not daemonize\n{r.describe()}"
    assert_clean(r)  # no process with the payload's token or the sandbox's uid is left
    assert proc_state(int(daemon)) in (None, "Z", "X") or r.token not in open(f"/proc/{daemon}/cmdline").read(), (
        f"the daemonized grandchild {daemon} outlived the run")


def test_fork_bomb_stays_inside_its_limit(box):
    """max_pids=16: the bomb runs into its limit, other sandboxes and the host keep working, and
    when it ends no process of it remains."""
    bomb_plan, token = box.plan("proc_attacks", "forkbomb", max_pids=16, timeout=5)
    with evalbox.Executor() as ex:
        ev = Events(ex)
        bomb = ex.spawn(bomb_plan)
        ev.until(lambda: "bombing" in ev.stdout(bomb), 5, "the fork bomb to start")
        # let it reach its ceiling: wait until some processes of it exist
        ev.until(lambda: len(processes_matching(token)) >= 8, 5, "the bomb to multiply")
        peak = 0
        sampled = 0
        while bomb not in ev.done and sampled < 20:
            live = [p for p in processes_matching(token) if p[1] not in ("Z", "X")]
            peak = max(peak, len(live))
            sampled += 1
            # meanwhile the host forks...
            assert subprocess.run(["/bin/true"], timeout=10).returncode == 0, "the host cannot fork under the bomb"
            ev.pump(0.05)
        # ...and another sandbox runs to completion
        other = ex.spawn(evalbox.Plan(["/bin/sh", "-c", "for i in 1 2 3; do /bin/true; done; echo evalbox-escape-ok"],
                                      timeout=10))
        ev.until(lambda: other in ev.done, 10, "a sandbox started during the fork bomb to finish")
        assert ev.done[other].stdout == b"evalbox-escape-ok\n", f"a neighbour sandbox failed under the bomb: {ev.done[other]}"
        ev.until(lambda: bomb in ev.done, 10, "the fork bomb's run to end")
        ev.finish()
    out = ev.done[bomb]
    assert out.status in (evalbox.Status.TIMEOUT, evalbox.Status.SIGNALED, evalbox.Status.EXITED), out
    assert out.wall_time < 8, f"the bomb's run took {out.wall_time:.1f}s with timeout=5"
    assert peak <= 16, f"ESCAPE: the fork bomb had {peak} live processes with max_pids=16"
    uid = re.search(r"uid/gid (\d+)", out.protections.identity) if out.protections else None
    left = processes_matching(token, int(uid.group(1)) if uid else None)
    left = [p for p in left if p[1] not in ("Z", "X")]
    assert not left, f"processes of the fork bomb survived its run: {left[:10]}"
    unreaped = [p for p in processes_matching(token) if proc_ppid(p[0]) == os.getpid()]
    assert not unreaped, f"zombies of the fork bomb left for the caller to reap: {unreaped[:10]}"
    assert subprocess.run(["/bin/true"], timeout=10).returncode == 0, "the host cannot fork after the bomb"


# -- isolation between sandboxes ------------------------------------------------------------------


def test_other_sandbox_workspace_is_private(box):
    secret = f"EVALBOX-WS-SECRET-{secrets.token_hex(12)}"
    holder = evalbox.Plan(["/bin/sh", "-c", f"echo {secret} > secret.txt && "
                           # opened up where the sandbox may (a root host's sandbox uid); refused (EPERM) otherwise,
                           # and then the caller's uid owns both workspaces: either way only the sandbox's rules remain
                           "{{ chmod 644 secret.txt; chmod 755 . ..; }} 2>/dev/null; pwd && exec sleep 30"], timeout=20)
    with evalbox.Executor() as ex:
        ev = Events(ex)
        a = ex.spawn(holder)
        ev.until(lambda: ev.stdout(a).endswith("\n"), 10, "the first sandbox to print its workspace")
        ws = ev.stdout(a).strip().splitlines()[-1]
        # (in the jail the workspace is a tmpfs of the sandbox's own: nothing of it on the host)
        if not probe().jail:
            assert os.path.isfile(os.path.join(ws, "secret.txt")), f"the first sandbox did not write {ws}/secret.txt"
        plan, token = box.plan("fs_attacks", "read", f"{ws}/secret.txt", f"{ws}/../home/.bash_history")
        b = ex.spawn(plan)
        ev.until(lambda: b in ev.done, 10, "the second sandbox to finish")
        plan2, _ = box.plan("fs_attacks", "ls", ws, os.path.dirname(ws))
        c = ex.spawn(plan2)
        ev.until(lambda: c in ev.done, 10, "the third sandbox to finish")
        assert a not in ev.done, "the first sandbox ended early"
        ex.kill(a)
        ev.finish()
    out_b, out_c = ev.done[b], ev.done[c]
    assert secret.encode() not in out_b.stdout, (
        f"ESCAPE: a sandbox read another sandbox's workspace {ws} (the first sandbox had opened its own file modes, "
        f"so only the sandbox's rules could keep the second out): {out_b.stdout!r}")
    assert b"ESCAPED" not in out_b.stdout, out_b.stdout
    assert b"ESCAPED" not in out_c.stdout, f"ESCAPE: a sandbox listed another's workspace: {out_c.stdout!r}"


def test_signal_other_sandbox(box):
    victim_plan, vtoken = box.plan("proc_attacks", "sleep", "30", timeout=20)
    with evalbox.Executor() as ex:
        ev = Events(ex)
        a = ex.spawn(victim_plan)
        pid = int(ev.until(lambda: re.search(r"INFO pid=(\d+)", ev.stdout(a)), 10, "the victim sandbox's pid").group(1))
        # In a PID namespace (the jail) that number is the victim's own view; aim at its host pid.
        host = [p for p, _, cmd in processes_matching(vtoken) if "sleep" in cmd]
        if host and proc_state(pid) is None or host and host[0] != pid:
            pid = host[0]
        results = {}
        for sig in ("9", str(SIGURG), "19"):  # SIGKILL, SIGURG, SIGSTOP
            plan, _ = box.plan("proc_attacks", "kill", str(pid), sig)
            b = ex.spawn(plan)
            ev.until(lambda: b in ev.done, 10, "the attacking sandbox to finish")
            results[sig] = ev.done[b]
        state = proc_state(pid)
        alive = a not in ev.done and state not in (None, "Z", "X", "T", "t")
        ex.kill(a)
        ev.finish()
    assert alive, f"ESCAPE: a sandbox signalled another sandbox's process (state {state}): " \
                  f"{ {k: v.stdout for k, v in results.items()} }"
    for sig, out in results.items():
        assert b"ESCAPED" not in out.stdout, f"ESCAPE: kill({pid}, {sig}) succeeded across sandboxes: {out.stdout!r}"


def test_recycled_workspace_keeps_nothing_of_the_previous_run(box):
    """evalbox recycles emptied workspaces: a later run must find none of an earlier run's files,
    however the earlier run hid them (unreadable directories, fifos, links)."""
    secret = f"EVALBOX-RECYCLE-{secrets.token_hex(12)}"
    script = (
        f"echo {secret} > w.txt; echo {secret} > \"$TMPDIR/t.txt\"; echo {secret} > \"$HOME/.h\"; "
        f"mkdir -p d/e && echo {secret} > d/e/f && chmod 000 d/e d; mkfifo fifo; ln -s /etc/passwd link; "
        f"echo {secret} > ro.txt && chmod 000 ro.txt; chmod 500 ../tmp; mkdir ../extra; pwd"
    )
    first = box.run_argv(["/bin/sh", "-c", script])
    assert first.out.success, first.describe()
    for _ in range(3):  # several runs, so one of them gets the recycled tree whatever the pool order
        r = box.run_argv(["/bin/sh", "-c", "pwd; find .. -mindepth 1; cat w.txt ../tmp/t.txt ../home/.h 2>/dev/null; "
                                  "echo x > \"$TMPDIR/probe\" && echo tmp-writable"])
        assert r.out.success, r.describe()
        assert secret.encode() not in r.out.stdout, f"ESCAPE: a later run read an earlier run's file\n{r.describe()}"
        found = set(r.stdout.splitlines()[1:]) - {"tmp-writable"}
        # (.passwd/.group: this run's own identity files, bound over /etc on a root host; shm: in
        # the jail, this run's own /dev/shm)
        assert found <= {"../work", "../tmp", "../home", "../shm", "../.passwd", "../.group"}, (
            f"a later run sees entries of an earlier run's workspace: {sorted(found)}\n{r.describe()}")
        assert "tmp-writable" in r.stdout, f"a later run inherited an unwritable $TMPDIR\n{r.describe()}"


def test_many_runs_leave_nothing(box):
    """SPEC §4.7: no fds, zombies, processes or workspaces accumulate over runs."""
    fds_before = None
    for i in range(25):
        r = box.run("proc_attacks", "daemon" if i % 2 else "status", check_clean=False)
        assert_clean(r)
        if i == 4:
            fds_before = set(os.listdir("/proc/self/fd"))
    assert len(os.listdir("/proc/self/fd")) <= len(fds_before) + 1, "fds accumulate over runs"
    zombies = [p for p in children_of_caller() if p[1] == "Z"]
    assert not zombies, f"unreaped children of the caller after many runs: {zombies}"


def test_host_environment_not_inherited(box):
    """SPEC §3: nothing of the caller's environment reaches the program (CI tokens live there)."""
    key = f"EVALBOX_HOST_SECRET_{secrets.token_hex(4)}"
    value = f"EVALBOX-HOST-ENV-{secrets.token_hex(12)}"
    os.environ[key] = value
    try:
        r = box.run_argv(["/usr/bin/env"], env={"SEED": "1"})
    finally:
        del os.environ[key]
    assert value.encode() not in r.out.stdout, f"ESCAPE: the host environment leaked into the sandbox\n{r.describe()}"
    names = {ln.split("=", 1)[0] for ln in r.stdout.splitlines() if "=" in ln}
    assert names <= {"PATH", "HOME", "TMPDIR", "LANG", "USER", "LOGNAME", "SEED"}, \
        f"unexpected variables inherited: {sorted(names)}"
