"""`evalbox.shell`: run a shell script in a sandbox.

    out = evalbox.shell.run("ls -l | wc -l", timeout=5)
    out = evalbox.shell.run("echo $BASH_VERSION; echo \"$1\"", shell="bash", args=["first"])

The script is given to the shell with `-c` (`$0` is the shell's name, `args` are `$1`...), so
stdin stays free for the program and the workspace holds only the files you pass. A script too
long for one command-line argument (over 128 KiB) is written to `.main.sh` in the workspace and
run from there instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from evalbox.faces.api import run as _run
from evalbox.policy.plan import Plan
from evalbox.process.result import Output
from evalbox.runtimes.common import find_tool, make_plan, program_args, source_text

# Linux refuses a single argument over MAX_ARG_STRLEN (32 pages); keep well under it.
MAX_INLINE = 128 * 1024 - 1
SCRIPT_FILE = ".main.sh"


def _as_argument(script: bytes) -> str | None:
    """The script as one argv string, or None when only a file can carry it (too long, NUL, not UTF-8)."""
    if len(script) > MAX_INLINE or b"\0" in script:
        return None
    try:
        return script.decode()
    except UnicodeDecodeError:
        return None


def plan(code: str | bytes, *, shell: str = "sh", args: Iterable[str] | None = None, **limits: Any) -> Plan:
    """A Plan running `code` with `shell` ("sh", "bash", or a path); `limits` are Plan keywords."""
    name = os.path.basename(os.fspath(shell))
    tool = find_tool(os.fspath(shell), f"install it (apt-get install {name}) or pass shell='/bin/sh'")
    script = source_text(code, "shell")
    inline = _as_argument(script)
    if inline is not None:
        argv = [tool.path, "-c", inline, name, *program_args(args)]
        files = {}
    else:
        argv = [tool.path, SCRIPT_FILE, *program_args(args)]
        files = {SCRIPT_FILE: script}
    return make_plan(argv, limits, files=files, mounts=tool.mounts, runtime="shell")


def run(code: str | bytes, *, shell: str = "sh", args: Iterable[str] | None = None, **limits: Any) -> Output:
    """Run `code` in a fresh sandbox and return its Output (see `plan`)."""
    return _run(plan(code, shell=shell, args=args, **limits))
