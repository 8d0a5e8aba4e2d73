"""Warm Python in the jail (SPEC §4.9 and §10): on hosts that jail every run, a warm run gets the
same jail as a cold one (its own PID namespace whose init is evalbox's, its own root, IPC and UTS),
sees only its own processes, never the template or another run, and leaves nothing to the next."""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import shutil
import tempfile
import threading
import time

import pytest

import evalbox
from evalbox.executor.executor import Completed
from evalbox.process import warm
from evalbox.process.host import probe
from proc_helpers import zombie_children
from rt_helpers import describe, ok

_no_jail = pytest.mark.skipif(not probe().jail, reason="no jail on this host (needs root with CAP_SYS_ADMIN; "
                                "`evalbox check` says why): warm runs there are covered by test_python_warm")
# (an unprivileged caller's jail, in a user namespace, has no warm copies yet)
pytestmark = [_no_jail, pytest.mark.skipif(bool(warm.why_cold_here()), reason=str(warm.why_cold_here()))]


def run(code: str, mode: bool, **kw) -> evalbox.Output:
    kw.setdefault("timeout", 30)
    out = evalbox.python.run(code, warm=mode, **kw)
    assert out.warm is mode, f"asked warm={mode}, ran warm={out.warm}\n{describe(out)}"
    return out


def normalise(text: bytes) -> bytes:
    return re.sub(rb"evalbox-\d+-\w+", b"<ws>", text)  # each run's own workspace name


VIEW = r"""
import os, signal, socket, sys
before = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
child = os.fork()
if child == 0:
    signal.pause()
    os._exit(0)
seen = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
print(os.getpid(), os.getppid(), before, seen == sorted(before + [child]), child)
print(socket.gethostname(), sorted(os.listdir('/')), sorted(os.listdir('/dev/shm')), sorted(os.listdir('/tmp')))
print(os.path.exists('/proc/1/cmdline'))  # the init (root's) is hidden from the program
print(open('/proc/self/mountinfo').read().count('\n') > 0)
"""


def test_warm_run_has_the_cold_jail():
    """Same PID numbering (the program is PID 2, its parent the init, PID 1), same process table
    (only its own processes), same root, hostname and private /tmp and /dev/shm as a cold run."""
    hot, cold = run(VIEW, True), run(VIEW, False)
    ok(hot), ok(cold)
    assert normalise(hot.stdout) == normalise(cold.stdout), f"warm:\n{hot.stdout.decode()}\ncold:\n{cold.stdout.decode()}"
    first = hot.stdout.split(b"\n")[0].split()
    assert first[:3] == [b"2", b"1", b"[2]"] and first[3] == b"True", hot.stdout
    same = dict(identity=hot.protections.identity)  # (each run leases a uid of its own)
    assert dataclasses.replace(cold.protections, **same) == hot.protections
    assert {"pid", "mount", "ipc", "uts"} <= set(hot.protections.namespaces)


def test_warm_run_with_a_root_built_per_run():
    """A plan that collects files gets a root built for the run (no template namespace: the copy
    is forked into a new mount namespace too); warm and cold see the same and collect the same."""
    code = "import os; open('out.txt', 'w').write('hi'); print(os.getpid(), sorted(os.listdir('/')))"
    hot, cold = run(code, True, collect=["out.txt"]), run(code, False, collect=["out.txt"])
    ok(hot), ok(cold)
    assert hot.stdout == cold.stdout and hot.stdout.startswith(b"2 "), (hot.stdout, cold.stdout)
    assert hot.files == cold.files == {"out.txt": b"hi"}


