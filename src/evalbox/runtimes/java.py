"""`evalbox.java`: compile Java with the host's JDK (javac) and run it on its JVM, in sandboxes.

    out = evalbox.java.run('public class Main { public static void main(String[] a) { System.out.println(42); } }')

The code is `Main.java` and must define class `Main` (SandboxFusion's convention); it is
compiled with `javac -encoding UTF-8 -d classes` and run as `java -ea -cp classes:. Main` (with the serial GC) (`.jar`
files passed in `files=` join the class path). `stages()` carries the compiled classes (the
whole `classes/` tree) from the compile sandbox to the run sandbox. The JVM is multi-threaded
and threads count as processes, so `max_pids` defaults to 256; `javac` gets 1G of memory at
least. Needs a JDK (`apt-get install openjdk-17-jdk-headless`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from typing import Any

from evalbox.faces.api import run as _run
from evalbox.policy.plan import Mount, Plan
from evalbox.process.result import Output
from evalbox.runtimes.common import (Stages, compiled_plan, compiled_stages, find_tool, in_system_trees, outermost,
                                     program_args, source_text)

SOURCE = "Main.java"
CLASSES = "classes"
INSTALL = "install a JDK (apt-get install openjdk-17-jdk-headless)"
RUN_DEFAULTS = {"max_pids": 256}
COMPILE_DEFAULTS = {"memory": "1G", "max_pids": 256, "timeout": 30.0}
# Fewer JVM threads (one GC thread); javac also skips the optimising JIT (a quicker start).
JVM_FLAGS = ["-XX:+UseSerialGC"]
JAVAC_FLAGS = ["-J-XX:+UseSerialGC", "-J-XX:TieredStopAtLevel=1"]


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


def _tools(limits: Mapping[str, Any]) -> tuple[list[str], list[str], tuple[Mount, ...]]:
    javac, java = find_tool("javac", INSTALL), find_tool("java", INSTALL)
    cp = _class_path(limits.get("files"))
    mounts = (*javac.mounts, *java.mounts, *config_mounts(javac.path), *config_mounts(java.path))
    return ([javac.path, *JAVAC_FLAGS, "-encoding", "UTF-8", "-nowarn", "-cp", cp, "-d", CLASSES, SOURCE],
            [java.path, *JVM_FLAGS, "-ea", "-cp", cp, "Main"], tuple(dict.fromkeys(mounts)))


def plan(code: str | bytes, *, args: Iterable[str] | None = None, **limits: Any) -> Plan:
    """One Plan compiling and running `code`; `limits` are Plan keywords (they cover both steps)."""
    compile_argv, run_argv, mounts = _tools(limits)
    return compiled_plan(compile_argv, run_argv, source=SOURCE, code=source_text(code, "Java"), limits=limits, args=args,
                         mounts=mounts,
                         defaults={"memory": "1G", "max_pids": 256, "timeout": 60.0}, runtime="java")


def stages(code: str | bytes, *, args: Iterable[str] | None = None, compile_timeout: float | None = None,
           run_timeout: float | None = None, **limits: Any) -> Stages:
    """Separate compile and run Plans (see `Stages`); `limits` are the run's Plan keywords."""
    compile_argv, run_argv, mounts = _tools(limits)
    return compiled_stages(compile_argv, [*run_argv, *program_args(args)], source=SOURCE,
                           code=source_text(code, "Java"), artifacts=(CLASSES,), limits=limits, mounts=mounts,
                           run_mounts=mounts,
                           compile_timeout=compile_timeout, run_timeout=run_timeout,
                           compile_defaults=COMPILE_DEFAULTS, run_defaults=RUN_DEFAULTS, runtime="java")


def run(code: str | bytes, *, args: Iterable[str] | None = None, **limits: Any) -> Output:
    """Compile and run `code` in a fresh sandbox and return its Output (see `plan`)."""
    return _run(plan(code, args=args, **limits))
