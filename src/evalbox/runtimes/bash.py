"""`evalbox.bash`: run a bash script in a sandbox (`evalbox.shell` with bash).

    out = evalbox.bash.run('for i in 1 2 3; do echo $((i * i)); done')

The script goes to bash with `-c` (`$0` is "bash", `args` are `$1`...), or as a file when longer
than one argument may be; see `evalbox.shell`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from evalbox.faces.api import run as _run
from evalbox.policy.plan import Plan
from evalbox.process.result import Output
from evalbox.runtimes import shell
from evalbox.runtimes.common import Stages, phase_limits


def plan(code: str | bytes, *, args: Iterable[str] | None = None, **limits: Any) -> Plan:
    """A Plan running `code` with bash; `limits` are Plan keywords."""
    return shell.plan(code, shell="bash", args=args, **limits)


def stages(code: str | bytes, *, args: Iterable[str] | None = None, compile_timeout: float | None = None,
           run_timeout: float | None = None, **limits: Any) -> Stages:
    """No compile phase: Stages(None, plan) with `run_timeout` as the run's timeout."""
    return Stages(None, plan(code, args=args, **phase_limits(limits, run_timeout)))


def run(code: str | bytes, *, args: Iterable[str] | None = None, **limits: Any) -> Output:
    """Run `code` in a fresh sandbox and return its Output (see `plan`)."""
    return _run(plan(code, args=args, **limits))
