"""Path metadata changes of a sandbox that shares the caller's uid, done by evalbox inside its
workspace.

Landlock does not cover file metadata, so a sandbox running as the caller's uid could chmod,
chown or re-date every file of the caller it can name. The filter therefore routes chmod,
chown and utimes *by path* here (their fd forms stay allowed: the file had to be opened). Linkers
(`gcc -o prog`), `cp -p`, `tar x`, pip and `shutil.copy2` need them on their own output, so they
are done on the program's behalf when the file is inside its workspace, and refused (EPERM)
anywhere else:

- the path is read once from the program's memory and resolved by evalbox, as the program
  would (its root for an absolute path, its cwd or dirfd for a relative one), with magic links
  (/proc/*/fd) refused, so a racing thread cannot change what is acted on;
- the directory holding the final component must lie inside the workspace (walked up by
  `..` to the workspace root), and a final symlink is followed only to somewhere below that
  directory;
- the change is made on the opened file (an O_PATH fd), with the caller's own uid: the kernel
  applies its usual ownership checks.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import struct

from evalbox.kernel import _spawn
from evalbox.kernel import seccomp_notify as sn
from evalbox.kernel.syscall_table import ARCHES, native_arch

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
MAX_DEPTH = 2048  # `..` steps before giving up (a path is at most 4096 bytes)

# call -> (dirfd argument or None, path argument, follows a final symlink unless flags say no,
#          flags argument or None, what it changes, the argument holding the new value)
CALLS = {
    "chmod": (None, 0, True, None, "mode", 1),
    "fchmodat": (0, 1, True, None, "mode", 2),
    "fchmodat2": (0, 1, True, 3, "mode", 2),
    "chown": (None, 0, True, None, "owner", 1),
    "lchown": (None, 0, False, None, "owner", 1),
    "fchownat": (0, 1, True, 4, "owner", 2),
    "utime": (None, 0, True, None, "utimbuf", 1),
    "utimes": (None, 0, True, None, "timeval", 1),
    "futimesat": (0, 1, True, None, "timeval", 2),
    "utimensat": (0, 1, True, 3, "timespec", 2),
    "setxattr": (None, 0, True, None, "xattr_set", 1),
    "lsetxattr": (None, 0, False, None, "xattr_set", 1),
    "removexattr": (None, 0, True, None, "xattr_remove", 1),
    "lremovexattr": (None, 0, False, None, "xattr_remove", 1),
}
FD_CALLS = {"fsetxattr": "xattr_set", "fremovexattr": "xattr_remove", "fchmod": "mode", "fchown": "owner"}
XATTR_NAME_MAX, XATTR_SIZE_MAX = 255, 65536
RESOLVE_IN_ROOT = 0x10
RESOLVE_NO_SYMLINKS = 0x04
def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def emulate(listener: int, n: sn.Notification, name: str, workspace: str | None, owner: int = -1) -> None:
    """Answer notification `n` (one of CALLS): done inside the workspace, else refused.
    `owner`: the sandbox's own uid when it has one (evalbox then runs as root: only files that
    uid owns are changed, as the kernel would allow it)."""
    try:
        _emulate(listener, n, name, workspace, owner)
    except OSError as e:
        code = e.errno if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG,
                                      errno.EINVAL, errno.EOPNOTSUPP, errno.EFAULT, errno.EROFS, errno.E2BIG,
                                      errno.ENODATA, errno.EEXIST, errno.ERANGE, errno.ENOSPC, errno.EDQUOT) \
            else errno.EPERM
        sn.fail(listener, n.id, code)
        return
    sn.succeed(listener, n.id, 0)


def _emulate(listener: int, n: sn.Notification, name: str, workspace: str | None, owner: int) -> None:
    if name in FD_CALLS and workspace is not None:
        # fchmod/fchown/fsetxattr/fremovexattr: on the file the program holds, if it is named
        # in the workspace
        _apply_to_own_fd(listener, n, _int32(n.args[0]), workspace, owner, FD_CALLS[name], n.args[1:])
        return
    if name not in CALLS or workspace is None:
        raise OSError(errno.EPERM, "not emulated")
    dirfd_arg, path_arg, follow, flags_arg, what, value_arg = CALLS[name]
    args = n.args
    flags = _int32(args[flags_arg]) if flags_arg is not None else 0
    if flags & AT_SYMLINK_NOFOLLOW:
        follow = False
    if name == "utimensat" and args[path_arg] == 0:
        # futimens(fd, times) is utimensat(fd, NULL, times, 0): the file the program holds
        _apply_to_own_fd(listener, n, _int32(args[dirfd_arg]), workspace, owner, what, args[value_arg:])
        return
    raw = sn.read_string(n.pid, args[path_arg])
    if raw is None:
        raise OSError(errno.EFAULT, "path unreadable")
    dirfd = _int32(args[dirfd_arg]) if dirfd_arg is not None else AT_FDCWD
    own_fd = _OWN_FD.fullmatch(raw)
    if own_fd or (not raw and flags & AT_EMPTY_PATH):
        # an fd of the program named by path: glibc's lchmod/fchmodat(AT_SYMLINK_NOFOLLOW) uses
        # /proc/self/fd/N, and "" with AT_EMPTY_PATH is the dirfd itself
        _apply_to_own_fd(listener, n, int(own_fd.group(1)) if own_fd else dirfd, workspace, owner, what,
                         args[value_arg:])
        return
    if not raw:
        raise OSError(errno.ENOENT, "empty path")
    absolute = raw.startswith(b"/")
    if absolute:
        base_link = "root"
    elif dirfd == AT_FDCWD:
        base_link = "cwd"
    else:
        base_link = f"fd/{dirfd}"
    base = sn.proc_open(n.pid, base_link, os.O_PATH)
    try:
        # opened first, checked after: a reused pid cannot lend us another process's directory
        if not sn.still_valid(listener, n.id):
            raise OSError(errno.ESRCH, "caller gone")
        if not stat.S_ISDIR(os.fstat(base).st_mode):
            raise OSError(errno.ENOTDIR, "dirfd is not a directory")
        target = _open_inside(base, raw, absolute, follow, workspace, n.pid)
    finally:
        os.close(base)
    try:
        if owner >= 0 and os.fstat(target).st_uid != owner:
            raise OSError(errno.EPERM, "not the sandbox's own file")
        _apply(target, what, args[value_arg:], n.pid)
    finally:
        os.close(target)


def _apply_to_own_fd(listener: int, n: sn.Notification, fd: int, workspace: str, owner: int, what: str,
                     values: tuple[int, ...]) -> None:
    target = _open_own_fd(listener, n, fd, workspace)
    try:
        if owner >= 0 and os.fstat(target).st_uid != owner:
            raise OSError(errno.EPERM, "not the sandbox's own file")
        _apply(target, what, values, n.pid)
    finally:
        os.close(target)


_OWN_FD = re.compile(rb"/proc/(?:self|thread-self)/fd/(\d{1,9})")


def _open_own_fd(listener: int, n: sn.Notification, fd: int, workspace: str) -> int:
    """An O_PATH fd of the file the program holds as `fd`, if that file has a name inside the
    workspace: its current name (from /proc) must lead, through a directory inside the
    workspace, to this very inode (a hard link from outside cannot exist: Landlock refuses
    linking a file where it would gain rights)."""
    target = sn.proc_open(n.pid, f"fd/{fd}", os.O_PATH)  # (the magic link leads to the file itself)
    try:
        if not sn.still_valid(listener, n.id):
            raise OSError(errno.ESRCH, "caller gone")
        st = os.fstat(target)
        if stat.S_ISDIR(st.st_mode):
            if _below(target, workspace, n.pid):
                return target
            raise OSError(errno.EPERM, "outside the workspace")
        name = sn.proc_readlink(n.pid, f"fd/{fd}").encode("utf-8", "surrogateescape")
        parent, _, last = name.rpartition(b"/")
        if not name.startswith(b"/") or not last:
            raise OSError(errno.EPERM, "no name")
        root = sn.proc_open(n.pid, "root", os.O_PATH)
        try:
            dir_fd = sn.openat2(root, parent or b"/", os.O_PATH | os.O_DIRECTORY, 0,
                                RESOLVE_IN_ROOT | sn.RESOLVE_NO_MAGICLINKS)
        finally:
            os.close(root)
        try:
            there = os.stat(last, dir_fd=dir_fd, follow_symlinks=False)
            if not _below(dir_fd, workspace, n.pid) or (there.st_dev, there.st_ino) != (st.st_dev, st.st_ino):
                raise OSError(errno.EPERM, "outside the workspace")
        finally:
            os.close(dir_fd)
        return target
    except BaseException:
        os.close(target)
        raise


def _open_inside(base: int, raw: bytes, absolute: bool, follow: bool, workspace: str, pid: int) -> int:
    """An O_PATH fd of the file `raw` names (resolved from `base`), if it lies in the workspace."""
    resolve = sn.RESOLVE_NO_MAGICLINKS | (RESOLVE_IN_ROOT if absolute else 0)
    stripped = raw.rstrip(b"/")
    parent, sep, last = stripped.rpartition(b"/")
    if not stripped:  # "/" itself
        parent, last = b"/", b"."
    elif not sep:
        parent = b"."
    elif not parent:
        parent = b"/"
    if last in (b".", b"..") or raw.endswith(b"/"):
        # the target is itself a directory: check it directly
        fd = sn.openat2(base, stripped or b"/", os.O_PATH | os.O_DIRECTORY, 0, resolve)
        if not _below(fd, workspace, pid):
            os.close(fd)
            raise OSError(errno.EPERM, "outside the workspace")
        return fd
    dir_fd = sn.openat2(base, parent, os.O_PATH | os.O_DIRECTORY, 0, resolve)
    try:
        if not _below(dir_fd, workspace, pid):
            raise OSError(errno.EPERM, "outside the workspace")
        try:
            return sn.openat2(dir_fd, last, os.O_PATH | (0 if follow else os.O_NOFOLLOW), 0,
                              sn.RESOLVE_BENEATH | sn.RESOLVE_NO_MAGICLINKS)
        except OSError as e:
            if e.errno == errno.EXDEV:  # a symlink out of that directory
                raise OSError(errno.EPERM, "symlink leads outside") from None
            raise
    finally:
        os.close(dir_fd)


def _below(dir_fd: int, workspace: str, pid: int = 0) -> bool:
    """Is this directory the workspace or inside it? Walked up by `..` (mounts included)."""
    # the workspace root and its three directories: a mount namespace (the jail) may bind these
    # one by one, so that `..` from inside one of them never reaches the root's own inode
    # (never through a symlink: the program owns these names and may replace `tmp` by a link
    # to `/`, which would make every file of the caller count as inside; it cannot move a
    # directory in from outside or out of the workspace, Landlock refuses both)
    keys = set()
    for sub in ("", "work", "tmp", "home"):
        try:
            st = os.stat(os.path.join(workspace, sub), follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            keys.add((st.st_dev, st.st_ino))
    if pid:
        # and as the program sees it: the jail gives it a workspace of its own (a tmpfs at the
        # same path, in its mount namespace)
        try:
            root = sn.proc_open(pid, "root", os.O_PATH)
            try:
                ws_fd = sn.openat2(root, workspace.encode(), os.O_PATH | os.O_DIRECTORY, 0,
                                   RESOLVE_IN_ROOT | sn.RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS)
            finally:
                os.close(root)
            st = os.fstat(ws_fd)
            os.close(ws_fd)
            keys.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    if not keys:
        return False
    fd = os.dup(dir_fd)
    try:
        for _ in range(MAX_DEPTH):
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in keys:
                return True
            up = os.open("..", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            top = os.fstat(up)
            os.close(fd)
            fd = up
            if (top.st_dev, top.st_ino) == (st.st_dev, st.st_ino):
                return False  # reached a root
        return False
    finally:
        os.close(fd)


def _apply(target: int, what: str, values: tuple[int, ...], pid: int) -> None:
    """Make the change on the opened file, with this process's (= the sandbox's) uid."""
    table = ARCHES[native_arch()]
    if what == "mode":
        if stat.S_ISLNK(os.fstat(target).st_mode):
            raise OSError(errno.EOPNOTSUPP, "symlinks have no mode")
        os.chmod(f"/proc/self/fd/{target}", values[0] & 0o7777)
        return
    if what == "owner":
        _spawn.syscall(table["fchownat"], target, b"\0", values[0] & 0xFFFFFFFF, values[1] & 0xFFFFFFFF, AT_EMPTY_PATH)
        return
    if what in ("xattr_set", "xattr_remove"):
        name = sn.read_string(pid, values[0], XATTR_NAME_MAX + 1)
        if name is None:
            raise OSError(errno.EFAULT if values[0] else errno.EINVAL, "attribute name")
        if not name.startswith(b"user."):
            # ACLs (system.posix_acl_*), trusted.*, security.*: "not supported here", which
            # `cp -a`, tar and rsync accept
            raise OSError(errno.EOPNOTSUPP, "only user attributes")
        if stat.S_ISLNK(os.fstat(target).st_mode):
            raise OSError(errno.EPERM, "no user attributes on symlinks")
        here = f"/proc/self/fd/{target}"
        if what == "xattr_remove":
            os.removexattr(here, name)
            return
        size = values[2]
        if size > XATTR_SIZE_MAX:
            raise OSError(errno.E2BIG, "attribute too large")
        value = sn.read_bytes(pid, values[1], size) if size else b""
        if value is None:
            raise OSError(errno.EFAULT, "attribute value")
        os.setxattr(here, name, value, values[3] & 0xFFFFFFFF)
        return
    pointer = values[0]
    times: bytes | int = 0  # NULL: now
    if pointer:
        size = {"utimbuf": 16, "timeval": 32, "timespec": 32}[what]
        raw = sn.read_bytes(pid, pointer, size)
        if raw is None:
            raise OSError(errno.EFAULT, "times unreadable")
        if what == "utimbuf":
            atime, mtime = struct.unpack("=qq", raw)
            times = struct.pack("=qqqq", atime, 0, mtime, 0)
        elif what == "timeval":
            a_s, a_us, m_s, m_us = struct.unpack("=qqqq", raw)
            if not (0 <= a_us < 1_000_000 and 0 <= m_us < 1_000_000):
                raise OSError(errno.EINVAL, "bad timeval")
            times = struct.pack("=qqqq", a_s, a_us * 1000, m_s, m_us * 1000)
        else:
            times = raw
    _spawn.syscall(table["utimensat"], target, b"\0", times, AT_EMPTY_PATH)
