"""The supervisor side of one sandbox: read its intercepted calls, answer them, virtualize paths.

Runs in the caller's event loop; every step is a non-blocking ioctl, so a pending decision
blocks only the sandbox that made the call.

Soundness (SPEC §5): for the open, stat and access families (and the path of the exec family)
the path is read once into evalbox's own copy and resolved by an `Opener` with the program's
rights and view; `req.path` names the file found (absolute, normalised, links resolved) and an
allowed call is carried out on that very file (the fd is injected, the stat result written back),
so neither a racing thread nor a swapped link can get another file through. Exec-family calls
and every other intercepted call are allowed by letting the kernel run them as made
(SECCOMP_USER_NOTIF_FLAG_CONTINUE): for those the path is advisory (README lists them).
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import struct
from collections.abc import Callable

from evalbox.errors import ValidationError
from evalbox.policy.filesystem import open_named_path
from evalbox.kernel import seccomp_notify as sn
from evalbox.process.opener import AT_FDCWD as OPENER_ROOT
from evalbox.process.opener import PROC_SUPER_MAGIC, Opener, OpenerBroken, fs_type
from evalbox.kernel.syscall_table import ARCHES, AUDIT_ARCH
from evalbox.policy.seccomp_policy import BLOCKED, EMULATED, LARGE_MAP, MEMFD, NOTED, Routing
from evalbox.process import metadata
from evalbox.policy.plan import NotifyMode, Plan
from evalbox.policy.supervision import (
    DIRFD_CALLS, DROPPED_CALL, MAX_RECORD_PATH, MAX_RECORDS, PATH_ARG, SOCKADDR_CALLS, TRUNCATED_MARK, Decision,
    SyscallRecord, SyscallRequest,
)

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
O_WRITE_MASK = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
STAT_CALLS = ("stat", "lstat", "newfstatat")
AT_SYMLINK_NOFOLLOW = 0x100
ACCESS_CALLS = ("access", "faccessat", "faccessat2")
OPEN_CALLS = ("open", "openat", "openat2", "creat")
MAX_PER_WAKEUP = 64  # notifications handled per readiness before other sandboxes get a turn
EXEC_CALLS = ("execve", "execveat")
# Calls carried out on the file evalbox resolved itself (sound); the rest run as made (advisory).
SOUND_CALLS = frozenset(OPEN_CALLS + STAT_CALLS + ("statx",) + ACCESS_CALLS + EXEC_CALLS)
O_PATH = os.O_PATH
AT_EACCESS = 0x200
SYS_FACCESSAT2 = "faccessat2"


class _Prepared:
    """A sound call, resolved and ready: `path` for the decision, `carry_out` if allowed."""

    __slots__ = ("path", "carry_out", "fds")

    def __init__(self, path: str | None, carry_out: Callable[[], str], fds: list[int] | None = None) -> None:
        self.path = path
        self.carry_out = carry_out
        self.fds = fds or []

    def close(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


def _normal(path: str) -> str:
    """Absolute path with //, . and .. collapsed (textually)."""
    return "/" + os.path.normpath(path).lstrip("/") if path.startswith("/") else os.path.normpath(path)




class SupervisorFailed(Exception):
    """The plan's supervisor raised or answered nonsense: the sandbox is killed."""


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _pack_stat(st: os.stat_result) -> bytes:
    """struct stat as the x86_64 kernel fills it (144 bytes)."""
    return struct.pack(
        "=QQQIIIiQqqqqqqqqq3q",
        st.st_dev, st.st_ino, st.st_nlink, st.st_mode, st.st_uid, st.st_gid, 0, st.st_rdev, st.st_size,
        st.st_blksize, st.st_blocks,
        int(st.st_atime), st.st_atime_ns % 10**9, int(st.st_mtime), st.st_mtime_ns % 10**9,
        int(st.st_ctime), st.st_ctime_ns % 10**9, 0, 0, 0,
    )


