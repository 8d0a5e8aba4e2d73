"""`evalbox.c`: compile C with the host's gcc and run it, both in sandboxes.

    out = evalbox.c.run('#include <stdio.h>\\nint main(void) { puts("hi"); }')

`gcc -std=gnu17 -O2 main.c -o main -lm -lpthread`; otherwise as `evalbox.cpp` (`plan()` builds and
runs in one sandbox, `stages()` in two with the binary carried over).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from evalbox.faces.api import run as _run
from evalbox.policy.plan import Plan
from evalbox.process.result import Output
from evalbox.runtimes.common import Stages, compiled_plan, compiled_stages, find_tool, program_args, source_text

SOURCE = "main.c"
BINARY = "main"
INSTALL = "install a C compiler (apt-get install gcc libc6-dev)"
FLAGS = ["-std=gnu17", "-O2"]
LIBS = ["-lm", "-lpthread"]
COMPILE_DEFAULTS = {"memory": "512M", "max_pids": 128, "timeout": 30.0}


def _compile_argv() -> list[str]:
    return [find_tool("gcc", INSTALL).path, *FLAGS, SOURCE, "-o", BINARY, *LIBS]


def plan(code: str | bytes, *, args: Iterable[str] | None = None, **limits: Any) -> Plan:
    """One Plan compiling and running `code`; `limits` are Plan keywords (they cover both steps)."""
    return compiled_plan(_compile_argv(), [f"./{BINARY}"], source=SOURCE, code=source_text(code, "C"), limits=limits,
                         args=args, defaults={"memory": "512M", "max_pids": 128}, runtime="c")


def stages(code: str | bytes, *, args: Iterable[str] | None = None, compile_timeout: float | None = None,
           run_timeout: float | None = None, **limits: Any) -> Stages:
    """Separate compile and run Plans (see `Stages`); `limits` are the run's Plan keywords."""
    return compiled_stages(_compile_argv(), [f"./{BINARY}", *program_args(args)], source=SOURCE,
                           code=source_text(code, "C"), artifacts=(BINARY,), limits=limits,
                           compile_timeout=compile_timeout, run_timeout=run_timeout,
                           compile_defaults=COMPILE_DEFAULTS, runtime="c")


def run(code: str | bytes, *, args: Iterable[str] | None = None, **limits: Any) -> Output:
    """Compile and run `code` in a fresh sandbox and return its Output (see `plan`)."""
    return _run(plan(code, args=args, **limits))
