"""`evalbox.typescript`: run TypeScript on the host's Node.js, transpiled by the TypeScript package.

    out = evalbox.typescript.run("const n: number = 6 * 7; console.log(n)")

Like SandboxFusion's `typescript` (tsx), types are stripped, not checked: the code (`main.ts`) is
transpiled with `ts.transpileModule` (CommonJS, ES2022) inside the sandbox and the result runs in
the same node process, so there is no compile phase and a type error does not stop the program.
Needs node and the `typescript` npm package: `npm install -g typescript` (its `tsc` on the PATH is
how it is found; an install outside /usr gets its package directory granted read-only).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from evalbox.errors import CommandNotFound
from evalbox.faces.api import run as _run
from evalbox.policy.plan import Mount, Plan
from evalbox.process.result import Output
from evalbox.runtimes.common import Stages, find_tool, in_system_trees, make_plan, phase_limits, program_args, source_text
from evalbox.runtimes.node import INSTALL as NODE_INSTALL

SOURCE = "main.ts"
DRIVER = ".evalbox-ts.js"
DEFAULTS = {"max_pids": 128}  # node runs a dozen threads, and threads count
INSTALL = "install the TypeScript compiler (npm install -g typescript) and Node.js (apt-get install nodejs)"

# Transpiles main.ts and runs it as main.js would run (same require, module, __filename, argv).
_DRIVER = """'use strict';
const ts = require(%s);
const fs = require('fs'), path = require('path'), Module = require('module');
const file = path.resolve(%s);
const out = ts.transpileModule(fs.readFileSync(file, 'utf8'), {
  fileName: file, reportDiagnostics: false,
  compilerOptions: {module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true, inlineSourceMap: true},
});
const m = new Module(file, null);
m.filename = file; m.paths = Module._nodeModulePaths(path.dirname(file));
process.argv.splice(1, 1, file);
require.main = m; process.mainModule = m;
m._compile(out.outputText, file);
"""


def _typescript_package() -> tuple[str, tuple[Mount, ...]]:
    tsc = find_tool("tsc", INSTALL)
    package = os.path.dirname(os.path.dirname(os.path.realpath(tsc.path)))
    if not os.path.isfile(os.path.join(package, "lib", "typescript.js")):
        raise CommandNotFound(f"{tsc.path} is not the TypeScript package's tsc (no lib/typescript.js near it); {INSTALL}")
    return package, () if in_system_trees(package) else (Mount.ro(package),)


def plan(code: str | bytes, *, args: Iterable[str] | None = None, **limits: Any) -> Plan:
    """A Plan transpiling and running `code`; `limits` are Plan keywords."""
    package, mounts = _typescript_package()
    node = find_tool("node", NODE_INSTALL, prefix_marker="lib/node_modules")
    driver = _DRIVER % (json.dumps(package), json.dumps(SOURCE))
    argv = [node.path, "--enable-source-maps", DRIVER, *program_args(args)]
    return make_plan(argv, limits, files={SOURCE: source_text(code, "TypeScript"), DRIVER: driver},
                     mounts=(*node.mounts, *mounts), defaults=DEFAULTS, runtime="typescript")


def stages(code: str | bytes, *, args: Iterable[str] | None = None, compile_timeout: float | None = None,
           run_timeout: float | None = None, **limits: Any) -> Stages:
    """No compile phase (types are stripped as the program starts): Stages(None, plan)."""
    return Stages(None, plan(code, args=args, **phase_limits(limits, run_timeout)))


def run(code: str | bytes, *, args: Iterable[str] | None = None, **limits: Any) -> Output:
    """Run `code` in a fresh sandbox and return its Output (see `plan`)."""
    return _run(plan(code, args=args, **limits))
