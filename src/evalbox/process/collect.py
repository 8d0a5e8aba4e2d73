"""Files taken out of a finished run's workspace (`Plan.collect`): a build's binary, requested outputs.

The program wrote them, so they are read like hostile input: only after every process of the
run is dead (nothing can swap them underneath), opened below work/ with openat2 refusing
symlinks, magic links, '..' and other mounts, only regular files with a single link (a hard
link could name a file the sandbox was never given), and never more than the collect budget in
all. A path that is missing or is not such a file is simply absent from `Output.files`; a
directory named in `collect` contributes the regular files below it.
"""

from __future__ import annotations

import os
import stat

from evalbox.kernel.seccomp_notify import RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS, openat2

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV

COLLECT_BUDGET = 64 << 20  # bytes taken from one run in all
MAX_FILES = 4096  # files taken from one run, directories included in the count
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY  # a FIFO must not block the host


def collect(work_dir: str, paths: tuple[str, ...], budget: int) -> dict[str, bytes]:
    """{path: content} of the collectable files among `paths` (relative to `work_dir`)."""
    found: dict[str, bytes] = {}
    state = {"budget": budget, "entries": 0}
    try:
        root = os.open(work_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return found
    try:
        for rel in paths:
            _take(root, rel, found, state)
    finally:
        os.close(root)
    return found


def _take(root: int, rel: str, found: dict[str, bytes], state: dict[str, int]) -> None:
    if rel in found or state["entries"] >= MAX_FILES:
        return
    state["entries"] += 1
    try:
        fd = openat2(root, rel.encode("utf-8", "surrogateescape"), _OPEN_FLAGS, 0, _RESOLVE)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            try:
                names = sorted(os.listdir(fd))[:MAX_FILES]
            except OSError:
                return
            for name in names:
                _take(root, f"{rel}/{name}", found, state)
            return
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size > state["budget"]:
            return
        data = _read_at_most(fd, state["budget"])
        if data is None:
            return
        state["budget"] -= len(data)
        found[rel] = data
    finally:
        os.close(fd)


def _read_at_most(fd: int, limit: int) -> bytes | None:
    """The file's content, or None when it holds more than `limit` bytes."""
    os.set_blocking(fd, True)
    chunks = []
    total = 0
    while True:
        chunk = os.read(fd, min(1 << 20, limit - total + 1))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
