"""`evalbox.go_test`: run Go tests (`go test`) in a sandbox.

    out = evalbox.go_test.run(open("solution_test.go").read())   # exit 0 when every test passes

The code is written to `main_test.go` and run as `go test main_test.go` (SandboxFusion's
`go_test`: only that file is compiled, so it holds the code under test too), building and testing
in one sandbox with evalbox.go's environment (no network, no module download, a private build
cache). Defaults as for `evalbox.go`: timeout 60 s, memory 512M, max_pids 256.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from typing import Any

from evalbox.faces.api import run as _run
from evalbox.policy.plan import Plan
from evalbox.process.result import Output
from evalbox.runtimes.common import Stages, make_plan, phase_limits, program_args, source_text
from evalbox.runtimes.go import _GO_ENV, DEFAULTS, find_go, go_env

SOURCE = "main_test.go"
SCRIPT = _GO_ENV + 'exec {go} test {source} "$@"\n'


def plan(code: str | bytes, *, args: Iterable[str] | None = None, **limits: Any) -> Plan:
    """A Plan running `go test` on `code`; `args` go to `go test` after the file (e.g. ["-run", "TestX"])."""
    tool = find_go()
    argv = ["/bin/sh", "-c", SCRIPT.format(go=shlex.quote(tool.path), source=SOURCE), "go", *program_args(args)]
    return make_plan(argv, limits, files={SOURCE: source_text(code, "go")}, env=go_env(limits.get("files")),
                     mounts=tool.mounts, defaults=DEFAULTS, runtime="go_test")


def stages(code: str | bytes, *, args: Iterable[str] | None = None, compile_timeout: float | None = None,
           run_timeout: float | None = None, **limits: Any) -> Stages:
    """One phase (building is part of `go test`): Stages(None, plan) under `run_timeout`."""
    return Stages(None, plan(code, args=args, **phase_limits(limits, run_timeout)))


def run(code: str | bytes, *, args: Iterable[str] | None = None, **limits: Any) -> Output:
    """Run the tests in `code` in a fresh sandbox and return its Output (see `plan`)."""
    return _run(plan(code, args=args, **limits))
