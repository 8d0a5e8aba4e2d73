"""`evalbox check`: what this host enforces, feature by feature, verified by a real run."""

from __future__ import annotations

import os
import time
from typing import Any

from evalbox.errors import SandboxError
from evalbox.kernel import cgroups
from evalbox.policy import plan as plan_defaults
from evalbox.process.host import MIN_LANDLOCK_ABI, MIN_LANDLOCK_ABI_SAME_UID, probe
from evalbox.process.lockdown import check_floor

LANDLOCK_FEATURES = {1: "filesystem", 2: "refer", 3: "truncate", 4: "tcp bind/connect", 5: "device ioctl",
                     6: "scopes: abstract unix sockets, signals", 7: "audit logging"}


def _kernel_version() -> tuple[int, int]:
    parts = os.uname().release.split(".")
    try:
        return int(parts[0]), int(parts[1].split("-")[0])
    except (IndexError, ValueError):
        return (0, 0)


def jail_report(host) -> str:  # type: ignore[no-untyped-def]
    """Which parts of promise 9 (the sandbox sees only what it is given) hold on this host."""
    if host.jail:
        return ("jail" + (" in a user namespace of its own (your uid mapped to itself)" if host.jail_userns else "")
                + ": PID namespace with its own init (own process table, orphans reaped inside), IPC, UTS, "
                "mount namespace with a root built from the granted paths (pivot_root; workspace, /tmp and "
                "/dev/shm in one tmpfs of Plan.disk), network namespace with only its own loopback when network "
                "is off; promise 9 holds")
    from evalbox.policy.jail import no_view

    return no_view(host.no_jail_reason) + ("; a mount namespace gives a private /dev/shm" if host.private_shm else "")


def host_report() -> dict[str, Any]:
    host = probe()
    abi = host.landlock_abi
    features: dict[str, str] = {}
    features["kernel"] = f"{host.kernel} ({host.arch})"
    features["landlock"] = (
        f"ABI {abi}: " + ", ".join(LANDLOCK_FEATURES[i] for i in range(1, min(abi, 7) + 1)) if abi else "absent"
    )
    features["seccomp filter"] = "yes (BPF allow-list, kills i386/x32 calls)" if host.seccomp else "NO"
    notify = "yes" if host.seccomp_notify else "no"
    if host.seccomp_notify and _kernel_version() >= (6, 6):
        notify += " (with SYNC_WAKE_UP)"
    features["seccomp notify"] = notify + ": NotifyMode.MONITOR, SUPERVISE, VIRTUALIZE" if host.seccomp_notify else notify
    features["pidfd"] = "yes" if host.pidfd else "no"
    if host.cgroup.version:
        features["cgroups"] = f"v{host.cgroup.version}: " + ", ".join(sorted(host.cgroup.controllers))
    else:
        features["cgroups"] = ("none usable: " + cgroups.v2_refused if cgroups.v2_refused
                               else "none usable (not root and no delegated cgroup)")
    features["namespaces"] = jail_report(host)
    features["identity"] = (
        "root host: every sandbox runs as its own unprivileged uid (2000000000+), capabilities dropped, "
        "securebits locked" if host.switches_uid else f"your uid {host.euid}; capabilities dropped, no_new_privs"
    )
    mem = host.cgroup.version and "memory" in host.cgroup.controllers
    pids = host.cgroup.version and "pids" in host.cgroup.controllers
    defaults = {
        "files": "system trees read-only, narrow /etc, /proc read-only, workspace read-write",
        "network": "off (private network namespace with only its own loopback)" if host.jail else
        "off (seccomp: Unix stream socket pairs only, no connect/bind/listen; Landlock TCP deny)",
        "memory": f"{plan_defaults.DEFAULT_MEMORY} via " + ("memory cgroup (whole tree)" if mem else
                   "RLIMIT_AS per process: address space, not resident memory; node and go need 1G and get it "
                   "by default (an explicit smaller memory= is refused), the JVM (17) needs about 4G")
        + ("" if not mem or cgroups.socket_memory_bounded(host.cgroup) else
           "; TCP socket buffers NOT bounded by it (cgroup v1 without memory.kmem.tcp.limit_in_bytes): "
           "keep network off or use a cgroup v2 host"),
        "processes": f"{plan_defaults.DEFAULT_MAX_PIDS} via "
        + ("pids cgroup (whole tree)" if pids else
           "RLIMIT_NPROC of the sandbox's own uid" if host.switches_uid else
           "RLIMIT_NPROC in the run's own user namespace (its processes only)" if host.jail_userns else
           "RLIMIT_NPROC of your uid plus its current process count (approximate)"),
        "time": f"{plan_defaults.DEFAULT_TIMEOUT:g}s wall clock; CPU time when asked "
        + ("(whole tree via cpuacct)" if host.cgroup.version else "(RLIMIT_CPU per process)"),
        "signals": "own uid per sandbox + Landlock scope" if host.switches_uid and abi >= 6
        else "Landlock signal scope" if abi >= 6 else "own uid per sandbox",
    }
    report: dict[str, Any] = {"features": features, "defaults": defaults, "ready": True, "problem": None}
    try:
        check_floor(host)
    except SandboxError as e:
        report.update(ready=False, problem=str(e))
        return report
    from evalbox.faces.api import run  # the self-test goes through the whole stack

    start = time.perf_counter()
    try:
        out = run(["/bin/true"], timeout=10)
    except SandboxError as e:
        report.update(ready=False, problem=f"self-test failed: {e}")
        return report
    elapsed = (time.perf_counter() - start) * 1000
    features["self-test"] = f"/bin/true ran sandboxed in {elapsed:.1f} ms ({out.status.name}, exit {out.exit_code})"
    if not out.success:
        report.update(ready=False, problem=f"self-test: /bin/true ended {out.status.name}: {out.stderr[:200]!r}")
    report["protections"] = out.protections.as_dict() if out.protections else None
    report["floor"] = {"landlock_abi": MIN_LANDLOCK_ABI, "landlock_abi_when_not_root": MIN_LANDLOCK_ABI_SAME_UID}
    return report
