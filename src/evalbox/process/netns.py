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

Those reads (~70 us, most of it the kernel formatting netstat and snmp6) are kept off a run's
critical path where they can be: `release` only queues the namespace, unlent, and
`check_released` (called while the caller waits anyway, for a launcher's answer: see
warm._Spawner.call) pools it if the run left nothing in it, else closes it. A namespace is lent
only once found clean. `acquire` with none clean idle makes a new one while the pool holds fewer
than two per run in use (so that one caller's back-to-back runs alternate between two, each
checked during the other's start), else checks the queued ones itself, as before.
"""

from __future__ import annotations

import collections
import os
import threading
from typing import Callable

from evalbox.kernel import namespaces

MAX_IDLE = 64  # idle namespaces kept; more are closed (the kernel frees them)

_lock = threading.Lock()
_idle: collections.deque[int] = collections.deque()  # found clean: lent to the next run
_unchecked: collections.deque[int] = collections.deque()  # released, not checked yet: never lent
_in_check = 0  # taken from _unchecked by a check under way
_stats: dict[int, tuple[list[int], bytes]] = {}  # namespace fd -> fds of its /proc/net files, counters when made
dropped_dirty = 0  # namespaces closed on release because a run left sockets or traffic in them


def acquire() -> int:
    """An fd of a network namespace with its loopback up and no socket, for one run."""
    with _lock:
        if _idle:
            return _idle.popleft()
        in_use = len(_stats) - len(_unchecked) - _in_check
        spare = len(_stats) < 2 * (in_use + 1)
    if not spare:
        check_released(until_clean=True)
        with _lock:
            if _idle:
                return _idle.popleft()
    while True:
        # pooled, idle, by the thread that makes it (see _pool_new), then taken back here: a
        # caller cut short meanwhile leaves it to the pool
        fd = namespaces.new_network_namespace(with_stats=True, keep=_pool_new)[0]
        with _lock:
            if fd in _idle:
                _idle.remove(fd)
                return fd
            if _idle:  # (another thread took ours)
                return _idle.popleft()


def _pool_new(fd: int, stats: list[int]) -> None:
    made = namespaces.counters(stats)
    with _lock:
        _stats[fd] = (stats, made)
        _idle.append(fd)


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
    """Give a namespace back once every process of its run is dead (the init was reaped): queued
    for check_released, which pools it or closes it."""
    with _lock:
        _unchecked.append(fd)


def check_released(until_clean: bool = False, stop: Callable[[], bool] | None = None) -> None:
    """Decide the released namespaces: pooled if the run left no socket and no traffic in it,
    else closed (`until_clean`: stop at the first clean one; `stop`: asked before each one).
    Never raises but for a signal handler's exception, and then leaves nothing undecided."""
    global _in_check, dropped_dirty
    while True:
        if stop is not None and stop():
            return
        with _lock:
            if not _unchecked:
                return
            fd = _unchecked.popleft()
            _in_check += 1
        clean = False
        try:
            clean = _clean(fd)
        finally:  # (an interrupted check counts as not clean: the namespace is closed)
            with _lock:
                _in_check -= 1
                if clean and len(_idle) < MAX_IDLE:
                    _idle.append(fd)
                    fd = -1
                elif not clean:
                    dropped_dirty += 1
                if fd >= 0:
                    # (closed before it leaves the table: held_fds never omits an fd still open)
                    for held in (*_stats.get(fd, ([], b""))[0], fd):
                        try:
                            os.close(held)
                        except OSError:
                            pass
                    _stats.pop(fd, None)
        if clean and until_clean:
            return


def _forget_after_fork() -> None:
    # A forked child must not lend the parent's namespaces: the parent may lend them too.
    global _lock, _in_check
    _lock = threading.Lock()
    _in_check = 0
    while _idle or _unchecked:
        try:
            os.close((_idle or _unchecked).pop())
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
