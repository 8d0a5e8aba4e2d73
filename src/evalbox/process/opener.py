"""Open and inspect files on a sandboxed program's behalf, with no more than its own rights.

A supervised call must be decided on the file the kernel will actually use, not on a path the
program can still change (another thread rewriting the string, a link swapped in between). So
evalbox resolves the path itself, once, from its own copy, decides on the file it found, and
hands the program that very file (an fd injected with SECCOMP_IOCTL_NOTIF_ADDFD) or the
result of inspecting it.

The resolving is done by one helper thread per supervised sandbox that carries the program's
rights and view: its own fs context (unshare(CLONE_FS)), the program's mount namespace (setns),
NO_NEW_PRIVS, the program's Landlock ruleset, and, on root hosts, the program's uid and gid
with no groups. Credentials, Landlock domains and fs contexts are per thread in Linux, so the
rest of the caller is untouched; the thread lives as long as the sandbox.

The caller waits for each answer (a few microseconds); nothing the thread does can block:
paths are resolved O_PATH (no open side effects), only regular files, directories and character
devices are opened, always O_NONBLOCK, and an answer that takes longer than ANSWER_TIMEOUT
fails the call (EAGAIN) and retires the opener (every later call fails: fail closed).
"""

from __future__ import annotations

import errno
import os
import queue
import stat
import struct
import threading

from evalbox.kernel import _spawn
from evalbox.kernel.syscall_table import ARCHES, native_arch

CLONE_FS = 0x200
CLONE_NEWNS = 0x20000
PR_SET_NO_NEW_PRIVS = 38
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
PROC_SUPER_MAGIC = 0x9FA0
ANSWER_TIMEOUT = 10.0  # a thread hop takes microseconds; this only bounds a hung filesystem
_STATFS = struct.Struct("=q")  # f_type, the first field of struct statfs (64-bit)


class OpenerBroken(Exception):
    """The helper thread could not be set up, or stopped answering."""


def _nr(name: str) -> int:
    return ARCHES[native_arch()][name]


def fs_type(fd: int) -> int:
    """f_type of the filesystem holding `fd` (fstatfs)."""
    buf = bytearray(120)
    _spawn.syscall(_nr("fstatfs"), fd, buf)
    return _STATFS.unpack_from(buf)[0]


