"""The private directory a run lives in: work/ (the cwd), tmp/, home/ and the plan's files.

Creating and removing directories costs ~0.2 ms each on a journaled disk, more than a spawn, so
emptied workspaces are recycled: a finished run's tree is cleared (every entry the program made
is deleted) and the bare directories are handed, re-owned, to the next run. Workspace names carry
the owning process id so that leftovers of a process that died are swept away later.
"""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import tempfile

from evalbox.policy.plan import WORK_DIR, Plan

SUBDIRS = (WORK_DIR, "tmp", "home")
POOL_SIZE = 32
_pool: list[str] = []


def _prefix() -> str:
    return f"evalbox-{os.getpid()}-"


def _force_rmtree(path: str) -> None:
    """Delete a tree whatever the program did to its permissions."""

    def fix_and_retry(func, failed, exc_info):  # type: ignore[no-untyped-def]
        try:
            os.chmod(os.path.dirname(failed), stat.S_IRWXU)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, stat.S_IRWXU)
            func(failed)
        except FileNotFoundError:
            pass

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=fix_and_retry)


def _clear(root: str) -> bool:
    """Empty a used workspace down to its bare subdirectories. False if that failed."""
    try:
        for name in os.listdir(root):
            path = os.path.join(root, name)
            if name in SUBDIRS and os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, 0o700)
                for inner in os.listdir(path):
                    inner_path = os.path.join(path, inner)
                    if os.path.isdir(inner_path) and not os.path.islink(inner_path):
                        _force_rmtree(inner_path)
                    else:
                        os.unlink(inner_path)
            elif os.path.isdir(path) and not os.path.islink(path):
                _force_rmtree(path)
            else:
                os.unlink(path)
        os.chmod(root, 0o700)
        return sorted(os.listdir(root)) == sorted(SUBDIRS)
    except OSError:
        return False


def _new_root() -> str:
    root = tempfile.mkdtemp(prefix=_prefix())
    for sub in SUBDIRS:
        os.mkdir(os.path.join(root, sub), 0o700)
    return root


class Workspace:
    def __init__(self, plan: Plan, owner: tuple[int, int] | None = None) -> None:
        """Create the directory tree; `owner` (uid, gid) hands it to a sandbox user."""
        self.root = _pool.pop() if _pool else _new_root()
        self._recyclable = True
        try:
            if owner is not None:
                os.chown(self.root, *owner)
                for sub in SUBDIRS:
                    os.chown(os.path.join(self.root, sub), *owner)
            work = os.path.join(self.root, WORK_DIR)
            for rel, f in plan.files.items():
                path = os.path.join(work, rel)
                parent = os.path.dirname(path)
                if parent != work:
                    os.makedirs(parent, 0o700, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o755 if f.executable else 0o644)
                with os.fdopen(fd, "wb") as out:
                    out.write(f.content)
                if owner is not None:
                    os.chown(path, *owner)
            for mount in plan.mounts:
                if mount.dest is not None:
                    link = os.path.join(work, mount.dest)
                    os.makedirs(os.path.dirname(link), 0o700, exist_ok=True)
                    os.symlink(mount.source, link)
            if owner is not None:
                for dirpath, dirnames, filenames in os.walk(work):
                    for name in dirnames + filenames:
                        os.lchown(os.path.join(dirpath, name), *owner)
        except BaseException:
            self.remove()
            raise

    def path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    @property
    def home(self) -> str:
        return self.path("home")

    @property
    def tmp(self) -> str:
        return self.path("tmp")

    def do_not_recycle(self) -> None:
        """Some process of the run may have survived: never hand this tree to another run."""
        self._recyclable = False

    def remove(self) -> None:
        """Clear the tree for the next run, or delete it."""
        if not os.path.lexists(self.root):
            return
        if self._recyclable and len(_pool) < POOL_SIZE and _clear(self.root):
            os.chown(self.root, os.getuid(), os.getgid())
            _pool.append(self.root)
        else:
            _force_rmtree(self.root)


@atexit.register
def drain_pool() -> None:
    while _pool:
        _force_rmtree(_pool.pop())


def sweep_stale() -> None:
    """Remove workspaces left by evalbox processes that died (their pid is in the name)."""
    base = tempfile.gettempdir()
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if len(parts) == 3 and parts[0] == "evalbox" and parts[1].isdigit() and not os.path.exists(f"/proc/{parts[1]}"):
            _force_rmtree(os.path.join(base, name))
