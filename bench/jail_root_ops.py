"""What building a jail's root costs, this tree's C spawn against another build of it (BENCHMARKS.md).

    python bench/jail_root_ops.py /path/to/other/_spawn.cpython-*.so [-n 150]

Builds, alternately with each module, a template mount namespace (`build_template`, the code a
run's init uses) from: the system part of a root (~60 binds and links), a run's own part (its
/proc, devpts, the disk tmpfs, the workspace's directories and files), and both. Root only.
Also times the network namespace pool's reuse check and a fresh namespace.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import statistics
import time

from evalbox.kernel import _spawn, namespaces
from evalbox.policy import filesystem as fs
from evalbox.policy import jail
from evalbox.policy.plan import Plan


def load(path: str):  # type: ignore[no-untyped-def]
    loader = importlib.machinery.ExtensionFileLoader("evalbox.kernel._spawn", path)
    spec = importlib.util.spec_from_file_location("evalbox.kernel._spawn", path, loader=loader)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    loader.exec_module(module)
    return module


def ms(samples: list[float]) -> str:
    s = sorted(samples)
    return f"median {statistics.median(s) * 1e3:.3f} ms, p25 {s[len(s) // 4] * 1e3:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("other")
    ap.add_argument("-n", type=int, default=150)
    a = ap.parse_args()
    other = load(a.other)
    ws = "/dev/shm/evalbox-1-benchws"
    plan = Plan(["/bin/true"], files={"main.py": "print(1)"})
    system, _, _ = jail.template_entries(plan, ws, [])
    run = jail.run_entries(plan, ws, fs.PROC_RIGHTS, None, 0)
    for name, entries in (("system part", system), ("run part", run), ("both", system + run)):
        mine, theirs = [], []
        for _ in range(a.n):
            for module, out in ((_spawn, mine), (other, theirs)):
                t = time.perf_counter()
                os.close(module.build_template(entries))
                out.append(time.perf_counter() - t)
        print(f"{name} ({len(entries)} operations): this tree {ms(mine)}; other {ms(theirs)}")
    fd, stats = namespaces.new_network_namespace(with_stats=True)
    checks = []
    for _ in range(2000):
        t = time.perf_counter()
        namespaces.sockets_left(stats)
        checks.append(time.perf_counter() - t)
    os.close(stats)
    os.close(fd)
    fresh = []
    for _ in range(a.n):
        t = time.perf_counter()
        fd, stats = namespaces.new_network_namespace(with_stats=True)
        fresh.append(time.perf_counter() - t)
        os.close(stats)
        os.close(fd)
    print(f"netns pool: reuse check {ms(checks)}; fresh namespace {ms(fresh)}")


if __name__ == "__main__":
    main()
