"""evalbox: run untrusted code on Linux in milliseconds, safely.

Landlock, seccomp-BPF, rlimits and privilege hardening around every program; many sandboxes
from one event loop. See README.md and the contract in SPEC.md.
"""

from evalbox.errors import ClusterError, CommandNotFound, SandboxError, SpawnError, UnsupportedKernel, ValidationError
from evalbox.executor.executor import Completed, Event, Executor, SandboxId, Stderr, Stdout, Syscall, Timeout
from evalbox.faces.api import run
from evalbox.faces.batch import run_many
from evalbox.policy.plan import File, Mount, NotifyMode, Plan, Syscalls
from evalbox.policy.supervision import Decision, SyscallRecord, SyscallRequest
from evalbox.process.result import CalledProcessError, Output, Protections, Status

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

# Loaded on first use, so that `import evalbox` stays cheap: the asyncio face (asyncio alone is
# ~40 ms), the language runtimes, the graders and run_code.
_LAZY = {
    **{name: ("evalbox.faces.aio", name) for name in ("AsyncExecutor", "AsyncSandbox", "arun", "arun_many")},
    **{name: ("evalbox.faces.code", name) for name in ("CodeResult", "arun_code", "run_code")},
    **{name: (f"evalbox.runtimes.{name}", None) for name in (
        "bash", "c", "cpp", "go", "go_test", "java", "node", "nodejs", "perl", "pytest", "python", "rust", "shell",
        "typescript")},
    "evals": ("evalbox.evals", None),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module_name, attribute = _LAZY[name]
        module = importlib.import_module(module_name)
        value = module if attribute is None else getattr(module, attribute)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'evalbox' has no attribute {name!r}")


def __dir__() -> list[str]:  # the lazily loaded names too, for completion and help()
    return sorted(set(globals()) | set(_LAZY))
