"""`evalbox.pytest`: run a file of pytest tests in a sandbox.

    out = evalbox.pytest.run("def test_add():\\n    assert 1 + 1 == 2\\n")   # exit 0 when all pass

The code is written to `test_main.py` and run as `python -s -m pytest -p no:cacheprovider
test_main.py` with the same interpreter choice and grants as `evalbox.python` (`interpreter=`,
`packages_from=`); that interpreter must have pytest installed (checked before the run when it
is the one running evalbox). `args` are added to pytest's command line.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable
from typing import Any

from evalbox.errors import CommandNotFound
from evalbox.faces.api import run as _run
from evalbox.policy.plan import Plan
from evalbox.process.result import Output
from evalbox.runtimes.common import Stages, make_plan, phase_limits, program_args, source_text
from evalbox.runtimes.python import find_interpreter

SOURCE = "test_main.py"


def plan(code: str | bytes, *, args: Iterable[str] | None = None, interpreter: str | None = None,
         packages_from: str | None = None, **limits: Any) -> Plan:
    """A Plan running pytest on `code`; `limits` are Plan keywords."""
    interp = find_interpreter(interpreter, packages_from)
    if interp.executable == sys.executable and importlib.util.find_spec("pytest") is None:
        raise CommandNotFound(f"pytest is not installed for {sys.executable}: pip install pytest into that "
                              "environment, or pass interpreter= (or packages_from=) a Python that has it")
    argv = [interp.executable, "-s", "-m", "pytest", "-p", "no:cacheprovider", SOURCE, *program_args(args)]
    return make_plan(argv, limits, files={SOURCE: source_text(code, "pytest")}, mounts=interp.mounts,
                     runtime="pytest")


def stages(code: str | bytes, *, args: Iterable[str] | None = None, interpreter: str | None = None,
           packages_from: str | None = None, compile_timeout: float | None = None, run_timeout: float | None = None,
           **limits: Any) -> Stages:
    """No compile phase: Stages(None, plan) with `run_timeout` as the run's timeout."""
    return Stages(None, plan(code, args=args, interpreter=interpreter, packages_from=packages_from,
                             **phase_limits(limits, run_timeout)))


def run(code: str | bytes, *, args: Iterable[str] | None = None, interpreter: str | None = None,
        packages_from: str | None = None, **limits: Any) -> Output:
    """Run the tests in `code` in a fresh sandbox and return its Output (see `plan`)."""
    return _run(plan(code, args=args, interpreter=interpreter, packages_from=packages_from, **limits))
