"""Start a prepared Lockdown: the Python face of the C clone-and-lockdown child."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import struct
from dataclasses import dataclass
from typing import Any

from evalbox.errors import CommandNotFound, SpawnError, UnsupportedKernel
from evalbox.kernel import _spawn
from evalbox.kernel import capabilities as caps
from evalbox.process.lockdown import UMASK, Lockdown

# Must match `enum step` in _spawn.c.
STEPS = {
    1: "reset signals", 2: "setsid", 3: "set the parent-death signal", 4: "check the caller is alive",
    5: "join the cgroup", 6: "set up stdin/stdout/stderr", 7: "close inherited fds", 8: "chdir to the workspace",
    9: "set rlimits", 10: "drop the capability bounding set", 11: "lock securebits", 12: "clear groups",
    13: "switch gid", 14: "switch uid", 15: "drop capabilities", 16: "set no_new_privs",
    17: "apply Landlock", 18: "install the seccomp filter", 19: "hand over the notify listener", 20: "exec",
    21: "set up the private mounts (/dev/shm, hidden paths)", 22: "set up the jail's namespaces", 23: "build the jail's root",
    24: "make the process dumpable again (warm run)", 25: "map your uid and gid into the jail's user namespace",
    26: "start the program (its process died during the set-up)",
}
STEP_LANDLOCK, STEP_SECCOMP, STEP_LISTENER, STEP_EXEC = 17, 18, 19, 20
# The first report of a start whose program process died (killed from outside) before it handed
# over its notify listener: a failed start, never a run without its supervisor.
LISTENER_LOST = struct.pack("=ii", STEP_LISTENER, errno.EPIPE)


def reports_started(report: bytes) -> bool:
    """A start's first report says the program runs (STEP_STARTED and its pid)."""
    return len(report) == 8 and struct.unpack("=ii", report)[0] == _spawn.STEP_STARTED


def start_listener(pid: int, ours: socket.socket | None, report: bytes, started: bool) -> tuple[int, bytes]:
    """(the seccomp notify listener the program's process handed over, or -1 when none is due;
    the start's report). A started program that never handed it over was killed during its
    set-up: its process (in a jail, the init: the namespace goes with it) is killed and the report
    becomes LISTENER_LOST, for failed_start to reap and report."""
    if not started or ours is None:
        return -1, report
    try:
        _, got, _, _ = socket.recv_fds(ours, 1, 1, socket.MSG_DONTWAIT)
    except BlockingIOError:
        got = []
    if not got:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return -1, LISTENER_LOST
    for extra in got[1:]:
        os.close(extra)
    os.set_inheritable(got[0], False)
    return got[0], report


def _high_fd(fd: int) -> int:
    """Stdio sources must not sit on 0-2, where the child's dup2 calls would clobber them."""
    return fd if fd > 2 else fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)


