"""SPEC §4: "each promise holds ... for an unprivileged host user". Here the caller is not root,
so the sandbox shares the caller's uid: file modes and signal permissions no longer separate
them, and only Landlock, seccomp and the rlimits can.

The test (root) prepares a directory owned by an otherwise unused uid, starts a driver script as
that uid (/usr/bin/python3.11 importing evalbox from this checkout), and checks the targets, all
owned by that uid, from outside.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import evalbox
from escape_kit import HostProcess, Run, snapshot, wait_until

UID = GID = 64123  # no account has it; nothing else runs as it
PYTHON = "/usr/bin/python3.11"
SRC = str(Path(evalbox.__file__).resolve().parent.parent)

DRIVER = r'''
import ctypes, json, os, signal, sys, time
sys.path.insert(0, sys.argv[1])
import evalbox

req = json.loads(sys.argv[2])
secret = req.get("memory_secret", "").encode()
buf = ctypes.create_string_buffer(secret)
subst = {"{DRIVER_PID}": str(os.getpid()), "{SECRET_ADDR}": str(ctypes.addressof(buf)), "{SECRET_LEN}": str(len(secret))}
payloads = {}

def plan(spec):
    argv = [subst.get(a, a) for a in spec["argv"]]
    files = {}
    if spec.get("payload"):
        name = spec["payload"]
        with open(os.path.join(req["dir"], name), "rb") as f:
            files[os.path.basename(argv[0])] = evalbox.File(f.read(), executable=True)
    return evalbox.Plan(argv, files=files, timeout=spec.get("timeout", 10))

def dump(o):
    return {"stdout": o.stdout.decode("utf-8", "replace"), "stderr": o.stderr.decode("utf-8", "replace"),
            "status": o.status.value, "exit_code": o.exit_code, "signal": o.signal, "wall_time": o.wall_time,
            "identity": o.protections.identity if o.protections else ""}

signal.signal(signal.SIGURG, lambda *_: None)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGURG})
result = {"runs": []}
if req.get("pair"):
    # the first sandbox writes a secret into its workspace, opens it up, prints where, and waits
    with evalbox.Executor() as ex:
        a = ex.spawn(evalbox.Plan(["/bin/sh", "-c", "echo " + req["pair"] + " > s.txt; chmod 755 . ..; "
                                   "echo $$; pwd; exec sleep 30"], timeout=20))
        text = b""
        end = time.monotonic() + 10
        while text.count(b"\n") < 2 and time.monotonic() < end:
            for ev in ex.poll(timeout=0.5):
                if isinstance(ev, evalbox.Stdout) and ev.id == a:
                    text += ev.data
        pid, ws = text.decode().split()[:2]
        subst["{PAIR_PID}"], subst["{PAIR_WS}"] = pid, ws
        for spec in req["runs"]:
            spec["argv"] = [x.replace("{PAIR_WS}", ws) for x in spec["argv"]]
            result["runs"].append(dump(ex.run(plan(spec))))
        st = open("/proc/%s/stat" % pid).read().rsplit(")", 1)[1].split()[0] if os.path.exists("/proc/" + pid) else None
        result["pair_state"] = st
        result["pair_done"] = False
        for ev in ex.poll(timeout=0):
            if isinstance(ev, (evalbox.Completed, evalbox.Timeout)) and ev.id == a:
                result["pair_done"] = True
        ex.kill(a)
else:
    for spec in req["runs"]:
        result["runs"].append(dump(evalbox.run(plan(spec))))
result["sigurg_pending"] = signal.SIGURG in signal.sigpending()
print(json.dumps(result))
'''


@pytest.fixture(scope="module")
def home(payloads):
    if not os.path.exists(PYTHON) or os.geteuid() != 0:
        pytest.skip("needs root (to become another user) and /usr/bin/python3.11")
    d = tempfile.mkdtemp(prefix="evalbox-test-unpriv-")
    try:
        for name, data in payloads.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        with open(os.path.join(d, "driver.py"), "w") as f:
            f.write(DRIVER)
        for root, dirs, files in os.walk(d):
            for n in dirs + files + ["."]:
                os.chown(os.path.join(root, n), UID, GID)
        os.chmod(d, 0o700)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def as_user(home: str, runs: list[dict], **extra) -> dict:
    req = {"dir": home, "runs": runs, **extra}
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}
    p = subprocess.run([PYTHON, "-I", "-S", os.path.join(home, "driver.py"), SRC, json.dumps(req)],
                       user=UID, group=GID, extra_groups=[], env=env, cwd=home, capture_output=True, timeout=60)
    assert p.returncode == 0, f"the unprivileged driver failed:\n{p.stderr.decode(errors='replace')[-3000:]}"
    return json.loads(p.stdout)


def run_of(d: dict, label: str) -> Run:
    out = evalbox.Output(stdout=d["stdout"].encode(), stderr=d["stderr"].encode(), status=evalbox.Status(d["status"]),
                         exit_code=d["exit_code"], signal=d["signal"], wall_time=d["wall_time"], cpu_time=0.0, max_rss=0)
    return Run(out, [label], token="", label=f"as uid {UID}: {label}")


def payload(name: str, *args: str) -> dict:
    return {"payload": name, "argv": [f"./{name}-evx", *args]}


def own_file(home: str, mode: int, content: bytes | None = None) -> tuple[str, bytes]:
    path = os.path.join(home, f"victim-{secrets.token_hex(6)}")
    data = content or f"EVALBOX-UNPRIV-SECRET-{secrets.token_hex(10)}\n".encode()
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, UID, GID)
    os.chmod(path, mode)
    return path, data


@pytest.fixture
def user_sleeper():
    hp = start_sleeper_as_user()
    try:
        yield hp
    finally:
        hp.proc.kill()
        hp.proc.wait()


def start_sleeper_as_user():
    secret = f"EVALBOX-ENV-SECRET-{secrets.token_hex(12)}"
    proc = subprocess.Popen(["/bin/sleep", "60"], env={"EVALBOX_TEST_SECRET": secret}, user=UID, group=GID,
                            extra_groups=[], start_new_session=True, stdin=subprocess.DEVNULL)
    wait_until(lambda: os.path.exists(f"/proc/{proc.pid}/exe") and _exe(proc.pid) == "sleep", 5, "sleep to exec")
    return HostProcess(proc, secret)


def _exe(pid: int) -> str:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return ""


# -- files of the caller ------------------------------------------------------------------------


def test_read_and_write_callers_files(home):
    path, data = own_file(home, 0o600)
    res = as_user(home, [payload("fs_attacks", "read", path), payload("fs_attacks", "append", path),
                         payload("fs_attacks", "truncate", path), payload("fs_attacks", "unlink", path)])
    runs = [run_of(d, n) for d, n in zip(res["runs"], ["read", "append", "truncate", "unlink"])]
    assert data.strip() not in runs[0].out.stdout, f"ESCAPE: read the caller's own file\n{runs[0].describe()}"
    # (in the jail, which this caller has where the host allows user namespaces, the file is not
    # in the sandbox's root at all)
    refused = {"EACCES", "EPERM"} | ({"ENOENT"} if "user namespace" in res["runs"][0]["identity"] else set())
    runs[0].blocked_how("read", refused)
    runs[1].blocked_how("append", refused)
    runs[2].blocked_how("truncate", refused)
    runs[3].blocked_how("unlink", refused)
    assert snapshot(path).content == data, "ESCAPE: the caller's file was changed"


def test_metadata_of_callers_files(home):
    """Landlock does not cover chmod/chown/utime: with the caller's uid, only seccomp can refuse
    them outside the workspace. The caller's file must not change."""
    path, _ = own_file(home, 0o600)
    os.utime(path, ns=(10**18, 10**18))
    before = snapshot(path)
    res = as_user(home, [payload("fs_attacks", "meta", path), payload("fs_attacks", "touch", path)])
    after = snapshot(path)
    runs = [run_of(d, n) for d, n in zip(res["runs"], ["meta", "touch"])]
    assert after == before, (
        f"ESCAPE: an unprivileged caller's sandbox changed the metadata of the caller's file {path}: "
        f"mode {oct(before.mode)} -> {oct(after.mode)}, mtime {before.mtime_ns} -> {after.mtime_ns}\n"
        + "\n".join(r.describe() for r in runs))


