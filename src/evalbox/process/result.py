"""What a finished run reports: Status, Output, and the protections that were enforced."""

from __future__ import annotations

import enum
import signal as _signal
from dataclasses import asdict, dataclass, field
from collections.abc import Mapping
from typing import Any


class Status(enum.Enum):
    EXITED = "exited"
    SIGNALED = "signaled"
    TIMEOUT = "timeout"  # wall clock
    CPU_LIMIT = "cpu_limit"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"


@dataclass(frozen=True)
class Protections:
    """The layers actually enforced for one run (also what `evalbox check` predicts)."""

    landlock_abi: int
    filesystem: str  # "landlock"
    network: str  # "off (seccomp: Unix stream sockets only, no connect; Landlock TCP deny)" or "host"
    tcp_landlock: bool
    scopes: tuple[str, ...]  # Landlock scopes: "abstract_unix_socket", "signal"
    seccomp: str  # e.g. "allow-list, 312 instructions, kill on violation"
    no_new_privs: bool
    capabilities: str  # "all dropped (bounding set cleared)" / "none held"
    securebits: str  # "locked" / "not needed (no capabilities)"
    identity: str  # "uid 2000001234 (per-sandbox, host is root)" / "caller's uid 1000"
    cgroup: str  # "v1: memory, pids, cpuacct" / "none"
    processes: str  # how max_pids is enforced
    memory: str  # how memory is enforced
    rlimits: tuple[str, ...]
    namespaces: tuple[str, ...] = ()
    weakened: tuple[str, ...] = ()  # explicit weakenings the plan asked for (Syscalls(allow=...))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Output:
    stdout: bytes
    stderr: bytes
    status: Status
    exit_code: int | None
    signal: int | None
    wall_time: float
    cpu_time: float
    max_rss: int
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    protections: Protections | None = field(default=None, repr=False)
    syscalls: tuple = ()  # SyscallRecord audit trail of intercepted calls (notify modes)
    error: str | None = None  # why evalbox ended the run when no limit did (a failing supervisor)
    files: Mapping[str, bytes] = field(default_factory=dict)  # what Plan.collect asked for and was found

    @property
    def success(self) -> bool:
        return self.status is Status.EXITED and self.exit_code == 0

    @property
    def shell_code(self) -> int:
        """The exit code a shell would report: the program's, 128+N for a signal, 124 for a timeout."""
        if self.status is Status.TIMEOUT:
            return 124
        if self.exit_code is not None:
            return self.exit_code
        if self.signal is not None:
            return 128 + self.signal
        return 1

    def as_dict(self) -> dict[str, Any]:
        def text(b: bytes) -> str:
            return b.decode("utf-8", "backslashreplace")

        return {
            "status": self.status.value,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "signal_name": _signal.Signals(self.signal).name if self.signal else None,
            "success": self.success,
            "stdout": text(self.stdout),
            "stderr": text(self.stderr),
            "stdout_truncated": self.stdout_truncated,
            "stderr_truncated": self.stderr_truncated,
            "wall_time": round(self.wall_time, 6),
            "cpu_time": round(self.cpu_time, 6),
            "max_rss": self.max_rss,
            "protections": self.protections.as_dict() if self.protections else None,
            "syscalls": [r._asdict() for r in self.syscalls],
            "error": self.error,
        }