def _comm_holders(name: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == name:
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_orphans_die_with_the_warm_run():
    """A process the program left behind (double fork, own session) is killed when the program
    exits: the jail's init exits and the kernel ends its PID namespace."""
    name = "ebx" + secrets.token_hex(5)
    code = f"""
import ctypes, os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)  # PR_SET_NAME: the host finds it by this
        open('/tmp/started', 'w').close()
        time.sleep(120)
    os._exit(0)
while not os.path.exists('/tmp/started'):
    time.sleep(0.01)
print('left one behind')
"""
    out = ok(run(code, True))
    assert out.stdout == b"left one behind\n"
    assert _comm_holders(name) == [], "an orphan of a warm run outlived it"


def _template_pids() -> set[int]:
    return {t.pid for t in list(warm._templates.values()) if isinstance(t, warm.Template)}


SNOOP = r"""
import os
pids = sorted(p for p in os.listdir('/proc') if p.isdigit())
texts = []
for p in pids:
    if int(p) == os.getpid():  # (its own command line is the template's: README "Warm Python")
        continue
    for name in ('cmdline', 'environ', 'status'):
        try:
            texts.append(open(f'/proc/{p}/{name}', 'rb').read())
        except OSError:
            pass
try:
    os.kill(-1, 0)
    print('SIGNALLED_SOMEONE')
except OSError as e:
    print('kill(-1):', e.errno)
print('PIDS', pids)
print('TEXT', b'\0'.join(texts).hex())
"""


def test_warm_runs_see_neither_the_template_nor_each_other():
    """While one warm run holds a secret (arguments, environment, memory), another warm run lists
    and reads everything in its /proc: it finds only itself, nothing of the template (its command
    line is the template's source) and nothing of the other run."""
    secret = secrets.token_hex(16)
    sync = tempfile.mkdtemp(prefix="evalbox-warmjail-")
    os.chmod(sync, 0o777)  # the sandbox runs as a uid of its own
    holder_code = f"""
import os, time
keep = {secret!r} * 1000
open({sync!r} + '/ready', 'w').close()
deadline = time.monotonic() + 25
while not os.path.exists({sync!r} + '/done') and time.monotonic() < deadline:
    time.sleep(0.01)
print('held')
"""
    box: list[evalbox.Output] = []
    holder = threading.Thread(target=lambda: box.append(run(
        holder_code, True, args=[secret], env={"SECRET": secret}, mounts=[evalbox.Mount(sync, writable=True)])))
    try:
        holder.start()
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(sync, "ready")):  # the holder runs now
            assert time.monotonic() < deadline and holder.is_alive(), f"the holder never started: {box}"
            time.sleep(0.01)
        snoop = ok(run(SNOOP, True))
        with open(os.path.join(sync, "done"), "w"):
            pass
    finally:
        holder.join(60)
        shutil.rmtree(sync, ignore_errors=True)
    assert box and box[0].stdout == b"held\n", box and describe(box[0])
    lines = dict(line.split(b" ", 1) for line in snoop.stdout.splitlines() if b" " in line)
    assert lines[b"PIDS"] == b"['2']", describe(snoop)  # itself only (its init is hidden)
    assert b"SIGNALLED_SOMEONE" not in snoop.stdout, describe(snoop)
    seen = bytes.fromhex(lines[b"TEXT"].decode())
    assert secret.encode() not in seen, "a warm run read another run's secret"
    assert b"_template_globals" not in seen, "a warm run read the template's command line"
    assert _template_pids(), "no live template: the runs did not start warm"


def test_nothing_passes_between_jailed_warm_runs():
    """What one warm run leaves in its /tmp, /dev/shm and home (each a tmpfs of the jail) is gone
    for the next run, warm or cold. (System V IPC, which the IPC namespace would separate, is
    refused by seccomp anyway.)"""
    secret = secrets.token_hex(8)
    plant = f"""
import os
for d in ('/tmp', '/dev/shm', os.environ['HOME']):
    with open(os.path.join(d, 'leak-{secret}'), 'w') as f:
        f.write({secret!r})
print('planted')
"""
    assert ok(run(plant, True)).stdout == b"planted\n"
    look = """
import glob, os
files = glob.glob('/tmp/**/leak-*', recursive=True) + glob.glob('/dev/shm/**/leak-*', recursive=True)
print(files + glob.glob(os.environ['HOME'] + '/leak-*'))
"""
    for mode in (True, False, True):
        out = ok(run(look, mode))
        assert out.stdout == b"[]\n", describe(out)


def test_a_jail_that_cannot_be_built_fails_the_warm_run_as_the_cold_one():
    """A warm run whose jail cannot be built (the plan's files do not fit its disk: the init's
    root building fails) fails exactly as the cold run does, with the step named, and runs
    nothing; the caller keeps no fd of it, and the next warm run starts warm as usual."""
    errors = []
    fds = set(os.listdir("/proc/self/fd"))
    for mode in (True, False):
        plan = evalbox.python.plan("open('/tmp/ran', 'w')", warm=mode, files={"big": b"x" * (2 << 20)}, timeout=30)
        with pytest.raises(evalbox.SpawnError) as failed:
            evalbox.run(dataclasses.replace(plan, disk=1 << 20))
        errors.append(str(failed.value))
    assert errors[0] == errors[1] and "build the jail's root" in errors[0], errors
    assert set(os.listdir("/proc/self/fd")) <= fds | set(map(str, warm.held_fds()))
    assert ok(run("print('again')", True)).stdout == b"again\n"


def _same_memory(a: int, b: int) -> bool:
    """kcmp(KCMP_VM): do the two processes share one address space? (A process that is gone,
    e.g. another test's closed template, shares nothing.)"""
    import ctypes
    import errno

    libc = ctypes.CDLL(None, use_errno=True)
    got = libc.syscall(312 if os.uname().machine == "x86_64" else 272, a, b, 1, 0, 0)
    if got < 0 and ctypes.get_errno() == errno.ESRCH:
        return False
    assert got >= 0, os.strerror(ctypes.get_errno())
    return got == 0


