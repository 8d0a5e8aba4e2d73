"""Template mount namespaces: the static part of jails' roots, built once per plan shape.

Building a root costs a mount call per granted path (~60 for the system part: /usr, each /etc
entry, the /dev nodes) and ~1 ms; copying a namespace that already holds them costs one
unshare (~0.1 ms). So each distinct static part (system entries, the plan's mounts and runtime
files) is built once into a namespace of its own whose root is read-only, and every run copies it
(setns + unshare) and mounts only its own tmpfs (/tmp, /dev/shm, the workspace) and /proc.

A template is rebuilt when a bound source was replaced on the host (its stamp changed: /etc's
mtime, the inode of each mount source); the old one stays open (a concurrent spawn may be
copying it) until no spawn uses it. Past MAX_SHAPES distinct shapes, new shapes get no template (built per run).
"""

from __future__ import annotations

import os
import threading

from evalbox.kernel import _spawn

MAX_SHAPES = 32

_lock = threading.Lock()
_templates: dict[tuple, tuple[tuple, int]] = {}  # entries -> (stamp, namespace fd)
_users: dict[int, int] = {}  # fd -> spawns using it now
_retired: set[int] = set()  # replaced templates, closed once no spawn uses them


def template_fd(entries: list[tuple], stamp: tuple) -> int:
    """An fd of a template namespace holding `entries` (give it back with `release`), or -1
    when the cache is full."""
    key = tuple(entries)
    with _lock:
        found = _templates.get(key)
        if found is None or found[0] != stamp:
            if found is None and len(_templates) >= MAX_SHAPES:
                return -1
            fd = _spawn.build_template(entries)
            if found is not None:
                _retire(found[1])
            _templates[key] = found = (stamp, fd)
        _users[found[1]] = _users.get(found[1], 0) + 1
        return found[1]


def release(fd: int) -> None:
    """The spawn that used `fd` is done with it (its init has copied the namespace or failed)."""
    with _lock:
        _users[fd] -= 1
        if not _users[fd]:
            del _users[fd]
            if fd in _retired:
                _retired.discard(fd)
                os.close(fd)


def _retire(fd: int) -> None:
    if fd in _users:
        _retired.add(fd)
    else:
        os.close(fd)


def _forget_after_fork() -> None:
    # A forked child may close and reuse fd numbers: never setns() into a cached number there.
    global _lock
    _lock = threading.Lock()
    _templates.clear()
    _users.clear()
    _retired.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
