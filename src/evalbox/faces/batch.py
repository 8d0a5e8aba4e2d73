"""Batches: many plans, results in input order, bounded concurrency, a progress bar on a terminal.

A plan that cannot run (a ValidationError, a missing command...) does not stop the batch: its
slot in the result list holds the SandboxError instead of an Output (like asyncio.gather with
return_exceptions=True). Check with `isinstance(result, evalbox.Output)`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from evalbox.errors import SandboxError
from evalbox.executor.executor import Completed, Executor, SandboxId, Timeout, require_supervisor
from evalbox.policy.plan import Plan, as_plan
from evalbox.process.result import Output

Result = Output | SandboxError


def default_concurrency() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except OSError:
        return os.cpu_count() or 1


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

    `cluster="ray"` (or "ray://HOST:PORT") spreads them over a Ray cluster instead (faces/cluster.py).
    """
    if cluster is not None:
        from evalbox.faces import cluster as ray_face

        return ray_face.run_many(plans, cluster, progress, slots_per_node=concurrency, **overrides)
    prepared = prepare_items(plans, overrides)
    results: list[Result | None] = [p if isinstance(p, SandboxError) else None for p in prepared]
    todo = [i for i, p in enumerate(prepared) if isinstance(p, Plan)]
    limit = concurrency or default_concurrency()
    bar = Progress(len(prepared), progress)
    for r in results:
        if r is not None:
            bar.advance(r)
    slot: dict[SandboxId, int] = {}
    try:
        with Executor() as ex:
            next_item = 0
            while next_item < len(todo) or slot:
                while next_item < len(todo) and len(slot) < limit:
                    index = todo[next_item]
                    next_item += 1
                    try:
                        slot[ex.spawn(prepared[index], close_stdin=True)] = index  # type: ignore[arg-type]
                    except SandboxError as e:
                        results[index] = e
                        bar.advance(e)
                if not slot:
                    continue
                for ev in ex.poll():
                    if isinstance(ev, (Completed, Timeout)):
                        index = slot.pop(ev.id)
                        results[index] = ev.output
                        bar.advance(ev.output)
    finally:
        bar.close()
    return results  # type: ignore[return-value]
