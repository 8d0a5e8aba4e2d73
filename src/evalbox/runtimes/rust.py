"""`evalbox.rust`: compile Rust with the host's rustc and run it, both in sandboxes.

    out = evalbox.rust.run('fn main() { println!("{}", 6 * 7); }')

`rustc --edition 2021 -O -C strip=debuginfo main.rs -o main` (linked by the host's `cc`). A rustup install (often
under a private home such as /root) is resolved to its toolchain once, outside the sandbox
(`rustc --print sysroot`), and that toolchain directory alone is granted read-only; the rustup
proxy itself is never run inside. `plan()` builds and runs in one sandbox, `stages()` in two with
the binary carried over. rustc is multi-threaded, so compiling gets `max_pids` 256 and 1G of
memory at least.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Iterable
from typing import Any

from evalbox.errors import CommandNotFound
from evalbox.faces.api import run as _run
from evalbox.policy.plan import Mount, Plan
from evalbox.policy.resolve import DEFAULT_ENV_PATH
from evalbox.process.result import Output
from evalbox.runtimes.common import (Stages, Tool, compiled_plan, compiled_stages, find_tool, in_system_trees,
                                     program_args, source_text)

SOURCE = "main.rs"
BINARY = "main"
INSTALL = "install Rust (apt-get install rustc, or rustup) and a linker (apt-get install gcc)"
FLAGS = ["--edition", "2021", "-O", "-C", "strip=debuginfo"]
DEFAULTS = {"memory": "1G", "max_pids": 256, "timeout": 60.0}
COMPILE_DEFAULTS = {"memory": "1G", "max_pids": 256, "timeout": 30.0}


@functools.lru_cache(maxsize=8)
def _toolchain(found: str) -> Tool:
    """The real rustc behind `found` (a rustup proxy or the compiler itself) and its grant."""
    try:
        done = subprocess.run([found, "--print", "sysroot"], capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
                              env={"PATH": f"{os.path.dirname(found)}:{DEFAULT_ENV_PATH}", "LANG": "C.UTF-8",
                                   "HOME": os.path.expanduser("~")})
        sysroot = done.stdout.decode().strip()
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError) as e:
        raise CommandNotFound(f"{found} could not be asked for its toolchain ({e}); {INSTALL}") from None
    compiler = os.path.join(sysroot, "bin", "rustc")
    if done.returncode != 0 or not sysroot.startswith("/") or not os.access(compiler, os.X_OK):
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no toolchain"])[-1]
        raise CommandNotFound(f"{found} has no usable toolchain ({last}); {INSTALL}")
    return Tool(compiler, () if in_system_trees(sysroot) else (Mount.ro(sysroot),))


def _rustc() -> Tool:
    return _toolchain(find_tool("rustc", INSTALL).path)


def _compile_argv(tool: Tool) -> list[str]:
    return [tool.path, *FLAGS, SOURCE, "-o", BINARY]


def plan(code: str | bytes, *, args: Iterable[str] | None = None, **limits: Any) -> Plan:
    """One Plan compiling and running `code`; `limits` are Plan keywords (they cover both steps)."""
    tool = _rustc()
    return compiled_plan(_compile_argv(tool), [f"./{BINARY}"], source=SOURCE, code=source_text(code, "Rust"),
                         limits=limits, args=args, mounts=tool.mounts, defaults=DEFAULTS, runtime="rust")


def stages(code: str | bytes, *, args: Iterable[str] | None = None, compile_timeout: float | None = None,
           run_timeout: float | None = None, **limits: Any) -> Stages:
    """Separate compile and run Plans (see `Stages`); `limits` are the run's Plan keywords."""
    tool = _rustc()
    return compiled_stages(_compile_argv(tool), [f"./{BINARY}", *program_args(args)], source=SOURCE,
                           code=source_text(code, "Rust"), artifacts=(BINARY,), limits=limits, mounts=tool.mounts,
                           compile_timeout=compile_timeout, run_timeout=run_timeout,
                           compile_defaults=COMPILE_DEFAULTS, runtime="rust")


def run(code: str | bytes, *, args: Iterable[str] | None = None, **limits: Any) -> Output:
    """Compile and run `code` in a fresh sandbox and return its Output (see `plan`)."""
    return _run(plan(code, args=args, **limits))
