"""The blocking one-call face: `evalbox.run(argv_or_plan, **limits)`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from evalbox.executor.executor import Executor
from evalbox.policy.plan import Plan, as_plan
from evalbox.process.result import Output


def run(target: Plan | Iterable[str], **overrides: Any) -> Output:
    """Run a Plan (or an argv with Plan keywords) in a fresh sandbox and return its Output."""
    plan = as_plan(target, **overrides)
    with Executor() as ex:
        return ex.run(plan)