def spawn(lock: Lockdown, stdin: int, stdout: int, stderr: int,
          started: list[tuple[int, ...]] | None = None) -> tuple[int, int, int, int]:
    """Clone, lock down and exec. Returns (pid, pidfd, notify listener or -1, init report fd or
    -1) once the program runs; raises otherwise. In a jail, pid is the jail's init (its exit ends
    the run, see InitRecord) and the report fd carries the program's verdict when it ends.
    `started`: a list that holds (pid, pidfd, ...) from the moment the child exists until this
    function reaps it itself (a failed start): whoever catches an exception raised meanwhile (a
    signal handler's) kills and reaps what it names."""
    extra = {} if started is None else {"started": started}
    if lock.jail_flags:
        return _spawn_jailed(lock, stdin, stdout, stderr, started, extra)
    stdio = [_high_fd(fd) for fd in (stdin, stdout, stderr)]
    # the child hands a notify listener over this pair before exec (SCM_RIGHTS)
    wants_listener = any(flags & _spawn.SECCOMP_FILTER_FLAG_NEW_LISTENER for _, flags in lock.filters)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) if wants_listener else (None, None)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    read_end, write_end = _high_fd(read_end), _high_fd(write_end)
    try:
        pid, pidfd = _spawn.spawn(
            path=os.fsencode(lock.executable), argv=lock.argv, envp=lock.env, cwd=os.fsencode(lock.cwd), stdio=stdio,
            errpipe=write_end, parent_pid=os.getpid(), cgroup_fds=lock.cgroup_fds, cgroup_dir_fd=lock.cgroup_dir_fd,
            rlimits=lock.rlimits,
            drop_bounding_set=lock.drop_bounding_set, last_cap=caps.last_cap(), securebits=lock.securebits,
            uid=lock.uid, gid=lock.gid, landlock_fd=lock.ruleset.fd, filters=lock.filters,
            listener_sock=theirs.fileno() if theirs else -1, umask=UMASK, overlays=lock.overlays, magic=lock.magic,
            **extra,
        )
        os.close(write_end)
        write_end = -1
        report = os.read(read_end, 8)
        listener = -1
        if len(report) < 8 and ours is not None:
            _, fds, _, _ = socket.recv_fds(ours, 1, 1, socket.MSG_DONTWAIT)
            listener = fds[0]
            os.set_inheritable(listener, False)
    finally:
        if write_end >= 0:
            os.close(write_end)
        os.close(read_end)
        for given, used in zip((stdin, stdout, stderr), stdio):
            if used != given:
                os.close(used)
        for end in (ours, theirs):
            if end is not None:
                end.close()
    if len(report) < 8:
        return pid, pidfd, listener, -1
    step, err = struct.unpack("=ii", report)
    if started is not None:
        started.clear()  # (reaped here: from now on its pid may be someone else's)
    os.waitpid(pid, 0)
    os.close(pidfd)
    raise _spawn_error(lock, step, err)


def _spawn_jailed(lock: Lockdown, stdin: int, stdout: int, stderr: int, started: list[tuple[int, ...]] | None,
                  extra: dict[str, Any]) -> tuple[int, int, int, int]:
    stdio = [_high_fd(fd) for fd in (stdin, stdout, stderr)]
    wants_listener = any(flags & _spawn.SECCOMP_FILTER_FLAG_NEW_LISTENER for _, flags in lock.filters)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) if wants_listener else (None, None)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    read_end, write_end = _high_fd(read_end), _high_fd(write_end)
    listener = -1
    try:
        pid, pidfd, report = _spawn.spawn(
            path=os.fsencode(lock.executable), argv=lock.argv, envp=lock.env, cwd=os.fsencode(lock.cwd), stdio=stdio,
            errpipe=write_end, parent_pid=os.getpid(), cgroup_fds=lock.cgroup_fds, cgroup_dir_fd=lock.cgroup_dir_fd,
            rlimits=lock.rlimits,
            drop_bounding_set=lock.drop_bounding_set, last_cap=caps.last_cap(), securebits=lock.securebits,
            uid=lock.uid, gid=lock.gid, landlock_fd=lock.ruleset.fd, filters=lock.filters,
            listener_sock=theirs.fileno() if theirs else -1, umask=UMASK, overlays=lock.overlays, magic=lock.magic,
            jail_flags=lock.jail_flags, netns_fd=lock.netns_fd, proc_rights=lock.proc_rights,
            hostname=lock.hostname, report_fd=read_end, root=lock.root, root_rights=lock.root_rights,
            template_fd=lock.template_fd, **extra,
        )
        listener, report = start_listener(pid, ours, report, reports_started(report))
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
        for given, used in zip((stdin, stdout, stderr), stdio):
            if used != given:
                os.close(used)
        for end in (ours, theirs):
            if end is not None:
                end.close()
    if reports_started(report):
        os.set_blocking(read_end, False)
        return pid, pidfd, listener, read_end
    os.close(read_end)
    if started is not None:
        started.clear()  # (reaped by failed_start: from now on its pid may be someone else's)
    raise failed_start(lock, pid, pidfd, report)


def failed_start(lock: Lockdown, pid: int, pidfd: int, report: bytes) -> Exception:
    """The error of a start whose first report (step, errno) was not STEP_STARTED (in a jail: its
    init's; a short report: it died without a word). Reaps the process and closes its pidfd."""
    os.waitpid(pid, 0)
    os.close(pidfd)
    if len(report) < 8:
        return SpawnError(errno.ECHILD, "the sandbox's init died before the program started; nothing was run")
    step, err = struct.unpack("=ii", report)
    return _spawn_error(lock, step, err)


