"""Supervision values and rules: decisions, requests, which argument is a path, the notify filter.

What is intercepted is routed to user space by a second seccomp filter layered on the kill
filter; the kernel applies the stricter answer, so a call the policy kills or refuses never
reaches a supervisor. Everything not intercepted runs at full speed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from evalbox.errors import ValidationError
from evalbox.kernel import bpf
from evalbox.kernel.bpf import Arg, Rule

# The argument that holds a path, by call (the *at variants take a directory fd before it).
PATH_ARG = {
    "open": 0, "creat": 0, "openat": 1, "openat2": 1, "execve": 0, "execveat": 1,
    "stat": 0, "lstat": 0, "newfstatat": 1, "statx": 1, "access": 0, "faccessat": 1, "faccessat2": 1,
    "readlink": 0, "readlinkat": 1, "mkdir": 0, "mkdirat": 1, "rmdir": 0, "unlink": 0, "unlinkat": 1,
    "rename": 0, "renameat": 1, "renameat2": 1, "link": 0, "linkat": 1, "symlink": 1, "symlinkat": 2,
    "chdir": 0, "chmod": 0, "fchmodat": 1, "chown": 0, "lchown": 0, "fchownat": 1, "truncate": 0,
    "utimensat": 1, "mknod": 0, "mknodat": 1, "statfs": 0, "getxattr": 0, "lgetxattr": 0,
    "listxattr": 0, "llistxattr": 0,
}
# Calls whose path is relative to the directory fd in argument 0.
DIRFD_CALLS = frozenset({
    "openat", "openat2", "execveat", "newfstatat", "statx", "faccessat", "faccessat2", "readlinkat", "mkdirat",
    "unlinkat", "renameat", "renameat2", "linkat", "fchmodat", "fchownat", "utimensat", "mknodat",
})
SOCKADDR_CALLS = {"connect": (1, 2), "bind": (1, 2)}  # (address arg, length arg)

# What VIRTUALIZE intercepts when the plan names nothing: the ways to open or inspect a path.
VIRTUALIZE_DEFAULT = ("open", "openat", "openat2", "stat", "lstat", "newfstatat", "statx", "access", "faccessat",
                      "faccessat2", "getxattr", "lgetxattr", "listxattr", "llistxattr")


@dataclass(frozen=True)
class Decision:
    """A supervisor's answer: Decision.ALLOW, Decision.deny(errno) or Decision.KILL."""

    action: str
    errno: int = 0

    ALLOW: ClassVar["Decision"]
    KILL: ClassVar["Decision"]

    @classmethod
    def deny(cls, errno_value: int) -> "Decision":
        if not isinstance(errno_value, int) or not 0 < errno_value < 4096:
            raise ValueError(f"deny() takes an errno such as errno.EACCES, not {errno_value!r}")
        return cls("deny", errno_value)


Decision.ALLOW = Decision("allow")
Decision.KILL = Decision("kill")


class SyscallRequest(NamedTuple):
    """One intercepted call, as the supervisor sees it.

    `path` is absolute and normalised (the call's dirfd or the program's cwd joined), or None
    when the call takes none. For the open, stat, access and exec families it names the file
    the path resolved to for the program (links resolved), and an allowed open, stat or access
    is carried out on exactly that file, so a deny is sound against every spelling, link and
    racing thread. For exec and every other call it is advisory: after an ALLOW the kernel reads
    the arguments again (README, "Supervision").
    (A NamedTuple: built on every intercepted call, while the program waits.)
    """

    sandbox: int
    syscall: str
    args: tuple[int, ...]
    pid: int
    path: str | None
    id: int = 0


MAX_RECORDS = 10_000  # records kept per run (Output.syscalls); the host's memory per run stays bounded
MAX_RECORD_PATH = 1024  # characters of a recorded path; longer ones end in TRUNCATED_MARK
TRUNCATED_MARK = "...(truncated)"
DROPPED_CALL = "(dropped)"  # syscall name of the final record saying how many were not kept


class SyscallRecord(NamedTuple):
    """An entry of Output.syscalls: what was called, on what, and what happened."""

    syscall: str
    path: str | None
    args: tuple[int, ...]
    pid: int
    decision: str  # "allowed", "denied EACCES", "killed", "virtualized", "continued"


def validate_virtual_paths(mapping: dict[str, str]) -> dict[str, str]:
    out = {}
    for virtual, host in mapping.items():
        if not isinstance(virtual, str) or not virtual.startswith("/") or "\0" in virtual:
            raise ValidationError(f"virtual_paths key {virtual!r} must be an absolute path like '/data'")
        virtual = os.path.normpath(virtual)
        if virtual == "/":
            raise ValidationError("virtual_paths cannot map '/': pick a directory such as '/data'")
        if not isinstance(host, str) or not os.path.isabs(host):
            raise ValidationError(f"virtual_paths[{virtual!r}] = {host!r} must be an absolute host directory")
        out[virtual] = os.path.normpath(host)
    return out


def notify_program(intercept: tuple[str, ...], magic: int, arch: str | None = None) -> bytes:
    """The filter that routes `intercept` to the supervisor (everything else: allowed here).

    Calls tagged with `magic` in the sixth argument are the spawn child's own last steps before
    exec, made while the supervisor cannot answer yet (see _spawn.c `tagged`).
    """
    rules: list[Rule] = []
    for name in intercept:
        rules.append(Rule(name, bpf.RET_ALLOW, (Arg(5, "eq", magic),)))
        rules.append(Rule(name, bpf.RET_USER_NOTIF))
    return bpf.build(rules, default=bpf.RET_ALLOW, arch=arch)
