"""seccomp user notification: receive, answer, inject fds, read the caller's memory (no policy).

Struct layouts from include/uapi/linux/seccomp.h (x86_64 and aarch64 share them).
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import struct
from dataclasses import dataclass

from evalbox.kernel import _spawn

# ioctl numbers: _IOWR('!', 0, struct seccomp_notif) etc.
IOCTL_NOTIF_RECV = 0xC0502100
IOCTL_NOTIF_SEND = 0xC0182101
IOCTL_NOTIF_ID_VALID = 0x40082102
IOCTL_NOTIF_ADDFD = 0x40182103
IOCTL_NOTIF_SET_FLAGS = 0x40082104

USER_NOTIF_FLAG_CONTINUE = 1
ADDFD_FLAG_SETFD = 1
ADDFD_FLAG_SEND = 2
USER_NOTIF_FD_SYNC_WAKE_UP = 1
FILTER_FLAG_NEW_LISTENER = 1 << 3

SYS_OPENAT2 = 437  # unified number
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08

_NOTIF = struct.Struct("=QII iIQ6Q")  # id, pid, flags, then seccomp_data: nr, arch, ip, args
_RESP = struct.Struct("=QqiI")  # id, val, error, flags
_ADDFD = struct.Struct("=QIIII")  # id, flags, srcfd, newfd, newfd_flags


@dataclass(frozen=True)
class Notification:
    id: int
    pid: int
    nr: int
    arch: int
    ip: int
    args: tuple[int, ...]


def poller(listener: int) -> "select.poll":
    """A poll object for `pending` (kept by the caller: one per listener)."""
    p = select.poll()
    p.register(listener, select.POLLIN)
    return p


def pending(listener_poller: "select.poll") -> bool:
    """Is a notification waiting? (RECV itself would block until one arrives.)"""
    return bool(listener_poller.poll(0))


def receive(listener: int) -> Notification | None:
    """The next notification (blocks until there is one: check `pending` first), or None if
    the target died before it could be read."""
    buf = bytearray(_NOTIF.size)
    try:
        fcntl.ioctl(listener, IOCTL_NOTIF_RECV, buf, True)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.EAGAIN, errno.EINTR):
            return None
        raise
    nid, pid, _flags, nr, arch, ip, *args = _NOTIF.unpack(buf)
    return Notification(nid, pid, nr, arch, ip, tuple(args))


def _send(listener: int, nid: int, val: int, error: int, flags: int) -> bool:
    try:
        fcntl.ioctl(listener, IOCTL_NOTIF_SEND, _RESP.pack(nid, val, error, flags))
        return True
    except OSError as e:
        if e.errno == errno.ENOENT:  # the target died or was interrupted: nothing to answer
            return False
        raise


def allow(listener: int, nid: int) -> bool:
    """Let the call run as the program made it (the kernel re-reads its arguments)."""
    return _send(listener, nid, 0, 0, USER_NOTIF_FLAG_CONTINUE)


def fail(listener: int, nid: int, err: int) -> bool:
    """Make the call fail with `err` without running it."""
    return _send(listener, nid, 0, -err, 0)


def succeed(listener: int, nid: int, value: int) -> bool:
    """Make the call return `value` without running it."""
    return _send(listener, nid, value, 0, 0)


def still_valid(listener: int, nid: int) -> bool:
    """True while the notification's target is still waiting (its pid cannot have been reused)."""
    try:
        fcntl.ioctl(listener, IOCTL_NOTIF_ID_VALID, struct.pack("=Q", nid))
        return True
    except OSError:
        return False


def inject_fd_and_return(listener: int, nid: int, fd: int, cloexec: bool) -> bool:
    """Install `fd` in the target and make the call return its number there, atomically."""
    flags = os.O_CLOEXEC if cloexec else 0
    try:
        fcntl.ioctl(listener, IOCTL_NOTIF_ADDFD, _ADDFD.pack(nid, ADDFD_FLAG_SEND, fd, 0, flags))
        return True
    except OSError as e:
        if e.errno == errno.ENOENT:
            return False
        raise


