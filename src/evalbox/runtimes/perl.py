"""`evalbox.perl`: run Perl with the host's perl in a sandbox.

    out = evalbox.perl.run('print "hi\\n";')

The code runs as `main.pl` (`perl main.pl ARGS`), like SandboxFusion's `perl`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from evalbox.faces.api import run as _run
from evalbox.policy.plan import Plan
from evalbox.process.result import Output
from evalbox.runtimes.common import Stages, find_tool, make_plan, phase_limits, program_args, source_text

SOURCE = "main.pl"
INSTALL = "install Perl (apt-get install perl)"


def plan(code: str | bytes, *, args: Iterable[str] | None = None, **limits: Any) -> Plan:
    """A Plan running `code` with perl; `limits` are Plan keywords."""
    tool = find_tool("perl", INSTALL)
    return make_plan([tool.path, SOURCE, *program_args(args)], limits, files={SOURCE: source_text(code, "perl")},
                     mounts=tool.mounts, runtime="perl")


def stages(code: str | bytes, *, args: Iterable[str] | None = None, compile_timeout: float | None = None,
           run_timeout: float | None = None, **limits: Any) -> Stages:
    """No compile phase: Stages(None, plan) with `run_timeout` as the run's timeout."""
    return Stages(None, plan(code, args=args, **phase_limits(limits, run_timeout)))


def run(code: str | bytes, *, args: Iterable[str] | None = None, **limits: Any) -> Output:
    """Run `code` in a fresh sandbox and return its Output (see `plan`)."""
    return _run(plan(code, args=args, **limits))
