"""What the language runtimes share: finding a toolchain on the host, and turning source code plus
the caller's Plan keywords into one Plan.

A runtime is a face over `Plan`: it picks the argv, the files, a few environment variables and
the host directories its toolchain needs (as read-only `Mount`s). The sandbox policy itself is
never touched here; whatever a runtime grants is an ordinary Mount that shows up in the Plan.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from evalbox.errors import CommandNotFound, ValidationError
from evalbox.policy.filesystem import SYSTEM_TREES
from evalbox.policy.plan import File, Mount, Plan, parse_size
from evalbox.policy.resolve import DEFAULT_ENV_PATH, find_executable
from evalbox.process.result import Output

# Plan keywords a runtime passes through unchanged (everything but argv).
PLAN_KEYWORDS = frozenset({
    "files", "stdin", "env", "cwd", "timeout", "cpu_time", "memory", "max_pids", "max_output",
    "max_open_files", "max_file_size", "network", "mounts", "syscalls", "notify", "intercept",
    "supervisor", "virtual_paths", "collect",
})


def in_system_trees(path: str) -> bool:
    """True when `path` (resolved) is below the trees every sandbox may already read."""
    real = os.path.realpath(path)
    trees = {os.path.realpath(t) for t in SYSTEM_TREES if os.path.exists(t)}
    return any(real == t or real.startswith(t + "/") for t in trees)


def outermost(paths: Iterable[str]) -> list[str]:
    """The given directories minus those inside another one (one Mount covers its subtree)."""
    unique = sorted({os.path.normpath(p) for p in paths})
    kept: list[str] = []
    for p in unique:
        if not any(p == k or p.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(p)
    return kept


@dataclass(frozen=True)
class Tool:
    """A host program a runtime runs, and the read-only grants it needs beyond its own files."""

    path: str
    mounts: tuple[Mount, ...] = ()


def find_tool(name: str, install: str, prefix_marker: str | None = None) -> Tool:
    """Find `name` as the sandbox will (its PATH), else on the caller's PATH.

    A tool found outside the system trees (nvm's node, a Go SDK in a home directory) is run by
    its absolute path, and the install prefix around it (the directory holding `bin/NAME`, when
    it contains `prefix_marker`) is granted read-only; otherwise only the directory holding the
    real binary is. `install` says how to get the tool: it goes into the CommandNotFound message.
    """
    try:
        return Tool(find_executable(name, DEFAULT_ENV_PATH, "/"))
    except CommandNotFound:
        pass
    for entry in os.environ.get("PATH", "").split(":"):
        if not entry.startswith("/"):
            continue  # relative PATH entries depend on the caller's cwd: never followed
        try:
            path = find_executable(name, entry, "/")
        except CommandNotFound:
            continue
        real = os.path.realpath(path)
        if in_system_trees(real):
            return Tool(real)  # a link elsewhere (~/bin/node -> /usr/bin/node): its directory may be unreachable
        bindir = os.path.dirname(real)
        prefix = os.path.dirname(bindir)
        if prefix_marker and os.path.basename(bindir) == "bin" and os.path.exists(os.path.join(prefix, prefix_marker)):
            return Tool(path, (Mount.ro(prefix),))
        return Tool(path, (Mount.ro(bindir),))
    raise CommandNotFound(f"{name} is not installed (looked in {DEFAULT_ENV_PATH} and your PATH); {install}")


def source_text(code: str | bytes, what: str) -> bytes:
    if isinstance(code, str):
        return code.encode("utf-8", "surrogateescape")  # text from argv or a file may hold non-UTF-8 bytes
    if isinstance(code, (bytes, bytearray, memoryview)):
        return bytes(code)
    raise ValidationError(f"{what} code must be str or bytes, not {type(code).__name__}")


def program_args(args: Iterable[str] | str | None) -> list[str]:
    if args is None:
        return []
    if isinstance(args, (str, bytes)):
        raise ValidationError(f"args must be a list of strings, not one string {args!r}")
    return [os.fspath(a) for a in args]


def make_plan(argv: list[str], limits: Mapping[str, Any], *, files: Mapping[str, File | str | bytes] | None = None,
              env: Mapping[str, str] | None = None, mounts: Iterable[Mount] = (),
              defaults: Mapping[str, Any] | None = None, runtime: str) -> Plan:
    """A Plan from the runtime's parts and the caller's keywords.

    The caller's keywords win over the runtime's `defaults` and `env`; its `files` and `mounts`
    are added to the runtime's (a file name the runtime needs cannot be taken twice).
    """
    unknown = set(limits) - PLAN_KEYWORDS
    if unknown:
        raise ValidationError(
            f"evalbox.{runtime}: unknown keyword(s) {', '.join(sorted(unknown))}; "
            f"use Plan keywords ({', '.join(sorted(PLAN_KEYWORDS))}) or the runtime's own options"
        )
    kw: dict[str, Any] = dict(defaults or {})
    kw.update(limits)
    all_files: dict[str, Any] = dict(files or {})
    for path, content in dict(limits.get("files") or {}).items():
        if path in all_files:
            raise ValidationError(f"evalbox.{runtime}: the file {path!r} holds the program; name your file otherwise")
        all_files[path] = content
    kw["files"] = all_files
    kw["env"] = {**(env or {}), **dict(limits.get("env") or {})}
    kw["mounts"] = [*mounts, *(limits.get("mounts") or ())]
    plan = Plan(argv, **kw)
    need = ADDRESS_SPACE_NEEDED.get(runtime)
    if need and plan.memory is not None and plan.memory < need and not _memory_cgroup():
        if limits.get("memory") is not None:
            raise ValidationError(
                f"evalbox.{runtime}: memory={limits['memory']!r} is too small on this host: without a memory cgroup "
                f"(not root and no delegated cgroup) memory is an address-space limit (RLIMIT_AS), and {runtime} "
                f"reserves about {need >> 20} MiB of address space before running any code; pass memory='{need >> 20}M' "
                "or more (CLI: --memory), or run where a memory cgroup is available (root, or a delegated cgroup)")
        plan = plan.replace(memory=need)  # the runtime's default adapted to this host
    return plan


# Address space some runtimes reserve at start (measured: node 20 fails under 512 MiB, go 1.19's
# build under 512 MiB; both start under 1 GiB; the JVM of evalbox.java starts in 1 GiB, not 512 MiB). Only matters where memory is RLIMIT_AS.
ADDRESS_SPACE_NEEDED = {"node": 1 << 30, "go": 1 << 30, "typescript": 1 << 30, "go_test": 1 << 30, "java": 1 << 30}


def _memory_cgroup() -> bool:
    from evalbox.process.host import probe

    host = probe()
    return bool(host.cgroup.version) and "memory" in host.cgroup.controllers


@dataclass(frozen=True)
class Stages:
    """A program as separate sandboxed phases: `compile` (None for interpreted languages) builds
    and collects the artifacts; `run` runs them once they are carried over (`run_after`).

    Each phase has its own limits, status and times (what SandboxFusion-style callers report as
    compile_result and run_result). The run phase never sees the compile phase's workspace: only
    the collected artifacts (regular files, see `Plan.collect`) are copied into its own.
    """

    compile: Plan | None
    run: Plan

    def run_after(self, compiled: Output) -> Plan:
        """The run Plan with the compile phase's collected files added (executable)."""
        artifacts = {path: File(content, executable=True) for path, content in compiled.files.items()}
        return self.run.replace(files={**self.run.files, **artifacts})


def phase_limits(limits: Mapping[str, Any], timeout: float | None, defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The caller's Plan keywords for one phase: its own timeout, the runtime's defaults below the caller's."""
    kw = {**(defaults or {}), **limits}
    if timeout is not None:
        kw["timeout"] = timeout
    return kw


def compiled_plan(compile_argv: list[str], run_argv: list[str], *, source: str, code: bytes, limits: Mapping[str, Any],
                  args: Iterable[str] | None = None, mounts: Iterable[Mount] = (), env: Mapping[str, str] | None = None,
                  defaults: Mapping[str, Any] | None = None, runtime: str) -> Plan:
    """One sandbox that compiles then execs the program with `args`; a failed build exits with the
    compiler's code and its messages on stderr. For `Executor.spawn` and `run_many`."""
    script = f"{shlex.join(compile_argv)} || exit\nexec {shlex.join(run_argv)} \"$@\"\n"
    return make_plan(["/bin/sh", "-c", script, runtime, *program_args(args)], limits, files={source: code}, env=env,
                     mounts=mounts, defaults=defaults, runtime=runtime)


def _at_least(limits: Mapping[str, Any], floor: Mapping[str, Any]) -> dict[str, Any]:
    """`limits` with memory and max_pids raised to `floor`'s where the caller asked for less."""
    kw = dict(limits)
    for name, parse in (("memory", lambda v: parse_size(v, "memory")), ("max_pids", lambda v: v)):
        if name in floor and kw.get(name) is not None and parse(kw[name]) < parse(floor[name]):
            kw[name] = floor[name]
    return kw


def compiled_stages(compile_argv: list[str], run_argv: list[str], *, source: str, code: bytes,
                    artifacts: tuple[str, ...], limits: Mapping[str, Any], compile_timeout: float | None,
                    run_timeout: float | None, mounts: Iterable[Mount] = (), env: Mapping[str, str] | None = None,
                    run_mounts: Iterable[Mount] = (), compile_defaults: Mapping[str, Any] | None = None,
                    run_defaults: Mapping[str, Any] | None = None, runtime: str) -> Stages:
    """Stages for a compiled language: the compiler in one sandbox (collecting `artifacts`), the
    program in another. `stdin` and `collect` belong to the run phase; `files` go to both."""
    compile_limits = {k: v for k, v in limits.items() if k not in ("stdin", "collect")}
    compile_limits = _at_least(compile_limits, compile_defaults or {})
    compile_plan = make_plan(compile_argv, phase_limits(compile_limits, compile_timeout), defaults=compile_defaults,
                             files={source: code}, env=env, mounts=mounts, runtime=runtime).replace(collect=artifacts)
    run_plan = make_plan(run_argv, phase_limits(limits, run_timeout), defaults=run_defaults, env=env,
                         mounts=run_mounts, runtime=runtime)
    return Stages(compile_plan, run_plan)