def test_the_init_shares_the_templates_memory_the_program_has_its_own_copy():
    """The warm jail's init runs no Python, so it is cloned into the memory of the template (or
    slot launcher) that started the run: no copy of the interpreter's page tables is made and torn
    down for it. The program's process must never share that memory: it would write what every
    later run starts from."""
    sync = tempfile.mkdtemp(prefix="evalbox-warmjail-")
    os.chmod(sync, 0o777)  # the sandbox runs as a uid of its own
    code = f"""
import os, time
open({sync!r} + '/ready', 'w').close()
deadline = time.monotonic() + 25
while not os.path.exists({sync!r} + '/done') and time.monotonic() < deadline:
    time.sleep(0.01)
print('done')
"""
    plan = evalbox.python.plan(code, warm=True, timeout=30, mounts=[evalbox.Mount(sync, writable=True)])
    with evalbox.Executor() as ex:
        sid = ex.spawn(plan, close_stdin=True)
        try:
            init = ex._running[sid].box.pid
            deadline = time.monotonic() + 30
            while not os.path.exists(os.path.join(sync, "ready")):
                assert time.monotonic() < deadline, "the warm run never started"
                time.sleep(0.01)
            with open(f"/proc/{init}/task/{init}/children") as f:
                (program,) = map(int, f.read().split())
            servers = _template_pids() | {s.pid for s in warm.Slot.busy if s.pid > 0}
            starters = [p for p in servers if _same_memory(init, p)]
            assert len(starters) == 1, f"the init shares memory with {starters} of {servers}"
            assert not any(_same_memory(program, p) for p in servers | {init}), "the program shares memory"
            with open(f"/proc/{program}/status") as f:
                assert "\nPPid:\t%d\n" % init in f.read()
        finally:
            with open(os.path.join(sync, "done"), "w"):
                pass
        done = None
        while done is None:
            done = next((e.output for e in ex.poll(30) if isinstance(e, Completed) and e.id == sid), None)
    shutil.rmtree(sync, ignore_errors=True)
    assert ok(done).stdout == b"done\n"


SLOT_READER = r'''
import ctypes, struct
regions = []
for line in open("/proc/self/maps").read().splitlines():
    f = line.split()
    a, b = (int(x, 16) for x in f[0].split("-"))
    regions.append((a, b, f[1], f[5] if len(f) > 5 else ""))
found = []
for (a, b, p, n), (a2, b2, p2, n2) in zip(regions, regions[1:]):
    # an init's stack as the template maps it: a 4 KiB guard page, then the rest of 256 KiB
    if p == "---p" and b - a == 4096 and a2 == b and p2.startswith("rw") and b2 - a == 256 * 1024 and not n2:
        data = ctypes.string_at(b, b2 - b)
        pos = data.find(struct.pack("<i", 0x45424f58))  # an init's report record
        while pos >= 0:
            found.append(struct.unpack_from("<i", data, pos + 4)[0] >> 8)
            pos = data.find(struct.pack("<i", 0x45424f58), pos + 1)
print(found)
'''


def test_a_later_run_holds_nothing_of_an_earlier_runs_init():
    """A warm jailed run's init runs on a stack in its template's memory; a later run is a copy of
    that memory and must not find what the earlier init left there (the earlier run's exit
    status, CPU time, peak memory): every copy drops those stacks before anything runs. Also
    while other runs are live (their inits' stacks are in use)."""
    status = secrets.randbelow(200) + 30
    assert run(f"raise SystemExit({status})", True).exit_code == status
    sync = tempfile.mkdtemp(prefix="evalbox-warmjail-")
    os.chmod(sync, 0o777)  # the sandbox runs as a uid of its own
    holder = f"""
import os, sys, time
open({sync!r} + '/ready' + sys.argv[1], 'w').close()
deadline = time.monotonic() + 25
while not os.path.exists({sync!r} + '/done') and time.monotonic() < deadline:
    time.sleep(0.01)
"""
    mounts = [evalbox.Mount(sync, writable=True)]
    holders = [threading.Thread(target=run, args=(holder, True), kwargs={"args": [str(i)], "mounts": mounts})
               for i in range(3)]
    for t in holders:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while len([n for n in os.listdir(sync) if n.startswith("ready")]) < 3:  # their inits are live
            assert time.monotonic() < deadline, "the live runs never started"
            time.sleep(0.01)
        for _ in range(3):
            out = ok(run(SLOT_READER, True))
            assert out.stdout == b"[]\n", f"a warm run found other inits' records: {out.stdout!r}"
    finally:
        with open(os.path.join(sync, "done"), "w"):
            pass
        for t in holders:
            t.join(30)
        shutil.rmtree(sync, ignore_errors=True)


