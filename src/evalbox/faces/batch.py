"""Batches: many plans, results in input order, bounded concurrency, a progress bar on a terminal.

A plan that cannot run (a ValidationError, a missing command...) does not stop the batch: its
slot in the result list holds the SandboxError instead of an Output (like asyncio.gather with
return_exceptions=True). Check with `isinstance(result, evalbox.Output)`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from evalbox.errors import SandboxError, SpawnError, ValidationError
from evalbox.executor.executor import Completed, Executor, SandboxId, StartFailed, Timeout, require_supervisor
from evalbox.policy.plan import Plan, as_plan
from evalbox.process.lockdown import expect_neighbours
from evalbox.process.result import Output

Result = Output | SandboxError


def default_concurrency() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except OSError:
        return os.cpu_count() or 1


def check_concurrency(concurrency: int | None) -> int:
    """The number of sandboxes at once: `concurrency`, or one per CPU when None."""
    if concurrency is None:
        return default_concurrency()
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValidationError(f"concurrency must be a whole number >= 1 (or None: one per CPU), not {concurrency!r}")
    return concurrency


class Progress:
    """A tqdm bar on stderr when it is a terminal and progress is wanted; silent otherwise."""

    def __init__(self, total: int, wanted: bool, desc: str = "evalbox") -> None:
        self._bar = None
        if wanted and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="run", leave=False, dynamic_ncols=True)

    def advance(self, result: Result) -> None:
        if self._bar is not None:
            self._bar.update(1)
            if not (isinstance(result, Output) and result.success):
                self._bar.set_postfix_str("last: " + (result.status.name if isinstance(result, Output) else type(result).__name__))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def prepare_items(items: Iterable[Plan | Sequence[str]], overrides: dict[str, Any]) -> list[Plan | SandboxError]:
    out: list[Plan | SandboxError] = []
    for item in items:
        try:
            plan = as_plan(item, **overrides)
            require_supervisor(plan)
            out.append(plan)
        except SandboxError as e:
            out.append(e)
    return out


def run_many(plans: Iterable[Plan | Sequence[str]], concurrency: int | None = None, progress: bool = True,
             cluster: str | None = None, **overrides: Any) -> list[Result]:
    """Run every plan (or argv, with Plan keywords as `overrides`); results in input order.

    `concurrency`: sandboxes at once (default one per CPU; must be >= 1). `progress`: a bar on
    stderr when it is a terminal. `cluster`: "ray" or "ray://HOST:PORT" runs them across a Ray
    cluster instead, `concurrency` then per node (see evalbox/faces/cluster.py).
    """
    prepared = list(plans) if not isinstance(plans, list) else plans
    results: list[Result | None] = [None] * len(prepared)
    for index, result in iter_results(prepared, concurrency, progress, cluster, **overrides):
        results[index] = result
    return results  # type: ignore[return-value]


def iter_results(plans: Iterable[Plan | Sequence[str]], concurrency: int | None = None, progress: bool = True,
                 cluster: str | None = None, **overrides: Any) -> Iterator[tuple[int, Result]]:
    """(input index, result) of every plan, as each one finishes (so not in input order).

    Leaving the iteration early (break, an exception, Ctrl-C) kills and cleans up the sandboxes
    still running; what was yielded before is complete.
    """
    limit = check_concurrency(concurrency)
    if cluster is not None:
        from evalbox.faces import cluster as ray_face

        yield from ray_face.iter_results(plans, cluster, progress, concurrency, **overrides)
        return
    prepared = prepare_items(plans, overrides)
    todo = [i for i, p in enumerate(prepared) if isinstance(p, Plan)]
    bar = Progress(len(prepared), progress)
    slot: dict[SandboxId, int] = {}
    most_pids = max((p.max_pids or 0 for p in prepared if isinstance(p, Plan)), default=0)
    try:
        for index, item in enumerate(prepared):
            if isinstance(item, SandboxError):
                bar.advance(item)
                yield index, item
        with Executor() as ex, expect_neighbours(min(limit, len(todo)), most_pids):
            next_item = 0
            while next_item < len(todo) or slot:
                while next_item < len(todo) and len(slot) < limit:
                    index = todo[next_item]
                    next_item += 1
                    try:
                        # (a warm copy locks itself down while the next runs start: StartFailed if it cannot)
                        slot[ex._spawn(prepared[index], close_stdin=True, wait=False)] = index  # type: ignore[arg-type]
                    except (SandboxError, OSError) as e:  # one plan's failure never costs the others
                        err = e if isinstance(e, SandboxError) else SpawnError(e.errno or 0, f"could not start: {e}")
                        bar.advance(err)
                        yield index, err
                if not slot:
                    continue
                for ev in ex.poll():
                    if isinstance(ev, (Completed, Timeout)):
                        index = slot.pop(ev.id)
                        bar.advance(ev.output)
                        yield index, ev.output
                    elif isinstance(ev, StartFailed):
                        index = slot.pop(ev.id)
                        bar.advance(ev.error)
                        yield index, ev.error
    finally:
        bar.close()
