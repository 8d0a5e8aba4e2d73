"""`evalbox.python`: run Python source in a sandbox.

    out = evalbox.python.run("import sys; print(sys.version)", timeout=5)
    plan = evalbox.python.plan(code, args=["--n", "3"], stdin=b"...", memory="512M")

The interpreter is the one running evalbox (`sys.executable`, a venv included), or `interpreter=`
any Python on the host, or the Python of the environment given as `packages_from=` (a venv or any
prefix with `bin/python3`: its packages come with it). The sandbox gets read access to that
interpreter's prefixes (the venv and its base installation) and nothing more; prefixes under
/usr are readable anyway. The code runs as `main.py` in the workspace, with `-s` (no user
site-packages); the venv's site-packages stay on sys.path and so does the workspace, so the
program can import the other files passed in `files=`. PYTHON* variables come only from `env=`:
the host's environment is never inherited.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from evalbox.errors import CommandNotFound, ValidationError
from evalbox.faces.api import run as _run
from evalbox.policy.plan import Mount, Plan
from evalbox.policy.resolve import DEFAULT_ENV_PATH, find_executable
from evalbox.process.result import Output
from evalbox.runtimes.common import Stages, in_system_trees, make_plan, outermost, phase_limits, program_args, source_text

MAIN = "main.py"
# What a warm template imports once (README "Warm Python"): the standard modules HumanEval-style
# tests and RL reward code use. Pure standard library on purpose: no module that starts threads
# at import (a fork copies only one thread) or reads the environment at import time.
DEFAULT_PRELOAD = (
    "abc", "array", "base64", "bisect", "collections", "collections.abc", "contextlib", "copy", "dataclasses",
    "datetime", "decimal", "enum", "fractions", "functools", "hashlib", "heapq", "io", "itertools", "json",
    "math", "numbers", "operator", "random", "re", "statistics", "string", "struct", "textwrap", "time",
    "types", "typing", "unicodedata",
)
INSTALL = "install Python 3 (apt-get install python3) or pass interpreter='/path/to/python3'"

# Asked of an interpreter that is not the one running evalbox (-I: the host's PYTHON* variables
# and user site must not change the answer).
_PROBE = (
    "import json, site, sys; print(json.dumps({'prefixes': [sys.prefix, sys.base_prefix, sys.exec_prefix, "
    "sys.base_exec_prefix], 'site': site.getsitepackages() if hasattr(site, 'getsitepackages') else [], "
    "'version': list(sys.version_info[:2])}))"
)


@dataclass(frozen=True)
class Interpreter:
    """A host Python and the directories it reads at start-up and import time."""

    executable: str  # run by this path: a venv's bin/python finds its pyvenv.cfg next to it
    version: tuple[int, int]
    roots: tuple[str, ...]  # granted read-only (those outside the system trees)

    @property
    def mounts(self) -> tuple[Mount, ...]:
        return tuple(Mount.ro(r) for r in self.roots if not in_system_trees(r))


def _roots(prefixes: Iterable[str], site_dirs: Iterable[str]) -> tuple[str, ...]:
    return tuple(outermost(p for p in [*prefixes, *site_dirs] if p and os.path.isdir(p)))


@functools.cache
def _this_interpreter() -> Interpreter:
    import site

    if not sys.executable:
        raise CommandNotFound(f"this Python does not know its own executable (embedded?); {INSTALL}")
    site_dirs = site.getsitepackages() if hasattr(site, "getsitepackages") else []
    return Interpreter(sys.executable, tuple(sys.version_info[:2]),
                       _roots([sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix], site_dirs))


@functools.lru_cache(maxsize=64)
def _probe(path: str, key: tuple[int, int, int]) -> Interpreter:
    del key  # cache key only: a reinstalled interpreter is asked again
    try:
        done = subprocess.run([path, "-I", "-c", _PROBE], capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
                              env={"PATH": DEFAULT_ENV_PATH, "LANG": "C.UTF-8"})
    except (OSError, subprocess.SubprocessError) as e:
        raise ValidationError(f"interpreter {path} could not be started to ask for its prefixes: {e}") from None
    try:
        info = json.loads(done.stdout)
        version = tuple(int(v) for v in info["version"])[:2]
        return Interpreter(path, version, _roots(info["prefixes"], info["site"]))  # type: ignore[arg-type]
    except (ValueError, KeyError, TypeError):
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise ValidationError(f"interpreter {path} is not a working Python 3 (exit {done.returncode}: {last})") from None


def find_interpreter(path: str | None = None, packages_from: str | None = None) -> Interpreter:
    """The Interpreter a plan will run: `path`, the Python of `packages_from`, or this one."""
    if packages_from is not None:
        env_dir = os.path.abspath(os.fspath(packages_from))
        candidates = [os.path.join(env_dir, "bin", n) for n in ("python3", "python")]
        env_python = next((c for c in candidates if os.access(c, os.X_OK)), None)
        if env_python is None:
            raise ValidationError(f"packages_from={packages_from!r} is not a Python environment (no bin/python3 in it); "
                                  "give a venv or an installation prefix")
        if path is not None and os.path.dirname(os.path.abspath(path)) != os.path.join(env_dir, "bin"):
            raise ValidationError(
                f"interpreter={path!r} is not the Python of packages_from={packages_from!r}: a venv's packages "
                "(compiled extensions included) are meant for its own Python; give only packages_from="
            )
        path = env_python
    if path is None:
        return _reachable_default(_this_interpreter())
    path = os.fspath(path)
    if "/" not in path:  # a bare name is found as the sandbox would find it
        try:
            path = find_executable(path, DEFAULT_ENV_PATH, "/")
        except CommandNotFound:
            raise CommandNotFound(f"no {path!r} in the sandbox's PATH ({DEFAULT_ENV_PATH}); {INSTALL}") from None
    path = os.path.abspath(path)  # not realpath: a venv's python is a link and must keep its name
    if path == sys.executable:
        return _this_interpreter()
    try:
        st = os.stat(path)
    except OSError:
        raise CommandNotFound(f"interpreter {path} does not exist; {INSTALL}") from None
    if not os.access(path, os.X_OK):
        raise CommandNotFound(f"interpreter {path} is not executable; {INSTALL}")
    return _probe(path, (st.st_dev, st.st_ino, st.st_mtime_ns))


def _hidden(interp: Interpreter) -> str | None:
    """A directory the sandbox's uid cannot search above the interpreter or its prefixes, where
    this host can neither bind them in (no mount namespace) nor run the sandbox as the caller."""
    from evalbox.process.host import probe
    from evalbox.process.lockdown import hidden_ancestor

    host = probe()
    if not host.switches_uid or host.private_shm or host.jail:
        return None  # the sandbox runs as the caller, or the paths are bound into its own namespace
    for path in (os.path.realpath(interp.executable), *interp.roots):
        top = hidden_ancestor(path)
        if top is not None:
            return top
    return None


FALLBACK_DIRS = ("/usr/local/bin", "/usr/bin")


def _mode(path: str) -> str:
    import stat

    return f"mode {stat.filemode(os.stat(path).st_mode)}"


@functools.cache
def _reachable_default(interp: Interpreter) -> Interpreter:
    """The default interpreter, or, where sandboxes cannot reach it (root without CAP_SYS_ADMIN, as
    in a default Docker container, with a Python under /root), a system Python they can: the same
    version first. Its packages are the system's, not the caller's: said once as a warning."""
    top = _hidden(interp)
    if top is None:
        return interp
    major, minor = interp.version
    names = [f"python{major}.{minor}", "python3"]
    for name in names:
        for d in FALLBACK_DIRS:
            candidate = os.path.join(d, name)
            if not os.access(candidate, os.X_OK):
                continue
            try:
                st = os.stat(candidate)
                other = _probe(candidate, (st.st_dev, st.st_ino, st.st_mtime_ns))
            except (OSError, ValidationError):
                continue
            if _hidden(other) is None:
                import warnings

                warnings.warn(
                    f"evalbox.python runs {candidate} (Python {other.version[0]}.{other.version[1]}, the system's "
                    f"packages): sandboxes here run as their own uid and cannot reach {interp.executable} below {top} "
                    f"({_mode(top)}), and this host cannot bind it into them (root without CAP_SYS_ADMIN, as in a "
                    f"container). For your own environment, install it where other users can read it (e.g. /opt), "
                    f"or chmod o+x {top}; or pass interpreter=", RuntimeWarning, stacklevel=3)
                return other
    raise CommandNotFound(
        f"sandboxes here run as their own uid and cannot reach {interp.executable} below {top} ({_mode(top)}); this "
        "host cannot bind it into them (root without CAP_SYS_ADMIN, as in a container) and has no system Python "
        f"they can run; {INSTALL}, install your environment where other users can read it (e.g. /opt), or "
        f"chmod o+x {top}")


# What `warm=None` (the default) means: True unless changed here (tests run both ways).
WARM_DEFAULT: bool = True


def _preload(warm: bool | Iterable[str] | None) -> tuple[str, ...] | None:
    if warm is None:
        warm = WARM_DEFAULT
    if warm is True:
        return DEFAULT_PRELOAD
    if warm is False or warm is None:
        return None
    if isinstance(warm, (str, bytes)) or not isinstance(warm, Iterable):
        raise ValidationError(f"warm= takes True, False or a list of modules to preload, not {warm!r}")
    return tuple(warm)


def plan(code: str | bytes, *, args: Iterable[str] | None = None, interpreter: str | None = None,
         packages_from: str | None = None, warm: bool | Iterable[str] | None = None, **limits: Any) -> Plan:
    """A Plan running `code` as main.py with `args` (sys.argv[1:]); `limits` are Plan keywords.

    `warm`: True (the default) starts the run from a fresh copy of a pre-initialised interpreter
    that imported DEFAULT_PRELOAD; a list of module names preloads those instead; False starts a
    new interpreter (cold). Either way the run gets the same lockdown and limits; README "Warm
    Python" lists what a program can tell apart."""
    interp = find_interpreter(interpreter, packages_from)
    argv = [interp.executable, "-s", MAIN, *program_args(args)]
    return make_plan(argv, limits, files={MAIN: source_text(code, "python")}, mounts=interp.mounts,
                     defaults={"warm": _preload(warm)}, runtime="python")


def stages(code: str | bytes, *, args: Iterable[str] | None = None, interpreter: str | None = None,
           packages_from: str | None = None, compile_timeout: float | None = None, run_timeout: float | None = None,
           **limits: Any) -> Stages:
    """No compile phase: Stages(None, plan) with `run_timeout` as the run's timeout."""
    return Stages(None, plan(code, args=args, interpreter=interpreter, packages_from=packages_from,
                             **phase_limits(limits, run_timeout)))


def run(code: str | bytes, *, args: Iterable[str] | None = None, interpreter: str | None = None,
        packages_from: str | None = None, warm: bool | Iterable[str] | None = None, **limits: Any) -> Output:
    """Run `code` in a fresh sandbox and return its Output (see `plan`)."""
    return _run(plan(code, args=args, interpreter=interpreter, packages_from=packages_from, warm=warm, **limits))
