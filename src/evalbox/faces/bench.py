"""`evalbox bench`: evalbox measured side by side with bare spawning, in one run."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from evalbox.executor.executor import Executor
from evalbox.policy.plan import Plan


@dataclass
class Row:
    name: str
    median_ms: float
    p90_ms: float
    runs: int
    baseline: str | None = None
    ratio: float | None = None


def _measure(fn: Callable[[], object], runs: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def _row(name: str, times: list[float]) -> Row:
    times = sorted(times)
    return Row(name, statistics.median(times), times[int(len(times) * 0.9) - 1], len(times))


def bare_posix_spawn(path: str = "/bin/true") -> None:
    pid = os.posix_spawn(path, [path], {})
    os.waitpid(pid, 0)


def spawn_latency(runs: int) -> list[Row]:
    """/bin/true: evalbox vs bare posix_spawn (and bwrap when installed)."""
    rows = [_row("posix_spawn /bin/true (bare)", _measure(bare_posix_spawn, runs))]
    plan = Plan(["/bin/true"])
    with Executor() as ex:
        def sandboxed() -> None:
            out = ex.run(plan)
            if not out.success:
                raise RuntimeError(f"sandboxed /bin/true failed: {out.status} {out.stderr!r}")

        row = _row("evalbox /bin/true", _measure(sandboxed, runs))
    row.baseline, row.ratio = rows[0].name, row.median_ms / rows[0].median_ms
    rows.append(row)
    bwrap = shutil.which("bwrap")
    if bwrap:
        argv = [bwrap, "--unshare-all", "--ro-bind", "/", "/", "/bin/true"]
        b = _row("bwrap --unshare-all /bin/true", _measure(lambda: subprocess.run(argv, check=True), min(runs, 100)))
        b.baseline, b.ratio = rows[0].name, b.median_ms / rows[0].median_ms
        rows.append(b)
    return rows


def run_suite(quick: bool = False, runs: int | None = None) -> list[Row]:
    n = runs or (30 if quick else 200)
    return spawn_latency(n)


def format_table(rows: list[Row]) -> str:
    head = f"{'benchmark':<34} {'median ms':>10} {'p90 ms':>8} {'runs':>5}  ratio"
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r.ratio:.2f}x bare" if r.ratio is not None else ""
        lines.append(f"{r.name:<34} {r.median_ms:>10.3f} {r.p90_ms:>8.3f} {r.runs:>5}  {ratio}")
    return "\n".join(lines)
