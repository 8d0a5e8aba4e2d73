"""`evalbox.go`: build and run Go code in a sandbox.

    out = evalbox.go.run('fmt.Println(strings.ToUpper("hi"))')          # a snippet: wrapped
    out = evalbox.go.run(open("main.go").read(), args=["-n", "3"])        # a whole program

Compiling happens inside the sandbox too, in one run: `go build` then `exec` of the binary, so
the limits cover both (a failed build exits with go's code and its errors on stderr). The build
cache, GOPATH and temp files live in the workspace (`$HOME/.cache/go-build`, `$HOME/go`,
`$TMPDIR`), so nothing is shared between runs; there is no network and no module download
(GOPROXY=off, GOTOOLCHAIN=local). A single file builds in GOPATH mode (no go.mod needed);
passing a `go.mod` in `files=` builds the workspace as that module (vendored or standard-library
dependencies only). Every `.go` file of the workspace is part of the package.

Defaults differ from Plan's: timeout 60 s (build + run), memory 512M, max_pids 256 (the go
command, the compiler and the linker each run several threads, and threads count as processes).

How code is completed (a documented heuristic, not a parser):
1. code with a `package` clause is used as is;
2. else, code with `func main(` gets `package main` and the imports it uses;
3. else the snippet becomes the body of `func main()`, its own `import` lines moved above it.
"Imports it uses" are the standard packages in `PACKAGES` referred to as `name.Exported`
outside comments and strings, minus those the code imports itself or declares as a variable.
A `//line` directive keeps compiler errors and panics at the line numbers of your code.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from typing import Any

from evalbox.errors import ValidationError
from evalbox.faces.api import run as _run
from evalbox.policy.plan import Plan
from evalbox.process.result import Output
from evalbox.runtimes.common import Stages, compiled_stages, find_tool, make_plan, program_args, source_text

MAIN = "main.go"
INSTALL = "install Go (apt-get install golang-go, or https://go.dev/dl)"
DEFAULTS = {"timeout": 60.0, "memory": "512M", "max_pids": 256}

# Package name as written in code -> import path.
PACKAGES = {
    "fmt": "fmt", "strings": "strings", "strconv": "strconv", "math": "math", "sort": "sort", "os": "os",
    "bufio": "bufio", "time": "time", "errors": "errors", "bytes": "bytes", "unicode": "unicode", "sync": "sync",
    "io": "io", "regexp": "regexp", "reflect": "reflect", "context": "context", "log": "log", "runtime": "runtime",
    "rand": "math/rand", "big": "math/big", "bits": "math/bits", "cmplx": "math/cmplx", "heap": "container/heap",
    "list": "container/list", "utf8": "unicode/utf8", "atomic": "sync/atomic", "json": "encoding/json",
    "hex": "encoding/hex", "base64": "encoding/base64", "filepath": "path/filepath", "path": "path",
    "sha256": "crypto/sha256", "md5": "crypto/md5", "slices": "slices", "maps": "maps",
}

# The build and run, in the sandbox's /bin/sh; "$@" are the program's arguments.
_GO_ENV = 'export GOCACHE="$HOME/.cache/go-build" GOPATH="$HOME/go" GOTMPDIR="$TMPDIR"\n'
SCRIPT = _GO_ENV + '{go} build -o "$TMPDIR/main" . || exit\nexec "$TMPDIR/main" "$@"\n'
BUILD_SCRIPT = _GO_ENV + "exec {go} build -o {binary} .\n"  # stages(): the compile phase alone
BINARY = "main"

_PACKAGE = re.compile(r"^\s*package\s+\w+", re.M)
_FUNC_MAIN = re.compile(r"^\s*func\s+main\s*\(", re.M)
_IMPORT_LINE = re.compile(r'^[ \t]*import[ \t]+(?:[\w.]+[ \t]+)?"[^"\n]*"[ \t]*;?[ \t]*(?://[^\n]*)?$', re.M)
_IMPORT_BLOCK = re.compile(r"^[ \t]*import[ \t]*\((?:[^()]|\n)*?\)[ \t]*;?[ \t]*$", re.M)
_IMPORT_SPEC = re.compile(r'(?:^|[\s(;])(?:([\w.]+)[ \t]+)?"([^"\n]+)"')


def _blank(text: str) -> str:
    """`text` with comments and string/rune literals replaced by spaces (newlines kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
        elif c in "\"'`":
            end = i + 1
            while end < n and text[end] != c and not (c != "`" and text[end] == "\n"):
                end += 2 if c != "`" and text[end] == "\\" else 1
            end = min(end + 1, n)
        else:
            out.append(c)
            i += 1
            continue
        out.append("".join(ch if ch == "\n" else " " for ch in text[i:end]))
        i = end
    return "".join(out)


def _imported_names(code: str) -> set[str]:
    """Names the code's own import declarations bring in (alias, or the path's last element)."""
    names = set()
    decls = [m.group(0) for m in _IMPORT_LINE.finditer(code)] + [m.group(0) for m in _IMPORT_BLOCK.finditer(code)]
    for decl in decls:
        for alias, path in _IMPORT_SPEC.findall(decl.split("import", 1)[1]):
            names.add(alias or path.rsplit("/", 1)[-1])
    return names


def used_packages(code: str) -> list[str]:
    """Import paths of the PACKAGES that `code` uses and neither imports nor shadows."""
    scrubbed = _blank(code)
    own = _imported_names(code)
    found = []
    for name, path in PACKAGES.items():
        if name in own or not re.search(rf"(?<![\w.]){name}\.[A-Z]", scrubbed):
            continue
        declared = re.search(
            rf"(?<![\w.]){name}\s*(?::=|,[\w\s,]*:=)|\b(?:var|const)\s+{name}\b|[(,]\s*{name}\s+[\w\[\]*.]", scrubbed)
        if not declared:
            found.append(path)
    return sorted(found)


def _import_block(paths: list[str]) -> str:
    return "import (\n" + "".join(f'\t"{p}"\n' for p in paths) + ")\n" if paths else ""


def wrap(code: str) -> str:
    """The source `go build` gets for `code` (see the module docstring for the rules)."""
    if _PACKAGE.search(_blank(code)):
        return code
    imports = _import_block(used_packages(code))
    if _FUNC_MAIN.search(_blank(code)):
        return f"package main\n\n{imports}//line {MAIN}:1\n{code}"
    # The snippet's own imports go above func main; blank lines keep its line numbers.
    own: list[str] = []

    def lift(m: re.Match[str]) -> str:
        own.append(m.group(0))
        return "\n" * m.group(0).count("\n")

    body = _IMPORT_LINE.sub(lift, _IMPORT_BLOCK.sub(lift, code))
    lifted = "".join(decl.strip() + "\n" for decl in own)
    return f"package main\n\n{imports}{lifted}\nfunc main() {{\n//line {MAIN}:1\n{body}\n}}\n"


def _source(code: str | bytes) -> str:
    try:
        return source_text(code, "go").decode()
    except UnicodeDecodeError:
        raise ValidationError("Go source must be UTF-8") from None


def go_env(files: Any) -> dict[str, str]:
    """No network, no downloads, no telemetry; GOPATH mode unless the caller brings a go.mod."""
    env = {"GOPROXY": "off", "GOTOOLCHAIN": "local", "GOTELEMETRY": "off"}
    if "go.mod" not in dict(files or {}):
        env["GO111MODULE"] = "off"  # a single file needs no module: GOPATH mode builds the directory as is
    return env


def find_go():  # type: ignore[no-untyped-def]
    return find_tool("go", INSTALL, prefix_marker="src/runtime")


def plan(code: str | bytes, *, args: Iterable[str] | None = None, **limits: Any) -> Plan:
    """A Plan building and running `code` (wrapped when needed); `limits` are Plan keywords."""
    source = _source(code)
    tool = find_go()
    argv = ["/bin/sh", "-c", SCRIPT.format(go=shlex.quote(tool.path)), "go", *program_args(args)]
    return make_plan(argv, limits, files={MAIN: wrap(source)}, env=go_env(limits.get("files")), mounts=tool.mounts,
                     defaults=DEFAULTS, runtime="go")


def stages(code: str | bytes, *, args: Iterable[str] | None = None, compile_timeout: float | None = None,
           run_timeout: float | None = None, **limits: Any) -> Stages:
    """`go build` in one sandbox, the binary run in another (see `Stages`); `limits` are the run's."""
    source = _source(code)
    tool = find_go()
    build = ["/bin/sh", "-c", BUILD_SCRIPT.format(go=shlex.quote(tool.path), binary=BINARY)]
    return compiled_stages(build, [f"./{BINARY}", *program_args(args)], source=MAIN, code=wrap(source).encode(),
                           artifacts=(BINARY,), limits=limits, mounts=tool.mounts, env=go_env(limits.get("files")),
                           compile_timeout=compile_timeout, run_timeout=run_timeout, compile_defaults=DEFAULTS,
                           run_defaults={"max_pids": 256}, runtime="go")


def run(code: str | bytes, *, args: Iterable[str] | None = None, **limits: Any) -> Output:
    """Run `code` in a fresh sandbox and return its Output (see `plan`)."""
    return _run(plan(code, args=args, **limits))
