"""evalbox: run untrusted code on Linux in milliseconds, safely.

Landlock, seccomp-BPF, rlimits and privilege hardening around every program; many sandboxes
from one event loop. See README.md and the contract in SPEC.md.
"""

from evalbox.errors import ClusterError, CommandNotFound, SandboxError, SpawnError, UnsupportedKernel, ValidationError
from evalbox.executor.executor import Completed, Event, Executor, SandboxId, Stderr, Stdout, Syscall, Timeout
from evalbox.faces.api import run
from evalbox.faces.batch import run_many
from evalbox.faces.code import CodeResult, arun_code, run_code
from evalbox.policy.plan import File, Mount, NotifyMode, Plan, Syscalls
from evalbox.policy.supervision import Decision, SyscallRecord, SyscallRequest
from evalbox.process.result import CalledProcessError, Output, Protections, Status
from evalbox.runtimes import (bash, c, cpp, go, go_test, java, node, nodejs, perl, pytest, python, rust, shell,
                              typescript)
from evalbox import evals

__all__ = [
    # running
    "run", "arun", "run_many", "arun_many", "run_code", "arun_code", "CodeResult", "Executor", "AsyncExecutor", "AsyncSandbox", "SandboxId",
    # describing a run
    "Plan", "File", "Mount", "Syscalls", "NotifyMode",
    # results and events
    "Output", "Status", "Protections", "Event", "Stdout", "Stderr", "Completed", "Timeout", "Syscall",
    # supervision
    "Decision", "SyscallRequest", "SyscallRecord",
    # errors
    "SandboxError", "ValidationError", "CommandNotFound", "UnsupportedKernel", "SpawnError", "CalledProcessError",
    "ClusterError",
    # runtimes and evaluations
    "python", "shell", "node", "go", "bash", "nodejs", "typescript", "pytest", "cpp", "c", "java", "rust", "go_test", "perl",
    "evals",
]
__version__ = "0.1.0"

_ASYNC_NAMES = ("AsyncExecutor", "AsyncSandbox", "arun", "arun_many")


def __getattr__(name: str):  # the asyncio face loads asyncio (~40 ms): only when used
    if name in _ASYNC_NAMES:
        from evalbox.faces import aio

        return getattr(aio, name)
    raise AttributeError(f"module 'evalbox' has no attribute {name!r}")


def __dir__() -> list[str]:  # the lazily loaded names too, for completion and help()
    return sorted(set(globals()) | set(_ASYNC_NAMES))
