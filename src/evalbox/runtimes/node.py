"""`evalbox.node`: run JavaScript with the host's Node.js in a sandbox.

    out = evalbox.node.run("console.log([3, 1, 2].sort())", timeout=5)
    out = evalbox.node.run("import os from 'node:os'; console.log(os.EOL)", filename="main.mjs")

The code runs as a file in the workspace (`main.js`, CommonJS; pass `filename="main.mjs"` for an
ES module), with `args` as `process.argv.slice(2)`. Node is looked up on the sandbox's PATH, then
on yours (nvm and similar installs outside /usr get their prefix granted read-only).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from evalbox.errors import ValidationError
from evalbox.faces.api import run as _run
from evalbox.policy.plan import Plan, workspace_path
from evalbox.process.result import Output
from evalbox.runtimes.common import find_tool, make_plan, program_args, source_text

INSTALL = "install Node.js (apt-get install nodejs, or https://nodejs.org)"


def plan(code: str | bytes, *, filename: str = "main.js", args: Iterable[str] | None = None, **limits: Any) -> Plan:
    """A Plan running `code` as `filename` with `node`; `limits` are Plan keywords."""
    filename = workspace_path(filename, "filename")
    if not filename.endswith((".js", ".mjs", ".cjs")):
        raise ValidationError(f"filename {filename!r} must end in .js, .mjs or .cjs (node picks the module kind by it)")
    tool = find_tool("node", INSTALL, prefix_marker="lib/node_modules")
    argv = [tool.path, filename, *program_args(args)]
    return make_plan(argv, limits, files={filename: source_text(code, "node")}, mounts=tool.mounts, runtime="node")


def run(code: str | bytes, *, filename: str = "main.js", args: Iterable[str] | None = None, **limits: Any) -> Output:
    """Run `code` in a fresh sandbox and return its Output (see `plan`)."""
    return _run(plan(code, filename=filename, args=args, **limits))
