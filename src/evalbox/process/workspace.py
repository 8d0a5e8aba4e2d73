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
import random
import signal
import stat
import tempfile
import time

from evalbox.policy.plan import WORK_DIR, Plan
from evalbox.process.identity import is_sandbox_uid

SUBDIRS = (WORK_DIR, "tmp", "home")
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


REMOVE_MAX_ENTRIES = 1_000_000  # host work per removal is bounded: the rest waits for a later sweep
REMOVE_MAX_SECONDS = 10.0
REMOVE_MAX_OPEN_DIRS = 64  # deeper directories are moved up to the tree's top, not descended into
_FLAT_PREFIX = ".evalbox-flat-"


def _open_dir_below(parent_fd: int, name: str) -> int:
    """An fd of the directory `name` inside `parent_fd`, never following a link; a directory the
    program locked (mode 0) is given back rwx for its owner first (chmod through an O_PATH fd,
    so the chmod never lands outside the tree either)."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except PermissionError:
        handle = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            os.chmod(f"/proc/self/fd/{handle}", stat.S_IRWXU)
        finally:
            os.close(handle)
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)


def _remove_entry(parent_fd: int, name: str, is_dir: bool) -> None:
    """unlinkat/rmdir `name` in `parent_fd`; if the directory was made read-only by the program,
    give it back w+x for its owner once and retry."""
    def go() -> None:
        if is_dir:
            os.rmdir(name, dir_fd=parent_fd)
        else:
            os.unlink(name, dir_fd=parent_fd)
    try:
        go()
    except PermissionError:
        os.fchmod(parent_fd, stat.S_IRWXU)
        go()


def _move_up(parent_fd: int, name: str, top_fd: int, new_name: str) -> None:
    """renameat a directory of the tree to the tree's top; if the program locked the directories
    involved (moving a directory needs write on both parents and on itself, for its '..'), give
    them back rwx for their owner once and retry."""
    try:
        os.rename(name, new_name, src_dir_fd=parent_fd, dst_dir_fd=top_fd)
    except PermissionError:
        os.fchmod(parent_fd, stat.S_IRWXU)
        os.fchmod(top_fd, stat.S_IRWXU)
        handle = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            os.chmod(f"/proc/self/fd/{handle}", stat.S_IRWXU)
        finally:
            os.close(handle)
        os.rename(name, new_name, src_dir_fd=parent_fd, dst_dir_fd=top_fd)


def _force_rmtree(path: str, max_entries: int = REMOVE_MAX_ENTRIES, max_seconds: float = REMOVE_MAX_SECONDS) -> bool:
    """Delete a tree whatever the program built or did to the permissions inside it; True once it
    is gone. Never raises: what cannot be removed within the bounds is left for `sweep_stale`.

    Iterative and fd-based: every step is openat/unlinkat relative to a directory fd opened
    O_NOFOLLOW below the one before, so a link is never followed and nothing outside the tree is
    touched, whatever the depth (recursion would hit Python's limit on a deep chain). At most
    REMOVE_MAX_OPEN_DIRS fds are held: a directory deeper than that is renamed up to the top of
    the tree (renameat within the tree) and emptied from there."""
    try:
        return _remove_tree(path, max_entries, max_seconds)
    except Exception:
        return False


def _remove_tree(path: str, max_entries: int, max_seconds: float) -> bool:
    """(see _force_rmtree)"""
    try:
        parent_fd = os.open(os.path.dirname(path) or ".", _DIR_FLAGS)
    except OSError:
        return not os.path.lexists(path)
    name = os.path.basename(path)
    try:
        try:
            top_fd = _open_dir_below(parent_fd, name)
        except FileNotFoundError:
            return True
        except OSError:
            return False  # a link or a file where the workspace was: not ours to follow
        # stack of [fd, name in its parent, names that could not be removed]
        stack: list[tuple[int, str, set[str]]] = [(top_fd, name, set())]
        visited = 0
        flattened = 0
        end = time.monotonic() + max_seconds
        try:
            while stack:
                fd, dir_name, failed = stack[-1]
                descend = None
                with os.scandir(fd) as entries:
                    for entry in entries:
                        if entry.name in failed:
                            continue
                        visited += 1
                        if visited > max_entries or (visited % 1024 == 0 and time.monotonic() > end):
                            return False
                        try:
                            is_dir = entry.is_dir(follow_symlinks=False)
                        except OSError:
                            is_dir = False
                        if not is_dir:
                            try:
                                _remove_entry(fd, entry.name, False)
                            except FileNotFoundError:
                                pass
                            except OSError:
                                failed.add(entry.name)
                            continue
                        if len(stack) >= REMOVE_MAX_OPEN_DIRS:
                            # too deep to hold another fd: move it up to the top, empty it later
                            try:
                                _move_up(fd, entry.name, top_fd, f"{_FLAT_PREFIX}{flattened}-{time.monotonic_ns()}")
                            except OSError:
                                failed.add(entry.name)
                            flattened += 1
                            continue
                        descend = entry.name
                        break
                if descend is not None:
                    try:
                        stack.append((_open_dir_below(fd, descend), descend, set()))
                    except OSError:
                        failed.add(descend)
                    continue
                stack.pop()
                os.close(fd)
                if stack:
                    parent_dir_fd, _, parent_failed = stack[-1]
                    try:
                        _remove_entry(parent_dir_fd, dir_name, True)
                    except OSError:
                        parent_failed.add(dir_name)
        finally:
            for fd, _, _ in stack:
                os.close(fd)
        try:
            os.rmdir(name, dir_fd=parent_fd)  # (the base dir itself is never chmod'ed)
        except OSError:
            pass
        return not os.path.lexists(path)
    finally:
        os.close(parent_fd)


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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


_names = random.Random()  # (as tempfile's: unpredictable enough, no syscall per name)
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"
os.register_at_fork(after_in_child=_names.seed)  # (a forked caller does not repeat our names)


class Workspace:
    on_host = True  # False: a name only, for a jail that builds the workspace in its own tmpfs

    def __init__(self, plan: Plan, owner: tuple[int, int] | None = None, memory_bounded: bool = False,
                 on_host: bool = True) -> None:
        """Create the directory tree; `owner` (uid, gid) hands it to a sandbox user.

        Everything is made relative to directory fds with O_NOFOLLOW (the plan's paths are
        validated not to overlap, and nothing here follows a link even if one were there).

        `on_host=False`: nothing is made on the host, the workspace is only a path, in the same
        form, for a jail that makes it in its own tmpfs (policy/jail.run_entries); `remove` then
        touches nothing (a host directory of that name, if someone made one, is not ours)."""
        self.owner = owner
        self.root_files: list[str] = []  # files the host wrote into the root (see lockdown's identity files)
        if not on_host:
            self.on_host = False
            self._top_names = []
            token = "".join(_names.choices(_NAME_CHARS, k=8))
            self.root = os.path.join(base_dir(memory_bounded), f"evalbox-{os.getpid()}-{token}")
            return
        # what we put directly in work/ (the plan's files and mount links): removed by name first
        self._top_names = [rel for rel in plan.files if "/" not in rel]
        self._top_names += [m.dest for m in plan.mounts if m.dest is not None and "/" not in m.dest]
        if len(self._top_names) != len(plan.files) + sum(m.dest is not None for m in plan.mounts):
            self._top_names = []  # something deeper: the general removal does it all
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
                        try:  # (os-level writes: a buffered file object costs ~10 us more per file)
                            _write_all(fd, f.content)
                            if owner is not None:
                                os.fchown(fd, *owner)
                        finally:
                            os.close(fd)
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
        if not self.on_host:
            return self.path(rel)  # (the jail makes it: jail.run_entries)
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
        if not self.on_host:
            return
        # fast path: the program left its three directories as they were made (rmdir refuses
        # anything else), work/ holding just the plan's files (removed through an fd of work/
        # opened without following a link)
        try:
            if self._top_names:
                work_fd = os.open(os.path.join(self.root, WORK_DIR), _DIR_FLAGS)
                try:
                    for name in self._top_names:
                        try:
                            os.unlink(name, dir_fd=work_fd)
                        except FileNotFoundError:
                            pass
                finally:
                    os.close(work_fd)
            for name in self.root_files:
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
    """Remove workspaces left by evalbox processes that died (their pid is in the name). Never
    raises: a leftover that cannot be removed now is tried again by the next sweep."""
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
        except Exception:  # one bad leftover never stops the host from starting runs
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
