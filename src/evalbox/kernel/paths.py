"""Opening host paths without following symlinks in any component (openat2 RESOLVE_NO_SYMLINKS).

A directory the sandbox could write may hold links it planted; a path named through one must not
be resolved to wherever the link points. The O_PATH fd returned is the very inode that was checked:
Landlock rules and bind mounts made from it cannot be widened by a later swap of the path."""
from __future__ import annotations
import errno
import os
import stat
import struct

from evalbox.kernel import _spawn

SYS_OPENAT2 = 437  # same number on x86_64 and aarch64
RESOLVE_NO_SYMLINKS = 0x04
AT_FDCWD = -100


def open_no_symlinks(path: str, flags: int = os.O_PATH) -> int:
    """An fd for `path` (absolute) opened with `flags` | O_NOFOLLOW | O_CLOEXEC, refusing a symlink in
    any component with OSError(ELOOP)."""
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC
    how = struct.pack("=QQQ", flags, 0, RESOLVE_NO_SYMLINKS)
    fd = _spawn.syscall(SYS_OPENAT2, AT_FDCWD, os.fsencode(path), how, len(how))
    if stat.S_ISLNK(os.fstat(fd).st_mode):  # O_PATH|O_NOFOLLOW opens a final link itself
        os.close(fd)
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
    return fd


def first_symlink(path: str) -> str | None:
    """The first component of `path` that is a symlink (for error messages), or None."""
    current = "/"
    for part in os.path.normpath(path).split("/"):
        if not part:
            continue
        current = os.path.join(current, part)
        if os.path.islink(current):
            return current
    return None
