"""Stop signals wait while a sandbox is being started.

Python raises KeyboardInterrupt (or runs a SIGTERM handler) between any two bytecodes. Between the
clone of a sandbox and its registration (Executor table, guard process) that would orphan it: its
background processes would outlive the caller's clean-up. So SIGINT, SIGTERM, SIGHUP and SIGALRM
(an evaluation harness's time limit whose handler raises) are blocked for that stretch (a few
microseconds to a millisecond) and delivered right after, when everything started is known and
`Executor.close()` kills it.

Blocking only holds the signal for this thread: in a caller with other threads the kernel may give
it to one of them, and Python then runs the handler here all the same. So the exchanges with warm
templates run on a thread of their own (warm._Spawner.call), answers carry their request's id, and
a start cut short kills what it started; what remains is a window of a few bytecodes.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable
from typing import Any, TypeVar

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM}

F = TypeVar("F", bound=Callable[..., Any])


def stop_signals_deferred(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            return fn(*args, **kwargs)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a pending Ctrl-C is raised here

    return wrapper  # type: ignore[return-value]