THREAD_STATE = r'''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
cpus = {}
for cpu in sorted(os.sched_getaffinity(0)):
    os.sched_setaffinity(0, {cpu})
    cpus[cpu] = libc.sched_getcpu()  # glibc reads it from its rseq area, which the kernel updates
head, size = ctypes.c_void_p(), ctypes.c_size_t()
nr = 274 if os.uname().machine == "x86_64" else 100  # get_robust_list
print(cpus, libc.syscall(nr, 0, ctypes.byref(head), ctypes.byref(size)), bool(head.value))
'''


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to tell a stale CPU number from a true one")
def test_a_warm_jailed_runs_thread_state_is_the_cold_ones():
    """The program's process descends from an init that shares the template's memory (which the
    kernel gives no rseq area): it registers the C library's rseq area and robust futex list again,
    so sched_getcpu() and robust mutexes work as in a cold run."""
    hot, cold = ok(run(THREAD_STATE, True)), ok(run(THREAD_STATE, False))
    assert hot.stdout == cold.stdout, (hot.stdout, cold.stdout)
    cpus = eval(hot.stdout.split(b"}")[0] + b"}")  # noqa: S307 - our own program's output
    assert all(seen == cpu for cpu, seen in cpus.items()), hot.stdout
    assert hot.stdout.endswith(b" 0 True\n"), hot.stdout


def test_a_run_whose_oom_takes_its_launcher_is_memory_limit_and_the_next_runs_are_untouched():
    """A program that fills its /tmp (charged to its group, in no process's RSS) and then shrinks
    to a tiny process leaves its slot's launcher and its init (one memory) as the OOM killer's
    biggest choice where evalbox cannot exempt them (no CAP_SYS_RESOURCE). Whatever the kernel
    kills, the verdict is MEMORY_LIMIT and the next runs start warm and right."""
    memory = 96 << 20
    fill = f"""
import os
chunk = b"x" * (1 << 20)
for i in range({(memory >> 20) - 24}):
    with open(f"/tmp/fill{{i}}", "wb") as f:
        f.write(chunk)
os.execv("/bin/sh", ["sh", "-c", "i=0; while :; do i=$((i+1)); head -c 1048576 /dev/zero > /tmp/more$i || exit 3; done"])
"""
    for _ in range(2):
        out = run(fill, True, memory=memory)
        assert out.status is evalbox.Status.MEMORY_LIMIT, describe(out)
        after = ok(run("print(6 * 7)", True, memory=memory))
        assert after.stdout == b"42\n"


def _our_inits() -> list[int]:
    """Our children that are a jail's PID 1 (NSpid: host pid, 1)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] != str(os.getpid()):
                        continue
                with open(f"/proc/{name}/status") as f:
                    nspid = next(line.split()[1:] for line in f if line.startswith("NSpid:"))
            except (OSError, StopIteration):
                continue
            if len(nspid) == 2 and nspid[1] == "1":
                found.append(int(name))
    return found


def test_a_program_process_killed_during_its_set_up_fails_that_start_only(monkeypatch):
    """Something outside (an operator, a host-wide OOM kill) SIGKILLs warm runs' program processes
    while they lock down: each such run is that run's SpawnError (or, killed once running, its
    SIGNALED verdict); the batch goes on, every other run has its own verdict, nothing is left
    unreaped. (The init took the bare end of file for "the program runs" and run_many raised.)"""
    monkeypatch.setenv("EVALBOX_SLOTS", "0")
    assert run("pass", True).stdout == b""
    stop, hit = threading.Event(), set()

    def killer() -> None:
        while not stop.is_set():
            for init in _our_inits():
                if init in hit:
                    continue
                try:
                    fds = [os.readlink(f"/proc/{init}/fd/{fd}") for fd in os.listdir(f"/proc/{init}/fd")]
                    with open(f"/proc/{init}/task/{init}/children") as f:
                        kids = f.read().split()
                except OSError:
                    continue
                # the init holds the caller's report pipe (handed over during the lockdown)
                if kids and any(f.startswith("pipe:") for f in fds):
                    hit.add(init)
                    try:
                        os.kill(int(kids[0]), 9)
                    except OSError:
                        pass

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        results = evalbox.run_many([evalbox.python.plan("print('hi')", timeout=30) for _ in range(60)],
                                   concurrency=8, progress=False)
    finally:
        stop.set()
        thread.join(10)
    assert hit, "the killer never found a run to kill"
    for r in results:
        if isinstance(r, evalbox.SpawnError):
            continue
        assert r.stdout == b"hi\n" or r.status is evalbox.Status.SIGNALED, describe(r)
    assert not [p for p in _our_inits()], "a killed run's init is left"
    assert zombie_children() == [], "a killed run's process was never reaped"
