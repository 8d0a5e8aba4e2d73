"""The private directory a run lives in: work/ (the cwd), tmp/, home/ and the plan's files."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile

from evalbox.policy.plan import WORK_DIR, Plan

SUBDIRS = (WORK_DIR, "tmp", "home")


class Workspace:
    def __init__(self, plan: Plan, owner: tuple[int, int] | None = None) -> None:
        """Create the directory tree; `owner` (uid, gid) hands it to a sandbox user."""
        self.root = tempfile.mkdtemp(prefix="evalbox-")
        try:
            for sub in SUBDIRS:
                os.mkdir(os.path.join(self.root, sub), 0o700)
            work = os.path.join(self.root, WORK_DIR)
            for rel, f in plan.files.items():
                path = os.path.join(work, rel)
                os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
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
                for dirpath, dirnames, filenames in os.walk(self.root):
                    os.lchown(dirpath, *owner)
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
        """Delete the tree, whatever the program did to its permissions."""

        def fix_and_retry(func, path, exc_info):  # type: ignore[no-untyped-def]
            try:
                parent = os.path.dirname(path)
                os.chmod(parent, stat.S_IRWXU)
                if os.path.isdir(path) and not os.path.islink(path):
                    os.chmod(path, stat.S_IRWXU)
                func(path)
            except FileNotFoundError:
                pass

        if os.path.lexists(self.root):
            shutil.rmtree(self.root, onerror=fix_and_retry)
