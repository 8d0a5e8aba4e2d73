"""Shared machinery of the escape suite: payloads, runs, verdicts, sacrificial targets.

These tests attack the sandbox for real, as root on the machine they run on. Every write, kill,
chmod or mount aims at a target the test created itself (a file in /etc, /root or /tmp, a `sleep`
process, a listener) and is undone in `finally`; payload arguments are chosen so that the kernel
call is harmless even if the sandbox lets it through.

Payloads (tests/escape/payloads/*.c) are static C programs. Their stdout protocol (see
payloads/common.h): "TRY <attack>" before each dangerous call, then one verdict line:
"BLOCKED <attack> errno=N (ENAME)", "ESCAPED <attack>: evidence", "REACHED <attack> ..." (the
kernel, not the sandbox, refused: the filter let the call through), "OK <what>: ...", "INFO k=v".

The contract tested (SPEC §4): a forbidden call either kills the program with SIGSYS (status
SIGNALED, signal 31) or fails with EPERM/EACCES/ENOSYS/EAFNOSUPPORT; either way the attack must
not have happened, which each test checks on the target itself.
"""

from __future__ import annotations

import errno as errno_mod
import glob
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import evalbox

# Test modules import these helpers as `escape_kit`: other conftest.py files of the repository
# (tests/functional) are also named "conftest", so `from conftest import` could find theirs.
sys.modules["escape_kit"] = sys.modules[__name__]

HERE = Path(__file__).resolve().parent
PAYLOAD_DIR = HERE / "payloads"
SIGSYS = int(signal.SIGSYS)
BLOCKING_ERRNOS = frozenset({"EPERM", "EACCES", "ENOSYS", "EAFNOSUPPORT"})
from evalbox.process.identity import SANDBOX_UID_BASE, SANDBOX_UID_SPAN  # noqa: E402
SANDBOX_UID_RANGE = range(SANDBOX_UID_BASE, SANDBOX_UID_BASE + SANDBOX_UID_SPAN)
GCC_FLAGS = ["-O1", "-static", "-Wall", "-Wextra", "-pthread"]


# -- payload compilation ------------------------------------------------------------------------


def _cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = base / "evalbox-escape-payloads"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = root.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        # someone else's or a world-writable cache: do not run binaries from it
        root = Path(tempfile.mkdtemp(prefix="evalbox-escape-payloads-"))
    return root


def _gcc_identity() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is needed to build the escape payloads (apt-get install gcc libc6-dev)")
    return subprocess.run([gcc, "--version"], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="session")
