"""The private directory a run lives in: work/ (the cwd), tmp/, home/ and the plan's files.

Creating and removing a directory costs ~5 us on tmpfs and 0.2-0.5 ms on a journaled disk (more
than a spawn), so workspaces go to /dev/shm when a memory cgroup bounds the run (tmpfs pages are
charged to it: a full workspace counts against the run's memory) and /dev/shm allows exec; else
to the temp dir. EVALBOX_TMPDIR overrides both. (Root hosts give each sandbox a private /dev/shm
and bind its workspace back into it.) Workspace names carry the owning process id so that
leftovers of a process that died are swept away later.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile

from evalbox.policy.plan import WORK_DIR, Plan
from evalbox.process.identity import is_sandbox_uid

SUBDIRS = (WORK_DIR, "tmp", "home")
SHM = "/dev/shm"


def _shm_usable() -> bool:
    try:
        flags = os.statvfs(SHM).f_flag
    except OSError:
        return False
    return not flags & os.ST_NOEXEC and os.access(SHM, os.W_OK | os.X_OK)


def base_dir(memory_bounded: bool = False) -> str:
    override = os.environ.get("EVALBOX_TMPDIR")
    if override:
        return override
    return SHM if memory_bounded and _shm_usable() else tempfile.gettempdir()


def _unlock_dirs(top: str) -> None:
    """Give the owner rwx on every directory of the tree (the program may have chmod'ed some to 0,
    which stops both listing and unlinking inside them). Never follows a symlink and never leaves
    the tree: each directory is opened O_PATH|O_NOFOLLOW below the one before (its fd, not a path,
    is what gets chmod'ed), and the tree's own parent is never touched."""
    try:
        root = os.open(top, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    stack = [root]
    seen = 0
    while stack and seen < 1_000_000:  # bounded whatever the program built
        fd = stack.pop()
        seen += 1
        try:
            os.chmod(f"/proc/self/fd/{fd}", stat.S_IRWXU)
            for entry in os.scandir(f"/proc/self/fd/{fd}"):
                if entry.is_dir(follow_symlinks=False):
                    try:
                        stack.append(os.open(entry.name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                             dir_fd=fd))
                    except OSError:
                        pass
        except OSError:
            pass
        finally:
            os.close(fd)
    for fd in stack:
        os.close(fd)


def _force_rmtree(path: str) -> None:
    """Delete a tree whatever the program did to the permissions inside it; never raises (what
    cannot be removed now is swept later by `sweep_stale`)."""
    if not os.path.isdir(path) or os.path.islink(path):
        return
    try:
        shutil.rmtree(path)
        return
    except OSError:
        pass
    _unlock_dirs(path)
    shutil.rmtree(path, ignore_errors=True)


class Workspace:
    def __init__(self, plan: Plan, owner: tuple[int, int] | None = None, memory_bounded: bool = False) -> None:
        """Create the directory tree; `owner` (uid, gid) hands it to a sandbox user."""
        self.root = tempfile.mkdtemp(prefix=f"evalbox-{os.getpid()}-", dir=base_dir(memory_bounded))
        try:
            for sub in SUBDIRS:
                os.mkdir(os.path.join(self.root, sub), 0o700)
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
            for mount in plan.mounts:
                if mount.dest is not None:
                    link = os.path.join(work, mount.dest)
                    os.makedirs(os.path.dirname(link), 0o700, exist_ok=True)
                    os.symlink(mount.source, link)
            if owner is not None:
                os.chown(self.root, *owner)
                for sub in SUBDIRS:
                    os.chown(os.path.join(self.root, sub), *owner)
                if plan.files or plan.mounts:  # what the plan put in work/ (the common case: nothing)
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

    def remove(self) -> None:
        # fast path: the program left its three directories empty (rmdir refuses anything else)
        try:
            for sub in SUBDIRS:
                os.rmdir(os.path.join(self.root, sub))
            os.rmdir(self.root)
        except OSError:
            _force_rmtree(self.root)


def sweep_stale() -> None:
    """Remove workspaces left by evalbox processes that died (their pid is in the name)."""
    entries = []
    for base in {base_dir(True), base_dir(False)}:
        try:
            entries += list(os.scandir(base))
        except OSError:
            pass
    for entry in entries:
        parts = entry.name.split("-")
        if len(parts) != 3 or parts[0] != "evalbox" or not parts[1].isdigit() or os.path.exists(f"/proc/{parts[1]}"):
            continue
        try:
            # only real directories that this user (or, on a root host, a sandbox uid) owns: never
        # follow or delete a planted link or file
            owner = entry.stat(follow_symlinks=False).st_uid
            if entry.is_dir(follow_symlinks=False) and (owner == os.geteuid() or is_sandbox_uid(owner)):
                _force_rmtree(entry.path)
        except OSError:
            pass
