"""Per-sandbox uids on root hosts, leased host-wide so no two live sandboxes ever share one.

A uid is the boundary between sandboxes of a root host (file modes, signals, RLIMIT_NPROC), so
two evalbox processes must never hand out the same one. Each uid is held with an flock on a
small file in a root-only directory: the kernel drops the lock if the holder dies. Uids are
taken lowest-free first, so the lock files stay as few as the most sandboxes ever alive at once.
"""

from __future__ import annotations

import fcntl
import os
import tempfile

SANDBOX_UID_BASE = 2_000_000_000  # far above any real account or subordinate-id range
SANDBOX_UID_SPAN = 1 << 20

_held: set[int] = set()


def _lock_dir() -> str:
    for parent in ("/run", tempfile.gettempdir()):
        path = os.path.join(parent, "evalbox-uids")
        try:
            os.makedirs(path, 0o700, exist_ok=True)
            return path
        except OSError:
            continue
    raise OSError("no writable directory for evalbox's uid leases (/run or the temp dir)")


class UidLease:
    def __init__(self) -> None:
        directory = _lock_dir()
        for index in range(SANDBOX_UID_SPAN):
            if index in _held:
                continue
            fd = os.open(os.path.join(directory, str(index)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.index, self.fd = index, fd
            self.path = os.path.join(directory, str(index))
            self.uid = SANDBOX_UID_BASE + index
            _held.add(index)
            return
        raise OSError("every sandbox uid is in use")

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock
            _held.discard(self.index)
            self.fd = -1


def is_sandbox_uid(uid: int) -> bool:
    return SANDBOX_UID_BASE <= uid < SANDBOX_UID_BASE + SANDBOX_UID_SPAN


def forget_after_fork() -> None:
    """A forked child holds copies of its parent's lock fds but owns none of the leases."""
    _held.clear()


os.register_at_fork(after_in_child=forget_after_fork)
