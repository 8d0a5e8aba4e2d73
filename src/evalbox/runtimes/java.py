"""`evalbox.java`: compile Java with the host's JDK (javac) and run it on its JVM, in sandboxes.

    out = evalbox.java.run('public class Main { public static void main(String[] a) { System.out.println(42); } }')

The code is `Main.java` and must define class `Main` (SandboxFusion's convention); it is
compiled with `javac -encoding UTF-8 -d classes` and run as `java -ea -cp classes:. Main` (with the serial GC) (`.jar`
files passed in `files=` join the class path). `stages()` carries the compiled classes (the
whole `classes/` tree) from the compile sandbox to the run sandbox. The JVM is multi-threaded
and threads count as processes, so `max_pids` defaults to 256; memory defaults to 1G and `javac`
gets 1G at least. The heap may use half of the memory limit (`-Xmx`), class metadata and the
code cache 64M each, so the JVM also starts where memory is an address-space limit. Needs a JDK (`apt-get install openjdk-17-jdk-headless`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from typing import Any

from evalbox.faces.api import run as _run
from evalbox.policy.plan import Mount, Plan, parse_size
from evalbox.process.result import Output
from evalbox.runtimes.common import (Stages, compiled_plan, compiled_stages, find_tool, in_system_trees, outermost,
                                     program_args, source_text)

SOURCE = "Main.java"
CLASSES = "classes"
INSTALL = "install a JDK (apt-get install openjdk-17-jdk-headless)"
RUN_DEFAULTS = {"max_pids": 256, "memory": "1G"}
COMPILE_DEFAULTS = {"memory": "1G", "max_pids": 256, "timeout": 30.0}


# glibc gives each thread its own 64M malloc arena reservation; under RLIMIT_AS the JVM's many
# threads get some refused (harmless, but evalbox rightly reports refused memory). One arena.
JAVA_ENV = {"MALLOC_ARENA_MAX": "1"}


def jvm_flags(memory: int | None) -> list[str]:
    """The serial GC (fewer threads), and reservations sized to `memory`: the heap may take half of
    it, class metadata and compiled code 64M each. Without them the JVM reserves gigabytes of
    address space at start, which a host without a memory cgroup (RLIMIT_AS) refuses."""
    flags = ["-XX:+UseSerialGC"]
    if memory is not None:
        flags += [f"-Xmx{max(memory // 2 >> 20, 16)}m", "-XX:CompressedClassSpaceSize=64m",
                  "-XX:ReservedCodeCacheSize=64m"]
    return flags


def _memory(limits: Mapping[str, Any], default: str) -> int | None:
    return parse_size(limits["memory"], "memory") if "memory" in limits else parse_size(default, "memory")


@functools.lru_cache(maxsize=8)
def config_mounts(javac: str) -> tuple[Mount, ...]:
    """Read-only grants for the JDK's configuration kept outside it (Debian links conf/ and some of
    lib/ to /etc/java-N-openjdk): the directories of the link targets, found once per JDK."""
    home = os.path.dirname(os.path.dirname(os.path.realpath(javac)))
    targets = set()
    for sub in ("conf", "lib"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(home, sub)):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    real = os.path.realpath(path)
                    if os.path.exists(real) and not in_system_trees(real) and not real.startswith(home + "/"):
                        targets.add(real if os.path.isdir(real) else os.path.dirname(real))
    return tuple(Mount.ro(d) for d in outermost(targets))


def _class_path(files: Mapping[str, Any] | None) -> str:
    jars = sorted(p for p in (files or {}) if p.endswith(".jar"))
    return ":".join([CLASSES, ".", *jars])


def _tools(limits: Mapping[str, Any], compile_memory: int | None,
           run_memory: int | None) -> tuple[list[str], list[str], tuple[Mount, ...]]:
    javac, java = find_tool("javac", INSTALL), find_tool("java", INSTALL)
    cp = _class_path(limits.get("files"))
    mounts = (*javac.mounts, *java.mounts, *config_mounts(javac.path), *config_mounts(java.path))
    javac_flags = [f"-J{f}" for f in [*jvm_flags(compile_memory), "-XX:TieredStopAtLevel=1"]]  # quicker start
    return ([javac.path, *javac_flags, "-encoding", "UTF-8", "-nowarn", "-cp", cp, "-d", CLASSES, SOURCE],
            [java.path, *jvm_flags(run_memory), "-ea", "-cp", cp, "Main"], tuple(dict.fromkeys(mounts)))


def plan(code: str | bytes, *, args: Iterable[str] | None = None, **limits: Any) -> Plan:
    """One Plan compiling and running `code`; `limits` are Plan keywords (they cover both steps)."""
    memory = _memory(limits, "1G")
    compile_argv, run_argv, mounts = _tools(limits, memory, memory)
    return compiled_plan(compile_argv, run_argv, source=SOURCE, code=source_text(code, "Java"), limits=limits, args=args,
                         mounts=mounts, env=JAVA_ENV, defaults={"memory": "1G", "max_pids": 256, "timeout": 60.0},
                         runtime="java")


def stages(code: str | bytes, *, args: Iterable[str] | None = None, compile_timeout: float | None = None,
           run_timeout: float | None = None, **limits: Any) -> Stages:
    """Separate compile and run Plans (see `Stages`); `limits` are the run's Plan keywords."""
    run_memory = _memory(limits, RUN_DEFAULTS["memory"])
    floor = parse_size(COMPILE_DEFAULTS["memory"], "memory")
    compile_memory = None if run_memory is None else max(run_memory, floor)  # (compiled_stages applies the same floor)
    compile_argv, run_argv, mounts = _tools(limits, compile_memory, run_memory)
    return compiled_stages(compile_argv, [*run_argv, *program_args(args)], source=SOURCE,
                           code=source_text(code, "Java"), artifacts=(CLASSES,), limits=limits, mounts=mounts,
                           run_mounts=mounts, env=JAVA_ENV,
                           compile_timeout=compile_timeout, run_timeout=run_timeout,
                           compile_defaults=COMPILE_DEFAULTS, run_defaults=RUN_DEFAULTS, runtime="java")


def run(code: str | bytes, *, args: Iterable[str] | None = None, **limits: Any) -> Output:
    """Compile and run `code` in a fresh sandbox and return its Output (see `plan`)."""
    return _run(plan(code, args=args, **limits))
