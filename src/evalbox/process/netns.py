"""A pool of private network namespaces, one per running sandbox, reused once their run ended.

Creating a network namespace costs ~0.4 ms and tearing one down more (asynchronously, in the
kernel's cleanup worker, where thousands of dead ones pile up under load); entering an existing
one costs a few microseconds. So a namespace is made once, lent to one run at a time, and lent
again only after that run's init was reaped: by then every process of the run is dead, and with
them its sockets. What a namespace may keep between runs: TCP connections in TIME_WAIT (a
server that closed first leaves its port busy for up to 60 s for a bind without SO_REUSEADDR);
nothing else, since the program cannot change the namespace's interfaces, routes or sysctls
(no capabilities). Never shared between concurrent runs, nor with a forked child of the caller.
"""

from __future__ import annotations

import collections
import os
import threading

from evalbox.kernel import namespaces

MAX_IDLE = 64  # idle namespaces kept; more are closed (the kernel frees them)

_lock = threading.Lock()
_idle: collections.deque[int] = collections.deque()


def acquire() -> int:
    """An fd of an empty network namespace with its loopback up, for one run."""
    with _lock:
        if _idle:
            return _idle.popleft()
    return namespaces.new_network_namespace()


def release(fd: int) -> None:
    """Give a namespace back once every process of its run is dead (the init was reaped)."""
    with _lock:
        if len(_idle) < MAX_IDLE:
            _idle.append(fd)
            return
    os.close(fd)


def _forget_after_fork() -> None:
    # A forked child must not lend the parent's namespaces: the parent may lend them too.
    global _lock
    _lock = threading.Lock()
    while _idle:
        try:
            os.close(_idle.pop())
        except OSError:
            pass


os.register_at_fork(after_in_child=_forget_after_fork)