def set_sync_wakeup(listener: int) -> bool:
    """Ask the kernel to wake the target on the supervisor's CPU (Linux 6.6+); False if unsupported."""
    try:
        fcntl.ioctl(listener, IOCTL_NOTIF_SET_FLAGS, USER_NOTIF_FD_SYNC_WAKE_UP)
        return True
    except OSError:
        return False


SYS_SETFSUID = {"x86_64": 122, "aarch64": 151}
SYS_SETFSGID = {"x86_64": 123, "aarch64": 152}


def _as_target(pid: int, call):  # type: ignore[no-untyped-def]
    """call() on a file of /proc/<pid> (its mem, cwd, root, fds: ptrace-checked). A root caller
    without CAP_SYS_PTRACE (a container's default set) may not use them for a sandbox of another
    uid; it then takes on that process's uid and gid as its file-system ids for this one call
    (per thread, raw calls: nothing else of the caller changes), as the kernel's same-ids rule
    then allows."""
    try:
        return call()
    except PermissionError:
        if os.geteuid() != 0:
            raise
    import platform

    arch = platform.machine() if platform.machine() != "arm64" else "aarch64"
    st = os.stat(f"/proc/{pid}")
    _spawn.syscall(SYS_SETFSGID[arch], st.st_gid)
    _spawn.syscall(SYS_SETFSUID[arch], st.st_uid)
    try:
        return call()
    finally:
        _spawn.syscall(SYS_SETFSUID[arch], 0)
        _spawn.syscall(SYS_SETFSGID[arch], 0)


def proc_open(pid: int, name: str, flags: int) -> int:
    """os.open of /proc/<pid>/<name> (close-on-exec), see _as_target."""
    return _as_target(pid, lambda: os.open(f"/proc/{pid}/{name}", flags | os.O_CLOEXEC))


def proc_readlink(pid: int, name: str) -> str:
    """os.readlink of /proc/<pid>/<name>, see _as_target."""
    return _as_target(pid, lambda: os.readlink(f"/proc/{pid}/{name}"))


def _open_mem(pid: int, flags: int) -> int:
    return proc_open(pid, "mem", flags)


def read_string(pid: int, address: int, limit: int = 4096) -> bytes | None:
    """A NUL-terminated string from the target's memory, or None if unreadable.

    The memory can change after it is read (another thread of the target): callers must check
    the notification is still valid, and treat what they read as advisory unless they act on
    their own copy (as virtualized opens do).
    """
    if address == 0:
        return None
    try:
        fd = _open_mem(pid, os.O_RDONLY)
    except OSError:
        return None
    try:
        out = bytearray()
        while len(out) < limit:
            # stop at page ends: the next page may not be mapped
            chunk = min(limit - len(out), 4096 - (address + len(out)) % 4096)
            try:
                data = os.pread(fd, chunk, address + len(out))
            except OSError:
                return None
            if not data:
                return None
            end = data.find(b"\0")
            if end >= 0:
                return bytes(out + data[:end])
            out += data
        return None
    finally:
        os.close(fd)


def read_bytes(pid: int, address: int, size: int) -> bytes | None:
    try:
        fd = _open_mem(pid, os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.pread(fd, size, address)
        return data if len(data) == size else None
    except OSError:
        return None
    finally:
        os.close(fd)


def write_bytes(listener: int, nid: int, pid: int, address: int, data: bytes) -> bool:
    """Write into the target's memory (a result buffer of its call).

    The mem file is opened first and the notification checked after: if the target had died
    and its pid been reused, the open file still refers to the old, dead process.
    """
    try:
        fd = _open_mem(pid, os.O_WRONLY)
    except OSError:
        return False
    try:
        if not still_valid(listener, nid):
            return False
        return os.pwrite(fd, data, address) == len(data)
    except OSError:
        return False
    finally:
        os.close(fd)


def openat2(dirfd: int, path: bytes, flags: int, mode: int, resolve: int) -> int:
    """openat2(2): open `path` below `dirfd` with RESOLVE_* restrictions. Raises OSError."""
    how = struct.pack("=QQQ", flags | os.O_CLOEXEC, mode, resolve)
    return _spawn.syscall(SYS_OPENAT2, dirfd, path + b"\0", how, len(how))
