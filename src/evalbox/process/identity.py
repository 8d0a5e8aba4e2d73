"""Per-sandbox uids on root hosts: every run gets a uid no run of this host ever had.

A uid is the boundary between sandboxes of a root host (file modes, signals, RLIMIT_NPROC). What
a run leaves behind persists: files it created in an `rw` mount stay owned by its uid, and
Landlock does not cover metadata, so a later run with the same uid could chmod, chown or re-date
them by path. So uids are never handed out twice: a host-wide cursor, kept in a root-only state
file that survives reboots, moves forward through SANDBOX_UID_SPAN uids (two billion: at 200
runs a second, about four months of non-stop runs; then every lease is refused with a message
saying how to start over once the old uids' files are dealt with).

Each process reserves a block of uids at a time under an flock of the cursor file (one fsync
per block, not per run); uids of a block that a process never used are simply skipped.
"""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
import threading

from evalbox.errors import SandboxError

SANDBOX_UID_BASE = 2_000_000_000  # far above any real account or subordinate-id range
SANDBOX_UID_SPAN = 2_000_000_000  # up to 3_999_999_999 (uid 2**32-1 is "no uid")
BLOCK = 64  # uids reserved per visit to the cursor file
CURSOR_NAME = "uid-cursor"
STATE_DIRS = ("/var/lib/evalbox", "/run/evalbox")  # the first that can be used (persistent first)

_lock = threading.Lock()
_block = [0, 0]  # [next index, end] of this process's reserved block


def state_dir() -> str:
    """A root-only directory for host-wide state (EVALBOX_STATE_DIR overrides)."""
    override = os.environ.get("EVALBOX_STATE_DIR")
    candidates = (override,) if override else (*STATE_DIRS, os.path.join(tempfile.gettempdir(), "evalbox-state"))
    for path in candidates:
        try:
            os.makedirs(path, 0o700, exist_ok=True)
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022:
            return path
    raise SandboxError(
        f"no usable directory for evalbox's host-wide uid cursor ({', '.join(candidates)}: each must be a "
        "directory owned by you and not writable by others); create /var/lib/evalbox (mode 0700) or set "
        "EVALBOX_STATE_DIR"
    )


def _reserve_block() -> tuple[int, int]:
    path = os.path.join(state_dir(), CURSOR_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise SandboxError(f"{path} is not a regular file of yours; remove it")
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        try:
            start = int(raw) if raw else 0
        except ValueError:
            raise SandboxError(f"{path} is corrupt ({raw!r}); it holds the next unused sandbox uid index: "
                               "restore it, or remove it only after no file is owned by uids "
                               f"{SANDBOX_UID_BASE}+ anywhere (rw mounts included)") from None
        if start + BLOCK > SANDBOX_UID_SPAN:
            raise SandboxError(
                f"every sandbox uid ({SANDBOX_UID_BASE}..{SANDBOX_UID_BASE + SANDBOX_UID_SPAN - 1}) has been used "
                "once on this host, and uids are never reused (files a run left in rw mounts keep its uid); "
                f"chown or remove files owned by those uids in your rw mounts, then delete {path}"
            )
        data = f"{start + BLOCK}\n".encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.fsync(fd)  # a crash must never move the cursor back
        return start, start + BLOCK
    finally:
        os.close(fd)  # drops the flock


class UidLease:
    """A uid for one run, never given to any other run of this host."""

    def __init__(self) -> None:
        with _lock:
            if _block[0] >= _block[1]:
                _block[0], _block[1] = _reserve_block()
            index = _block[0]
            _block[0] += 1
        self.index = index
        self.uid = SANDBOX_UID_BASE + index
        # a name in a root-only directory the guard is told (it takes an flock there if a file
        # exists; none is made today: a retired uid is never leased again, so there is no lock)
        self.path = os.path.join(_files_dir(), str(self.uid))

    def release(self) -> None:
        """Nothing to do: the uid is retired for good, and nothing is kept per uid any more (a
        run's passwd/group entries live in its workspace). (No listing of the per-uid directory at
        every run: it costs more as files of older versions pile up there.)"""


_files_dir_cache: list[str] = []


def _files_dir() -> str:
    """A root-only directory (on tmpfs where possible) for per-uid files of running sandboxes."""
    if _files_dir_cache:
        return _files_dir_cache[0]
    for parent in ("/run/evalbox", os.path.join(tempfile.gettempdir(), f"evalbox-run-{os.geteuid()}")):
        path = os.path.join(parent, "uid-files")
        try:
            os.makedirs(path, 0o700, exist_ok=True)
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077:
            _files_dir_cache.append(path)
            return path
    raise SandboxError("no private directory for evalbox's per-run files (/run/evalbox or the temp dir); "
                       "make /run writable for root")


def is_sandbox_uid(uid: int) -> bool:
    return SANDBOX_UID_BASE <= uid < SANDBOX_UID_BASE + SANDBOX_UID_SPAN


def forget_after_fork() -> None:
    """A forked child must not use the rest of its parent's block (the parent will)."""
    global _lock
    _lock = threading.Lock()
    _block[0] = _block[1] = 0


os.register_at_fork(after_in_child=forget_after_fork)
