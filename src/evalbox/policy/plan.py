"""Plan: an immutable, validated description of one sandboxed run.

Everything a user can get wrong is caught here, at construction, with a message that says what
to change; nothing later has to re-check the plan's shape.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from evalbox.errors import ValidationError
from evalbox.kernel.syscall_table import known_syscall
from evalbox.policy.supervision import VIRTUALIZE_DEFAULT, validate_virtual_paths

WORK_DIR = "work"  # the cwd inside the workspace, and where plan files are written

_SIZE = re.compile(r"^\s*(\d{1,30}(?:\.\d{1,30})?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

# Upper bounds: a limit the kernel cannot hold is refused, never wrapped or truncated
# (rlimits and cgroup files are 64-bit; epoll waits are at most 2**31 ms).
MAX_BYTES = 1 << 62
MAX_SECONDS = 2_000_000  # about 23 days
MAX_PIDS = 1 << 22  # PID_MAX_LIMIT
MAX_OPEN_FILES = 1 << 20  # the kernel's default fs.nr_open
MIN_MEMORY = 4096  # one page: less cannot be accounted at all
# Workspace paths: NAME_MAX per component, and room for the workspace's own prefix in PATH_MAX.
NAME_MAX = 255
MAX_WORKSPACE_PATH = 2048
MAX_WORKSPACE_DEPTH = 64  # directories: building the workspace stays cheap whatever the plan


def parse_size(value: int | str | None, name: str, minimum: int = 1, maximum: int = MAX_BYTES) -> int | None:
    """Bytes from an int or a string like "64K", "256M", "2G" (binary units); None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValidationError(f"{name} must be a size like 256M or a number of bytes, not {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        m = _SIZE.match(value)
        if not m:
            raise ValidationError(f"{name}={value!r} is not a size: use bytes or a number with K, M, G or T (e.g. '256M')")
        size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    else:
        raise ValidationError(f"{name} must be an int or a string like '256M', not {type(value).__name__}")
    if size <= 0:
        raise ValidationError(f"{name} must be positive, got {value!r}; use None for no limit")
    if size < minimum:
        raise ValidationError(f"{name}={value!r} is too small for any program to start; use at least {minimum >> 10}K")
    if size > maximum:
        raise ValidationError(f"{name}={value!r} is larger than this system can enforce (at most {maximum} bytes); "
                              "use None for no limit")
    return size


def parse_seconds(value: float | int | str | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValidationError(f"{name} must be a number of seconds, not {value!r}")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{name}={value!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValidationError(f"{name} must be a positive number of seconds, got {value!r}; use None for no limit")
    if seconds > MAX_SECONDS:
        raise ValidationError(f"{name}={value!r} is too long: at most {MAX_SECONDS} seconds (about 23 days); "
                              "use None for no limit")
    return seconds


def parse_count(value: int | None, name: str, maximum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be a whole number, not {value!r}")
    if value <= 0:
        raise ValidationError(f"{name} must be positive, got {value}; use None for no limit")
    if value > maximum:
        raise ValidationError(f"{name}={value} is more than the kernel allows (at most {maximum}); use None for no limit")
    return value


def _as_tuple(value: Any, what: str, example: str) -> tuple:
    """`value` as a tuple, or a ValidationError naming the field (never a raw TypeError)."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise ValidationError(f"{what} must be a list, like {example}, not {type(value).__name__} {value!r:.80}")
    return tuple(value)


def _no_nul(text: str, what: str) -> str:
    if not isinstance(text, str):
        raise ValidationError(f"{what} must be a str, not {type(text).__name__}: {text!r}")
    if "\0" in text:
        raise ValidationError(f"{what} contains a NUL byte, which no program can receive: {text!r}")
    return text


def workspace_path(path: str, what: str) -> str:
    """A relative path that stays inside the workspace: no absolute paths, no '..'."""
    _no_nul(path, what)
    if not path or path.startswith("/"):
        raise ValidationError(f"{what} {path!r} must be a relative path inside the workspace (e.g. 'main.py' or 'data/in.txt')")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValidationError(f"{what} {path!r} leaves the workspace; use a path below it without '..'")
    clean = "/".join(parts)
    try:
        encoded = clean.encode("utf-8", "surrogateescape")
        longest = max(len(p.encode("utf-8", "surrogateescape")) for p in parts)
    except UnicodeEncodeError:
        raise ValidationError(f"{what} {path[:80]!r} is not a valid file name (unpaired surrogate)") from None
    if longest > NAME_MAX:
        raise ValidationError(f"{what} {path[:80]!r}...: a name in it is {longest} bytes long; file names are at most "
                              f"{NAME_MAX} bytes")
    if len(parts) > MAX_WORKSPACE_DEPTH:
        raise ValidationError(f"{what} {path[:80]!r}... is {len(parts)} levels deep; use at most "
                              f"{MAX_WORKSPACE_DEPTH} (a flatter layout)")
    if len(encoded) > MAX_WORKSPACE_PATH:
        raise ValidationError(f"{what} {path[:80]!r}... is {len(encoded)} bytes long; use a path of at most "
                              f"{MAX_WORKSPACE_PATH} bytes")
    return clean


def _below(path: str, top: str) -> bool:
    """`path` is `top` or inside it (both clean relative paths)."""
    return path == top or path.startswith(top + "/")


def check_layout(files: Mapping[str, "File"], mounts: tuple["Mount", ...], cwd: str | None) -> None:
    """The plan's files, mount links and cwd must not overlap: nothing may be created inside (or
    through) a mount link or a file, which could write outside the workspace."""
    taken: dict[str, str] = {}  # path below work/ -> what put it there
    for rel in sorted(files):
        taken[rel] = f"file {rel!r}"
    for m in mounts:
        if m.dest is not None:
            if m.dest in taken:
                raise ValidationError(f"mount dest {m.dest!r} is also the {taken[m.dest]}; give each a path of its own")
            taken[m.dest] = f"mount dest {m.dest!r} (of {m.source})"
    for path in taken:
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in taken:
                raise ValidationError(f"{taken[path]} lies inside {taken[parent]}: a path cannot be both a file or "
                                      "mount link and a directory; rename one of them")
    if cwd is not None and _below(cwd, WORK_DIR) and cwd != WORK_DIR:
        inner = cwd[len(WORK_DIR) + 1:]
        for path, what in taken.items():
            if _below(inner, path):
                raise ValidationError(f"cwd {cwd!r} lies inside {what}: the cwd must be a directory of the workspace "
                                      "itself; mount the directory you want and cd into it in the command")


@dataclass(frozen=True)
class File:
    """A file written into the workspace before the run."""

    content: bytes
    executable: bool = False

    def __init__(self, content: str | bytes, executable: bool = False) -> None:
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        elif isinstance(content, (bytearray, memoryview)):
            content = bytes(content)
        if not isinstance(content, bytes):
            raise ValidationError(f"file content must be str or bytes, not {type(content).__name__}")
        object.__setattr__(self, "content", content)
        object.__setattr__(self, "executable", bool(executable))


@dataclass(frozen=True)
class Mount:
    """A host path made visible to the program, read-only or writable.

    Without mount namespaces the program sees the host path itself (`dest` None or equal to the
    source); a relative `dest` also places a link to it in the workspace (`work/<dest>`).
    """

    source: str
    dest: str | None = None
    writable: bool = False

    def __post_init__(self) -> None:
        _no_nul(self.source, "mount source")
        if not os.path.isabs(self.source):
            raise ValidationError(f"mount source {self.source!r} must be an absolute host path")
        object.__setattr__(self, "source", os.path.normpath(self.source))
        if self.dest is not None:
            _no_nul(self.dest, "mount dest")
            if os.path.isabs(self.dest):
                if os.path.normpath(self.dest) != self.source:
                    raise ValidationError(
                        f"mount dest {self.dest!r} differs from its source {self.source!r}: mapping to another "
                        "absolute path needs mount namespaces; give a relative dest (a link in the workspace) "
                        "or leave dest out to see the source path as is"
                    )
                object.__setattr__(self, "dest", None)
            else:
                object.__setattr__(self, "dest", workspace_path(self.dest, "mount dest"))

    @classmethod
    def ro(cls, source: str, dest: str | None = None) -> "Mount":
        return cls(source, dest, False)

    @classmethod
    def rw(cls, source: str, dest: str | None = None) -> "Mount":
        return cls(source, dest, True)


@dataclass(frozen=True)
class Syscalls:
    """Adjustments to the default system call policy, by name.

    `allow` adds calls (unconditionally: it also lifts the default argument checks on them, an
    explicit weakening reported in `protections`); `deny` makes calls fail with EPERM.
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for attr in ("allow", "deny"):
            names = getattr(self, attr)
            if isinstance(names, str):
                names = (names,)
            names = _as_tuple(names, f"Syscalls({attr}=...)", "['ptrace']")
            for name in names:
                if not isinstance(name, str) or not known_syscall(name):
                    raise ValidationError(f"Syscalls({attr}=...): unknown system call name {name!r} (see `man 2 syscalls`)")
            object.__setattr__(self, attr, names)
        both = set(self.allow) & set(self.deny)
        if both:
            raise ValidationError(f"system calls both allowed and denied: {sorted(both)}")


class NotifyMode(enum.Enum):
    DISABLED = "disabled"
    MONITOR = "monitor"
    SUPERVISE = "supervise"
    VIRTUALIZE = "virtualize"


# Calls that do the same thing by other means: intercepting one intercepts them all.
INTERCEPT_FAMILIES = (
    frozenset({"open", "openat", "openat2", "creat"}),
    frozenset({"stat", "lstat", "newfstatat", "statx"}),
    frozenset({"access", "faccessat", "faccessat2"}),
    frozenset({"execve", "execveat"}),
)

DEFAULT_TIMEOUT = 30.0
DEFAULT_MEMORY = "256M"
DEFAULT_MAX_PIDS = 64
DEFAULT_MAX_OUTPUT = "16M"
DEFAULT_MAX_OPEN_FILES = 256
DEFAULT_MAX_FILE_SIZE = "16M"
DEFAULT_DISK = "512M"


@dataclass(frozen=True)
class Plan:
    """One sandboxed run. Immutable: derive variants with `plan.replace(...)`."""

    argv: tuple[str, ...]
    files: Mapping[str, File] = field(default_factory=dict)
    stdin: bytes = b""
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout: float | None = DEFAULT_TIMEOUT
    cpu_time: float | None = None
    memory: int | None = DEFAULT_MEMORY  # type: ignore[assignment]  (parsed from str)
    max_pids: int | None = DEFAULT_MAX_PIDS
    max_output: int | None = DEFAULT_MAX_OUTPUT  # type: ignore[assignment]
    max_open_files: int | None = DEFAULT_MAX_OPEN_FILES
    max_file_size: int | None = DEFAULT_MAX_FILE_SIZE  # type: ignore[assignment]
    disk: int | None = DEFAULT_DISK  # type: ignore[assignment]  (the workspace's size: bytes and files)
    network: bool = False
    mounts: tuple[Mount, ...] = ()
    syscalls: Syscalls = field(default_factory=Syscalls)
    notify: NotifyMode = NotifyMode.DISABLED
    intercept: tuple[str, ...] = ()
    supervisor: Callable[..., Any] | None = None
    virtual_paths: Mapping[str, str] = field(default_factory=dict)
    # Python modules a warm template imports once (set by evalbox.python; README "Warm Python");
    # None: a cold start. argv must then be [python, "-s", script, *args].
    warm: tuple[str, ...] | None = None
    collect: tuple[str, ...] = ()  # files (or directories) of work/ returned in Output.files

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731

        argv = self.argv
        if isinstance(argv, (str, bytes)):
            raise ValidationError(
                f"argv must be a list of strings, not one string {argv!r}: split it (shlex.split) or use evalbox.shell"
            )
        argv = _as_tuple(argv, "argv", "['python3', 'main.py']")
        if not argv:
            raise ValidationError("argv is empty: give the program to run, e.g. ['python3', 'main.py']")
        for i, arg in enumerate(argv):
            if isinstance(arg, os.PathLike):
                arg = os.fspath(arg)
            _no_nul(arg, f"argv[{i}]")
        if not argv[0]:
            raise ValidationError("argv[0] is empty: name the program to run")
        set_("argv", tuple(os.fspath(a) for a in argv))

        files: dict[str, File] = {}
        if not isinstance(self.files, Mapping):
            raise ValidationError(f"files must be a mapping {{path: content}}, not {type(self.files).__name__}")
        for path, content in self.files.items():
            rel = workspace_path(path, "file path")
            if rel in files:
                raise ValidationError(f"file path {path!r} names the same file as another entry ({rel!r}); keep one")
            files[rel] = content if isinstance(content, File) else File(content)
        set_("files", _FrozenDict(files))

        stdin = self.stdin
        if isinstance(stdin, str):
            stdin = stdin.encode("utf-8", "surrogateescape")
        if not isinstance(stdin, (bytes, bytearray, memoryview)):
            raise ValidationError(f"stdin must be bytes or str, not {type(stdin).__name__}")
        set_("stdin", bytes(stdin))

        env: dict[str, str] = {}
        if not isinstance(self.env, Mapping):
            raise ValidationError(f"env must be a mapping {{name: value}}, not {type(self.env).__name__}")
        for key, value in self.env.items():
            _no_nul(key, "env name")
            _no_nul(value, f"env {key}")
            if not key or "=" in key:
                raise ValidationError(f"env name {key!r} must be non-empty and contain no '='")
            env[key] = value
        set_("env", _FrozenDict(env))

        if self.cwd is not None:
            set_("cwd", workspace_path(self.cwd, "cwd"))

        set_("timeout", parse_seconds(self.timeout, "timeout"))
        set_("cpu_time", parse_seconds(self.cpu_time, "cpu_time"))
        set_("memory", parse_size(self.memory, "memory", minimum=MIN_MEMORY))
        for name in ("max_output", "max_file_size", "disk"):
            set_(name, parse_size(getattr(self, name), name))
        set_("max_pids", parse_count(self.max_pids, "max_pids", MAX_PIDS))
        set_("max_open_files", parse_count(self.max_open_files, "max_open_files", MAX_OPEN_FILES))
        if self.max_open_files is not None and self.max_open_files < 4:
            raise ValidationError(f"max_open_files={self.max_open_files} leaves no room beyond stdin/stdout/stderr; use at least 4")
        set_("network", bool(self.network))
        collect = (self.collect,) if isinstance(self.collect, str) else tuple(self.collect)
        set_("collect", tuple(dict.fromkeys(workspace_path(p, "collect path") for p in collect)))

        mounts = _as_tuple(self.mounts, "mounts", "[evalbox.Mount.ro('/opt/data')]")
        for m in mounts:
            if not isinstance(m, Mount):
                raise ValidationError(f"mounts must be evalbox.Mount.ro(...) or Mount.rw(...), not {m!r}")
        set_("mounts", mounts)
        check_layout(self.files, mounts, self.cwd)
        if isinstance(self.syscalls, Mapping):
            unknown = set(self.syscalls) - {"allow", "deny"}
            if unknown:
                raise ValidationError(f"syscalls: unknown keys {sorted(map(str, unknown))}; use allow= and deny=")
            set_("syscalls", Syscalls(**self.syscalls))
        elif not isinstance(self.syscalls, Syscalls):
            raise ValidationError(f"syscalls must be evalbox.Syscalls(allow=[...], deny=[...]), not {self.syscalls!r}")

        try:
            set_("notify", NotifyMode(self.notify))
        except ValueError:
            raise ValidationError(f"notify must be a NotifyMode, not {self.notify!r}") from None
        self._validate_supervision()
        self._validate_warm()

    def _validate_warm(self) -> None:
        if self.warm is None:
            return
        if isinstance(self.warm, str) or not isinstance(self.warm, Iterable):
            raise ValidationError(f"warm must be a list of module names to preload (or None), not {self.warm!r}")
        names = tuple(self.warm)
        for name in names:
            if not isinstance(name, str) or not _MODULE_NAME.match(name):
                raise ValidationError(f"warm: {name!r} is not a module name (e.g. 'json' or 'collections.abc')")
        if len(self.argv) < 3 or self.argv[1] != "-s":
            raise ValidationError("warm= runs need argv [python, '-s', script, *args]; build them with "
                                  "evalbox.python.plan(code)")
        object.__setattr__(self, "warm", names)

    def _validate_supervision(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        intercept = (self.intercept,) if isinstance(self.intercept, str) else \
            _as_tuple(self.intercept, "intercept", "['openat', 'execve']")
        for name in intercept:
            if not isinstance(name, str) or not known_syscall(name):
                raise ValidationError(f"intercept: unknown system call name {name!r} (see `man 2 syscalls`)")
        mode = self.notify
        if not isinstance(self.virtual_paths, Mapping):
            raise ValidationError(f"virtual_paths must be a mapping {{'/data': '/host/dir'}}, not "
                                  f"{type(self.virtual_paths).__name__}")
        virtual = validate_virtual_paths(dict(self.virtual_paths))
        if mode is NotifyMode.DISABLED and (intercept or self.supervisor or virtual):
            raise ValidationError("intercept=, supervisor= and virtual_paths= need notify=NotifyMode.MONITOR, "
                                  "SUPERVISE or VIRTUALIZE")
        if mode in (NotifyMode.MONITOR, NotifyMode.SUPERVISE) and not intercept:
            raise ValidationError(f"notify={mode.name} needs intercept=[...]: the system calls to "
                                  f"{'record' if mode is NotifyMode.MONITOR else 'decide'}, e.g. ['openat', 'execve']")
        if self.supervisor is not None and (mode is not NotifyMode.SUPERVISE or not callable(self.supervisor)):
            raise ValidationError("supervisor= must be a callable and needs notify=NotifyMode.SUPERVISE")
        if mode in (NotifyMode.MONITOR, NotifyMode.SUPERVISE):
            # one call of a family stands for the family: a program could pick another spelling
            for family in INTERCEPT_FAMILIES:
                if family & set(intercept):
                    intercept += tuple(sorted(family - set(intercept)))
        if mode is NotifyMode.VIRTUALIZE:
            if not virtual:
                raise ValidationError("notify=VIRTUALIZE needs virtual_paths={'/data': '/host/dir'}")
            intercept = tuple(dict.fromkeys(VIRTUALIZE_DEFAULT + intercept))
        elif virtual:
            raise ValidationError("virtual_paths= needs notify=NotifyMode.VIRTUALIZE")
        set_("intercept", intercept)
        set_("virtual_paths", _FrozenDict(virtual))

    @property
    def workdir(self) -> str:
        """The cwd relative to the workspace root."""
        return self.cwd if self.cwd is not None else WORK_DIR

    def replace(self, **changes: Any) -> "Plan":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data (str, bytes, numbers, bools, None, lists, dicts) for another
        process or machine; `Plan.from_dict` validates it again there. A `supervisor` is code, not
        data, and cannot travel: ValidationError."""
        if self.supervisor is not None:
            raise ValidationError("a plan with supervisor= cannot be sent to another process or machine (a Python "
                                  "callable is code, not data): run it locally, or use notify=MONITOR")
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "supervisor"}
        data.update(
            argv=list(self.argv), env=dict(self.env), virtual_paths=dict(self.virtual_paths),
            files={path: {"content": f.content, "executable": f.executable} for path, f in self.files.items()},
            mounts=[{"source": m.source, "dest": m.dest, "writable": m.writable} for m in self.mounts],
            syscalls={"allow": list(self.syscalls.allow), "deny": list(self.syscalls.deny)},
            notify=self.notify.value,
        )
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Plan":
        """The Plan that `to_dict` described, validated as if built by hand."""
        if not isinstance(data, Mapping):
            raise ValidationError(f"a plan's data must be a dict from Plan.to_dict(), not {type(data).__name__}")
        kw = dict(data)
        unknown = (set(kw) - {f.name for f in dataclasses.fields(cls)}) | ({"supervisor"} & set(kw))
        if unknown:
            raise ValidationError(f"unknown plan field(s) in the data: {', '.join(sorted(unknown))}")
        try:
            if "files" in kw:
                kw["files"] = {path: File(**f) if isinstance(f, Mapping) else f for path, f in dict(kw["files"]).items()}
            if "mounts" in kw:
                kw["mounts"] = [Mount(**m) if isinstance(m, Mapping) else m for m in kw["mounts"]]
        except TypeError as e:
            raise ValidationError(f"malformed plan data: {e}") from None
        return cls(**kw)


class _FrozenDict(dict):
    """A dict that refuses mutation, so a Plan stays a value."""

    def _readonly(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("Plan fields are immutable; use plan.replace(...)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:  # pickle and copy rebuild it whole (item by item would be refused)
        return (_FrozenDict, (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items(), key=lambda kv: kv[0])))


def as_plan(target: "Plan | Iterable[str]", **overrides: Any) -> Plan:
    """Accept a Plan or an argv, with keyword overrides (the shape of `evalbox.run`)."""
    if isinstance(target, Plan):
        return target.replace(**overrides) if overrides else target
    return Plan(target, **overrides)
