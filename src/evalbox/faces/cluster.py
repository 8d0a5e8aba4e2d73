"""Scale-out on Ray (SPEC §9): the same batches, across the nodes of an existing Ray cluster.

    ray.init()                                              # or RAY_ADDRESS, or cluster="ray://HOST:PORT"
    outs = evalbox.run_many(plans, cluster="ray")           # same results as a local run, in order

Each node with CPUs gets one long-lived `NodeExecutor` actor (pinned there, kept for later
batches) that owns an AsyncExecutor and runs as many sandboxes at once as the node has CPUs.
The driver keeps every actor fed up to its slots (plus a few queued in the actor) and sends more
as results return, with Ray's own futures (`ray.wait`, or awaiting the refs); Ray does the rest.
On big nodes a call carries several plans (`chunk_size`), as a call costs the driver more than a
plan does. Plans travel as plain
data (`Plan.to_dict`), so a plan with `supervisor=` (a callable) cannot go: ValidationError in its
slot. Outputs come back one by one as they finish; per-item SandboxErrors are rebuilt as their own
class with their own message.

Work that is more than one plan (a HumanEval check: a candidate and trusted tests in two
sandboxes, relayed by the host) goes the same way as a *node job* (`iter_job`, evalbox.faces.jobs):
the driver names a function of evalbox marked `@node_job` and sends plain data; the node actor
imports it and runs it in a thread, within the node's slots, with sandboxes of that node. Evals
mark their jobs without importing this module (jobs.py is tiny and imports nothing of Ray's).

Nothing lost: when a node (or its actor) dies, its unfinished plans run again elsewhere, and each
plan has exactly one result. Only the infrastructure is retried: a program that timed out or
crashed has an Output, and an Output is final. A plan whose actors keep dying (it is tried
`MAX_ATTEMPTS` times) gets a ClusterError in its slot.

The actor needs nothing but evalbox itself on every node, at the same paths as on the driver
(plans name host paths: interpreters, mounts), as Ray assumes anyway. Ray is imported only here
and only when a cluster is asked for; `pip install 'evalbox-sandbox[ray]'`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from evalbox import errors
from evalbox.errors import ClusterError, SandboxError, ValidationError
from evalbox.faces.batch import Progress, Result, prepare_items
from evalbox.faces.jobs import find_job, node_job
from evalbox.policy.plan import Plan
from evalbox.process.result import Output

INSTALL = "pip install 'evalbox-sandbox[ray]'"
MAX_ATTEMPTS = 3  # runs of one plan cut short by lost nodes before its slot gets a ClusterError
NODE_WAIT = 60.0  # seconds to wait for a node with CPUs when none is left
ACTOR_START = 120.0  # seconds an actor may take to start (a worker process, importing evalbox)
REFRESH_EVERY = 30.0  # seconds between looks for nodes that joined during a batch
LOST_COOLDOWN = 30.0  # seconds before a node whose actor was lost gets a new one
CHUNK_MAX = 16  # plans per Ray call at most (a call costs the driver ~1.4 ms of CPU, a plan ~0.03 ms)


def chunk_size(slots: int) -> int:
    """Plans per call to a node running `slots` at once: 1 for small nodes (no plan waits on
    another's call), up to CHUNK_MAX for big ones, where the per-call cost would bound the driver."""
    return max(1, min(CHUNK_MAX, slots // 4))


def outstanding(slots: int) -> int:
    """Plans a node may hold at once (running, and queued in its actor): its slots plus a chunk or
    two, so a slot that frees is refilled at once while the next call is on its way."""
    return slots + max(chunk_size(slots), slots // 4)


# -- the actor (runs on every node) ---------------------------------------------------------------

class Slots:
    """A node's sandbox budget shared by every call with the same `slots` (plans and jobs alike):
    `take(n)` waits until n are free and takes them at once (never part of them, so two calls can
    never each hold half of what they need); `give` returns them one by one as items finish."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._changed = asyncio.Condition()

    async def take(self, n: int) -> None:
        n = min(n, self.size)
        async with self._changed:
            await self._changed.wait_for(lambda: self.used + n <= self.size)
            self.used += n

    async def give(self, n: int = 1) -> None:
        async with self._changed:
            self.used = max(0, self.used - n)
            self._changed.notify_all()


class NodeExecutor:
    """One node's executor: an AsyncExecutor on the actor's event loop.

    `run(plans, slots)` takes a chunk of plans as `Plan.to_dict()` data, runs them at most `slots`
    at once (counting every call with the same `slots`), and returns, in order, ("ok", Output) or
    ("error", class name, args, message) for a SandboxError; anything else raised is a bug and
    propagates. Cancelling the call kills its sandboxes.

    `run_job(job, common, items, slots)` runs a node job (see `node_job`) over a chunk of data
    items in one of the actor's threads, within the same slots, and returns, in order,
    ("ok", value) or ("error", ...) the same way.
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots  # the node's CPUs: what the driver feeds it unless told otherwise
        self.runs = 0
        self._ex: Any = None
        self._gates: dict[int, Slots] = {}
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None

    async def run(self, chunk: list[dict[str, Any]], slots: int) -> list[tuple[Any, ...]]:
        if self._ex is None:
            from evalbox.faces.aio import AsyncExecutor

            self._ex = await AsyncExecutor().__aenter__()  # no await inside: one executor, even at once
        gate = self._gate(slots)
        return list(await asyncio.gather(*(self._run_one(data, gate) for data in chunk)))

    def _gate(self, slots: int) -> Slots:
        return self._gates.setdefault(slots, Slots(slots))

    async def _run_one(self, data: dict[str, Any], gate: Slots) -> tuple[Any, ...]:
        try:
            plan = Plan.from_dict(data)
            await gate.take(1)
            try:
                self.runs += 1
                return ("ok", await self._ex.run(plan))
            finally:
                await gate.give(1)
        except SandboxError as e:
            return ("error", type(e).__name__, e.args, str(e))

    async def run_job(self, job: str, common: dict[str, Any], items: list[Any], slots: int) -> list[tuple[Any, ...]]:
        try:
            function = find_job(job)
        except SandboxError as e:
            return [("error", type(e).__name__, e.args, str(e))] * len(items)
        loop = asyncio.get_running_loop()
        if self._threads is None:
            # (threads are made as needed: each running call holds one, and at least one slot)
            self._threads = concurrent.futures.ThreadPoolExecutor(max_workers=1024, thread_name_prefix="evalbox-job")
        gate = self._gate(slots)
        results: list[tuple[Any, ...] | None] = [None] * len(items)
        stop = threading.Event()
        held = min(len(items), gate.size)
        await gate.take(held)

        def finished() -> None:  # (on the loop) one item's slot is free for the next call
            nonlocal held
            self.runs += 1
            if held > 0:
                held -= 1
                asyncio.ensure_future(gate.give(1))

        def work() -> None:  # (in a thread)
            try:
                for position, value in function(common, items, stop, slots):
                    if results[position] is None:
                        results[position] = ("ok", value)
                        loop.call_soon_threadsafe(finished)
            except SandboxError as e:
                for position, value in enumerate(results):
                    if value is None:
                        results[position] = ("error", type(e).__name__, e.args, str(e))

        try:
            await loop.run_in_executor(self._threads, work)
        finally:
            stop.set()  # a cancelled call: the job gives up what has not started
            await gate.give(held)
            held = 0
        missing = [i for i, value in enumerate(results) if value is None]
        if missing:  # a job that gave fewer results than items is a bug: say so, never a made-up value
            raise RuntimeError(f"node job {job} gave no result for items {missing}")
        return results  # type: ignore[return-value]

    def info(self) -> dict[str, Any]:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"pid": os.getpid(), "slots": self.slots, "runs": self.runs, "cpu_seconds": usage.ru_utime + usage.ru_stime}


def rebuild_error(name: str, args: tuple[Any, ...], message: str) -> SandboxError:
    """The SandboxError an actor reported, as its own class (from evalbox.errors) and message."""
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SandboxError)):
        return SandboxError(message)
    try:
        error = cls(*args)
    except Exception:  # noqa: BLE001 - an unusual constructor: keep the text at least
        error = cls(message)
    return error if str(error) == message else cls(message)


def decode(value: tuple[Any, ...]) -> Result:
    if value[0] == "ok":
        return value[1]
    return rebuild_error(*value[1:])


# -- connecting -----------------------------------------------------------------------------------

def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ClusterError(f"running on a Ray cluster needs Ray, which is not installed: {INSTALL} "
                           "(or run locally: leave out cluster= / --cluster)") from None
    return ray


def connect(cluster: str) -> Any:
    """Ray, connected as `cluster` asks: "ray" (this process's connection, else RAY_ADDRESS or the
    cluster running on this machine) or "ray://HOST:PORT" (a Ray client connection)."""
    if not isinstance(cluster, str) or not (cluster == "ray" or cluster.startswith("ray://")):
        raise ValidationError(f"cluster={cluster!r}: use cluster='ray' (after ray.init(), or with RAY_ADDRESS set) "
                              "or cluster='ray://HOST:PORT'")
    ray = import_ray()
    if not ray.is_initialized():
        address = cluster if cluster.startswith("ray://") else (os.environ.get("RAY_ADDRESS") or "auto")
        try:
            ray.init(address=address, logging_level="WARNING")
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ClusterError(f"cannot connect to the Ray cluster at {address}: {e}. Start one (`ray start --head`), "
                               "call ray.init() before evalbox, or set RAY_ADDRESS") from None
    return ray


# -- the driver side: one pool of node actors per Ray connection ----------------------------------

@dataclass(eq=False)
class Node:
    node_id: str
    actor: Any
    slots: int
    busy: int = 0
    alive: bool = True

    def next_chunk(self, limit: int | None, queued: int) -> int:
        """How many plans to send this node in one call now (0: it has enough), for a caller
        running `limit` (its concurrency) or the node's slots at once."""
        if not self.alive:
            return 0
        slots = limit or self.slots
        return max(0, min(chunk_size(slots), outstanding(slots) - self.busy, queued))


@dataclass
class Item:
    """One plan (or a node job's item) on its way: a plan is turned into data when first sent
    (and kept for a resend); a job's item is data from the start (`plan` None)."""

    index: int
    plan: Plan | None
    data: dict[str, Any] | None = None
    attempts: int = 0
    lost_on: list[str] = field(default_factory=list)

    def as_data(self) -> dict[str, Any] | SandboxError:
        if self.data is None:
            assert self.plan is not None
            try:
                self.data = self.plan.to_dict()
            except ValidationError as e:
                return ValidationError(f"{e} (cluster runs send plans as data)")
        return self.data


class NodePool:
    """The NodeExecutor actors of one Ray connection, one per alive node with CPUs.

    Shared by every batch and client of this process (their `busy` counts add up on each node).
    """

    def __init__(self, ray: Any) -> None:
        self.ray = ray
        self.nodes: dict[str, Node] = {}
        self._lost_at: dict[str, float] = {}  # node id -> when its actor was lost
        self._lock = threading.RLock()
        self._actor_class = ray.remote(NodeExecutor)
        self.refresh()

    def alive_nodes(self) -> list[Node]:
        with self._lock:
            return [n for n in self.nodes.values() if n.alive]

    def capacity(self, limit: int | None = None) -> int:
        return sum(limit or n.slots for n in self.alive_nodes())

    def refresh(self) -> None:
        """Start actors on nodes that joined (or lost theirs a while ago); forget nodes that left."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self.ray
        with self._lock:
            alive = {n["NodeID"]: int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")}
            for node_id, node in list(self.nodes.items()):
                if node_id not in alive:
                    self.drop(node)
            now = time.monotonic()
            started: list[Node] = []
            for node_id, cpus in alive.items():
                # A node that just lost its actor may be dying: Ray can list it as alive for a moment.
                if cpus <= 0 or node_id in self.nodes or now - self._lost_at.get(node_id, -LOST_COOLDOWN) < LOST_COOLDOWN:
                    continue
                slots = cpus
                # No CPUs reserved: the sandboxes are ours to count; an actor holding the node's CPUs
                # would starve other Ray work on a shared cluster (a trainer), or wait for it for ever.
                actor = self._actor_class.options(
                    num_cpus=0, max_restarts=0, max_concurrency=max(1000, 4 * slots),
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                ).remote(slots)
                started.append(Node(node_id, actor, slots))
            if not started:
                return
            refs = [n.actor.info.remote() for n in started]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=ACTOR_START)
            for node, ref in zip(started, refs):
                try:
                    if ref in ready:
                        ray.get(ref)
                        self.nodes[node.node_id] = node
                        continue
                except lost_errors(ray):
                    pass
                self._lost_at[node.node_id] = now
                self._kill(node)

    def drop(self, node: Node) -> None:
        """Forget a node whose actor was lost (its plans are the caller's to resend)."""
        with self._lock:
            if self.nodes.get(node.node_id) is node:
                del self.nodes[node.node_id]
                self._lost_at[node.node_id] = time.monotonic()
            if node.alive:
                node.alive = False
                self._kill(node)

    def _kill(self, node: Node) -> None:
        try:
            self.ray.kill(node.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone with its node
            pass

    def wait_for_nodes(self) -> None:
        """Return when some node has slots; ClusterError after NODE_WAIT seconds without one."""
        deadline = time.monotonic() + NODE_WAIT
        while True:
            self.refresh()
            if self.capacity():
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"no alive Ray node with CPUs to run sandboxes on (waited {NODE_WAIT:.0f}s); "
                                   "add worker nodes, or give the head CPUs (ray start --num-cpus N)")
            time.sleep(1.0)


def lost_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """Ray's errors for work lost with its actor, worker or node (never the program's fault)."""
    ex = ray.exceptions
    return tuple(getattr(ex, name) for name in ("RayActorError", "WorkerCrashedError", "NodeDiedError",
                                                "LocalRayletDiedError", "ObjectLostError") if hasattr(ex, name))


_pools: dict[tuple[str, int | None], NodePool] = {}
_pools_lock = threading.Lock()


def pool_for(cluster: str) -> NodePool:
    """The node pool of the current Ray connection (created once; a new ray.init gets a new one)."""
    ray = connect(cluster)
    key = ray.get_runtime_context().get_job_id()
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            _pools.clear()  # actors of an earlier connection died with it
            pool = _pools[key] = NodePool(ray)
        return pool


def _lost(item: Item, node: Node, error: BaseException) -> ClusterError | None:
    """Record a run of `item` lost with `node`; the ClusterError for its slot once it has had enough."""
    item.attempts += 1
    item.lost_on.append(node.node_id[:12])
    if item.attempts >= MAX_ATTEMPTS:
        return ClusterError(f"item {item.index} was lost with {item.attempts} Ray actors or nodes in a row "
                            f"({', '.join(item.lost_on)}; last: {type(error).__name__}); it may itself bring "
                            "down the executor (huge output?): run it locally to see")
    return None


# -- blocking: iter_results / run_many ------------------------------------------------------------

def iter_results(plans: Iterable[Plan | Sequence[str]], cluster: str = "ray", progress: bool = True,
                 slots_per_node: int | None = None, **overrides: Any) -> Iterator[tuple[int, Result]]:
    """`evalbox.faces.batch.iter_results` across a Ray cluster: (input index, result) as each
    finishes. Each result is fetched as it arrives and dropped by Ray, so the cluster holds only
    what is running. Leaving the iteration early cancels (and so kills) what still runs."""
    pool = pool_for(cluster)
    prepared = prepare_items(plans, overrides)
    bar = Progress(len(prepared), progress)
    items: list[Item] = []
    try:
        for index, plan in enumerate(prepared):
            if isinstance(plan, SandboxError):
                bar.advance(plan)
                yield index, plan
            else:
                items.append(Item(index, plan))

        def submit(node: Node, data: list[Any], slots: int) -> Any:
            return node.actor.run.remote(data, slots)

        yield from _drive(pool, items, submit, decode, bar, slots_per_node)
    finally:
        bar.close()


def iter_job(job: str, common: dict[str, Any], items: Sequence[Any], cluster: str = "ray", progress: bool = True,
             slots_per_node: int | None = None) -> Iterator[tuple[int, Any]]:
    """Run a node job (a function marked `@node_job`, named "evalbox.module:function") over data
    items across the cluster: (index in `items`, its value, or the SandboxError of its slot) as
    each finishes. `common` goes with every call. Items are spread, retried after a lost node and
    never duplicated exactly as plans are (each takes one of a node's slots while it runs); only
    plain data travels either way. Leaving the iteration early cancels what still runs."""
    pool = pool_for(cluster)
    bar = Progress(len(items), progress)
    try:
        def submit(node: Node, data: list[Any], slots: int) -> Any:
            return node.actor.run_job.remote(job, common, data, slots)

        def value(result: tuple[Any, ...]) -> Any:
            return result[1] if result[0] == "ok" else rebuild_error(*result[1:])

        yield from _drive(pool, [Item(i, None, data) for i, data in enumerate(items)], submit, value, bar,
                          slots_per_node)
    finally:
        bar.close()


def _drive(pool: NodePool, items: list[Item], submit: Callable[[Node, list[Any], int], Any],
           decode: Callable[[tuple[Any, ...]], Any], bar: Progress,
           limit: int | None) -> Iterator[tuple[int, Any]]:
    """The driver's loop: keep every node fed with chunks of `items` (each sent by `submit`),
    yield (index, decoded result) as calls return, resend the items of a lost node."""
    pool.refresh()  # nodes that joined since the last batch
    ray = pool.ray
    lost = lost_errors(ray)
    queue: collections.deque[Item] = collections.deque(items)
    running: dict[Any, tuple[list[Item], Node]] = {}  # a Ray call -> the items it carries
    try:
        next_refresh = time.monotonic() + REFRESH_EVERY
        while queue or running:
            if queue and not running and pool.capacity() == 0:
                pool.wait_for_nodes()
            for node in pool.alive_nodes():
                while (size := node.next_chunk(limit, len(queue))) > 0:  # keep every node fed
                    chunk: list[Item] = []
                    while queue and len(chunk) < size:
                        item = queue.popleft()
                        data = item.as_data()
                        if isinstance(data, SandboxError):
                            bar.advance(data)
                            yield item.index, data
                        else:
                            chunk.append(item)
                    if chunk:
                        running[submit(node, [i.data for i in chunk], limit or node.slots)] = (chunk, node)
                        node.busy += len(chunk)
            if not running:
                continue
            ready, _ = ray.wait(list(running), num_returns=1, timeout=REFRESH_EVERY)
            if len(running) > 1 and ready:  # whatever else is done too, in the same call
                ready, _ = ray.wait(list(running), num_returns=len(running), timeout=0)
            changed = False
            for ref in ready:
                chunk, node = running.pop(ref)
                node.busy -= len(chunk)
                try:
                    values = ray.get(ref)
                except lost as e:
                    pool.drop(node)
                    changed = True
                    for item in reversed(chunk):
                        failed = _lost(item, node, e)
                        if failed is None:
                            queue.appendleft(item)  # first in line again
                        else:
                            bar.advance(failed)
                            yield item.index, failed
                    continue
                for item, value in zip(chunk, values):
                    result = decode(value)
                    bar.advance(result)
                    yield item.index, result
            if changed or time.monotonic() > next_refresh:
                pool.refresh()  # replacements for lost nodes, newly joined ones
                next_refresh = time.monotonic() + REFRESH_EVERY
    finally:
        for ref, (chunk, node) in running.items():
            node.busy -= len(chunk)
            try:
                ray.cancel(ref)  # the actor's task is cancelled: its sandboxes are killed
            except Exception:  # noqa: BLE001 - gone with its node
                pass


def run_many(plans: Iterable[Plan | Sequence[str]], cluster: str = "ray", progress: bool = True,
             slots_per_node: int | None = None, **overrides: Any) -> list[Result]:
    """`evalbox.run_many` across a Ray cluster: results in input order, errors in their slots."""
    prepared = plans if isinstance(plans, list) else list(plans)
    results: list[Result | None] = [None] * len(prepared)
    for index, result in iter_results(prepared, cluster, progress, slots_per_node, **overrides):
        results[index] = result
    return results  # type: ignore[return-value]


# -- asyncio: a long-lived client with submit(), and arun_many ------------------------------------

class ClusterClient:
    """Submit plans one at a time from asyncio (a server's requests); they queue for free slots.

        client = ClusterClient("ray")
        out = await client.submit(plan)        # Output, or raises the SandboxError, as arun does

    One dispatcher task on the running loop feeds every node up to its slots; a node that dies
    gives its unfinished plans back to the queue. `close()` stops it (queued plans then fail).
    `run` is `submit`, so a server written against `AsyncExecutor.run` takes either; `capacity`
    is how many plans the cluster runs at once (a server's concurrency).
    """

    def __init__(self, cluster: str = "ray", slots_per_node: int | None = None) -> None:
        self._cluster = cluster
        self._slots_per_node = slots_per_node
        self._pool: NodePool | None = None
        self._queue: collections.deque[tuple[Item, asyncio.Future[Result]]] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._starting: asyncio.Future[None] | None = None
        self._failed: ClusterError | None = None  # why the dispatcher stopped, for later submits
        self._count = 0

    async def start(self) -> "ClusterClient":
        """Connect and start the node actors (done once, also by the first submit)."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)
        return self

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        # Connecting and starting actors blocks for a second or two: not on the loop.
        self._pool = await loop.run_in_executor(None, pool_for, self._cluster)
        await loop.run_in_executor(None, self._pool.refresh)  # nodes that joined since the pool was made
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._dispatch())

    async def __aenter__(self) -> "ClusterClient":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def capacity(self) -> int:
        """Sandboxes the cluster runs at once (its nodes' slots)."""
        return self._pool.capacity(self._slots_per_node) if self._pool else 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, plan: Plan) -> Output:
        """Run one plan on the cluster; its Output, or raises its SandboxError (as `arun`)."""
        result = await self.submit_result(plan)
        if isinstance(result, SandboxError):
            raise result
        return result

    run = submit  # what AsyncExecutor.run is called: a server can take either

    async def submit_result(self, plan: Plan) -> Result:
        """Like `submit`, but a SandboxError is returned rather than raised (as in run_many's slots)."""
        from evalbox.executor.executor import require_supervisor

        await self.start()
        try:
            require_supervisor(plan)
        except SandboxError as e:
            return e
        self._count += 1
        item = Item(self._count, plan)
        data = item.as_data()
        if isinstance(data, SandboxError):
            return data
        if self._failed is not None:
            raise self._failed
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        assert self._wake is not None
        self._wake.set()
        # Cancelling the caller drops a queued plan, or cancels its Ray task (killing the sandbox).
        return await future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._fail_queued(ClusterError("the cluster client was closed before this plan ran"))

    def _fail_queued(self, error: BaseException) -> None:
        while self._queue:
            _, future = self._queue.popleft()
            if not future.done():
                future.set_exception(error)

    async def _dispatch(self) -> None:
        pool, wake = self._pool, self._wake
        assert pool is not None and wake is not None
        ray = pool.ray
        lost = lost_errors(ray)
        loop = asyncio.get_running_loop()
        # a Ray call's future -> (the plans it carries with their callers' futures, node, ObjectRef)
        running: dict[asyncio.Future[Any], tuple[list[tuple[Item, asyncio.Future[Result]]], Node, Any]] = {}
        limit = self._slots_per_node
        next_refresh = time.monotonic() + REFRESH_EVERY
        try:
            while True:
                if self._queue and not running and pool.capacity() == 0:
                    await loop.run_in_executor(None, pool.wait_for_nodes)
                for node in pool.alive_nodes():
                    while (size := node.next_chunk(limit, len(self._queue))) > 0:
                        chunk = []
                        while self._queue and len(chunk) < size:
                            item, future = self._queue.popleft()
                            if not future.done():  # else its caller was cancelled while it waited
                                chunk.append((item, future))
                        if not chunk:
                            continue
                        ref = node.actor.run.remote([item.data for item, _ in chunk], limit or node.slots)
                        futures = [future for _, future in chunk]

                        def cancelled(_: Any, ref: Any = ref, futures: list[Any] = futures) -> None:
                            # Once every caller of the call is cancelled, so is the call: its sandboxes die.
                            if all(f.cancelled() for f in futures):
                                ray.cancel(ref)

                        for future in futures:
                            future.add_done_callback(cancelled)
                        running[asyncio.wrap_future(ref.future())] = (chunk, node, ref)
                        node.busy += len(chunk)
                wake.clear()
                waker = loop.create_task(wake.wait())
                done, _ = await asyncio.wait([*running, waker], timeout=REFRESH_EVERY,
                                             return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
                changed = False
                for fut in done:
                    if fut is waker:
                        continue
                    chunk, node, _ = running.pop(fut)
                    node.busy -= len(chunk)
                    error = fut.exception() if not fut.cancelled() else None
                    if isinstance(error, lost):
                        pool.drop(node)
                        changed = True
                        for item, future in reversed(chunk):
                            failed = _lost(item, node, error)
                            if failed is None:
                                if not future.done():
                                    self._queue.appendleft((item, future))
                            elif not future.done():
                                future.set_result(failed)
                        continue
                    for position, (item, future) in enumerate(chunk):
                        if future.done():
                            continue
                        if error is not None:
                            future.set_exception(error)
                        elif fut.cancelled():
                            future.cancel()
                        else:
                            future.set_result(decode(fut.result()[position]))
                if changed or time.monotonic() > next_refresh:
                    await loop.run_in_executor(None, pool.refresh)
                    next_refresh = time.monotonic() + REFRESH_EVERY
        except BaseException as e:
            # Stopped (close) or broken (no node left): nothing that waits may hang.
            error = e if isinstance(e, ClusterError) else ClusterError(
                "the cluster client was closed while this plan ran" if isinstance(e, asyncio.CancelledError)
                else f"the cluster client failed: {type(e).__name__}: {e}")
            if not isinstance(e, asyncio.CancelledError):
                self._failed = error
            for chunk, node, ref in running.values():
                node.busy -= len(chunk)
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001 - gone with its node
                    pass
                for _, future in chunk:
                    if not future.done():
                        future.set_exception(error)
            self._fail_queued(error)
            if isinstance(e, asyncio.CancelledError):
                raise


async def arun_many(plans: Iterable[Plan | Sequence[str]], cluster: str = "ray", progress: bool = False,
                    slots_per_node: int | None = None, **overrides: Any) -> list[Result]:
    """`evalbox.arun_many` across a Ray cluster (see ClusterClient)."""
    prepared = prepare_items(plans, overrides)
    bar = Progress(len(prepared), progress)

    async def one(client: ClusterClient, item: Plan | SandboxError) -> Result:
        result = item if isinstance(item, SandboxError) else await client.submit_result(item)
        bar.advance(result)
        return result

    try:
        async with ClusterClient(cluster, slots_per_node) as client:
            return list(await asyncio.gather(*(one(client, p) for p in prepared)))
    finally:
        bar.close()
