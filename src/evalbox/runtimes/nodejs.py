"""`evalbox.nodejs`: JavaScript on the host's Node.js, SandboxFusion's name for `evalbox.node`.

    out = evalbox.nodejs.run("console.log([3, 1, 2].sort())")
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from evalbox.faces.api import run as _run
from evalbox.policy.plan import Plan
from evalbox.process.result import Output
from evalbox.runtimes import node
from evalbox.runtimes.common import Stages, phase_limits


def plan(code: str | bytes, *, filename: str = "main.js", args: Iterable[str] | None = None, **limits: Any) -> Plan:
    """A Plan running `code` as `filename` with node; `limits` are Plan keywords."""
    return node.plan(code, filename=filename, args=args, **limits)


def stages(code: str | bytes, *, filename: str = "main.js", args: Iterable[str] | None = None,
           compile_timeout: float | None = None, run_timeout: float | None = None, **limits: Any) -> Stages:
    """No compile phase: Stages(None, plan) with `run_timeout` as the run's timeout."""
    return Stages(None, plan(code, filename=filename, args=args, **phase_limits(limits, run_timeout)))


def run(code: str | bytes, *, filename: str = "main.js", args: Iterable[str] | None = None, **limits: Any) -> Output:
    """Run `code` in a fresh sandbox and return its Output (see `plan`)."""
    return _run(plan(code, filename=filename, args=args, **limits))
