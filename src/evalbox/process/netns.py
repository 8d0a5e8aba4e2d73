"""A pool of private network namespaces, one per running sandbox, reused once their run ended
and only when the run left no socket and no trace of traffic behind.

Creating a network namespace costs ~0.4 ms and tearing one down more (asynchronously, in the
kernel's cleanup worker, where thousands of dead ones pile up under load); entering an existing
one costs a few microseconds. So a namespace is made once, lent to one run at a time, and lent
again only after that run's init was reaped: by then every process of the run is dead, and with
them its sockets, except TCP connections the kernel keeps after close (TIME_WAIT, FIN_WAIT...):
those would keep a port busy for the next run (a bind without SO_REUSEADDR fails for up to 60 s)
and show in its /proc/net/tcp. So on release the namespace's own socket counters are read (its
/proc/net/sockstat, opened from inside it when it was made: ~15 us), and a namespace holding any
socket is closed (the kernel frees it) rather than pooled: the next run gets a fresh one (~0.6 ms
more, only after a run that used TCP). Its traffic counters (/proc/net/dev, snmp, netstat, snmp6)
are compared with those it had when made, likewise: a run that sent or received anything would
otherwise leave the next one a number to read (a channel between runs). Nothing else survives a
run: the program cannot change the namespace's interfaces, routes or sysctls (no capabilities).
Never shared between concurrent runs, nor with a forked child of the caller.
"""

from __future__ import annotations

import collections
import os
import threading

from evalbox.kernel import namespaces

MAX_IDLE = 64  # idle namespaces kept; more are closed (the kernel frees them)

_lock = threading.Lock()
_idle: collections.deque[int] = collections.deque()
_stats: dict[int, tuple[list[int], bytes]] = {}  # namespace fd -> fds of its /proc/net files, counters when made
dropped_dirty = 0  # namespaces closed on release because a run left sockets or traffic in them


def acquire() -> int:
    """An fd of a network namespace with its loopback up and no socket, for one run."""
    with _lock:
        if _idle:
            return _idle.popleft()
    fd, stats = namespaces.new_network_namespace(with_stats=True)
    with _lock:
        _stats[fd] = (stats, namespaces.counters(stats))
    return fd


def held_fds() -> set[int]:
    """The socket-counter fds this pool holds besides the namespaces' own (one per namespace)."""
    with _lock:
        return {stat for stats, _ in _stats.values() for stat in stats}


def _clean(fd: int) -> bool:
    entry = _stats.get(fd)
    if entry is None:
        return False
    stats, made = entry
    try:
        return namespaces.sockets_left(stats[0]) == 0 and namespaces.counters(stats) == made
    except (OSError, ValueError, IndexError):
        return False


def release(fd: int) -> None:
    """Give a namespace back once every process of its run is dead (the init was reaped)."""
    global dropped_dirty
    if _clean(fd):
        with _lock:
            if len(_idle) < MAX_IDLE:
                _idle.append(fd)
                return
    else:
        dropped_dirty += 1
    with _lock:
        stats, _ = _stats.pop(fd, ([], b""))
    for stat in stats:
        os.close(stat)
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
    for stats, _ in _stats.values():
        for stat in stats:
            try:
                os.close(stat)
            except OSError:
                pass
    _stats.clear()


os.register_at_fork(after_in_child=_forget_after_fork)
