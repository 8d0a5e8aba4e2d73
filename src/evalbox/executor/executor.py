"""One event loop for many sandboxes: epoll over pidfds and pipes, no thread per sandbox.

`poll()` turns kernel readiness into events (output chunks as they are produced, completions,
timeouts) and enforces the limits that need a clock or a counter: wall time, tree CPU time and
total output.
"""

from __future__ import annotations

import errno
import itertools
import os
import resource
import select
import time
from collections import deque
from dataclasses import dataclass
from typing import NewType

from evalbox.executor.deferred import stop_signals_deferred
from evalbox.errors import SandboxError, SpawnError, ValidationError
from evalbox.policy.plan import NotifyMode, Plan
from evalbox.policy.supervision import Decision, SyscallRequest
from evalbox.process import warm, watchdog
from evalbox.process.host import probe
from evalbox.process.result import Output, Status
from evalbox.process.sandbox import Sandbox
from evalbox.process.supervisor import SupervisorFailed

SandboxId = NewType("SandboxId", int)

CPU_CHECK_INTERVAL = 0.05  # seconds between tree CPU samples for plans with cpu_time
DRAIN_GRACE = 1.0  # after the tree is killed, how long pipes may take to report EOF
READ_CHUNK = 65536
DRAIN_CHUNKS = 256  # at most 16 MiB read from a pipe after the grace period
# close(): how long, in all, warm starts may take to get their copies' pids before their
# servers are given up (killed, with their slots): a healthy server forks in well under 1 ms
CLOSE_PID_GRACE = 0.5


@dataclass(frozen=True)
class Stdout:
    id: SandboxId
    data: bytes


@dataclass(frozen=True)
class Stderr:
    id: SandboxId
    data: bytes


@dataclass(frozen=True)
class Completed:
    id: SandboxId
    output: Output


@dataclass(frozen=True)
class Timeout:
    id: SandboxId
    output: Output


@dataclass(frozen=True)
class Syscall:
    """An intercepted call (notify modes). In SUPERVISE mode without a supervisor callable, the
    sandbox waits until `Executor.respond(request, decision)`."""

    id: SandboxId
    request: SyscallRequest


@dataclass(frozen=True)
class Started:
    """A sandbox spawned with `wait=False` is locked down and its program runs (faces only)."""

    id: SandboxId


@dataclass(frozen=True)
class StartFailed:
    """A sandbox spawned with `wait=False` could not be locked down; nothing of its plan ran.
    `error` is what `spawn` would have raised (faces only)."""

    id: SandboxId
    error: SandboxError


Event = Stdout | Stderr | Completed | Timeout | Syscall

_PIDFD, _STDOUT, _STDERR, _STDIN, _LISTENER, _GUARD, _STARTING = "pidfd", 1, 2, "stdin", "listener", "guard", "start"


class _Running:
    """Executor-side state of one sandbox: which fds are open, what stdin is still queued."""

    def __init__(self, sid: SandboxId, box: Sandbox) -> None:
        self.id = sid
        self.box = box
        self.open_pipes = {box.stdout_r: _STDOUT, box.stderr_r: _STDERR}
        self.stdin_queue: deque[memoryview] = deque()
        self.stdin_closing = False
        self.drain_until: float | None = None
        self.next_cpu_check = box.started + CPU_CHECK_INTERVAL
        self.killed_before_pid = False  # kill() came while its warm start awaited the copy's pid