class Opener:
    """The helper thread of one sandbox (see the module docstring)."""

    def __init__(self, pid: int, ruleset_fd: int, uid: int = -1, gid: int = -1, proc_gid: int = -1) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._answers: queue.SimpleQueue = queue.SimpleQueue()
        self.broken: str | None = None
        self._proc = os.open("/proc", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)  # the host's /proc
        mntns = -1
        try:
            if os.stat(f"/proc/{pid}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino:
                mntns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            os.close(self._proc)
            raise OpenerBroken(f"cannot see the program's mount namespace ({e.strerror})") from None
        self._thread = threading.Thread(target=self._serve, args=(ruleset_fd, mntns, uid, gid, proc_gid),
                                        name=f"evalbox-opener-{pid}", daemon=True)
        self._thread.start()
        try:
            ready = self._answers.get(timeout=10)
        finally:
            if mntns >= 0:
                os.close(mntns)
        if ready is not None:
            self.close()
            raise OpenerBroken(f"cannot take on the program's rights: {ready}")

    # -- the thread ------------------------------------------------------------------------------

    def _serve(self, ruleset_fd: int, mntns: int, uid: int, gid: int, proc_gid: int) -> None:
        try:
            call = _spawn.syscall
            call(_nr("unshare"), CLONE_FS)
            if mntns >= 0:
                call(_nr("setns"), mntns, CLONE_NEWNS)
            call(_nr("prctl"), PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            if ruleset_fd >= 0:
                call(_nr("landlock_restrict_self"), ruleset_fd, 0)
            if uid >= 0:
                # no groups but, in a jail, the one that sees the program in its /proc (hidepid)
                groups = struct.pack("=I", proc_gid) if proc_gid >= 0 else b""
                call(_nr("setgroups"), len(groups) // 4, groups if groups else 0)
                call(_nr("setresgid"), gid, gid, gid)
                call(_nr("setresuid"), uid, uid, uid)
        except OSError as e:
            self._answers.put(f"{e.strerror} (errno {e.errno})")
            return
        self._answers.put(None)
        jobs, answers = self._jobs, self._answers
        while True:
            job = jobs.get()
            if job is None:
                return
            func, args = job
            try:
                answers.put((True, func(*args)))
            except OSError as e:
                answers.put((False, e.errno or errno.EIO))
            except Exception:  # noqa: BLE001 - never let the thread die with a caller waiting
                answers.put((False, errno.EIO))

    def _ask(self, func, *args):  # type: ignore[no-untyped-def]
        if self.broken:
            raise OSError(errno.EACCES, self.broken)
        self._jobs.put((func, args))
        try:
            ok, value = self._answers.get(timeout=ANSWER_TIMEOUT)
        except queue.Empty:
            self.broken = "an open on the program's behalf did not answer in time"
            raise OSError(errno.EAGAIN, self.broken) from None
        if not ok:
            raise OSError(value, os.strerror(value))
        return value

    # -- what the thread does (all run with the program's rights) ---------------------------------

    @staticmethod
    def _resolve(base: int, path: bytes, follow: bool, resolve: int) -> int:
        how = struct.pack("=QQQ", os.O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW), 0,
                          RESOLVE_NO_MAGICLINKS | resolve)
        return _spawn.syscall(_nr("openat2"), base, path + b"\0", how, len(how))

    def _reopen(self, opath: int, flags: int) -> int:
        # through the host's /proc: the kernel checks DAC and Landlock on the file itself
        return os.open(f"thread-self/fd/{opath}", flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                       dir_fd=self._proc)

    @staticmethod
    def _create(parent: int, name: bytes, flags: int, mode: int) -> int:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, mode,
                       dir_fd=parent)

    @staticmethod
    def _access_fd(fd: int, mode: int) -> int:
        return _spawn.syscall(_nr("faccessat2"), fd, b"\0", mode, AT_EMPTY_PATH)

    # -- the caller's side ---------------------------------------------------------------------------

    def resolve(self, base: int, path: bytes, follow: bool = True, resolve: int = 0) -> int:
        """An O_PATH fd of what `path` names for the program (relative to `base`, an fd or
        AT_FDCWD = the program's root for absolute paths), with the program's own RESOLVE_*
        flags if it gave any. Magic links are refused (ELOOP)."""
        return self._ask(self._resolve, base, path, follow, resolve & 0xFF)

    def reopen(self, opath: int, flags: int) -> int:
        """Open the file behind an O_PATH fd with the program's `flags` (never blocking)."""
        fd = self._ask(self._reopen, opath, flags)
        if not flags & os.O_NONBLOCK:
            os.set_blocking(fd, True)
        return fd

    def create(self, parent: int, name: bytes, flags: int, mode: int) -> int:
        fd = self._ask(self._create, parent, name, flags, mode)
        if not flags & os.O_NONBLOCK:
            os.set_blocking(fd, True)
        return fd

    def access_fd(self, fd: int, mode: int) -> None:
        """access(2) on the file behind `fd` with the program's ids (raises OSError if refused)."""
        self._ask(self._access_fd, fd, mode)

    def real_path(self, fd: int) -> str:
        """Where `fd` is, as the program sees it (its mount namespace)."""
        return os.readlink(f"/proc/{self._thread.native_id}/fd/{fd}")

    def close(self) -> None:
        if self._thread.is_alive() and not self.broken:
            self._jobs.put(None)
            self._thread.join(1.0)
        if self._proc >= 0:
            fd, self._proc = self._proc, -1  # (forgotten first: never closed twice)
            os.close(fd)


def is_regular_dir_or_char(fd: int) -> bool:
    mode = os.fstat(fd).st_mode
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISCHR(mode)