def _pack_statx(st: os.stat_result) -> bytes:
    """struct statx with the basic fields (256 bytes)."""
    def ts(ns: int) -> bytes:
        return struct.pack("=qIi", ns // 10**9, ns % 10**9, 0)

    head = struct.pack("=IIQIIIHH", 0x7FF, st.st_blksize, 0, st.st_nlink, st.st_uid, st.st_gid, st.st_mode, 0)
    body = struct.pack("=QQQQ", st.st_ino, st.st_size, st.st_blocks, 0)
    times = ts(st.st_atime_ns) + ts(0) + ts(st.st_ctime_ns) + ts(st.st_mtime_ns)
    devs = struct.pack("=IIII", os.major(st.st_rdev), os.minor(st.st_rdev), os.major(st.st_dev), os.minor(st.st_dev))
    out = head + body + times + devs
    return out + b"\0" * (256 - len(out))


class Supervision:
    """One sandbox's listener and what its plan says to do with each intercepted call."""

    def __init__(self, sandbox_id: int, plan: Plan, listener: int, pid: int, arch: str,
                 others_only: bool = False, routing: Routing | None = None, workspace: str | None = None,
                 ruleset_fd: int = -1, uid: int = -1, gid: int = -1, proc_gid: int = -1) -> None:
        """`others_only`: the sandbox has a uid of its own (root host) while the supervisor is
        root, so virtualized access is limited to what file modes give "other" users.
        `routing`: why the filter sends each call here (policy kills, workspace metadata, the
        plan's intercepts); `workspace`: the root below which metadata changes are done.
        `ruleset_fd`, `uid`, `gid`: the program's Landlock ruleset and ids, for the Opener;
        `proc_gid`: the group that sees the program in a jail's /proc (policy/jail.py)."""
        self.sandbox_id = sandbox_id
        self.plan = plan
        self.listener = listener
        self.pid = pid
        self.routing = routing
        self.workspace = workspace
        self.owner = uid  # the sandbox's own uid (root host), else -1
        self.names = routing.names if routing else {nr: name for name, nr in ARCHES[arch].items()}
        self.arch = arch
        self.native_arch = AUDIT_ARCH[arch]
        self.records: list[SyscallRecord] = []  # at most MAX_RECORDS, then one DROPPED_CALL record
        self.dropped_records = 0
        self.pending: dict[int, SyscallRequest] = {}
        self.blocked: list[tuple[str, int]] = []  # (call, pid) of each process killed for a forbidden call
        self.made_groups = False  # a process of the run made a process group of its own (setpgid)
        self.memory_refused = False  # an allocation was refused by the RLIMIT_AS memory limit
        self.error: str | None = None
        self.others_only = others_only
        self.proc_gid = proc_gid
        # (only worth an ioctl when calls are intercepted on purpose)
        self.sync_wakeup = sn.set_sync_wakeup(listener) if plan.notify is not NotifyMode.DISABLED else False
        self._poller: object | None = None  # made on the first wake-up (most runs never have one)
        self.roots: list[tuple[str, str, int]] = []  # (virtual prefix, host dir, O_PATH fd)
        self._prepared: dict[int, _Prepared] = {}
        self.opener: Opener | None = None
        # the Opener is made at the first sound call (its caller is then alive and waiting, so its
        # mount namespace can be joined): keep what it needs until then
        self._opener_needs: tuple[int, int, int, int] | None = None
        if plan.notify in (NotifyMode.SUPERVISE, NotifyMode.MONITOR) and SOUND_CALLS & set(plan.intercept):
            self._opener_needs = (os.dup(ruleset_fd) if ruleset_fd >= 0 else -1, uid, gid, proc_gid)
        for virtual, host in sorted(plan.virtual_paths.items(), key=lambda kv: -len(kv[0])):
            try:
                fd = open_named_path(host, f"virtual_paths[{virtual!r}]", os.O_PATH | os.O_DIRECTORY)
            except ValidationError:
                self._close_all_but_listener()
                raise
            except OSError as e:
                self._close_all_but_listener()
                raise ValidationError(f"virtual_paths[{virtual!r}]: {host} is not a directory on this host ({e.strerror})") from None
            self.roots.append((virtual, host, fd))

    def _close_all_but_listener(self) -> None:
        """A constructor that fails leaves the listener to its caller (who closes it, with the
        program it listens to, whatever the failure was)."""
        self.listener = -1
        self.close()

    def close(self) -> None:
        # (everything forgotten before it is closed: a close cut short and done again never
        # closes an fd number twice, which may belong to someone else by then)
        roots, self.roots = self.roots, []
        for _, _, fd in roots:
            os.close(fd)
        prepared, self._prepared = list(self._prepared.values()), {}
        for one in prepared:
            one.close()
        opener, self.opener = self.opener, None
        if opener is not None:
            opener.close()
        needs, self._opener_needs = self._opener_needs, None
        if needs is not None and needs[0] >= 0:
            os.close(needs[0])
        listener, self.listener = self.listener, -1
        if listener >= 0:
            os.close(listener)

    # -- reading requests -------------------------------------------------------------------------

    def _path(self, name: str, n: sn.Notification) -> str | None:
        if name in PATH_ARG:
            raw = sn.read_string(n.pid, n.args[PATH_ARG[name]])
            return raw.decode("utf-8", "surrogateescape") if raw is not None else None
        if name in SOCKADDR_CALLS:
            addr, length = (n.args[i] for i in SOCKADDR_CALLS[name])
            raw = sn.read_bytes(n.pid, addr, min(length, 128)) if length >= 2 else None
            return _describe_sockaddr(raw) if raw else None
        return None

    def receive(self) -> list[SyscallRequest]:
        """Requests waiting on the listener (at most MAX_PER_WAKEUP), after MONITOR/VIRTUALIZE
        answered what they answer themselves."""
        out = []
        for i in range(MAX_PER_WAKEUP):
            if i:  # the first one: epoll just said readable
                if self._poller is None:
                    self._poller = sn.poller(self.listener)
                if not sn.pending(self._poller):
                    break
            n = sn.receive(self.listener)
            if n is None:
                break
            if self.routing is not None:
                if n.arch != self.native_arch or n.nr < 0 or n.nr >= X32_SYSCALL_BIT:
                    self._block(n, _foreign_name(n))
                    continue
                reason = self.routing.reason(n.nr, n.args)
                if reason == BLOCKED:
                    self._block(n, self.names.get(n.nr, f"syscall {n.nr}"))
                    continue
                if reason == EMULATED:
                    metadata.emulate(self.listener, n, self.names.get(n.nr, ""), self.workspace, self.owner)
                    continue
                if reason == LARGE_MAP:  # only integers: the kernel decides, we note a refusal to come
                    self._check_mapping(n)
                    sn.allow(self.listener, n.id)
                    continue
                if reason == MEMFD:
                    _memfd_for(self.listener, n)
                    continue
                if reason == NOTED:  # setpgid: only integers, nothing to re-read
                    self.made_groups = True
                    sn.allow(self.listener, n.id)
                    continue
            name = self.names.get(n.nr, f"syscall_{n.nr}")
            if self.plan.notify is NotifyMode.VIRTUALIZE:
                path = self._path(name, n)
                if path is not None and not sn.still_valid(self.listener, n.id):
                    continue  # the caller died (its pid may be reused) while we read its memory
                self._virtualize(SyscallRequest(self.sandbox_id, name, n.args, n.pid, path, n.id))
                continue
            prepared = self._prepare(name, n) if self._opener_for(n.pid) and name in SOUND_CALLS else None
            path = prepared.path if prepared is not None else self._advisory_path(name, n)
            if not sn.still_valid(self.listener, n.id):
                if prepared is not None:
                    prepared.close()
                continue  # the caller died (its pid may be reused) while we looked
            req = SyscallRequest(self.sandbox_id, name, n.args, n.pid, path, n.id)
            if self.plan.notify is NotifyMode.MONITOR:
                try:
                    outcome = prepared.carry_out() if prepared is not None else (
                        "continued" if sn.allow(self.listener, n.id) else "abandoned (caller gone)")
                    outcome = "continued" if outcome == "allowed" else outcome
                finally:
                    if prepared is not None:
                        prepared.close()
                self._record(SyscallRecord(name, path, n.args, n.pid, outcome))
                out.append(req)
            else:
                self.pending[n.id] = req
                if prepared is not None:
                    self._prepared[n.id] = prepared
                out.append(req)
        return out

    def _opener_for(self, pid: int) -> bool:
        """Is there an Opener (made now, from the waiting caller `pid`, if needed)?"""
        if self.opener is not None:
            return True
        if self._opener_needs is None:
            return False
        ruleset_fd, uid, gid, proc_gid = self._opener_needs
        try:
            self.opener = Opener(pid, ruleset_fd, uid, gid, proc_gid)
        except OpenerBroken as e:
            raise SupervisorFailed(f"supervision needs to open files with the program's rights, and {e} "
                                   "(use notify=NotifyMode.DISABLED)") from None
        finally:
            if ruleset_fd >= 0:
                os.close(ruleset_fd)
            self._opener_needs = None
        return True

    # -- paths ---------------------------------------------------------------------------------------

    def _advisory_path(self, name: str, n: sn.Notification) -> str | None:
        """The call's path, absolute and normalised (its dirfd or the cwd joined), or its socket
        address. Read from the program's memory: advisory (the kernel reads it again)."""
        path = self._path(name, n)
        if path is None or name not in PATH_ARG or path.startswith("/"):
            return _normal(path) if path and path.startswith("/") else path
        base = self._base_path(name, n)
        return _normal(os.path.join(base, path)) if base is not None else None

    def _base_path(self, name: str, n: sn.Notification) -> str | None:
        dirfd = _int32(n.args[0]) if name in DIRFD_CALLS else AT_FDCWD
        link = "cwd" if dirfd == AT_FDCWD else f"fd/{dirfd}"
        try:
            return sn.proc_readlink(n.pid, link)
        except OSError:
            return None

    def _self_rewrite(self, raw: bytes, pid: int) -> bytes:
        """/proc/self and /proc/thread-self mean the program, not the opener: name its pid."""
        clean = os.path.normpath(raw).lstrip(b"/")
        for prefix in (b"proc/self", b"proc/thread-self"):
            if raw.startswith(b"/") and (clean == prefix or clean.startswith(prefix + b"/")):
                try:
                    with open(f"/proc/{pid}/status", "rb") as f:
                        fields = dict(line.split(b":", 1) for line in f.read().splitlines() if b":" in line)
                    tgid = int(fields[b"Tgid"])
                    with open(f"/proc/{tgid}/status", "rb") as f:
                        ns_tgid = [l for l in f.read().splitlines() if l.startswith(b"NSpid:")][0].split()[-1]
                    ns_tid = fields[b"NSpid"].split()[-1]
                except (OSError, KeyError, IndexError, ValueError):
                    return raw
                own = b"/proc/" + ns_tgid + (b"/task/" + ns_tid if prefix.endswith(b"thread-self") else b"")
                return own + clean[len(prefix):]
        return raw

    def _own_proc_entry(self, fd: int) -> int:
        """EACCES if `fd` is an entry of evalbox's own process in /proc (the opener thread's
        /proc/<pid>); ENOENT if, in a jail, it is one hidepid hides from the program (its init);
        else 0."""
        if fs_type(fd) != PROC_SUPER_MAGIC:
            return 0
        assert self.opener is not None
        parts = self.opener.real_path(fd).split("/")
        if len(parts) < 3 or parts[1] != "proc" or not parts[2].isdigit():
            return 0
        if self.proc_gid >= 0:  # (a jail's /proc: evalbox's own processes are not in it)
            # The opener is exempt from the jail's hidepid; the program sees only the processes
            # of its own uid that are dumpable, which are the ones whose /proc/<pid> it owns.
            try:
                entry = self.opener.resolve(OPENER_ROOT, f"/proc/{parts[2]}".encode(), False)
                try:
                    return errno.ENOENT if self.owner >= 0 and os.fstat(entry).st_uid != self.owner else 0
                finally:
                    os.close(entry)
            except OSError:
                return errno.ENOENT
        try:
            ours = set(os.listdir(f"/proc/{os.getpid()}/task"))
        except OSError:
            return errno.EACCES
        return errno.EACCES if parts[2] in ours or parts[2] == str(os.getpid()) else 0

    def _prepare(self, name: str, n: sn.Notification) -> _Prepared:
        """Resolve a sound call's path with the program's rights; what to do if it is allowed."""
        opener = self.opener
        assert opener is not None
        listener, nid, args = self.listener, n.id, n.args

        def fail(code: int) -> Callable[[], str]:
            def run() -> str:
                return f"failed {errno.errorcode.get(code, code)}" if sn.fail(listener, nid, code) else "abandoned"
            return run

        raw = sn.read_string(n.pid, args[PATH_ARG[name]])
        if raw is None:
            return _Prepared(None, fail(errno.EFAULT))
        flags = 0
        if name in ("newfstatat", "faccessat2"):
            flags = args[3]
        elif name == "statx":
            flags = args[2]
        elif name == "execveat":
            flags = args[4]
        follow = not (flags & AT_SYMLINK_NOFOLLOW) and name != "lstat"
        dirfd = _int32(args[0]) if name in DIRFD_CALLS else AT_FDCWD
        mode_flags, mode, resolve = 0, 0, 0
        if name in OPEN_CALLS:
            if name == "openat2":
                how = sn.read_bytes(n.pid, args[2], 24)
                if how is None:
                    return _Prepared(None, fail(errno.EFAULT))
                mode_flags, mode, resolve = struct.unpack("=QQQ", how)
            elif name == "creat":
                mode_flags, mode = os.O_CREAT | os.O_WRONLY | os.O_TRUNC, args[1]
            else:
                i = 1 if name == "open" else 2
                mode_flags, mode = args[i] & 0xFFFFFFFF, args[i + 1] & 0o7777
            follow = not mode_flags & os.O_NOFOLLOW and not (mode_flags & os.O_CREAT and mode_flags & os.O_EXCL)

        fds: list[int] = []
        base = OPENER_ROOT
        textual = raw.decode("utf-8", "surrogateescape")
        try:
            if raw.startswith(b"/"):
                raw = self._self_rewrite(raw, n.pid)
            elif raw or flags & AT_EMPTY_PATH:
                link = "cwd" if dirfd == AT_FDCWD else f"fd/{dirfd}"
                base = sn.proc_open(n.pid, link, os.O_PATH)  # the program's own directory (or fd)
                fds.append(base)
                base_path = opener.real_path(base)
                textual = _normal(os.path.join(base_path, textual)) if textual else base_path
                if base_path == "/proc" and raw.split(b"/")[0] in (b"self", b"thread-self"):
                    raw, base = self._self_rewrite(b"/proc/" + raw, n.pid), OPENER_ROOT  # (see there)
            if not raw:
                if not flags & AT_EMPTY_PATH:
                    return _Prepared(textual or None, fail(errno.ENOENT), fds)
                target = os.dup(base)
            else:
                target = opener.resolve(base, raw, follow, resolve)
        except OSError as e:
            code = e.errno or errno.EACCES
            if code == errno.ENOENT and mode_flags & os.O_CREAT and raw:
                return self._prepare_create(raw, base, mode_flags, mode, fds, listener, nid, fail)
            return _Prepared(_normal(textual) if textual.startswith("/") else textual, fail(code), fds)
        fds.append(target)
        try:
            refused = self._own_proc_entry(target)
            if refused:
                return _Prepared(_normal(textual), fail(refused), fds)
            path = opener.real_path(target)
        except OSError as e:
            return _Prepared(_normal(textual), fail(e.errno or errno.EACCES), fds)

        if name in EXEC_CALLS:
            def run_exec() -> str:  # advisory: the kernel resolves the path again
                return "allowed" if sn.allow(listener, nid) else "abandoned"
            return _Prepared(path, run_exec, fds)
        if name in OPEN_CALLS:
            return _Prepared(path, lambda: self._carry_out_open(nid, target, mode_flags), fds)
        if name in ACCESS_CALLS:
            access_mode = args[1] if name == "access" else args[2]
            return _Prepared(path, lambda: self._carry_out_access(nid, target, access_mode), fds)
        return _Prepared(path, lambda: self._carry_out_stat(name, n, target), fds)

    def _prepare_create(self, raw: bytes, base: int, flags: int, mode: int, fds: list[int],
                        listener: int, nid: int, fail) -> _Prepared:  # type: ignore[no-untyped-def]
        assert self.opener is not None
        head, _, name = raw.rstrip(b"/").rpartition(b"/")
        if not name or name in (b".", b".."):
            return _Prepared(None, fail(errno.EISDIR), fds)
        try:
            parent = self.opener.resolve(base, head or (b"/" if raw.startswith(b"/") else b"."), True)
        except OSError as e:
            return _Prepared(None, fail(e.errno or errno.EACCES), fds)
        fds.append(parent)
        try:
            path = _normal(os.path.join(self.opener.real_path(parent), name.decode("utf-8", "surrogateescape")))
        except OSError as e:
            return _Prepared(None, fail(e.errno or errno.EACCES), fds)

        def run() -> str:
            assert self.opener is not None
            try:
                fd = self.opener.create(parent, name, flags & ~os.O_CLOEXEC, mode)
            except OSError as e:
                code = e.errno or errno.EACCES
                return f"failed {errno.errorcode.get(code, code)}" if sn.fail(listener, nid, code) else "abandoned"
            try:
                return "allowed" if sn.inject_fd_and_return(listener, nid, fd, bool(flags & os.O_CLOEXEC)) else "abandoned"
            except OSError:
                return "failed EIO" if sn.fail(listener, nid, errno.EIO) else "abandoned"
            finally:
                os.close(fd)
        return _Prepared(path, run, fds)

    def _carry_out_open(self, nid: int, target: int, flags: int) -> str:
        assert self.opener is not None
        try:
            kind = os.fstat(target).st_mode
            if flags & O_PATH:
                # an O_PATH fd cannot be injected (SECCOMP_IOCTL_NOTIF_ADDFD refuses it): the
                # program gets the file opened read-only, which serves every O_PATH use (README)
                if stat.S_ISLNK(kind):
                    raise OSError(errno.ELOOP, "O_PATH|O_NOFOLLOW on a symbolic link")
                flags = os.O_RDONLY | (os.O_DIRECTORY if stat.S_ISDIR(kind) else 0) | (flags & os.O_CLOEXEC)
            if stat.S_ISLNK(kind):
                raise OSError(errno.ELOOP, "O_NOFOLLOW on a symbolic link")
            elif not (stat.S_ISREG(kind) or stat.S_ISDIR(kind) or stat.S_ISCHR(kind)):
                # a FIFO or socket open may block: refused under supervision (README)
                raise OSError(errno.EACCES, "not a file, directory or character device")
            else:  # (O_NOFOLLOW was applied when resolving; the reopen goes through a magic link)
                fd = self.opener.reopen(target, flags & ~(os.O_CLOEXEC | os.O_NOFOLLOW))
        except OSError as e:
            code = e.errno or errno.EACCES
            return f"failed {errno.errorcode.get(code, code)}" if sn.fail(self.listener, nid, code) else "abandoned"
        try:
            done = sn.inject_fd_and_return(self.listener, nid, fd, bool(flags & os.O_CLOEXEC))
            return "allowed" if done else "abandoned"
        except OSError as e:  # (e.g. the program's fd table is full)
            code = errno.EMFILE if e.errno == errno.EMFILE else errno.EIO
            return f"failed {errno.errorcode[code]}" if sn.fail(self.listener, nid, code) else "abandoned"
        finally:
            os.close(fd)

    def _carry_out_access(self, nid: int, target: int, access_mode: int) -> str:
        assert self.opener is not None
        try:
            self.opener.access_fd(target, access_mode & 7)
        except OSError as e:
            code = e.errno or errno.EACCES
            return f"failed {errno.errorcode.get(code, code)}" if sn.fail(self.listener, nid, code) else "abandoned"
        return "allowed" if sn.succeed(self.listener, nid, 0) else "abandoned"

    def _carry_out_stat(self, name: str, n: sn.Notification, target: int) -> str:
        args = n.args
        st = os.fstat(target)
        if name == "statx":
            ok = sn.write_bytes(self.listener, n.id, n.pid, args[4], _pack_statx(st))
        elif self.arch == "x86_64":
            buf = args[1] if name in ("stat", "lstat") else args[2]
            ok = sn.write_bytes(self.listener, n.id, n.pid, buf, _pack_stat(st))
        else:  # struct stat of other architectures: let the kernel do it (advisory, README)
            return "allowed" if sn.allow(self.listener, n.id) else "abandoned"
        if not ok:
            return "failed EFAULT" if sn.fail(self.listener, n.id, errno.EFAULT) else "abandoned"
        return "allowed" if sn.succeed(self.listener, n.id, 0) else "abandoned"

    def _check_mapping(self, n: sn.Notification) -> None:
        """A large mmap/mremap under an RLIMIT_AS limit: if the process's address space (the
        kernel's count, /proc/<pid>/status VmSize) plus the growth exceeds the limit, the kernel
        is about to refuse it (ENOMEM) because of the memory limit: note it for the verdict."""
        limit = self.plan.memory
        if limit is None or self.memory_refused:
            return
        growth = n.args[1] if self.names.get(n.nr) == "mmap" else n.args[2] - n.args[1]
        try:
            with open(f"/proc/{n.pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmSize:"):
                        size = int(line.split()[1]) * 1024
                        break
                else:
                    return
        except (OSError, ValueError, IndexError):
            return
        if size + growth > limit and sn.still_valid(self.listener, n.id):
            self.memory_refused = True

    def _block(self, n: sn.Notification, name: str) -> None:
        """A call the policy forbids: remember its name, then kill the process that made it (the
        call never runs; the process waits in the kernel until it dies)."""
        if not sn.still_valid(self.listener, n.id):
            return  # it died meanwhile; its pid may already belong to someone else
        if len(self.blocked) < 16:
            self.blocked.append((name, n.pid))
        try:
            os.kill(n.pid, signal.SIGKILL)  # (a thread id reaches its whole process)
        except ProcessLookupError:
            pass

    # -- answering ---------------------------------------------------------------------------------

    def decide_with(self, supervisor: Callable[[SyscallRequest], Decision], req: SyscallRequest) -> Decision:
        try:
            decision = supervisor(req)
        except Exception as e:  # the supervisor is user code: any failure ends the sandbox
            raise SupervisorFailed(f"supervisor raised {type(e).__name__}: {e} (on {req.syscall} {req.path or ''})") from e
        if not isinstance(decision, Decision):
            raise SupervisorFailed(f"supervisor returned {decision!r} for {req.syscall}; return Decision.ALLOW, "
                                   "Decision.deny(errno) or Decision.KILL")
        return decision

    def respond(self, req: SyscallRequest, decision: Decision) -> bool:
        """Answer a pending request. Returns False for KILL (the caller must kill the sandbox)."""
        if self.pending.pop(req.id, None) is None:
            raise ValueError(f"request {req.id} of sandbox {self.sandbox_id} is not pending (already answered?)")
        prepared = self._prepared.pop(req.id, None)
        try:
            return self._respond(req, decision, prepared)
        finally:
            if prepared is not None:
                prepared.close()

    def _record(self, record: SyscallRecord) -> None:
        """Keep a record for Output.syscalls, bounded: paths cut at MAX_RECORD_PATH characters, the
        first MAX_RECORDS records kept, then a single DROPPED_CALL record counting the rest."""
        if len(self.records) >= MAX_RECORDS:
            self.dropped_records += 1
            marker = SyscallRecord(DROPPED_CALL, None, (self.dropped_records,), 0,
                                   f"dropped {self.dropped_records} records past the cap of {MAX_RECORDS}")
            if len(self.records) > MAX_RECORDS:
                self.records[-1] = marker
            else:
                self.records.append(marker)
            return
        if record.path is not None and len(record.path) > MAX_RECORD_PATH:
            record = record._replace(path=record.path[:MAX_RECORD_PATH] + TRUNCATED_MARK)
        self.records.append(record)

    def _respond(self, req: SyscallRequest, decision: Decision, prepared: _Prepared | None) -> bool:
        if decision.action == "allow":
            if prepared is not None:
                outcome = prepared.carry_out()
                outcome = "allowed" if outcome == "allowed" else f"allowed, {outcome}"
            else:
                outcome = "allowed" if sn.allow(self.listener, req.id) else "abandoned (caller gone)"
            self._record(SyscallRecord(req.syscall, req.path, req.args, req.pid, outcome))

        elif decision.action == "deny":
            done = sn.fail(self.listener, req.id, decision.errno)
            name = errno.errorcode.get(decision.errno, decision.errno)
            self._record(SyscallRecord(req.syscall, req.path, req.args, req.pid,
                                              f"denied {name}" if done else "abandoned (caller gone)"))
        else:
            self._record(SyscallRecord(req.syscall, req.path, req.args, req.pid, "killed"))
            return False
        return True

    # -- virtualization ----------------------------------------------------------------------------

    def _host_target(self, req: SyscallRequest) -> tuple[int, str] | None:
        """(root fd, path below it) when the request names a virtual path, else None."""
        path = req.path
        if not path:
            return None  # no path, or "" with AT_EMPTY_PATH: the call acts on an fd it already holds
        if path.startswith("/"):
            for virtual, _, fd in self.roots:
                if path == virtual or path.startswith(virtual + "/"):
                    return fd, path[len(virtual):].lstrip("/") or "."
            return None
        # relative to a directory: is that directory one we handed out (inside a host root)?
        dirfd = _int32(req.args[0]) if req.syscall in DIRFD_CALLS else AT_FDCWD
        link = "cwd" if dirfd == AT_FDCWD else f"fd/{dirfd}"
        try:
            base = sn.proc_readlink(req.pid, link)
        except OSError:
            return None
        for _, host, fd in self.roots:
            if base == host or base.startswith(host + "/"):
                return fd, os.path.join(os.path.relpath(base, host), path or ".")
        return None

    def _virtualize(self, req: SyscallRequest) -> None:
        target = self._host_target(req)
        if target is None:
            # not a virtual path: the call runs as made, Landlock and the kill filter still apply
            sn.allow(self.listener, req.id)
            self._record(SyscallRecord(req.syscall, req.path, req.args, req.pid, "continued"))
            return
        root, rel = target
        outcome = "virtualized"
        try:
            self._virtual_call(req, root, rel)
        except OSError as e:
            # EXDEV from RESOLVE_BENEATH ('..', an absolute or escaping symlink) reads as EACCES
            code = errno.EACCES if e.errno in (errno.EXDEV, errno.ELOOP) else (e.errno or errno.EIO)
            sn.fail(self.listener, req.id, code)
            outcome = f"denied {errno.errorcode.get(code, code)}"
        self._record(SyscallRecord(req.syscall, req.path, req.args, req.pid, outcome))

    def _virtual_call(self, req: SyscallRequest, root: int, rel: str) -> None:
        name, args = req.syscall, req.args
        resolve = sn.RESOLVE_BENEATH | sn.RESOLVE_NO_MAGICLINKS
        if name in OPEN_CALLS:
            if name == "openat2":
                how = sn.read_bytes(req.pid, args[2], 24)
                if how is None or not sn.still_valid(self.listener, req.id):
                    raise OSError(errno.EFAULT, "open_how unreadable")
                flags, mode, _ = struct.unpack("=QQQ", how)
            elif name == "creat":
                flags, mode = os.O_CREAT | os.O_WRONLY | os.O_TRUNC, args[1]
            else:
                i = 1 if name == "open" else 2
                flags, mode = args[i] & 0xFFFFFFFF, args[i + 1] & 0o7777
            if flags & O_WRITE_MASK:
                raise OSError(errno.EROFS, "virtual paths are read-only")
            # O_PATH first (no open side effects), only regular files and directories, then the
            # real open through that fd, non-blocking (a FIFO, a device or a lease never stalls
            # the event loop), with the program's own flags otherwise
            nofollow = os.O_NOFOLLOW if flags & os.O_NOFOLLOW else 0
            opath = sn.openat2(root, rel.encode("utf-8", "surrogateescape"), os.O_PATH | nofollow, 0, resolve)
            try:
                kind = os.fstat(opath).st_mode
                if not (stat.S_ISREG(kind) or stat.S_ISDIR(kind)):
                    raise OSError(errno.EACCES, "virtual paths serve regular files and directories only")
                self._check_others_may_read(root, opath)
                fd = os.open(f"/proc/self/fd/{opath}", (flags & ~(os.O_CLOEXEC | os.O_CREAT | os.O_PATH))
                             | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
            finally:
                os.close(opath)
            try:
                if not flags & os.O_NONBLOCK:
                    os.set_blocking(fd, True)
                sn.inject_fd_and_return(self.listener, req.id, fd, bool(flags & os.O_CLOEXEC))
            finally:
                os.close(fd)
            return
        if name in ("getxattr", "lgetxattr"):
            raise OSError(errno.ENODATA, "virtual paths carry no extended attributes")
        nofollow = (name == "lstat" or (name == "newfstatat" and args[3] & AT_SYMLINK_NOFOLLOW)
                    or (name == "statx" and args[2] & AT_SYMLINK_NOFOLLOW))
        fd = sn.openat2(root, rel.encode("utf-8", "surrogateescape"), os.O_PATH | (os.O_NOFOLLOW if nofollow else 0),
                        0, resolve)
        try:
            self._check_others_may_read(root, fd, need_read=False)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if name in ACCESS_CALLS or name in ("listxattr", "llistxattr"):
            sn.succeed(self.listener, req.id, 0)  # (an empty attribute list)
        elif name in STAT_CALLS and self.arch == "x86_64":
            buf = args[1] if name in ("stat", "lstat") else args[2]
            if not sn.write_bytes(self.listener, req.id, req.pid, buf, _pack_stat(st)):
                raise OSError(errno.EFAULT, "stat buffer")
            sn.succeed(self.listener, req.id, 0)
        elif name == "statx":
            if not sn.write_bytes(self.listener, req.id, req.pid, args[4], _pack_statx(st)):
                raise OSError(errno.EFAULT, "statx buffer")
            sn.succeed(self.listener, req.id, 0)
        else:
            raise OSError(errno.EOPNOTSUPP, f"{name} on a virtual path")

    def _check_others_may_read(self, root: int, fd: int, need_read: bool = True) -> None:
        """Root supervisor, unprivileged sandbox: refuse what file modes would refuse "other"
        users (search on each directory from the mapped root down, read on the target)."""
        if not self.others_only:
            return
        target = os.readlink(f"/proc/self/fd/{fd}")
        top = os.readlink(f"/proc/self/fd/{root}")
        path = top
        for part in os.path.relpath(target, top).split("/")[:-1]:
            if part in ("", "."):
                continue
            path = os.path.join(path, part)
            if not os.stat(path).st_mode & 0o001:
                raise OSError(errno.EACCES, "not searchable by others")
        mode = os.fstat(fd).st_mode
        if need_read and not mode & 0o004:
            raise OSError(errno.EACCES, "not readable by others")


X32_SYSCALL_BIT = 0x40000000
MFD_CLOEXEC, MFD_EXEC, MFD_NOEXEC_SEAL = 0x1, 0x10, 0x8


def _memfd_for(listener: int, n: sn.Notification) -> None:
    """memfd_create for the program, never executable: created here with MFD_NOEXEC_SEAL (mode
    0666, F_SEAL_EXEC: no chmod +x later) and installed in the program as the call's result. The
    memory it holds is charged to whoever writes it (the program)."""
    flags = n.args[1] & 0xFFFFFFFF
    raw = sn.read_string(n.pid, n.args[0], 250)
    if raw is None:
        sn.fail(listener, n.id, errno.EFAULT)
        return
    try:
        fd = os.memfd_create(raw.decode("utf-8", "surrogateescape"), (flags & ~(MFD_EXEC | MFD_CLOEXEC)) | MFD_NOEXEC_SEAL)
    except OSError as e:
        # an older kernel (< 6.3) cannot make it non-executable: refuse as if memfds did not exist
        sn.fail(listener, n.id, errno.ENOSYS if e.errno == errno.EINVAL and not flags & ~0x1F else e.errno or errno.EINVAL)
        return
    try:
        sn.inject_fd_and_return(listener, n.id, fd, bool(flags & MFD_CLOEXEC))
    finally:
        os.close(fd)


def _foreign_name(n: sn.Notification) -> str:
    """A call of another ABI (i386 `int $0x80`, x32, arm32), named by its ABI and number."""
    if n.nr >= X32_SYSCALL_BIT and n.arch == AUDIT_ARCH["x86_64"]:
        return f"x32 syscall {n.nr & ~X32_SYSCALL_BIT}"
    abi = {0x40000003: "i386", 0x40000028: "arm"}.get(n.arch, f"audit arch {n.arch:#x}")
    return f"{abi} syscall {n.nr}"


def _describe_sockaddr(raw: bytes) -> str | None:
    family = struct.unpack_from("=H", raw)[0]
    if family == 1:  # AF_UNIX
        path = raw[2:]
        if path[:1] == b"\0":
            return "unix:@" + path[1:].split(b"\0")[0].decode("utf-8", "replace")
        return "unix:" + path.split(b"\0")[0].decode("utf-8", "replace")
    if family == 2 and len(raw) >= 8:  # AF_INET
        port = struct.unpack_from("!H", raw, 2)[0]
        return f"inet:{'.'.join(str(b) for b in raw[4:8])}:{port}"
    if family == 10 and len(raw) >= 24:  # AF_INET6
        import ipaddress

        port = struct.unpack_from("!H", raw, 2)[0]
        return f"inet6:[{ipaddress.IPv6Address(raw[8:24])}]:{port}"
    return f"family:{family}"
