"""Signals whose handler could raise wait while a sandbox is being started, collected or released.

Python raises KeyboardInterrupt (or runs any other Python-level signal handler, which may raise)
between any two bytecodes. Between the clone of a sandbox and its registration (Executor table,
guard process) that would orphan it: its background processes would outlive the caller's
clean-up. So for that stretch (a few microseconds to a millisecond; a warm start that waits for
its template: up to warm.START_TIMEOUT) this thread blocks:

* SIGINT, SIGTERM, SIGHUP and SIGALRM (Ctrl-C, a supervisor's stop, an evaluation harness's time
  limit whose handler raises), whatever their handler is now (one may be set while we wait);
* every other signal that has a Python-level handler at that moment (a SIGPROF/SIGVTALRM CPU
  timer, a SIGUSR1 or SIGCHLD handler...): those are the ones whose handler can raise here.
  Signals left to the kernel's default action or ignored are not blocked (a SIGQUIT still
  quits at once), nor are the ones a fault raises (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP,
  SIGSYS: blocking those kills the process).

They are delivered right after, when everything started is known and `Executor.close()` kills it.
(The handlers are read with `_signal.getsignal`, ~2 us for every signal; `signal.getsignal`
converts each answer to an enum, ~25 us.)

Blocking only holds the signal for this thread: in a caller with other threads the kernel may give
it to one of them, and Python then runs the handler here all the same. So the exchanges with warm
templates run on a thread of their own (warm._Spawner.call), answers carry their request's id, and
every step after a program exists kills, reaps and releases it when it is cut short (Sandbox's
_after_start and _abandon_start, Executor._drop_failed_start); what remains is a window of a few
bytecodes.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable
from typing import Any, TypeVar

from _signal import getsignal as _handler_of  # (no enum conversion: see above)

_STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM})
_FAULT_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGTRAP, signal.SIGSYS})
_OTHER_SIGNALS = tuple(int(s) for s in signal.valid_signals()
                       if s not in _STOP_SIGNALS | _FAULT_SIGNALS and s not in (signal.SIGKILL, signal.SIGSTOP))

F = TypeVar("F", bound=Callable[..., Any])


def deferred_signals() -> set[int]:
    """What `stop_signals_deferred` blocks now."""
    return {*_STOP_SIGNALS, *(s for s in _OTHER_SIGNALS if callable(_handler_of(s)))}


def stop_signals_deferred(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, deferred_signals())
        try:
            return fn(*args, **kwargs)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a pending Ctrl-C is raised here

    return wrapper  # type: ignore[return-value]