def payloads() -> dict[str, bytes]:
    """name -> static executable bytes, built once per source hash (parallel gcc runs)."""
    common = (PAYLOAD_DIR / "common.h").read_bytes()
    ident = _gcc_identity().encode() + " ".join(GCC_FLAGS).encode()
    root = _cache_root()
    builds: dict[str, tuple[Path, subprocess.Popen[bytes] | None]] = {}
    for src in sorted(PAYLOAD_DIR.glob("*.c")):
        digest = hashlib.sha256(ident + common + src.read_bytes()).hexdigest()[:24]
        out = root / f"{src.stem}-{digest}"
        proc = None
        if not out.exists():
            tmp = out.with_name(out.name + f".tmp{os.getpid()}")
            proc = subprocess.Popen(["gcc", *GCC_FLAGS, "-o", str(tmp), str(src)], cwd=PAYLOAD_DIR,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        builds[src.stem] = (out, proc)
    result = {}
    for name, (out, proc) in builds.items():
        if proc is not None:
            log, _ = proc.communicate(timeout=120)
            tmp = out.with_name(out.name + f".tmp{os.getpid()}")
            if proc.returncode != 0:
                pytest.fail(f"payload {name}.c does not compile:\n{log.decode(errors='replace')}")
            os.replace(tmp, out)
        result[name] = out.read_bytes()
        for stale in root.glob(f"{name}-*"):  # builds of older sources
            if stale != out and not stale.name.startswith(out.name):
                stale.unlink(missing_ok=True)
    return result


# -- host-side observation ------------------------------------------------------------------------


def _proc_pids() -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def proc_state(pid: int) -> str | None:
    """Process state letter (R, S, Z...) or None if there is no such process."""
    stat_ = _read(f"/proc/{pid}/stat")
    if not stat_:
        return None
    return stat_.rsplit(b")", 1)[1].split()[0].decode()


def proc_ppid(pid: int) -> int | None:
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith(b"PPid:"):
            return int(line.split()[1])
    return None


def proc_uids(pid: int) -> tuple[int, ...]:
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith(b"Uid:"):
            return tuple(int(x) for x in line.split()[1:])
    return ()


def processes_matching(token: str | None = None, uid: int | None = None) -> list[tuple[int, str, str]]:
    """(pid, state, cmdline) of processes whose argv mentions `token` or that run as `uid`."""
    found = []
    me = os.getpid()
    for pid in _proc_pids():
        if pid == me:
            continue
        cmd = _read(f"/proc/{pid}/cmdline")
        hit = token is not None and token.encode() in cmd
        if not hit and uid is not None:
            hit = uid in proc_uids(pid)
        if hit:
            state = proc_state(pid)
            if state is not None:
                found.append((pid, state, cmd.replace(b"\0", b" ").decode(errors="replace")))
    return found


def children_of_caller() -> list[tuple[int, str, str]]:
    """(pid, state, cmdline) of this process's children, zombies included, without reaping."""
    me = os.getpid()
    return [(pid, proc_state(pid) or "?", _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace"))
            for pid in _proc_pids() if proc_ppid(pid) == me]


def sandbox_uid_processes() -> list[tuple[int, str, str]]:
    out = []
    for pid in _proc_pids():
        uids = proc_uids(pid)
        if uids and any(u in SANDBOX_UID_RANGE for u in uids):
            state = proc_state(pid)
            if state is not None:
                out.append((pid, state, _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace")))
    return out


def wait_until(cond, timeout: float, what: str, interval: float = 0.005):
    """Poll `cond` until it returns something truthy; fail with `what` at the deadline."""
    end = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout}s waiting for: {what}")
        time.sleep(interval)


def own_fds() -> set[int]:
    """This process's fds, less those of evalbox's bounded pools: recycled cgroups, the jail's
    network namespaces and template mount namespaces (process/netns.py, process/templates.py),
    and the warm templates and idle slots (process/warm.py: a socket and a pidfd each)."""
    from evalbox.process import netns, warm

    pooled = f"/evalbox-{os.getpid()}/"
    counters = netns.held_fds() | warm.held_fds()  # (one per pooled network namespace; two per template or slot)
    out = set()
    for n in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{n}")
        except OSError:
            continue  # the listing's own fd
        if target.startswith(("net:[", "mnt:[")) or int(n) in counters:
            continue
        if not (target.startswith("/sys/fs/cgroup/") and pooled in target):
            out.add(int(n))
    return out


def leftover_cgroups() -> list[str]:
    """Sandbox cgroups of this process that still hold processes (evalbox recycles emptied
    groups, so an empty one left in place is fine; so is a resident slot's launcher, which
    belongs to no run)."""
    try:
        from evalbox.kernel import cgroups

        roots = cgroups.layout().roots.values()
    except Exception:  # the layout API is internal: fall back to a broad look
        roots = glob.glob("/sys/fs/cgroup/*")
    from evalbox.process import warm

    launchers = warm.resident_pids()
    found = []
    for root in set(roots):
        for group in glob.glob(os.path.join(root, f"evalbox-{os.getpid()}", "*", "")):
            procs = [p for p in _read(os.path.join(group, "cgroup.procs")).split() if int(p) not in launchers]
            if procs:
                found.append(f"{group} holds pids {[int(p) for p in procs]}")
    return found


# -- runs and verdicts ----------------------------------------------------------------------------

_VERDICT = re.compile(rb"^(TRY|BLOCKED|ESCAPED|REACHED|OK|INFO|FAILED) ?(.*)$")


@dataclass
class Run:
    out: evalbox.Output
    argv: list[str]
    token: str
    label: str = ""

    @property
    def stdout(self) -> str:
        return self.out.stdout.decode(errors="replace")

    @property
    def workspace(self) -> str | None:
        m = re.search(rb"EVALBOX_CWD=(\S+)", self.out.stderr)
        return os.path.dirname(m.group(1).decode()) if m else None

    @property
    def uid(self) -> int | None:
        ident = self.out.protections.identity if self.out.protections else ""
        m = re.search(r"uid/gid (\d+)", ident) or re.search(r"\buid (\d+)", ident)
        return int(m.group(1)) if m else None

    def lines(self, kind: str) -> list[str]:
        return [ln[len(kind) + 1:] for ln in self.stdout.splitlines() if ln.startswith(kind + " ")]

    def info(self, key: str) -> str | None:
        for ln in self.lines("INFO"):
            for part in ln.split():
                if part.startswith(key + "="):
                    return part[len(key) + 1:]
        return None

    @property
    def sigsys(self) -> bool:
        return self.out.status is evalbox.Status.SIGNALED and self.out.signal == SIGSYS

    @property
    def last_try(self) -> str | None:
        tries = self.lines("TRY")
        return tries[-1] if tries else None

    def describe(self) -> str:
        o = self.out
        err = o.stderr.decode(errors="replace")
        return (
            f"[{self.label or ' '.join(self.argv)}] status={o.status.name} exit_code={o.exit_code} "
            f"signal={o.signal} wall={o.wall_time:.2f}s\n--- stdout ---\n{self.stdout[-3000:]}"
            f"\n--- stderr ---\n{err[-1500:]}"
        )

    def assert_no_escape(self, what: str) -> None:
        escapes = self.lines("ESCAPED")
        assert not escapes, f"ESCAPE ({what}): {escapes}\n{self.describe()}"

    def blocked_how(self, attack: str, errnos: frozenset[str] | set[str] = BLOCKING_ERRNOS,
                    allow_sigsys: bool = True) -> str:
        """Assert `attack` was stopped by the sandbox: SIGSYS while trying it, or a BLOCKED line
        with an accepted errno. Returns "SIGSYS" or the errno name (printed with
        EVALBOX_ESCAPE_VERBOSE=1 and `pytest -s`)."""
        how = self._blocked_how(attack, errnos, allow_sigsys)
        if os.environ.get("EVALBOX_ESCAPE_VERBOSE"):
            print(f"\n  blocked: {attack:<28} by {how:<8} [{self.label}]", end="")
        return how

    def _blocked_how(self, attack: str, errnos, allow_sigsys: bool) -> str:
        self.assert_no_escape(attack)
        reached = [ln for ln in self.lines("REACHED") if ln.split()[0] == attack]
        assert not reached, (
            f"{attack}: the call got past the seccomp filter and only the kernel refused it "
            f"({reached[0]}); the sandbox must block it itself\n{self.describe()}"
        )
        verdicts = [ln for ln in self.lines("BLOCKED") if ln.split()[0] == attack]
        if verdicts:
            m = re.search(r"\((\w+)\)", verdicts[-1])
            name = m.group(1) if m else "?"
            assert name in errnos, (
                f"{attack} failed with {name}, which is not the sandbox's refusal (expected SIGSYS or one of "
                f"{sorted(errnos)}): the call probably reached the kernel\n{self.describe()}"
            )
            return name
        if allow_sigsys and self.sigsys and self.last_try == attack:
            return "SIGSYS"
        pytest.fail(f"{attack}: no verdict (neither BLOCKED nor killed by SIGSYS while trying it)\n{self.describe()}")


# A warm Python run that becomes the payload: everything the payload can reach was set up by the
# warm path (the template's copy locked itself down in place), and exec keeps all of it.
WARM_EXEC = "import os, sys\nos.execv(sys.argv[1], sys.argv[1:])\n"


@dataclass
class Box:
    """Runs payloads in fresh sandboxes and checks each run leaves nothing behind.

    `start` "cold": the payload is the sandbox's program; "warm": a warm evalbox.python run
    (a template's locked-down copy) execs the payload, so every attack also tests that path."""

    payloads: dict[str, bytes]
    start: str = "cold"
    runs: list[Run] = field(default_factory=list)

    def plan(self, payload: str, *args: str, files: dict | None = None, **kw) -> tuple[evalbox.Plan, str]:
        token = f"evx{secrets.token_hex(5)}"
        OUR_TOKENS.add(token)
        exe = f"{payload}-{token}"
        all_files = {exe: evalbox.File(self.payloads[payload], executable=True)}
        all_files.update(files or {})
        kw.setdefault("timeout", 10)
        if self.start == "warm":
            plan = evalbox.python.plan(WARM_EXEC, args=[f"./{exe}", *args], files=all_files, warm=True, **kw)
            return plan, token
        return evalbox.Plan([f"./{exe}", *args], files=all_files, **kw), token

    def run(self, payload: str, *args: str, check_clean: bool = True, **kw) -> Run:
        plan, token = self.plan(payload, *args, **kw)
        fds_before = own_fds()
        out = evalbox.run(plan)
        if self.start == "warm":
            assert out.warm, f"the warm variant of {payload} ran cold: {out.stderr[-500:]!r}"
        r = Run(out, list(plan.argv), token, label=f"{payload} {' '.join(args)}")
        self.runs.append(r)
        if check_clean:
            assert_clean(r, fds_before)
        return r

    def run_argv(self, argv: list[str], **kw) -> Run:
        kw.setdefault("timeout", 10)
        fds_before = own_fds()
        out = evalbox.run(evalbox.Plan(argv, **kw))
        r = Run(out, argv, token="", label=" ".join(argv))
        assert own_fds() == fds_before, f"the run leaked fds in the caller: {own_fds() - fds_before}"
        return r


# Tokens of the payload runs this test process made (other sessions on the machine make their own).
OUR_TOKENS: set[str] = set()

WORKSPACE_SUBDIRS = {"work", "tmp", "home"}


def workspace_residue(root: str) -> str | None:
    """What is wrong with a finished run's workspace: it must be gone, or (evalbox recycles
    emptied workspaces) bare: only its empty subdirectories, owned by the caller, closed to others."""
    if not os.path.lexists(root):
        return None
    st = os.lstat(root)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        return f"kept for reuse but owned by uid {st.st_uid} with mode {oct(st.st_mode & 0o7777)}"
    names = set(os.listdir(root))
    if names != WORKSPACE_SUBDIRS:
        return f"kept for reuse but holds {sorted(names)}"
    leftovers = {n: os.listdir(os.path.join(root, n)) for n in names if os.listdir(os.path.join(root, n))}
    if leftovers:
        return f"kept for reuse but not emptied: {leftovers}"
    return None


def assert_clean(r: Run, fds_before: set[int] | None = None) -> None:
    """After a run: none of its processes alive, its workspace and cgroup gone, no fd leaked."""
    uid = r.uid
    if uid == os.getuid():
        # A caller that is not root shares its uid with its sandboxes: the test runner, evalbox's
        # guard and the user's other programs run as that uid too. The run's token in argv names
        # its own processes (their children inherit it).
        uid = None
    found = processes_matching(r.token or None, uid)
    live = [p for p in found if p[1] not in ("Z", "X")]
    assert not live, f"processes of the finished run are still alive: {live}\n{r.describe()}"
    # Dead orphans wait for init to reap them (this VM's init does so only every few seconds);
    # a zombie left for the caller to reap would be evalbox's leak.
    ours = [p for p in found if proc_ppid(p[0]) == os.getpid()]
    assert not ours, f"zombies of the run are left unreaped in the calling process: {ours}"
    ws = r.workspace
    if ws is not None:
        problem = workspace_residue(ws)
        assert not problem, f"workspace {ws} after the run: {problem}\n{r.describe()}"
    cg = leftover_cgroups()
    assert not cg, f"cgroups of finished runs are left behind: {cg}"
    if fds_before is not None:
        leaked = own_fds() - fds_before
        assert not leaked, f"the run leaked fds in the calling process: {sorted(leaked)}"


@pytest.fixture(scope="session", autouse=True)
def _warm_caches():
    """evalbox keeps per-process caches (O_PATH fds of system paths, a pool of emptied cgroups and
    workspaces, and the warm Python template's socket and pidfd): fill them once so the per-run
    fd check sees only real leaks."""
    evalbox.run(["true"], timeout=10)
    from evalbox.process.host import probe

    # (an unprivileged caller's jail, in a user namespace, has no warm copies yet)
    assert evalbox.python.run("pass", warm=True, timeout=30).warm or probe().jail_userns


@pytest.fixture(scope="session")
def workspace_base() -> str:
    """Where this evalbox puts workspaces with the default plan (/tmp, /dev/shm...): link and
    rename attacks aim at this filesystem, or the kernel's cross-device check would stop them
    before the sandbox is even asked."""
    out = evalbox.run(["/bin/pwd"], timeout=10)
    cwd = out.stdout.decode().strip()
    assert out.success and cwd.startswith("/"), f"cannot find the workspace location: {out}"
    return os.path.dirname(os.path.dirname(cwd))


@pytest.fixture(params=["cold", "warm"])
def box(payloads, request) -> Box:
    from evalbox.process.warm import why_cold_here

    if request.param == "warm" and why_cold_here():
        pytest.skip(why_cold_here())
    return Box(payloads, start=request.param)


# -- sacrificial targets ------------------------------------------------------------------------


@dataclass
class Snapshot:
    exists: bool
    content: bytes | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    mtime_ns: int | None = None
    ctime_ns: int | None = None
    xattrs: tuple = ()


def snapshot(path: str) -> Snapshot:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return Snapshot(False)
    content = None
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            content = f.read()
    try:
        names = tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False))
                             for n in os.listxattr(path, follow_symlinks=False)))
    except OSError:
        names = ()
    return Snapshot(True, content, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns, names)


