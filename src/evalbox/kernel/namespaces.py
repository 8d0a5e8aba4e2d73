"""Linux namespaces: clone flags, and network namespaces made ahead of time (no policy)."""

from __future__ import annotations

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

NAMES = {CLONE_NEWPID: "pid", CLONE_NEWNS: "mount", CLONE_NEWIPC: "ipc", CLONE_NEWUTS: "uts",
         CLONE_NEWNET: "network", CLONE_NEWUSER: "user"}


def describe(flags: int) -> tuple[str, ...]:
    return tuple(name for flag, name in NAMES.items() if flags & flag)
