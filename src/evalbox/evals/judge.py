"""Stdin/stdout tests, judged the way online judges do, by code the program cannot reach.

    from evalbox.evals import judge
    cases = [judge.Case("1 2\\n", "3\\n"), judge.Case("5 7\\n", "12\\n")]
    report = judge.judge(evalbox.python.plan(code, timeout=2, memory="256M"), cases)
    report.verdict            # Verdict.ACCEPTED, or the verdict of the first case that failed
    report.cases[1].verdict   # per case: ACCEPTED, WRONG_ANSWER, TIME_LIMIT, MEMORY_LIMIT,
                              #           RUNTIME_ERROR, OUTPUT_LIMIT (SKIPPED after a failure with stop_on_failure)
    report.summary()          # {"verdict": "accepted", "passed": 2, "total": 2, "counts": {...}}

Every case runs the program in a fresh sandbox with the case's input as its stdin; the expected
output never enters the sandbox. The comparison happens here, on the host, on the program's
captured stdout (bounded by the plan's max_output), so nothing the program prints, exits with or
writes elsewhere can turn a wrong answer into an accepted one: a case is ACCEPTED only when the
program exited with code 0 within its limits and its stdout matches.

Comparison rules (`compare=`):
- "tokens" (default, like most judges): the outputs split on whitespace must give the same tokens;
  so spacing, line breaks and trailing newlines do not matter. With `float_tolerance=eps`, a token
  pair that both read as numbers matches when |got - expected| <= eps * max(1, |expected|).
- "lines": line by line, trailing whitespace of each line and trailing empty lines ignored,
  \\r\\n read as \\n.
- "exact": byte for byte.
- or a callable `(input, expected, output) -> bool` (all bytes), your own trusted checker; it runs
  on the host and gets the program's output as untrusted bytes.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from evalbox.errors import SandboxError
from evalbox.executor.executor import Completed, Executor, SandboxId, Timeout
from evalbox.faces.batch import default_concurrency
from evalbox.policy.plan import Plan, as_plan
from evalbox.process.result import Output, Status

Checker = Callable[[bytes, bytes, bytes], bool]
_NUMBER = re.compile(rb"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_SHOWN = 40  # bytes of a token or line quoted in a message


class Verdict(enum.Enum):
    ACCEPTED = "accepted"
    WRONG_ANSWER = "wrong_answer"
    TIME_LIMIT = "time_limit"
    MEMORY_LIMIT = "memory_limit"
    RUNTIME_ERROR = "runtime_error"
    OUTPUT_LIMIT = "output_limit"
    SKIPPED = "skipped"  # not run: an earlier case failed and stop_on_failure was set


@dataclass(frozen=True)
class Case:
    """One test: what the program reads on stdin and what it must print."""

    input: str | bytes
    expected: str | bytes


@dataclass(frozen=True)
class CaseResult:
    index: int
    verdict: Verdict
    message: str  # why, for anything but ACCEPTED ("" then)
    output: Output | None  # None when SKIPPED


@dataclass(frozen=True)
class Report:
    cases: list[CaseResult]

    @property
    def verdict(self) -> Verdict:
        """ACCEPTED when every case was; else the verdict of the first case that was not."""
        for case in self.cases:
            if case.verdict is not Verdict.ACCEPTED and case.verdict is not Verdict.SKIPPED:
                return case.verdict
        return Verdict.ACCEPTED

    @property
    def accepted(self) -> bool:
        return bool(self.cases) and all(c.verdict is Verdict.ACCEPTED for c in self.cases)

    @property
    def passed(self) -> int:
        return sum(c.verdict is Verdict.ACCEPTED for c in self.cases)

    @property
    def total(self) -> int:
        return len(self.cases)

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for c in self.cases:
            counts[c.verdict.value] = counts.get(c.verdict.value, 0) + 1
        first = next((c for c in self.cases if c.verdict not in (Verdict.ACCEPTED, Verdict.SKIPPED)), None)
        return {"verdict": self.verdict.value, "passed": self.passed, "total": self.total, "counts": counts,
                "first_failure": None if first is None else {"index": first.index, "verdict": first.verdict.value,
                                                             "message": first.message}}


# -- comparing ---------------------------------------------------------------------------------

def _bytes(x: str | bytes) -> bytes:
    return x.encode() if isinstance(x, str) else bytes(x)


def _show(b: bytes) -> str:
    text = b[:_SHOWN].decode("utf-8", "replace")
    return repr(text + ("..." if len(b) > _SHOWN else ""))


def _numbers_match(got: bytes, expected: bytes, tolerance: float) -> bool:
    if not (_NUMBER.fullmatch(got) and _NUMBER.fullmatch(expected)):
        return False
    a, b = float(got), float(expected)
    return math.isfinite(a) and abs(a - b) <= tolerance * max(1.0, abs(b))


def compare_tokens(output: bytes, expected: bytes, float_tolerance: float | None = None) -> str:
    """"" when the whitespace-separated tokens match, else what differs."""
    got, want = output.split(), expected.split()  # bounded by the plan's max_output
    if got == want:
        return ""
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w and not (float_tolerance is not None and _numbers_match(g, w, float_tolerance)):
            return f"token {i + 1}: expected {_show(w)}, got {_show(g)}"
    if len(got) != len(want):
        return f"expected {len(want)} tokens, got {len(got)}"
    return ""


def _lines(b: bytes) -> list[bytes]:
    lines = [line.rstrip() for line in b.replace(b"\r\n", b"\n").split(b"\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def compare_lines(output: bytes, expected: bytes) -> str:
    got, want = _lines(output), _lines(expected)
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            return f"line {i + 1}: expected {_show(w)}, got {_show(g)}"
    if len(got) != len(want):
        return f"expected {len(want)} lines, got {len(got)}"
    return ""


def compare_exact(output: bytes, expected: bytes) -> str:
    if output == expected:
        return ""
    at = next((i for i, (a, b) in enumerate(zip(output, expected)) if a != b), min(len(output), len(expected)))
    return f"differs at byte {at}: expected {_show(expected[at:])}, got {_show(output[at:])}"


def _comparer(compare: str | Checker, float_tolerance: float | None) -> Callable[[bytes, bytes, bytes], str]:
    if callable(compare):
        def custom(stdin: bytes, expected: bytes, output: bytes) -> str:
            return "" if compare(stdin, expected, output) else "rejected by the checker"
        return custom
    if compare == "tokens":
        return lambda stdin, expected, output: compare_tokens(output, expected, float_tolerance)
    if float_tolerance is not None:
        raise ValueError("float_tolerance applies to compare='tokens' only")
    if compare == "lines":
        return lambda stdin, expected, output: compare_lines(output, expected)
    if compare == "exact":
        return lambda stdin, expected, output: compare_exact(output, expected)
    raise ValueError(f"compare={compare!r}: use 'tokens', 'lines', 'exact' or a callable (input, expected, output) -> bool")


def verdict_of(out: Output, case: Case, compare: Callable[[bytes, bytes, bytes], str]) -> tuple[Verdict, str]:
    """The verdict of one finished run."""
    if out.status in (Status.TIMEOUT, Status.CPU_LIMIT):
        limit = "wall clock" if out.status is Status.TIMEOUT else "CPU time"
        return Verdict.TIME_LIMIT, f"{limit} limit exceeded after {out.wall_time:.3g}s"
    if out.status is Status.MEMORY_LIMIT:
        return Verdict.MEMORY_LIMIT, "memory limit exceeded"
    if out.status is Status.OUTPUT_LIMIT:
        return Verdict.OUTPUT_LIMIT, "output limit exceeded"
    if out.signal is not None:
        return Verdict.RUNTIME_ERROR, f"killed by signal {out.signal}"
    if out.exit_code != 0:
        tail = out.stderr.decode("utf-8", "replace").strip().splitlines()
        return Verdict.RUNTIME_ERROR, f"exit code {out.exit_code}" + (f": {tail[-1][:200]}" if tail else "")
    message = compare(_bytes(case.input), _bytes(case.expected), out.stdout)
    return (Verdict.WRONG_ANSWER, message) if message else (Verdict.ACCEPTED, "")


# -- running -----------------------------------------------------------------------------------

@dataclass
class _Run:
    plan: Plan
    cases: list[Case]
    compare: Callable[[bytes, bytes, bytes], str]
    stop_on_failure: bool
    results: dict[int, CaseResult] = field(default_factory=dict)
    failed: bool = False

    def plan_for(self, index: int) -> Plan:
        return self.plan.replace(stdin=_bytes(self.cases[index].input))

    def record(self, index: int, out: Output) -> None:
        verdict, message = verdict_of(out, self.cases[index], self.compare)
        self.results[index] = CaseResult(index, verdict, message, out)
        if verdict is not Verdict.ACCEPTED:
            self.failed = True

    def report(self) -> Report:
        return Report([self.results.get(i) or CaseResult(i, Verdict.SKIPPED, "an earlier case failed", None)
                       for i in range(len(self.cases))])


def _prepare(program: Plan | Sequence[str], cases: Iterable[Case], compare: str | Checker,
             float_tolerance: float | None, stop_on_failure: bool, limits: dict[str, Any]) -> _Run:
    plan = as_plan(program, **limits)
    cases = [c if isinstance(c, Case) else Case(*c) for c in cases]
    return _Run(plan, cases, _comparer(compare, float_tolerance), stop_on_failure)


def judge(program: Plan | Sequence[str], cases: Iterable[Case | tuple[str | bytes, str | bytes]], *,
          compare: str | Checker = "tokens", float_tolerance: float | None = None, stop_on_failure: bool = False,
          concurrency: int | None = None, **limits: Any) -> Report:
    """Run `program` (a Plan, or an argv) once per case, its input on stdin; judge each output.

    `limits` are Plan keywords applied to every case (`timeout=`, `memory=`...). With
    `stop_on_failure`, cases not yet started after a failure are SKIPPED (running ones finish).
    Raises SandboxError when the program cannot be started at all (a missing command...).
    """
    run = _prepare(program, cases, compare, float_tolerance, stop_on_failure, limits)
    todo = list(range(len(run.cases)))
    limit = max(1, concurrency or default_concurrency())
    slot: dict[SandboxId, int] = {}
    with Executor() as ex:
        while (todo and not (run.stop_on_failure and run.failed)) or slot:
            while todo and len(slot) < limit and not (run.stop_on_failure and run.failed):
                index = todo.pop(0)
                slot[ex.spawn(run.plan_for(index), close_stdin=True)] = index
            for ev in ex.poll():
                if isinstance(ev, (Completed, Timeout)):
                    run.record(slot.pop(ev.id), ev.output)
    return run.report()


async def ajudge(program: Plan | Sequence[str], cases: Iterable[Case | tuple[str | bytes, str | bytes]], *,
                 compare: str | Checker = "tokens", float_tolerance: float | None = None, stop_on_failure: bool = False,
                 concurrency: int | None = None, **limits: Any) -> Report:
    """`judge` for asyncio (one AsyncExecutor on the running loop; cancelling kills the runs)."""
    import asyncio

    from evalbox.faces.aio import AsyncExecutor

    run = _prepare(program, cases, compare, float_tolerance, stop_on_failure, limits)
    gate = asyncio.Semaphore(max(1, concurrency or default_concurrency()))

    async def one(ex: AsyncExecutor, index: int) -> None:
        async with gate:
            if run.stop_on_failure and run.failed:
                return
            run.record(index, await ex.run(run.plan_for(index)))

    async with AsyncExecutor() as ex:
        await asyncio.gather(*(one(ex, i) for i in range(len(run.cases))))
    return run.report()


__all__ = ["Case", "CaseResult", "Checker", "Report", "Verdict", "ajudge", "compare_exact", "compare_lines",
           "compare_tokens", "judge", "verdict_of"]