class Targets:
    """Creates root-owned files and dirs the test may attack; removes them all afterwards."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    @staticmethod
    def _need_writable(directory: str) -> None:
        if os.geteuid() != 0 and not os.access(directory, os.W_OK):
            pytest.skip(f"needs root: the sacrificial target goes in {directory} (run the suite as root, as .ci/run does)")

    def file(self, directory: str, mode: int = 0o600, content: bytes | None = None, prefix: str = "secret") -> tuple[str, bytes]:
        self._need_writable(directory)
        token = secrets.token_hex(12)
        path = os.path.join(directory, f"evalbox-test-{prefix}-{token}")
        data = content if content is not None else f"EVALBOX-SECRET-{token}\n".encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.chmod(path, mode)  # umask-proof
        self.paths.append(path)
        return path, data

    def dir(self, parent: str = "/tmp", mode: int = 0o777) -> str:
        self._need_writable(parent)
        path = tempfile.mkdtemp(prefix="evalbox-test-", dir=parent)
        os.chmod(path, mode)
        self.paths.append(path)
        return path

    def track(self, path: str) -> str:
        self._need_writable(os.path.dirname(path))
        self.paths.append(path)
        return path

    def cleanup(self) -> None:
        for path in reversed(self.paths):
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                print(f"warning: could not remove sacrificial {path}: {e}")


@pytest.fixture
def targets():
    t = Targets()
    try:
        yield t
    finally:
        t.cleanup()


@dataclass
class HostProcess:
    proc: subprocess.Popen
    secret: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None and proc_state(self.pid) not in (None, "Z", "X")


def start_sleeper(seconds: int = 60, **env: str) -> HostProcess:
    """A host `sleep` with a secret in its environment, returned once it has really exec'd sleep."""
    secret = f"EVALBOX-ENV-SECRET-{secrets.token_hex(12)}"
    proc = subprocess.Popen(["/bin/sleep", str(seconds)], env={"EVALBOX_TEST_SECRET": secret, **env},
                            start_new_session=True, stdin=subprocess.DEVNULL)

    def exec_done() -> bool:
        try:
            return os.path.basename(os.readlink(f"/proc/{proc.pid}/exe")) == "sleep"
        except OSError:
            return False

    wait_until(exec_done, 5.0, "the host sleep process to exec")
    return HostProcess(proc, secret)


@pytest.fixture
def sleeper():
    hp = start_sleeper()
    try:
        yield hp
    finally:
        hp.proc.kill()
        hp.proc.wait()


@pytest.fixture(autouse=True)
def _no_stray_sandbox_processes():
    """Whatever a test did, no sandbox-uid process of ours may survive it."""
    yield
    stray = [p for p in sandbox_uid_processes() if p[1] not in ("Z", "X")]
    # other engineers may run sandboxes (and this very suite) on this machine at the same time: only
    # ours count, and ours are the children (or orphaned descendants) of runs this process made,
    # recognisable by their token in argv.
    ours = [p for p in stray if any(token in p[2] for token in re.findall(r"evx[0-9a-f]{10}", p[2]) if token in OUR_TOKENS)]
    assert not ours, f"sandbox processes survived the test: {ours}"


def errno_name(n: int) -> str:
    return errno_mod.errorcode.get(n, str(n))


def nonblocking_accept(sock: socket.socket):
    sock.setblocking(False)
    try:
        return sock.accept()
    except BlockingIOError:
        return None


def recv_nowait(sock: socket.socket):
    sock.setblocking(False)
    try:
        return sock.recvfrom(4096)
    except BlockingIOError:
        return None
