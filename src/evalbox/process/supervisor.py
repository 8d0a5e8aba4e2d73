"""The supervisor side of one sandbox: read its intercepted calls, answer them, virtualize paths.

Runs in the caller's event loop; every step is a non-blocking ioctl, so a pending decision
blocks only the sandbox that made the call.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable

import signal

from evalbox.errors import ValidationError
from evalbox.kernel import seccomp_notify as sn
from evalbox.kernel.syscall_table import ARCHES, AUDIT_ARCH
from evalbox.policy.seccomp_policy import BLOCKED, EMULATED, LARGE_MAP, NOTED, Routing
from evalbox.process import metadata
from evalbox.policy.plan import NotifyMode, Plan
from evalbox.policy.supervision import DIRFD_CALLS, PATH_ARG, SOCKADDR_CALLS, Decision, SyscallRecord, SyscallRequest

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
O_WRITE_MASK = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
STAT_CALLS = ("stat", "lstat", "newfstatat")
AT_SYMLINK_NOFOLLOW = 0x100
ACCESS_CALLS = ("access", "faccessat", "faccessat2")
OPEN_CALLS = ("open", "openat", "openat2", "creat")
MAX_PER_WAKEUP = 64  # notifications handled per readiness before other sandboxes get a turn


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
                 others_only: bool = False, routing: Routing | None = None, workspace: str | None = None) -> None:
        """`others_only`: the sandbox has a uid of its own (root host) while the supervisor is
        root, so virtualized access is limited to what file modes give "other" users.
        `routing`: why the filter sends each call here (policy kills, workspace metadata, the
        plan's intercepts); `workspace`: the root below which metadata changes are done."""
        self.sandbox_id = sandbox_id
        self.plan = plan
        self.listener = listener
        self.pid = pid
        self.routing = routing
        self.workspace = workspace
        self.names = routing.names if routing else {nr: name for name, nr in ARCHES[arch].items()}
        self.arch = arch
        self.native_arch = AUDIT_ARCH[arch]
        self.records: list[SyscallRecord] = []
        self.pending: dict[int, SyscallRequest] = {}
        self.blocked: list[tuple[str, int]] = []  # (call, pid) of each process killed for a forbidden call
        self.made_groups = False  # a process of the run made a process group of its own (setpgid)
        self.memory_refused = False  # an allocation was refused by the RLIMIT_AS memory limit
        self.error: str | None = None
        self.others_only = others_only
        # (only worth an ioctl when calls are intercepted on purpose)
        self.sync_wakeup = sn.set_sync_wakeup(listener) if plan.notify is not NotifyMode.DISABLED else False
        self._poller = sn.poller(listener)
        self.roots: list[tuple[str, str, int]] = []  # (virtual prefix, host dir, O_PATH fd)
        for virtual, host in sorted(plan.virtual_paths.items(), key=lambda kv: -len(kv[0])):
            try:
                fd = os.open(host, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as e:
                self.close()
                raise ValidationError(f"virtual_paths[{virtual!r}]: {host} is not a directory on this host ({e.strerror})") from None
            self.roots.append((virtual, host, fd))

    def close(self) -> None:
        for _, _, fd in self.roots:
            os.close(fd)
        self.roots = []
        if self.listener >= 0:
            os.close(self.listener)
            self.listener = -1

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
            if i and not sn.pending(self._poller):  # the first one: epoll just said readable
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
                    metadata.emulate(self.listener, n, self.names.get(n.nr, ""), self.workspace)
                    continue
                if reason == LARGE_MAP:  # only integers: the kernel decides, we note a refusal to come
                    self._check_mapping(n)
                    sn.allow(self.listener, n.id)
                    continue
                if reason == NOTED:  # setpgid: only integers, nothing to re-read
                    self.made_groups = True
                    sn.allow(self.listener, n.id)
                    continue
            name = self.names.get(n.nr, f"syscall_{n.nr}")
            path = self._path(name, n)
            if path is not None and not sn.still_valid(self.listener, n.id):
                continue  # the caller died (its pid may be reused) while we read its memory
            req = SyscallRequest(self.sandbox_id, name, n.args, n.pid, path, n.id)
            if self.plan.notify is NotifyMode.MONITOR:
                sn.allow(self.listener, n.id)
                self.records.append(SyscallRecord(name, path, n.args, n.pid, "continued"))
                out.append(req)
            elif self.plan.notify is NotifyMode.VIRTUALIZE:
                self._virtualize(req)
            else:
                self.pending[n.id] = req
                out.append(req)
        return out

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
        if decision.action == "allow":
            done = sn.allow(self.listener, req.id)
            self.records.append(SyscallRecord(req.syscall, req.path, req.args, req.pid,
                                              "allowed" if done else "abandoned (caller gone)"))
        elif decision.action == "deny":
            done = sn.fail(self.listener, req.id, decision.errno)
            name = errno.errorcode.get(decision.errno, decision.errno)
            self.records.append(SyscallRecord(req.syscall, req.path, req.args, req.pid,
                                              f"denied {name}" if done else "abandoned (caller gone)"))
        else:
            self.records.append(SyscallRecord(req.syscall, req.path, req.args, req.pid, "killed"))
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
        link = f"/proc/{req.pid}/cwd" if dirfd == AT_FDCWD else f"/proc/{req.pid}/fd/{dirfd}"
        try:
            base = os.readlink(link)
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
            self.records.append(SyscallRecord(req.syscall, req.path, req.args, req.pid, "continued"))
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
        self.records.append(SyscallRecord(req.syscall, req.path, req.args, req.pid, outcome))

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
            fd = sn.openat2(root, rel.encode("utf-8", "surrogateescape"), flags & ~os.O_CLOEXEC, mode, resolve)
            try:
                self._check_others_may_read(root, fd)
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
