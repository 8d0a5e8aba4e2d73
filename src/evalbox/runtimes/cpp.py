"""`evalbox.cpp`: compile C++ with the host's g++ and run it, both in sandboxes.

    out = evalbox.cpp.run('#include <iostream>\\nint main() { std::cout << 42 << "\\\\n"; }')
    stages = evalbox.cpp.stages(code, compile_timeout=10, run_timeout=2, stdin=b"3\\n")

`g++ -std=c++17 -O2 main.cpp -o main -lm -lpthread`. `plan()` builds and runs in one sandbox (for
`run_many`; a failed build exits with g++'s code and its messages on stderr); `stages()` gives a
compile Plan and a run Plan (separate sandboxes, separate statuses and times), the binary
carried from one to the other. Compiling gets 512M of memory at least (g++ on template-heavy
code needs it), whatever the run's `memory`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from evalbox.faces.api import run as _run
from evalbox.policy.plan import Plan
from evalbox.process.result import Output
from evalbox.runtimes.common import Stages, compiled_plan, compiled_stages, find_tool, program_args, source_text

SOURCE = "main.cpp"
BINARY = "main"
INSTALL = "install a C++ compiler (apt-get install g++)"
FLAGS = ["-std=c++17", "-O2"]
LIBS = ["-lm", "-lpthread"]
COMPILE_DEFAULTS = {"memory": "512M", "max_pids": 128, "timeout": 30.0}


def _compile_argv() -> list[str]:
    return [find_tool("g++", INSTALL).path, *FLAGS, SOURCE, "-o", BINARY, *LIBS]


def plan(code: str | bytes, *, args: Iterable[str] | None = None, **limits: Any) -> Plan:
    """One Plan compiling and running `code`; `limits` are Plan keywords (they cover both steps)."""
    return compiled_plan(_compile_argv(), [f"./{BINARY}"], source=SOURCE, code=source_text(code, "C++"),
                         limits=limits, args=args, defaults={"memory": "512M", "max_pids": 128}, runtime="cpp")


def stages(code: str | bytes, *, args: Iterable[str] | None = None, compile_timeout: float | None = None,
           run_timeout: float | None = None, **limits: Any) -> Stages:
    """Separate compile and run Plans (see `Stages`); `limits` are the run's Plan keywords."""
    return compiled_stages(_compile_argv(), [f"./{BINARY}", *program_args(args)], source=SOURCE,
                           code=source_text(code, "C++"), artifacts=(BINARY,), limits=limits,
                           compile_timeout=compile_timeout, run_timeout=run_timeout,
                           compile_defaults=COMPILE_DEFAULTS, runtime="cpp")


def run(code: str | bytes, *, args: Iterable[str] | None = None, **limits: Any) -> Output:
    """Compile and run `code` in a fresh sandbox and return its Output (see `plan`)."""
    return _run(plan(code, args=args, **limits))
