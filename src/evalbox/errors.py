"""Errors raised before a sandboxed program starts. Each message says what to do next."""


class SandboxError(Exception):
    """Base class: the sandbox could not be set up, so nothing ran."""


class ValidationError(SandboxError, ValueError):
    """The plan is malformed (empty argv, NUL bytes, a path leaving the workspace, a bad limit...)."""


class CommandNotFound(SandboxError, FileNotFoundError):
    """The program (or the toolchain a runtime needs) is not installed where the sandbox looks."""


class UnsupportedKernel(SandboxError):
    """A protection the plan needs cannot be applied on this kernel or host; nothing was run."""


class SpawnError(SandboxError, OSError):
    """A lockdown step failed in the child between fork and exec; nothing untrusted ran."""


class ClusterError(SandboxError):
    """A cluster run could not be done: Ray is missing or unreachable, or no node could run the plan."""