class Executor:
    """Runs sandboxes concurrently from the calling thread. Use as a context manager."""

    def __init__(self) -> None:
        self._host = probe()
        self._epoll = select.epoll()
        self._running: dict[SandboxId, _Running] = {}
        self._by_fd: dict[int, tuple[_Running, object]] = {}
        self._ids = itertools.count(1)
        self._ready: deque[Event] = deque()
        self._closed = False

    # -- public API ------------------------------------------------------------------------------

    def spawn(self, plan: Plan, *, close_stdin: bool = False) -> SandboxId:
        """Start a sandbox; returns at once. Raises SandboxError if it cannot start safely.

        `plan.stdin` is queued first; stdin then stays open for `write_stdin` until
        `close_stdin` (or pass `close_stdin=True` when there is nothing more to send).
        """
        return self._spawn(plan, close_stdin=close_stdin, wait=True)

    @stop_signals_deferred  # a Ctrl-C while starting must not orphan the sandbox
    def _spawn(self, plan: Plan, *, close_stdin: bool = False, wait: bool = True) -> SandboxId:
        """`spawn`; with `wait=False` a warm copy's lockdown finishes while the loop serves other
        sandboxes (the batch and asyncio faces: that wait is 2-4 ms of the copy's own CPU per run),
        and a Started or StartFailed event says how it went."""
        if self._closed:
            raise SandboxError("this Executor is closed; create a new one")
        sid = SandboxId(next(self._ids))
        try:
            box = Sandbox(plan, self._host, sid)
        except OSError as e:
            if e.errno != errno.EMFILE or not _raise_fd_limit():
                if e.errno == errno.EMFILE:
                    raise SandboxError(
                        f"out of file descriptors with {len(self._running)} sandboxes running (each holds ~4); "
                        "lower the concurrency or raise `ulimit -n`"
                    ) from e
                raise
            box = Sandbox(plan, self._host, sid)
        try:
            run = _Running(sid, box)
            self._running[sid] = run
        except BaseException:  # (an exception from a signal handler of another thread: see deferred.py)
            box.discard()
            raise
        self._watch(run, box.stdout_r, _STDOUT, select.EPOLLIN)
        self._watch(run, box.stderr_r, _STDERR, select.EPOLLIN)
        if self._guard_fd < 0:
            self._watch_guard()
        if box.pending is None:
            self._watch_started(run)
        elif wait:
            self._finish_start(run)
        else:
            self._watch(run, box.pending.fd, _STARTING, select.EPOLLIN)
        if plan.stdin:
            self.write_stdin(sid, plan.stdin)
        if close_stdin:
            self.close_stdin(sid)
        return sid

    def starting(self, sid: SandboxId) -> bool:
        """Is this sandbox (spawned with `wait=False`) still locking down?"""
        run = self._running.get(sid)
        return run is not None and run.box.pending is not None

    def _watch_started(self, run: _Running) -> None:
        box = run.box
        self._watch(run, box.pidfd, _PIDFD, select.EPOLLIN)
        if box.supervision is not None:
            self._watch(run, box.supervision.listener, _LISTENER, select.EPOLLIN)

    def _finish_start(self, run: _Running) -> None:
        """Complete a pending start; on failure the run is discarded and the error raised."""
        box = run.box
        assert box.pending is not None
        self._unwatch(box.pending.fd)
        ours = (box.stdout_r, box.stderr_r, box.stdin_w)
        try:
            box.finish_start()
        except BaseException:
            self._drop_failed_start(run, ours)
            raise
        self._watch_started(run)

    def _drop_failed_start(self, run: _Running, ours: tuple[int, ...]) -> None:
        """A start that failed or was cut short: the sandbox released itself (nothing of it runs);
        should that release have been cut short too, it is done again here."""
        try:
            run.box.discard()  # (nothing to do once released)
        finally:
            for fd in ours:  # closed by the failed start, so already out of the epoll set
                self._by_fd.pop(fd, None)
            self._running.pop(run.id, None)

    @stop_signals_deferred
    def _advance_start(self, run: _Running, overdue: bool = False) -> None:
        """A warm start's server said its copy's pid (or failed: the run then starts cold): watch
        what comes next. A failure becomes a StartFailed event."""
        box = run.box
        assert box.pending is not None
        self._unwatch(box.pending.fd)
        ours = (box.stdout_r, box.stderr_r, box.stdin_w)
        if run.killed_before_pid:
            try:
                given_up = box.cancel_start(give_up=overdue)
            except BaseException:
                if box.pending is None or not box.pending.awaiting_pid:  # (a give-up cut short: done again)
                    self._drop_failed_start(run, ours)
                else:  # (tried again when its channel says something, or at START_TIMEOUT)
                    self._watch(run, box.pending.fd, _STARTING, select.EPOLLIN)
                raise
            if not given_up:
                self._watch(run, box.pending.fd, _STARTING, select.EPOLLIN)  # (woken early)
                return
            self._drop_failed_start(run, ours)
            self._ready.append(StartFailed(run.id, SandboxError(
                f"sandbox {run.id} was killed as it started (its copy is killed when its pid comes, so its "
                "program may have begun; it is dead and reaped, its output dropped)")))
            return
        try:
            still_pending = box.advance_start(overdue)
        except BaseException as e:
            self._drop_failed_start(run, ours)
            if not isinstance(e, (SandboxError, OSError)):
                raise
            err = e if isinstance(e, SandboxError) else SpawnError(e.errno or 0, f"could not start: {e}")
            self._ready.append(StartFailed(run.id, err))
            return
        if still_pending:
            self._watch(run, box.pending.fd, _STARTING, select.EPOLLIN)
        else:
            self._watch_started(run)
            self._ready.append(Started(run.id))

    @stop_signals_deferred
    def _finish_start_reported(self, run: _Running) -> bool:
        """`_finish_start` for a `wait=False` spawn: the outcome becomes an event. True if started."""
        try:
            self._finish_start(run)
        except (SandboxError, OSError) as e:
            err = e if isinstance(e, SandboxError) else SpawnError(e.errno or 0, f"could not start: {e}")
            self._ready.append(StartFailed(run.id, err))
            return False
        self._ready.append(Started(run.id))
        return True

    @property
    def active_count(self) -> int:
        return len(self._running)

    def fileno(self) -> int:
        """The epoll fd: readable whenever `poll(0)` has work (for event-loop integration)."""
        return self._epoll.fileno()

    def next_deadline_in(self) -> float | None:
        """Seconds until a clock limit needs `poll` (a timeout, a CPU check), or None."""
        return self._next_wakeup(time.monotonic())

    def write_stdin(self, sid: SandboxId, data: bytes) -> None:
        """Queue bytes for the program's stdin; written as the pipe drains, never blocking."""
        run = self._get(sid)
        if run.box.stdin_w < 0 or run.stdin_closing:
            raise SandboxError(f"stdin of sandbox {sid} is closed")
        if data:
            run.stdin_queue.append(memoryview(bytes(data)))
            self._pump_stdin(run)

    def stdin_pending(self, sid: SandboxId) -> int:
        """Bytes queued for the program's stdin and not yet written (for back-pressure)."""
        run = self._running.get(sid)
        return sum(len(chunk) for chunk in run.stdin_queue) if run else 0

    def close_stdin(self, sid: SandboxId) -> None:
        """Close stdin once everything queued is written (the program then sees EOF)."""
        run = self._get(sid)
        run.stdin_closing = True
        self._pump_stdin(run)

    def respond(self, request: SyscallRequest, decision: Decision) -> None:
        """Answer a Syscall event of a SUPERVISE sandbox: Decision.ALLOW, .deny(errno) or .KILL."""
        run = self._running.get(SandboxId(request.sandbox))
        if run is None or run.box.supervision is None:
            return  # the sandbox ended meanwhile: nothing waits for the answer
        if not run.box.supervision.respond(request, decision):
            run.box.end(None)

    def kill(self, sid: SandboxId) -> None:
        """Kill the sandbox's whole process tree; its Completed event follows (status SIGNALED).
        A sandbox spawned with `wait=False` whose warm copy's pid has not come yet is never
        started: its StartFailed event follows (once its server answers, or is given up after
        warm.START_TIMEOUT), and this call never waits for the server."""
        run = self._running.get(sid)
        if run is None:
            return
        if run.box.pending is not None and run.box.pending.awaiting_pid:
            run.killed_before_pid = True  # (given up in _advance_start, when the channel says something)
            return
        if run.box.pending is None or self._finish_start_reported(run):
            run.box.kill_tree()

    def poll(self, timeout: float | None = None) -> list[Event]:
        """Wait up to `timeout` seconds (None: until something happens) and return the events."""
        if self._ready:
            return self._take_ready()
        if not self._running:
            return []
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            now = time.monotonic()
            wait = self._next_wakeup(now)
            if end is not None:
                wait = min(wait, max(0.0, end - now)) if wait is not None else max(0.0, end - now)
            for fd, mask in self._epoll.poll(-1 if wait is None else wait):
                self._dispatch(fd, mask)
            self._enforce_clocks(time.monotonic())
            self._finish_ready()
            if self._ready or (end is not None and time.monotonic() >= end) or not self._running:
                return self._take_ready()

    def run(self, plan: Plan) -> Output:
        """Run one plan to completion and return its Output (the blocking form)."""
        require_supervisor(plan)
        sid = self.spawn(plan, close_stdin=True)
        others: list[Event] = []  # events of other sandboxes stay for the caller's next poll()
        try:
            while True:
                for ev in self.poll():
                    if isinstance(ev, (Completed, Timeout)) and ev.id == sid:
                        return ev.output
                    if ev.id != sid:
                        others.append(ev)
        finally:
            self._ready.extendleft(reversed(others))

    def close(self) -> None:
        """Kill and reap every sandbox, remove their workspaces and cgroups."""
        if self._closed:
            return
        self._closed = True
        first: BaseException | None = None
        grace_ends = time.monotonic() + CLOSE_PID_GRACE
        for run in list(self._running.values()):
            try:  # (one run's failure to clean up must not leave the others running)
                self._close_run(run, grace_ends)
            except BaseException as e:  # noqa: BLE001 - raised once every run is cleaned up
                first = first or e
                try:  # (cut short: killed, reaped and released all the same before it is forgotten)
                    if run.box.pending is not None and run.box.pending.awaiting_pid:
                        run.box.cancel_start(give_up=True)
                    else:
                        run.box.discard()
                except BaseException as again:  # noqa: BLE001
                    first = first or again
        self._running.clear()
        if self._guard_fd >= 0:
            fd, self._guard_fd = self._guard_fd, -1  # (forgotten first: never closed twice)
            os.close(fd)
        self._epoll.close()
        if first is not None:
            raise first

    @stop_signals_deferred
    def _close_run(self, run: _Running, grace_ends: float) -> None:
        """close() for one run: kill, reap and release it (or give up its start)."""
        if run.box.pending is not None and run.box.pending.awaiting_pid:
            _readable(run.box.pending.fd, grace_ends - time.monotonic())
            run.box.cancel_start(give_up=True)  # (its server not waited for any longer)
            return
        if run.box.pending is not None and not self._finish_start_reported(run):
            return  # (cleaned up: nothing of it ran)
        run.box.end(None)
        if run.box.wait_status is None:
            run.box.reap()
        self._release(run)

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- loop internals --------------------------------------------------------------------------

    def _get(self, sid: SandboxId) -> _Running:
        try:
            return self._running[sid]
        except KeyError:
            raise SandboxError(f"no running sandbox {sid} in this Executor (finished or never started)") from None

    def _watch(self, run: _Running, fd: int, kind: object, mask: int) -> None:
        self._epoll.register(fd, mask)
        self._by_fd[fd] = (run, kind)

    def _unwatch(self, fd: int) -> None:
        if self._by_fd.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    _guard_fd = -1  # our own pidfd of the caller-death guard (watchdog), readable when it dies

    def _watch_guard(self) -> None:
        """(Re)watch the guard: if it is killed, it is restarted at once (issue 9, class 6)."""
        if self._guard_fd >= 0:
            self._unwatch(self._guard_fd)
            fd, self._guard_fd = self._guard_fd, -1  # (forgotten first: never closed twice)
            os.close(fd)
        fd = watchdog.guard_pidfd()
        if fd >= 0:
            self._epoll.register(fd, select.EPOLLIN)
            self._by_fd[fd] = (None, _GUARD)  # type: ignore[assignment]
            self._guard_fd = fd

    def _take_ready(self) -> list[Event]:
        out = list(self._ready)
        self._ready.clear()
        return out

    def _next_wakeup(self, now: float) -> float | None:
        soonest = None
        for run in self._running.values():
            box = run.box
            if box.pending is not None:
                if box.pending.awaiting_pid:
                    t = box.started + warm.START_TIMEOUT
                    soonest = t if soonest is None or t < soonest else soonest
                continue
            for t in (box.deadline if box.wait_status is None else None, run.drain_until,
                      run.next_cpu_check if box.plan.cpu_time is not None and box.wait_status is None else None):
                if t is not None and (soonest is None or t < soonest):
                    soonest = t
        return None if soonest is None else max(0.0, soonest - now)

    def _dispatch(self, fd: int, mask: int) -> None:
        entry = self._by_fd.get(fd)
        if entry is None:
            return
        run, kind = entry
        if kind is _GUARD:
            if not watchdog.check():
                # nothing would clean up after us if we died now: end every run (fail closed)
                for other in self._running.values():
                    if other.box.wait_status is None:
                        other.box.error = ("evalbox's guard process was killed and a new one could not be "
                                           "started (out of processes?); the run was stopped")
                        other.box.end(None)
            self._watch_guard()
            return
        box = run.box
        if kind is _STARTING:
            if box.pending is not None and box.pending.awaiting_pid:
                self._advance_start(run)
            else:
                self._finish_start_reported(run)
        elif kind is _PIDFD:
            self._unwatch(fd)
            self._reap(run)
            if box.supervision is not None and box.plan.notify is NotifyMode.DISABLED:
                # the tree is dead: no decision can be pending (saves the listener's hang-up event)
                self._unwatch(box.supervision.listener)
            run.drain_until = time.monotonic() + DRAIN_GRACE
        elif kind is _STDIN:
            self._pump_stdin(run)
        elif kind is _LISTENER:
            if mask & (select.EPOLLHUP | select.EPOLLERR) and not mask & select.EPOLLIN:
                self._unwatch(fd)  # every process under the filter is gone
            else:
                self._supervise(run)
        else:
            self._read_pipe(run, fd, kind)  # type: ignore[arg-type]

    def _read_pipe(self, run: _Running, fd: int, stream: int) -> bool:
        """Read one chunk; False when nothing more is available now (or ever: EOF closes)."""
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return False
        if not data:
            self._close_pipe(run, fd)
            return False
        kept = run.box.take_output(stream, data)
        if kept:
            self._ready.append(Stdout(run.id, kept) if stream == _STDOUT else Stderr(run.id, kept))
        return True

    def _supervise(self, run: _Running) -> None:
        box = run.box
        sup = box.supervision
        assert sup is not None
        try:
            for req in sup.receive():
                if box.plan.supervisor is not None:
                    if not sup.respond(req, sup.decide_with(box.plan.supervisor, req)):
                        box.end(None)
                        return
                else:
                    self._ready.append(Syscall(run.id, req))
        except SupervisorFailed as e:
            box.error = str(e)
            box.end(None)

    def _close_pipe(self, run: _Running, fd: int) -> None:
        self._unwatch(fd)
        run.open_pipes.pop(fd, None)

    def _pump_stdin(self, run: _Running) -> None:
        box = run.box
        fd = box.stdin_w
        if fd < 0:
            return
        try:
            while run.stdin_queue:
                chunk = run.stdin_queue[0]
                n = os.write(fd, chunk)
                if n < len(chunk):
                    run.stdin_queue[0] = chunk[n:]
                    break
                run.stdin_queue.popleft()
        except BlockingIOError:
            pass
        except (BrokenPipeError, OSError):
            run.stdin_queue.clear()  # the program closed its stdin: nothing more to deliver
            run.stdin_closing = True
        if run.stdin_queue:
            if fd not in self._by_fd:
                self._watch(run, fd, _STDIN, select.EPOLLOUT)
            return
        self._unwatch(fd)
        if run.stdin_closing:
            os.close(fd)
            box.stdin_w = -1

    def _enforce_clocks(self, now: float) -> None:
        for run in list(self._running.values()):
            box = run.box
            if box.pending is not None and box.pending.awaiting_pid and now >= box.started + warm.START_TIMEOUT:
                self._advance_start(run, overdue=True)  # its server never answered: the run goes cold
                continue
            if box.wait_status is not None or box.pending is not None:
                continue
            if box.deadline is not None and now >= box.deadline:
                if box.supervision is not None and box.supervision.pending:
                    waiting = next(iter(box.supervision.pending.values()))
                    box.error = (f"timed out after {box.plan.timeout:g}s waiting for a decision on "
                                 f"{waiting.syscall} {waiting.path or ''}".rstrip()
                                 + " (answer Syscall events with Executor.respond)")
                box.end(Status.TIMEOUT)
            elif box.plan.cpu_time is not None and now >= run.next_cpu_check:
                run.next_cpu_check = now + CPU_CHECK_INTERVAL
                if box.over_cpu_limit():
                    box.end(Status.CPU_LIMIT)

    def _finish_ready(self) -> None:
        now = time.monotonic()
        for sid, run in list(self._running.items()):
            box = run.box
            if box.wait_status is None:
                continue
            if run.open_pipes and run.drain_until is not None and now < run.drain_until:
                continue
            # Output already in the pipes after the tree died is still delivered; a pipe still
            # open after the grace period has a writer that escaped the kill, and is abandoned.
            for fd, stream in list(run.open_pipes.items()):
                for _ in range(DRAIN_CHUNKS):  # bounded: a writer that escaped the kill may never stop
                    if box.kill_reason is Status.OUTPUT_LIMIT or not self._read_pipe(run, fd, stream):
                        break
                self._close_pipe(run, fd)
            output = box.output()
            try:
                self._release(run)
            except OSError:
                pass  # cleanup of one run (swept later) must never cost the others their results
            del self._running[sid]  # (only now: a release cut short is done again by close())
            self._ready.append(Timeout(sid, output) if output.status is Status.TIMEOUT else Completed(sid, output))

    @stop_signals_deferred
    def _reap(self, run: _Running) -> None:
        run.box.reap()

    @stop_signals_deferred  # (a handler's exception midway would leave the workspace, slot, uid)
    def _release(self, run: _Running) -> None:
        box = run.box
        for fd in (box.pidfd, box.stdout_r, box.stderr_r, box.stdin_w,
                   box.supervision.listener if box.supervision else -1):
            if fd >= 0:
                self._unwatch(fd)
        box.close()



def require_supervisor(plan: Plan) -> None:
    """Forms that never show Syscall events to the caller (run, run_many) need supervisor=."""
    if plan.notify is NotifyMode.SUPERVISE and plan.supervisor is None:
        raise ValidationError("notify=SUPERVISE without supervisor= needs someone to answer Syscall events: "
                              "pass supervisor=callable, or use Executor.spawn + poll + respond")


def _readable(fd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout) * 1000))


def _raise_fd_limit() -> bool:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; True if that gave more room."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target <= soft:
        return False
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return True
