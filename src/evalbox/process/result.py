"""What a finished run reports: Status, Output, and the protections that were enforced."""

from __future__ import annotations

import base64
import enum
import signal as _signal
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
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
    view: str = ""  # promise 9: what the sandbox sees of the host ("jail: ..." or what does not hold)
    disk: str = ""  # how Plan.disk is enforced

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
    warm: bool = False  # started from a warm interpreter's fresh copy (evalbox.python), not a cold exec
    blocked_syscall: str | None = None  # the forbidden call a process of the run was killed for ("ptrace")
    files: Mapping[str, bytes] = field(default_factory=dict)  # what Plan.collect asked for and was found

    @property
    def success(self) -> bool:
        return self.status is Status.EXITED and self.exit_code == 0

    @property
    def returncode(self) -> int | None:
        """As `subprocess` reports it: the exit code, or -N when the program died of signal N."""
        if self.exit_code is not None:
            return self.exit_code
        return -self.signal if self.signal is not None else None

    @property
    def stdout_text(self) -> str:
        """stdout decoded as UTF-8, undecodable bytes replaced (U+FFFD)."""
        return self.stdout.decode("utf-8", "replace")

    @property
    def stderr_text(self) -> str:
        """stderr decoded as UTF-8, undecodable bytes replaced (U+FFFD)."""
        return self.stderr.decode("utf-8", "replace")

    def check_returncode(self) -> "Output":
        """Return self if the program exited 0; else raise `evalbox.CalledProcessError` (a
        `subprocess.CalledProcessError`) saying how it ended, with this Output attached."""
        if not self.success:
            raise CalledProcessError(self)
        return self

    def describe(self) -> str:
        """How the run ended, in words: "exited with code 3", "timed out after 2.00s"..."""
        if self.status is Status.EXITED:
            text = f"exited with code {self.exit_code}"
        elif self.status is Status.SIGNALED:
            text = f"was killed by {_signal_name(self.signal)}"
        else:
            text = {Status.TIMEOUT: "timed out (wall clock)", Status.CPU_LIMIT: "hit the CPU-time limit",
                    Status.MEMORY_LIMIT: "hit the memory limit",
                    Status.OUTPUT_LIMIT: "hit the output limit"}[self.status]
            text += f" after {self.wall_time:.2f}s"
        return text + (f" ({self.error})" if self.error else "")

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

    def as_dict(self, protections: bool = False) -> dict[str, Any]:
        """A JSON-ready dict that loses nothing (`Output.from_dict` gives this Output back).

        stdout/stderr are text when the bytes are valid UTF-8; otherwise the text field is None
        and `stdout_b64`/`stderr_b64` holds the bytes in base64. `protections` (large, the same
        for every run of a host) only when asked; `syscalls` only when there are any.
        """
        d: dict[str, Any] = {
            "status": self.status.value,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "signal_name": _signal_name(self.signal) if self.signal else None,
            "success": self.success,
        }
        for name in ("stdout", "stderr"):
            data: bytes = getattr(self, name)
            try:
                d[name] = data.decode("utf-8")
            except UnicodeDecodeError:
                d[name] = None
                d[name + "_b64"] = base64.b64encode(data).decode("ascii")
        d.update({
            "stdout_truncated": self.stdout_truncated,
            "stderr_truncated": self.stderr_truncated,
            "wall_time": round(self.wall_time, 6),
            "cpu_time": round(self.cpu_time, 6),
            "max_rss": self.max_rss,
            "error": self.error,
            "warm": self.warm,
            "blocked_syscall": self.blocked_syscall,
        })
        if self.syscalls:
            d["syscalls"] = [r._asdict() for r in self.syscalls]
        if protections:
            d["protections"] = self.protections.as_dict() if self.protections else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Output":
        """The Output an `as_dict()` (or its JSON) describes; fields it left out get defaults."""
        from evalbox.policy.supervision import SyscallRecord

        def data(name: str) -> bytes:
            if d.get(name + "_b64") is not None:
                return base64.b64decode(d[name + "_b64"])
            return (d.get(name) or "").encode("utf-8")

        prot = d.get("protections")
        return cls(
            stdout=data("stdout"), stderr=data("stderr"), status=Status(d["status"]),
            exit_code=d.get("exit_code"), signal=d.get("signal"),
            wall_time=float(d.get("wall_time", 0.0)), cpu_time=float(d.get("cpu_time", 0.0)),
            max_rss=int(d.get("max_rss", 0)),
            stdout_truncated=bool(d.get("stdout_truncated")), stderr_truncated=bool(d.get("stderr_truncated")),
            protections=Protections(**{k: tuple(v) if isinstance(v, list) else v for k, v in prot.items()})
            if prot else None,
            syscalls=tuple(SyscallRecord(**{**r, "args": tuple(r["args"])}) for r in d.get("syscalls") or ()),
            error=d.get("error"),
            warm=bool(d.get("warm")),
            blocked_syscall=d.get("blocked_syscall"),
        )


def _signal_name(number: int | None) -> str:
    try:
        return _signal.Signals(number).name  # type: ignore[arg-type]
    except ValueError:
        return f"signal {number}"


class CalledProcessError(subprocess.CalledProcessError):
    """Raised by `Output.check_returncode()`: the program did not exit 0. `.result` is its Output;
    `.returncode`, `.stdout`, `.stderr` as in `subprocess`."""

    def __init__(self, result: Output) -> None:
        super().__init__(result.returncode if result.returncode is not None else 1, "the sandboxed program",
                         result.stdout, result.stderr)
        self.result = result

    def __str__(self) -> str:
        return f"the sandboxed program {self.result.describe()}"
