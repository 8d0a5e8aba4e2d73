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
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from evalbox import errors
from evalbox.errors import ClusterError, SandboxError, ValidationError
from evalbox.faces.batch import Progress, Result, prepare_items
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

class NodeExecutor:
    """One node's executor: an AsyncExecutor on the actor's event loop.

    `run(plans, slots)` takes a chunk of plans as `Plan.to_dict()` data, runs them at most `slots`
    at once (counting every call with the same `slots`), and returns, in order, ("ok", Output) or
    ("error", class name, args, message) for a SandboxError; anything else raised is a bug and
    propagates. Cancelling the call kills its sandboxes.
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots  # the node's CPUs: what the driver feeds it unless told otherwise
        self.runs = 0
        self._ex: Any = None
        self._gates: dict[int, asyncio.Semaphore] = {}

    async def run(self, chunk: list[dict[str, Any]], slots: int) -> list[tuple[Any, ...]]:
        if self._ex is None:
            from evalbox.faces.aio import AsyncExecutor

            self._ex = await AsyncExecutor().__aenter__()  # no await inside: one executor, even at once
        gate = self._gates.setdefault(slots, asyncio.Semaphore(slots))
        return list(await asyncio.gather(*(self._run_one(data, gate) for data in chunk)))

    async def _run_one(self, data: dict[str, Any], gate: asyncio.Semaphore) -> tuple[Any, ...]:
        try:
            plan = Plan.from_dict(data)
            async with gate:
                self.runs += 1
                return ("ok", await self._ex.run(plan))
        except SandboxError as e:
            return ("error", type(e).__name__, e.args, str(e))

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
    """One plan on its way: turned into data when first sent (and kept for a resend)."""

    index: int
    plan: Plan
    data: dict[str, Any] | None = None
    attempts: int = 0
    lost_on: list[str] = field(default_factory=list)

    def as_data(self) -> dict[str, Any] | SandboxError:
        if self.data is None:
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
        return ClusterError(f"plan {item.index} was lost with {item.attempts} Ray actors or nodes in a row "
                            f"({', '.join(item.lost_on)}; last: {type(error).__name__}); it may itself bring "
                            "down the executor (huge output?): run it locally to see")
    return None


# -- blocking: iter_results / run_many ------------------------------------------------------------

def iter_results(plans: Iterable[Plan | Sequence[str]], cluster: str = "ray", progress: bool = True,
                 slots_per_node: int | None = None, **overrides: Any) -> Iterator[tuple[int, Result]]:
    """`evalbox.faces.batch.iter_results` across a Ray cluster: (input index, result) as each
    finishes. Each result is fetched as it arrives and dropped by Ray, so the cluster holds only
    what is running. Leaving the iteration early cancels (and so kills) what still runs."""
    limit = slots_per_node
    pool = pool_for(cluster)
    pool.refresh()  # nodes that joined since the last batch
    ray = pool.ray
    lost = lost_errors(ray)
    prepared = prepare_items(plans, overrides)
    queue: collections.deque[Item] = collections.deque()
    bar = Progress(len(prepared), progress)
    running: dict[Any, tuple[list[Item], Node]] = {}  # a Ray call -> the plans it carries
    try:
        for index, plan in enumerate(prepared):
            if isinstance(plan, SandboxError):
                bar.advance(plan)
                yield index, plan
            else:
                queue.append(Item(index, plan))
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
                        running[node.actor.run.remote([i.data for i in chunk], limit or node.slots)] = (chunk, node)
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
        bar.close()


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
