"""asyncio face: the same executor, driven by the running loop (no threads, no child watcher).

The executor's epoll fd is registered with `loop.add_reader`, so readiness of any pidfd or pipe
wakes the loop; a timer covers the clock limits (wall time, CPU checks).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from evalbox.errors import SandboxError
from evalbox.faces.batch import Progress, Result, check_concurrency, prepare_items
from evalbox.executor.executor import (Completed, Event, Executor, SandboxId, Started, StartFailed, Timeout,
                                      require_supervisor)
from evalbox.policy.plan import Plan, as_plan
from evalbox.policy.supervision import Decision, SyscallRequest
from evalbox.process.lockdown import expect_neighbours
from evalbox.process.result import Output


_CLOSED = object()  # ends an events() iteration when the executor closes under it


class AsyncSandbox:
    """A running sandbox of an AsyncExecutor: its events, its Output, and controls."""

    def __init__(self, executor: "AsyncExecutor", sid: SandboxId) -> None:
        self.id = sid
        self._executor = executor
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._done: asyncio.Future[Output] = asyncio.get_running_loop().create_future()

    def _deliver(self, ev: Event) -> None:
        self._events.put_nowait(ev)
        if isinstance(ev, (Completed, Timeout)) and not self._done.done():
            self._done.set_result(ev.output)

    async def events(self) -> AsyncIterator[Event]:
        """Stdout/Stderr events as produced, ending with the Completed or Timeout event.

        Raises SandboxError if the AsyncExecutor is closed before the sandbox ends.
        """
        while True:
            ev = await self._events.get()
            if ev is _CLOSED:
                raise self._done.exception()  # type: ignore[misc]
            yield ev
            if isinstance(ev, (Completed, Timeout)):
                return

    async def wait(self) -> Output:
        """The Output once the run ends. Cancelling the awaiting task kills the sandbox."""
        try:
            return await asyncio.shield(self._done)
        except asyncio.CancelledError:
            self.kill()
            raise

    def kill(self) -> None:
        self._executor._ex.kill(self.id)

    def write_stdin(self, data: bytes) -> None:
        self._executor._ex.write_stdin(self.id, data)

    def close_stdin(self) -> None:
        self._executor._ex.close_stdin(self.id)


class AsyncExecutor:
    """Many sandboxes on the running asyncio loop. Use `async with`."""

    def __init__(self) -> None:
        self._ex: Executor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._boxes: dict[SandboxId, AsyncSandbox] = {}
        self._starts: dict[SandboxId, asyncio.Future[None]] = {}  # warm copies still locking down
        self._timer: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> "AsyncExecutor":
        self._loop = asyncio.get_running_loop()
        self._ex = Executor()
        self._loop.add_reader(self._ex.fileno(), self._on_ready)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Kill and reap every sandbox still running (their waiters get a SandboxError)."""
        if self._ex is None:
            return
        assert self._loop is not None
        self._loop.remove_reader(self._ex.fileno())
        if self._timer is not None:
            self._timer.cancel()
        self._ex.close()
        for started in self._starts.values():
            if not started.done():
                started.set_exception(SandboxError("the sandbox was not started: its AsyncExecutor closed"))
                started.exception()  # mark retrieved: nobody may be waiting
        self._starts.clear()
        for box in self._boxes.values():
            if not box._done.done():
                box._done.set_exception(SandboxError(f"sandbox {box.id} was killed: its AsyncExecutor closed"))
                box._done.exception()  # mark retrieved: nobody may be waiting
                box._events.put_nowait(_CLOSED)  # type: ignore[arg-type]
        self._boxes.clear()
        self._ex = None

    @property
    def active_count(self) -> int:
        return self._ex.active_count if self._ex else 0

    async def spawn(self, plan: Plan, *, close_stdin: bool = False) -> AsyncSandbox:
        """Start a sandbox (set-up runs on the loop: a millisecond or two; a warm copy's lockdown
        is awaited while the loop serves others). Raises SandboxError if it cannot start safely."""
        if self._ex is None or self._loop is None:
            raise SandboxError("use `async with AsyncExecutor() as ex:` before spawning")
        sid = self._ex._spawn(plan, close_stdin=close_stdin, wait=False)
        box = AsyncSandbox(self, sid)
        self._boxes[sid] = box
        if self._ex.starting(sid):
            started = self._starts[sid] = self._loop.create_future()
            self._reschedule()
            try:
                await asyncio.shield(started)
            except asyncio.CancelledError:
                box.kill()  # (completes the start first)
                raise
        self._reschedule()
        return box

    def respond(self, request: SyscallRequest, decision: Decision) -> None:
        """Answer a Syscall event of a SUPERVISE sandbox."""
        if self._ex is not None:
            self._ex.respond(request, decision)

    async def run(self, plan: Plan) -> Output:
        require_supervisor(plan)
        return await (await self.spawn(plan, close_stdin=True)).wait()

    def _on_ready(self) -> None:
        if self._ex is None:
            return
        for ev in self._ex.poll(0):
            if isinstance(ev, (Started, StartFailed)):
                started = self._starts.pop(ev.id, None)
                if isinstance(ev, StartFailed):
                    self._boxes.pop(ev.id, None)
                if started is not None and not started.done():
                    if isinstance(ev, Started):
                        started.set_result(None)
                    else:
                        started.set_exception(ev.error)
                        started.exception()  # (raised in spawn if it still waits; silent if it was cancelled)
                continue
            box = self._boxes.get(ev.id)
            if box is not None:
                box._deliver(ev)
                if isinstance(ev, (Completed, Timeout)):
                    del self._boxes[ev.id]
        self._reschedule()

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        delay = self._ex.next_deadline_in() if self._ex else None
        if delay is not None and self._loop is not None:
            self._timer = self._loop.call_later(delay, self._on_ready)


async def arun(target: Plan | Iterable[str], **overrides: Any) -> Output:
    """`evalbox.run` for asyncio. Cancelling the awaiting task kills and reaps the sandbox."""
    plan = as_plan(target, **overrides)
    async with AsyncExecutor() as ex:
        return await ex.run(plan)


async def arun_many(plans: Iterable[Plan | Sequence[str]], concurrency: int | None = None, progress: bool = True,
                    cluster: str | None = None, **overrides: Any) -> list[Result]:
    """`run_many` for asyncio: one AsyncExecutor on the running loop (same arguments, same results)."""
    limit = check_concurrency(concurrency)
    if cluster is not None:
        from evalbox.faces import cluster as ray_face

        return await ray_face.arun_many(plans, cluster, progress, concurrency, **overrides)
    prepared = prepare_items(plans, overrides)
    gate = asyncio.Semaphore(limit)
    bar = Progress(len(prepared), progress)

    async def one(ex: AsyncExecutor, item: Plan | SandboxError) -> Result:
        if isinstance(item, SandboxError):
            result: Result = item
        else:
            async with gate:
                try:
                    result = await ex.run(item)
                except SandboxError as e:
                    result = e
        bar.advance(result)
        return result

    most_pids = max((p.max_pids or 0 for p in prepared if isinstance(p, Plan)), default=0)
    try:
        with expect_neighbours(limit, most_pids):
            async with AsyncExecutor() as ex:
                return list(await asyncio.gather(*(one(ex, p) for p in prepared)))
    finally:
        bar.close()