def test_callers_other_processes(home, user_sleeper):
    before = open(f"/proc/{user_sleeper.pid}/limits").read()
    res = as_user(home, [
        payload("proc_attacks", "kill", str(user_sleeper.pid), "9"),
        payload("proc_attacks", "kill", "{DRIVER_PID}", "23"),
        payload("proc_attacks", "killall", "23"),
        payload("proc_attacks", "attach", str(user_sleeper.pid)),
        payload("proc_attacks", "sched", str(user_sleeper.pid)),
        payload("fs_attacks", "read", f"/proc/{user_sleeper.pid}/environ"),
        payload("proc_attacks", "vm_readv", "{DRIVER_PID}", "{SECRET_ADDR}", "{SECRET_LEN}"),
    ], memory_secret=f"EVALBOX-DRIVER-MEMORY-{secrets.token_hex(8)}")
    names = ["kill", "sigurg caller", "kill -1", "ptrace", "sched", "environ", "process_vm_readv"]
    runs = {n: run_of(d, n) for d, n in zip(res["runs"], names)}
    assert user_sleeper.alive(), f"ESCAPE: the sandbox killed the caller's process\n{runs['kill'].describe()}"
    assert not res["sigurg_pending"], "ESCAPE: the sandbox signalled its caller (SIGURG arrived)"
    assert open(f"/proc/{user_sleeper.pid}/limits").read() == before, "ESCAPE: the caller's process rlimits changed"
    assert user_sleeper.secret.encode() not in runs["environ"].out.stdout, (
        f"ESCAPE: read the caller's process environment\n{runs['environ'].describe()}")
    for n, r in runs.items():
        r.assert_no_escape(n)
    runs["ptrace"].blocked_how("ptrace_attach")
    runs["process_vm_readv"].blocked_how("process_vm_readv")
    tracer = [ln for ln in open(f"/proc/{user_sleeper.pid}/status") if ln.startswith("TracerPid:")]
    assert tracer == ["TracerPid:\t0\n"], f"ESCAPE: the caller's process is being traced: {tracer}"


def test_other_sandbox_of_the_same_user(home):
    """Two sandboxes with the same uid: the workspace of one is closed to the other, and no
    signal crosses, though file modes and uids allow both."""
    secret = f"EVALBOX-PAIR-SECRET-{secrets.token_hex(10)}"
    res = as_user(home, [
        payload("fs_attacks", "read", "{PAIR_WS}/s.txt"),
        payload("proc_attacks", "kill", "{PAIR_PID}", "9"),
        payload("proc_attacks", "kill", "{PAIR_PID}", "19"),
    ], pair=secret)
    runs = [run_of(d, n) for d, n in zip(res["runs"], ["read", "kill", "stop"])]
    assert secret.encode() not in runs[0].out.stdout, f"ESCAPE: read a same-uid sandbox's workspace\n{runs[0].describe()}"
    runs[0].blocked_how("read", {"EACCES", "EPERM", "ENOENT"})
    assert not res["pair_done"] and res["pair_state"] not in (None, "Z", "X", "T", "t"), (
        f"ESCAPE: a sandbox killed or stopped a same-uid sandbox (state {res['pair_state']})\n"
        + "\n".join(r.describe() for r in runs[1:]))
    for r in runs[1:]:
        r.assert_no_escape("signal to a same-uid sandbox")