@dataclass(frozen=True)
class InitRecord:
    """What a jail's init reports when the program exits (struct init_record in _spawn.c)."""

    status: int  # the program's wait status
    ru_utime: float  # CPU seconds of every process of the namespace the init reaped
    ru_stime: float
    ru_maxrss: int  # KiB, the largest of them


def read_init_record(fd: int) -> InitRecord | None:
    """The init's record, or None when it was killed before it could write one."""
    try:
        data = os.read(fd, _INIT_RECORD.size)
    except BlockingIOError:
        return None
    if len(data) != _INIT_RECORD.size:
        return None
    kind, status, utime_us, stime_us, maxrss = _INIT_RECORD.unpack(data)
    if kind != _spawn.INIT_RECORD_KIND:
        return None
    return InitRecord(status, utime_us / 1e6, stime_us / 1e6, maxrss)


_INIT_RECORD = struct.Struct("=iiqqq")


def _spawn_error(lock: Lockdown, step: int, err: int) -> Exception:
    what = STEPS.get(step, f"step {step}")
    reason = os.strerror(err)
    if step == STEP_EXEC and err in (errno.ENOENT, errno.ENOTDIR):
        return CommandNotFound(
            f"cannot exec {lock.executable}: {reason}; a script's interpreter or the ELF loader may be missing "
            "(check the #! line) or not granted (pass it as a Mount)"
        )
    if step == STEP_EXEC and err == errno.EACCES:
        return SpawnError(err, f"cannot exec {lock.executable}: permission denied inside the sandbox; the file "
                          "must be executable and under a granted path (system trees, workspace, or a Mount)")
    if step in (STEP_LANDLOCK, STEP_SECCOMP) and err in (errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
        return UnsupportedKernel(f"the kernel refused to {what} ({reason}); nothing was run. Run `evalbox check`")
    return SpawnError(err, f"sandbox set-up failed while trying to {what}: {reason}; nothing was run")




def kill_uid(uid: int, gid: int) -> None:
    """SIGKILL every process of a sandbox's own uid, by running `kill -KILL -1` as that uid.

    kill(-1) reaches exactly the processes the caller may signal: with the sandbox's uid and no
    capabilities, those of that uid. Used when no cgroup tracks the tree.
    """
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    stdio = [_high_fd(devnull)] * 3
    try:
        pid, pidfd = _spawn.spawn(
            path=b"/bin/kill", argv=[b"kill", b"-KILL", b"-1"], envp=[b"PATH=/usr/bin:/bin"], cwd=b"/", stdio=stdio,
            errpipe=_high_fd(write_end), parent_pid=os.getpid(), cgroup_fds=[], rlimits=[], drop_bounding_set=False,
            last_cap=caps.last_cap(), securebits=-1, uid=uid, gid=gid, landlock_fd=-1, filters=[], listener_sock=-1,
            umask=UMASK,
        )
        os.close(pidfd)
        os.waitpid(pid, 0)
    finally:
        for fd in {devnull, stdio[0], read_end, write_end}:
            try:
                os.close(fd)
            except OSError:
                pass


def _session_of(pid: int) -> tuple[int, str] | None:
    """(session id, state) of a process, from /proc/<pid>/stat; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    return int(fields[3]), fields[0].decode()


def kill_session(sid: int, rounds: int = 8) -> None:
    """SIGKILL every live process of session `sid` (a run whose processes made groups of their
    own, with no cgroup and no uid of its own to find them by). The caller holds the session
    leader unreaped, so `sid` names no other session meanwhile; each pid is pinned with a pidfd
    and checked again before it is signalled, so a reused pid is never hit."""
    me = os.getpid()
    for _ in range(rounds):
        found = False
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == me:
                continue
            seen = _session_of(int(name))
            if seen is None or seen[0] != sid or seen[1] in ("Z", "X"):
                continue
            try:
                pidfd = os.pidfd_open(int(name))
            except OSError:
                continue
            try:
                again = _session_of(int(name))
                if again is not None and again[0] == sid:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    found = True
            except OSError:
                pass
            finally:
                os.close(pidfd)
        if not found:
            return
