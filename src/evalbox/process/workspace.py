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
import signal
import stat
import tempfile
import time

from evalbox.policy.plan import WORK_DIR, Plan
from evalbox.process.identity import is_sandbox_uid

SUBDIRS = (WORK_DIR, "tmp", "home")
IDENTITY_FILES = (".passwd", ".group")  # a root host's per-run passwd/group entries (see lockdown)
SHM = "/dev/shm"


SHM_INODES_KEPT = 0.5  # workspaces leave at least this share of /dev/shm's inodes to the host


def _shm_usable() -> bool:
    """/dev/shm can take a workspace: exec allowed, writable, and at least half of its inodes
    free (a run's inodes are charged to its memory cgroup, but many runs together could exhaust
    the host's /dev/shm: past half, new workspaces go to the temp dir)."""
    try:
        st = os.statvfs(SHM)
    except OSError:
        return False
    if st.f_files and st.f_favail < st.f_files * SHM_INODES_KEPT:
        return False
    return not st.f_flag & os.ST_NOEXEC and os.access(SHM, os.W_OK | os.X_OK)


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


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dirs(base_fd: int, parts: list[str], owner: tuple[int, int] | None) -> int:
    """An fd of base/parts..., each directory made (0700, given to `owner`) if missing, never
    following a link: whatever is there already, nothing is created outside `base`."""
    fd = os.dup(base_fd)
    try:
        for part in parts:
            try:
                os.mkdir(part, 0o700, dir_fd=fd)
                made = True
            except FileExistsError:
                made = False
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)  # ELOOP/ENOTDIR on a link or a file
            os.close(fd)
            fd = child
            if made and owner is not None:
                os.fchown(fd, *owner)
        return fd
    except BaseException:
        os.close(fd)
        raise


class Workspace:
    def __init__(self, plan: Plan, owner: tuple[int, int] | None = None, memory_bounded: bool = False) -> None:
        """Create the directory tree; `owner` (uid, gid) hands it to a sandbox user.

        Everything is made relative to directory fds with O_NOFOLLOW (the plan's paths are
        validated not to overlap, and nothing here follows a link even if one were there)."""
        self.owner = owner
        self.root = tempfile.mkdtemp(prefix=f"evalbox-{os.getpid()}-", dir=base_dir(memory_bounded))
        root_fd = -1
        try:
            root_fd = os.open(self.root, _DIR_FLAGS)
            for sub in SUBDIRS:
                os.mkdir(sub, 0o700, dir_fd=root_fd)
            work_fd = os.open(WORK_DIR, _DIR_FLAGS, dir_fd=root_fd)
            try:
                for rel, f in plan.files.items():
                    *dirs, name = rel.split("/")
                    parent = _open_dirs(work_fd, dirs, owner)
                    try:
                        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                     0o755 if f.executable else 0o644, dir_fd=parent)
                        with os.fdopen(fd, "wb") as out:
                            out.write(f.content)
                            if owner is not None:
                                os.fchown(out.fileno(), *owner)
                    finally:
                        os.close(parent)
                for mount in plan.mounts:
                    if mount.dest is not None:
                        *dirs, name = mount.dest.split("/")
                        parent = _open_dirs(work_fd, dirs, owner)
                        try:
                            os.symlink(mount.source, name, dir_fd=parent)
                            if owner is not None:
                                os.chown(name, *owner, dir_fd=parent, follow_symlinks=False)
                        finally:
                            os.close(parent)
                if owner is not None:
                    os.fchown(work_fd, *owner)
            finally:
                os.close(work_fd)
            if owner is not None:
                for sub in SUBDIRS:
                    if sub != WORK_DIR:
                        os.chown(sub, *owner, dir_fd=root_fd, follow_symlinks=False)
                os.fchown(root_fd, *owner)
        except BaseException:
            if root_fd >= 0:
                os.close(root_fd)
            self.remove()
            raise
        os.close(root_fd)

    def make_dir(self, rel: str) -> str:
        """Make the workspace directory `rel` (a validated relative path) and its parents,
        without following links, given to the sandbox's owner; returns its path."""
        root_fd = os.open(self.root, _DIR_FLAGS)
        try:
            os.close(_open_dirs(root_fd, rel.split("/"), self.owner))
        finally:
            os.close(root_fd)
        return self.path(rel)

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
            for name in IDENTITY_FILES:
                try:
                    os.unlink(os.path.join(self.root, name))
                except FileNotFoundError:
                    pass
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
                # its run's caller and guard are dead: kill what may still run there first
                if is_sandbox_uid(owner):
                    from evalbox.process.spawn import kill_uid  # (spawn imports this module)
                    kill_uid(owner, owner)
                else:
                    _kill_processes_inside(entry.path)
                _force_rmtree(entry.path)
        except OSError:
            pass


def _kill_processes_inside(top: str, deadline: float = 2.0) -> None:
    """SIGKILL this user's processes whose cwd or root lies in `top` (a dead run's workspace)."""
    me = os.geteuid()
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        found = False
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            try:
                if os.stat(f"/proc/{name}").st_uid != me:
                    continue
                places = [os.readlink(f"/proc/{name}/{link}") for link in ("cwd", "root")]
            except OSError:
                continue
            if any(p == top or p.startswith(top + "/") for p in places):
                found = True
                try:
                    os.kill(int(name), signal.SIGKILL)
                except OSError:
                    pass
        if not found:
            return
        time.sleep(0.005)
