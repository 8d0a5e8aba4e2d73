"""Landlock: ABI detection and ruleset construction (no policy: callers say what to allow).

The ruleset is built in the parent and handed to the spawn child as an fd, which applies it with
landlock_restrict_self() just before exec. Struct layouts follow include/uapi/linux/landlock.h;
Debian's headers stop at ABI 2, so the constants live here.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import struct

from evalbox.kernel import _spawn

SYS_CREATE_RULESET = 444  # same number on every architecture (unified syscall table)
SYS_ADD_RULE = 445
CREATE_RULESET_VERSION = 1 << 0

RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2

# Filesystem rights (LANDLOCK_ACCESS_FS_*)
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5

# Network rights (ABI 4) and scopes (ABI 6)
NET_BIND_TCP = 1 << 0
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

FS_RIGHTS_BY_ABI = {
    1: (1 << 13) - 1,
    2: (1 << 14) - 1,
    3: (1 << 15) - 1,
    4: (1 << 15) - 1,
    5: (1 << 16) - 1,
}
# Rights that make sense on a file (not a directory); others make landlock_add_rule fail.
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV

READ = READ_FILE | READ_DIR
READ_EXEC = READ | EXECUTE


@functools.cache
def abi_version() -> int:
    """The Landlock ABI this kernel offers; 0 when Landlock is absent or disabled at boot."""
    try:
        return _spawn.syscall(SYS_CREATE_RULESET, 0, 0, CREATE_RULESET_VERSION)
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            return 0
        raise


def fs_rights(abi: int) -> int:
    """Every filesystem right this ABI can restrict."""
    return FS_RIGHTS_BY_ABI[min(abi, 5)] if abi > 0 else 0


def net_rights(abi: int) -> int:
    return NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0


def scopes(abi: int) -> int:
    return SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0


def pack_rule(fd: int, rights: int) -> bytes:
    """One rule for Ruleset.allow_packed: the fd, its rights, and the file it must still be."""
    st = os.fstat(fd)
    return struct.pack("=QiQQ", rights, fd, st.st_dev, st.st_ino)


class Ruleset:
    """An open Landlock ruleset fd. Close it (or use `with`) once the child has exec'd."""

    def __init__(self, handled_fs: int, handled_net: int = 0, scoped: int = 0) -> None:
        if scoped:
            attr = struct.pack("=QQQ", handled_fs, handled_net, scoped)
        elif handled_net:
            attr = struct.pack("=QQ", handled_fs, handled_net)
        else:
            attr = struct.pack("=Q", handled_fs)
        self.handled_fs = handled_fs
        self.fd = _spawn.syscall(SYS_CREATE_RULESET, attr, len(attr), 0)
        os.set_inheritable(self.fd, False)

    def allow_path(self, path: str, rights: int) -> bool:
        """Allow `rights` beneath `path`. Returns False when the path does not exist.

        Directory-only rights are dropped for files, and rights the ruleset does not handle are
        dropped too, so callers can describe intent without knowing the ABI.
        """
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return False
        try:
            self.allow_fd(fd, stat.S_ISDIR(os.fstat(fd).st_mode), rights)
        finally:
            os.close(fd)
        return True

    def allow_fd(self, fd: int, is_dir: bool, rights: int) -> None:
        """Like allow_path, for an O_PATH fd the caller keeps (saves the open on hot paths)."""
        if not is_dir:
            rights &= FILE_RIGHTS
        rights &= self.handled_fs
        if rights:
            _spawn.syscall(SYS_ADD_RULE, self.fd, RULE_PATH_BENEATH, struct.pack("=Qi", rights, fd), 0)

    def allow_packed(self, rules: bytes) -> None:
        """Add many PATH_BENEATH rules at once (see `pack_rule`); rights must already be trimmed
        to what the ruleset handles and, for files, to FILE_RIGHTS. Raises OSError(ESTALE) if an
        fd no longer refers to the file it was packed for."""
        _spawn.landlock_add_path_rules(self.fd, rules)

    def allow_port(self, port: int, rights: int) -> None:
        attr = struct.pack("=QQ", rights, port)
        _spawn.syscall(SYS_ADD_RULE, self.fd, RULE_NET_PORT, attr, 0)

    def close(self) -> None:
        fd, self.fd = self.fd, -1  # (forgotten first: a close done again never closes it twice)
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> "Ruleset":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
