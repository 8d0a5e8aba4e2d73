"""Work out which host files a program needs before it runs in the sandbox.

Landlock grants access path by path, so before ``execve`` we list the files the
program will need to start: the binary itself, script interpreters (``#!``), the
ELF dynamic loader (``PT_INTERP``) and every shared library that the loader will
map (``DT_NEEDED``, transitively). The policy layer then grants exactly those
files read + execute, and nothing broad like a home directory.

Library lookup follows glibc's ``ld.so`` search order:

1. ``DT_RPATH`` of the object that needs the library, then of the object that
   loaded that object, and so on up to the executable. This step is skipped
   when the object that needs the library has ``DT_RUNPATH``. An object that
   has both tags ignores its ``DT_RPATH``.
2. ``LD_LIBRARY_PATH``, when the caller passes the sandbox's value.
3. ``DT_RUNPATH`` of the object that needs the library (not inherited).
4. ``/etc/ld.so.cache``. We parse the binary format ourselves.
5. The default directories for the object's architecture.

Steps 4 and 5 are skipped when the loading object has ``DF_1_NODEFLIB``. In
these paths ``$ORIGIN``, ``$LIB`` and ``$PLATFORM`` (with or without braces)
are expanded. A candidate file only counts if its ELF class, byte order and
machine match the executable's; otherwise the search continues, as ld.so does.
If a needed name is already loaded (same name, same ``DT_SONAME`` or same
file), the loaded copy is reused.

Trust: the content of a file (its ``#!`` line, ELF headers, ``RPATH``) is followed
only when the file is owned by root, not writable by group or others, and not inside
a directory the sandbox can write (the workspace, ``rw`` mounts: ``untrusted``). The
plan or the program supplies everything else, so such a file gives only itself: what
it names is never granted (its loader and libraries in the system trees are granted
anyway). Files are opened ``O_PATH`` first and read only when they are regular files
outside /proc and /sys, non-blocking and bounded, and the whole resolution has a budget
of files and time (a crafted input gives a smaller result, never a slow run).
Parsing follows the kernel: the first ``PT_INTERP``; a ``#!`` line is one interpreter
and at most one argument, and ``#!/usr/bin/env`` is followed only for a plain
``NAME`` (no options such as ``-S``, no assignments).

Everything here is best effort and never raises for odd input. A corrupt ELF, a
missing library or an unreadable file gives a smaller result. A missing library
is reported by ld.so itself when the program starts.
"""

from __future__ import annotations

import functools
import os
import re
import stat
import struct
import sys
import time
from dataclasses import dataclass

from evalbox.errors import CommandNotFound

__all__ = [
    "DEFAULT_ENV_PATH",
    "LD_SO_CACHE",
    "Runtime",
    "elf_interpreter",
    "elf_needed",
    "find_executable",
    "runtime_files",
]

#: PATH used to resolve ``#!/usr/bin/env NAME`` unless the caller gives another.
DEFAULT_ENV_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Location of glibc's library cache. It is read by ld.so at run time too.
LD_SO_CACHE = "/etc/ld.so.cache"

_MAX_SCRIPT_DEPTH = 4  # nested '#!' interpreters we follow
_SHEBANG_BYTES = 256  # Linux BINPRM_BUF_SIZE
_MAX_SYMLINK_HOPS = 40
# Budget of one resolution: whatever the input, the host's work stays small.
_MAX_PROBES = 2048  # files stat'ed or opened
_MAX_OBJECTS = 256  # ELF objects loaded
_MAX_NEEDED = 256  # DT_NEEDED entries per object
_MAX_SEARCH_DIRS = 64  # RPATH/RUNPATH/LD_LIBRARY_PATH entries per lookup
_MAX_SECONDS = 0.5

# --------------------------------------------------------------------------
# Public types


@dataclass(frozen=True)
class Runtime:
    """The host files that executing one program needs.

    Both sets hold absolute, normalised paths. For every needed file they contain:

    * the path by which it is reached. This is the executable path we were
      given, the ``#!`` or ``PT_INTERP`` path, or the ld.so search path
      (for example ``/lib64/ld-linux-x86-64.so.2``);
    * each symlink passed on the way to the file, written with its directory
      resolved (for example ``/usr/lib64/ld-linux-x86-64.so.2``);
    * the final real path, with all symlinks resolved
      (``/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2``).

    Landlock checks only the final file, so granting the real paths is enough.
    The other names are included for callers that bind-mount, log or compare
    paths. Every path was present when resolved.

    ``executables`` holds the program itself, every ``#!`` interpreter in the
    chain (including ``env`` and the command it runs) and the ELF dynamic
    loader. ``libraries`` holds the shared libraries that ld.so will map, which
    need read plus execute (``mmap(PROT_EXEC)``). When the lookup used it,
    ``libraries`` also holds ``/etc/ld.so.cache``: ld.so reads that file at run
    time, and without it libraries in directories listed only in the cache
    cannot be found. If a directory has ``glibc-hwcaps`` or legacy hwcaps
    variants of a library, every variant is included, because ld.so picks one
    by CPU. This gives a few more files than are used, never fewer.
    """

    executables: frozenset[str]
    libraries: frozenset[str]


def find_executable(name: str, path_env: str, cwd: str) -> str:
    """Resolve ``argv[0]`` to an absolute host path, choosing as ``execvp`` does.

    A name that contains ``/`` is taken relative to ``cwd``, the sandbox
    workspace. Any other name is looked up in each entry of ``path_env``, the
    PATH *inside the sandbox*. An empty entry means ``cwd``, as in execvp. The
    result must be a regular file with at least one execute bit set.

    Raises:
        CommandNotFound: the name cannot be resolved. The message names what
            was searched and what to do next.
    """
    if not name or "\0" in name:
        raise CommandNotFound(
            f"cannot run {name!r}: the program name is empty or contains a NUL byte; "
            "pass the name or absolute path of an installed program"
        )
    if "/" in name:
        candidate = _clean(os.path.join(cwd, name))
        problem = _exec_problem(candidate)
        if problem is None:
            return candidate
        raise CommandNotFound(
            f"cannot run {name!r}: {candidate} {problem} "
            f"(relative names are taken from the workspace {cwd}); "
            "check the path, or pass the absolute path of an installed program"
        )

    skipped: list[str] = []
    for entry in path_env.split(":"):
        directory = os.path.join(cwd, entry) if entry else cwd
        candidate = _clean(os.path.join(directory, name))
        problem = _exec_problem(candidate)
        if problem is None:
            return candidate
        if problem != "does not exist":
            skipped.append(f"{candidate} {problem}")
    detail = f" (skipped: {'; '.join(skipped)})" if skipped else ""
    raise CommandNotFound(
        f"command {name!r} not found in any PATH directory{detail}. "
        f"Install {name} or pass an absolute path; "
        f"PATH inside the sandbox is {path_env!r}"
    )


def runtime_files(
    executable: str,
    *,
    env_path: str = DEFAULT_ENV_PATH,
    ld_library_path: str = "",
    untrusted: tuple[str, ...] = (),
    fresh: tuple[str, ...] = (),
) -> Runtime:
    """Return the files that running ``executable`` needs. Never raises.

    Args:
        executable: Host path of the program, usually from
            :func:`find_executable`. A relative path is taken from the current
            process's directory.
        env_path: PATH used to resolve ``#!/usr/bin/env NAME``.
        ld_library_path: The sandbox's ``LD_LIBRARY_PATH``, if it sets one.
            ld.so searches it after ``DT_RPATH`` and before ``DT_RUNPATH``.
        untrusted: Directories the sandbox can write (rw mounts): nothing
            inside them is trusted to name further files.
        fresh: Untrusted too, but made for this run only (its workspace). They
            are left out of the cache key unless the executable, ``env_path``
            or ``ld_library_path`` names them: nothing else can lead into a
            directory whose random name did not exist before this run.

    Scripts (``#!``) are followed through at most four interpreters. A static
    ELF binary gives only itself. A file that does not exist gives an empty
    ``Runtime``. A file that is neither ELF nor a script gives only itself.

    Results are cached by path, inode and mtime. A cached result is checked
    again by stat'ing every file it used, so a rebuilt binary or library, or a
    rerun of ``ldconfig``, makes us resolve again. A library that is added to
    an earlier directory in the search path is not noticed until another
    dependency changes; call ``runtime_files.cache_clear()`` after such a
    change.
    """
    try:
        path = os.path.abspath(os.fsdecode(executable))
        key = _stat_key(path)
    except (OSError, TypeError, ValueError):
        return _EMPTY
    if key is None:
        return _EMPTY
    untrusted = tuple(sorted({os.path.realpath(d) for d in untrusted}))
    # (a fresh directory's real path ends in its own new name, which nothing else has: unless
    # that name appears in what we were given, only a cache miss needs the real path)
    if any(os.path.basename(d.rstrip("/")) in named for d in fresh for named in (path, env_path, ld_library_path)):
        fresh = tuple(sorted({os.path.realpath(d) for d in fresh}))
        if any(d in named for d in fresh for named in (path, env_path, ld_library_path)):
            untrusted, fresh = tuple(sorted(untrusted + fresh)), ()
    salt = _salts.get(path, 0)
    runtime, deps = _shared_cached(path, key, env_path, ld_library_path, untrusted, fresh, salt)
    for dep_path, dep_key in deps:
        if _stat_key(dep_path) != dep_key:
            _salts[path] = salt + 1
            runtime, _ = _shared_cached(path, key, env_path, ld_library_path, untrusted, fresh, salt + 1)
            break
    return runtime


_SHARED_MAX = 1024
_shared: dict[tuple, tuple[Runtime, tuple[tuple[str, _StatKey], ...]]] = {}  # type: ignore[type-arg]


def _shared_cached(path: str, key: _StatKey, env_path: str, ld_library_path: str, untrusted: tuple[str, ...],
                   fresh: tuple[str, ...], salt: int) -> tuple[Runtime, tuple[tuple[str, _StatKey], ...]]:
    """_runtime_cached, whose result serves every run whatever its fresh workspace (resolved
    with the first run's workspace untrusted, which changed nothing: nothing named it)."""
    if not fresh:
        return _runtime_cached(path, key, env_path, ld_library_path, untrusted, salt)
    cache_key = (path, key, env_path, ld_library_path, untrusted, salt)
    found = _shared.get(cache_key)
    if found is None:
        real_fresh = tuple(os.path.realpath(d) for d in fresh)
        found = _runtime_cached.__wrapped__(path, key, env_path, ld_library_path, tuple(sorted({*untrusted, *real_fresh})),
                                            salt)
        if len(_shared) >= _SHARED_MAX:
            _shared.pop(next(iter(_shared)), None)
        _shared[cache_key] = found
    return found


def _cache_clear() -> None:
    _runtime_cached.cache_clear()
    _shared.clear()
    _probe_cached.cache_clear()
    _ld_cache_cached.cache_clear()
    _salts.clear()


runtime_files.cache_clear = _cache_clear  # type: ignore[attr-defined]


def elf_interpreter(path: str) -> str | None:
    """Return the ``PT_INTERP`` of an ELF file, or None (static, not ELF, unreadable)."""
    info = _elf_info(path)
    return info.interp if info is not None else None


def elf_needed(path: str) -> list[str]:
    """Return the ``DT_NEEDED`` entries of an ELF file, in order ([] if none or unreadable)."""
    info = _elf_info(path)
    return list(info.needed) if info is not None else []


# --------------------------------------------------------------------------
# Small helpers

_EMPTY = Runtime(frozenset(), frozenset())
_salts: dict[str, int] = {}

_StatKey = tuple[int, int, int, int]


def _stat_key(path: str) -> _StatKey | None:
    """(dev, ino, mtime_ns, size) of a regular file, or None."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _exec_problem(path: str) -> str | None:
    """None if ``path`` is a regular file with an x bit set, else the reason it is not."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except NotADirectoryError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be inspected ({exc.strerror or exc})"
    except ValueError:
        return "is not a valid path"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if not st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH):
        return "is not executable (no x bit; chmod +x it)"
    return None


def _clean(path: str) -> str:
    """Absolute, normalised ``path`` that still names the same file.

    ``os.path.normpath`` drops ``..`` textually, which is wrong after a symlinked
    directory; when ``..`` is present the directory part is resolved instead.
    """
    if not path.startswith("/"):
        path = os.path.join(os.getcwd(), path)
    if ".." not in path.split("/"):
        return os.path.normpath(path)
    head, tail = os.path.split(path)
    if tail in ("", ".", ".."):
        return os.path.realpath(path)
    return os.path.join(os.path.realpath(head), tail)


def _names_for(path: str, realdirs: dict[str, str]) -> set[str]:
    """The path as found, each symlink passed on the way (directory resolved), the real path."""
    def realdir(d: str) -> str:
        r = realdirs.get(d)
        if r is None:
            r = realdirs[d] = os.path.realpath(d)
        return r

    cleaned = _clean(path)
    out = {cleaned}
    current = cleaned
    for _ in range(_MAX_SYMLINK_HOPS):
        head, tail = os.path.split(current)
        canonical = os.path.join(realdir(head), tail)
        try:
            target = os.readlink(canonical)
        except OSError:  # not a symlink (EINVAL) or gone
            out.add(canonical)  # final real path
            break
        out.add(canonical)
        current = _clean(os.path.join(os.path.dirname(canonical), target))
    else:
        out.add(os.path.realpath(cleaned))
    return out


# --------------------------------------------------------------------------
# ELF parsing

_PT_LOAD, _PT_DYNAMIC, _PT_INTERP = 1, 2, 3
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_STRSZ = 0, 1, 5, 10
_DT_SONAME, _DT_RPATH, _DT_RUNPATH, _DT_FLAGS_1 = 14, 15, 29, 0x6FFFFFFB
_DF_1_NODEFLIB = 0x800
_PN_XNUM = 0xFFFF
_MAX_PHNUM = 4096
_MAX_STR = 4096
_MAX_DYNAMIC = 1 << 20


@dataclass(frozen=True)
class _Elf:
    kind: tuple[int, int, int]  # (EI_CLASS, EI_DATA, e_machine): must match to be loadable
    interp: str | None
    needed: tuple[str, ...]
    rpath: str | None  # None if absent or overridden by RUNPATH
    runpath: str | None
    soname: str | None
    nodeflib: bool


def _elf_info(path: str) -> _Elf | None:
    """Parse any regular file's ELF headers (for the public helpers; no trust decision)."""
    opened = _open_regular(path)
    if opened is None:
        return None
    fd, st = opened
    try:
        return _parse_elf(_Reader(fd, st.st_size))
    except (OSError, ValueError, struct.error, IndexError, OverflowError):
        return None
    finally:
        os.close(fd)


@functools.cache
def _pseudo_fs_devices() -> frozenset[int]:
    """st_dev of /proc and /sys: their files are not programs, and some reads have effects."""
    out = set()
    for d in ("/proc", "/sys"):
        try:
            out.add(os.stat(d).st_dev)
        except OSError:
            pass
    return frozenset(out)


def _open_regular(path: str) -> tuple[int, os.stat_result] | None:
    """A read-only fd of `path` if it is a non-empty regular file outside /proc and /sys.

    The file is looked at through an O_PATH fd first (opening that has no effect on devices,
    FIFOs or sockets) and only then opened for reading, non-blocking, through that same fd.
    """
    try:
        pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (OSError, ValueError):
        return None
    try:
        st = os.fstat(pfd)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0 or st.st_dev in _pseudo_fs_devices():
            return None
        fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    finally:
        os.close(pfd)
    return fd, st


def _inside_any(path: str, dirs: tuple[str, ...]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


@dataclass(frozen=True)
class _Probe:
    """What resolution may know of one file."""

    trusted: bool  # owned by root, not group/other-writable, outside what the sandbox writes
    head: bytes  # the first bytes (for '#!'), empty when not trusted
    elf: _Elf | None  # parsed headers, only when trusted


def _probe(path: str, untrusted: tuple[str, ...]) -> tuple[_StatKey, _Probe] | None:
    key = _stat_key(path)
    if key is None:
        return None
    return key, _probe_cached(path, key, untrusted)


@functools.lru_cache(maxsize=4096)
def _probe_cached(path: str, key: _StatKey, untrusted: tuple[str, ...]) -> _Probe:
    nothing = _Probe(False, b"", None)
    opened = _open_regular(path)
    if opened is None:
        return nothing  # unreadable (e.g. execute-only) or not a plain file: itself only
    fd, st = opened
    try:
        if (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size) != key:
            return nothing  # replaced since the stat: decide nothing on it
        if st.st_uid != 0 or st.st_mode & 0o022:
            return nothing
        if untrusted and _inside_any(os.readlink(f"/proc/self/fd/{fd}"), untrusted):
            return nothing
        reader = _Reader(fd, st.st_size)
        elf = None
        if reader.head.startswith(b"\x7fELF"):
            try:
                elf = _parse_elf(reader)
            except (OSError, ValueError, struct.error, IndexError, OverflowError):
                elf = None
        return _Probe(True, reader.head[:_SHEBANG_BYTES], elf)
    except OSError:
        return nothing
    finally:
        os.close(fd)


class _Reader:
    """``pread`` access to a file. The first page is read once and kept."""

    __slots__ = ("fd", "size", "head")
    HEAD = 4096

    def __init__(self, fd: int, size: int):
        self.fd = fd
        self.size = size
        self.head = os.pread(fd, self.HEAD, 0)

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset >= self.size:
            return b""
        if offset + length <= len(self.head):
            return self.head[offset : offset + length]
        return os.pread(self.fd, min(length, self.size - offset), offset)

    def cstr(self, offset: int, limit: int) -> str | None:
        """NUL-terminated string at ``offset`` that ends before ``limit``, or None."""
        if offset < 0 or offset >= limit:
            return None
        chunk = b""
        want = 256
        while True:
            chunk = self.read(offset, min(want, limit - offset))
            end = chunk.find(b"\0")
            if end >= 0:
                return os.fsdecode(chunk[:end])
            if len(chunk) < want or want >= _MAX_STR:
                return None  # hit the limit or EOF without a NUL
            want *= 4


def _parse_elf(f: _Reader) -> _Elf | None:
    head = f.head
    if len(head) < 52 or head[:4] != b"\x7fELF":
        return None
    ei_class, ei_data = head[4], head[5]
    if ei_class not in (1, 2) or ei_data not in (1, 2):
        return None
    end = "<" if ei_data == 1 else ">"
    is64 = ei_class == 2
    if is64:
        if len(head) < 64:
            return None
        (_t, machine, _v, _e, phoff, shoff, _f, _eh, phentsize, phnum, shentsize, _sn, _ss) = (
            struct.unpack_from(end + "HHIQQQIHHHHHH", head, 16)
        )
        ph = struct.Struct(end + "IIQQQQQQ")
    else:
        (_t, machine, _v, _e, phoff, shoff, _f, _eh, phentsize, phnum, shentsize, _sn, _ss) = (
            struct.unpack_from(end + "HHIIIIIHHHHHH", head, 16)
        )
        ph = struct.Struct(end + "IIIIIIII")
    kind = (ei_class, ei_data, machine)
    bare = _Elf(kind, None, (), None, None, None, False)

    if phnum == _PN_XNUM and shoff and shentsize:
        # The real count lives in section header 0's sh_info.
        raw = f.read(shoff + (44 if is64 else 28), 4)
        phnum = struct.unpack(end + "I", raw)[0] if len(raw) == 4 else 0
    if phentsize < ph.size or phnum > _MAX_PHNUM or phoff + phnum * phentsize > f.size:
        return bare
    table = f.read(phoff, phnum * phentsize)
    if len(table) < phnum * phentsize:
        return bare

    interp = None
    seen_interp = False
    dynamic: tuple[int, int] | None = None
    loads: list[tuple[int, int, int]] = []  # (vaddr, filesz, offset)
    for i in range(phnum):
        fields = ph.unpack_from(table, i * phentsize)
        if is64:
            p_type, _pf, p_offset, p_vaddr, _pa, p_filesz = fields[:6]
        else:
            p_type, p_offset, p_vaddr, _pa, p_filesz = fields[:5]
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_filesz, p_offset))
        elif p_type == _PT_INTERP and interp is None and not seen_interp:
            # the kernel uses the first PT_INTERP; it must end in NUL within p_filesz
            seen_interp = True
            if 2 <= p_filesz <= 4096:
                raw = f.read(p_offset, p_filesz)
                if len(raw) == p_filesz and raw.endswith(b"\0"):
                    interp = os.fsdecode(raw.split(b"\0", 1)[0]) or None
        elif p_type == _PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)

    if dynamic is None:
        return _Elf(kind, interp, (), None, None, None, False)

    dyn = struct.Struct(end + "qQ" if is64 else end + "iI")
    dyn_off, dyn_len = dynamic
    raw = f.read(dyn_off, min(dyn_len, _MAX_DYNAMIC))
    raw = raw[: len(raw) // dyn.size * dyn.size]
    needed_offs: list[int] = []
    strtab = strsz = None
    rpath_off = runpath_off = soname_off = None
    flags_1 = 0
    for tag, val in dyn.iter_unpack(raw):
        if tag == _DT_NULL:
            break
        if tag == _DT_NEEDED:
            if len(needed_offs) < _MAX_NEEDED:
                needed_offs.append(val)
        elif tag == _DT_STRTAB:
            strtab = val
        elif tag == _DT_STRSZ:
            strsz = val
        elif tag == _DT_RPATH:
            rpath_off = val
        elif tag == _DT_RUNPATH:
            runpath_off = val
        elif tag == _DT_SONAME:
            soname_off = val
        elif tag == _DT_FLAGS_1:
            flags_1 = val
    nodeflib = bool(flags_1 & _DF_1_NODEFLIB)

    # DT_STRTAB is a virtual address: map it to a file offset through PT_LOAD.
    str_base = None
    if strtab is not None:
        for vaddr, filesz, offset in loads:
            if vaddr <= strtab < vaddr + filesz:
                str_base = strtab - vaddr + offset
                break
    if str_base is None:
        return _Elf(kind, interp, (), None, None, None, nodeflib)
    str_end = min(f.size, str_base + strsz) if strsz else f.size

    def s(off: int | None) -> str | None:
        return None if off is None else f.cstr(str_base + off, str_end)

    needed = tuple(n for n in (s(o) for o in needed_offs) if n)
    runpath = s(runpath_off)
    rpath = None if runpath_off is not None else s(rpath_off)  # RUNPATH overrides RPATH
    return _Elf(kind, interp, needed, rpath, runpath, s(soname_off), nodeflib)


# --------------------------------------------------------------------------
# Architecture details

# (e_machine, EI_CLASS) -> Debian multiarch triplet, AT_PLATFORM string
_EM_X86_64, _EM_386, _EM_AARCH64, _EM_ARM = 62, 3, 183, 40
_ARCH = {
    (_EM_X86_64, 2): ("x86_64-linux-gnu", "x86_64"),
    (_EM_X86_64, 1): ("x86_64-linux-gnux32", "x86_64"),
    (_EM_386, 1): ("i386-linux-gnu", "i686"),
    (_EM_AARCH64, 2): ("aarch64-linux-gnu", "aarch64"),
    (_EM_ARM, 1): ("arm-linux-gnueabihf", "v7l"),
    (243, 2): ("riscv64-linux-gnu", "riscv64"),
    (22, 2): ("s390x-linux-gnu", "s390x"),
    (20, 1): ("powerpc-linux-gnu", "powerpc"),
    (258, 2): ("loongarch64-linux-gnu", "loongarch64"),
}


def _host_triplet() -> str:
    triplet = getattr(sys.implementation, "_multiarch", None)
    return triplet or f"{os.uname().machine}-linux-gnu"


@functools.lru_cache(maxsize=32)
def _arch(kind: tuple[int, int, int]) -> tuple[str, str, tuple[str, ...]]:
    """($PLATFORM, $LIB, default library dirs) for an ELF (class, data, machine)."""
    ei_class, ei_data, machine = kind
    if machine == 21 and ei_class == 2:  # EM_PPC64
        triplet, platform = ("powerpc64le-linux-gnu" if ei_data == 1 else "powerpc64-linux-gnu"), "powerpc64"
    else:
        triplet, platform = _ARCH.get((machine, ei_class), (_host_triplet(), os.uname().machine))
    if (machine, ei_class) == (_EM_X86_64, 1):
        bits = "x32"
    else:
        bits = "64" if ei_class == 2 else "32"
    defaults = (
        f"/lib/{triplet}", f"/usr/lib/{triplet}",
        f"/lib{bits}", f"/usr/lib{bits}",
        "/lib", "/usr/lib",
    )
    if os.path.isdir(f"/lib/{triplet}") or os.path.isdir(f"/usr/lib/{triplet}"):
        lib = f"lib/{triplet}"  # Debian's ld.so: $LIB == lib/<triplet>
    elif ei_class == 2 and os.path.isdir("/usr/lib64"):
        lib = "lib64"
    else:
        lib = "lib"
    return platform, lib, defaults


# --------------------------------------------------------------------------
# /etc/ld.so.cache ("glibc-ld.so.cache1.1", optionally after the old "ld.so-1.7.0" block)

_NEW_MAGIC = b"glibc-ld.so.cache1.1"
_OLD_MAGIC = b"ld.so-1.7.0"
_NEW_HEADER = struct.Struct("=20sII")  # magic+version, nlibs, len_strings (then flags, ext offset, unused)
_NEW_HEADER_SIZE = 48
_NEW_ENTRY = struct.Struct("=iIIIQ")  # flags, key, value, osversion, hwcap
_OLD_HEADER_SIZE = 16  # magic[11], pad, nlibs
_OLD_ENTRY_SIZE = 12  # flags, key, value


class _LdCache:
    """Lookups in a parsed ``ld.so.cache`` image.

    We do not decode all ~500 entries up front, which would take most of a
    cold resolve. Instead, a lookup finds each ``name\\0`` in the string area
    (since glibc 2.32 ldconfig shares string tails, so a key may point into
    the middle of a path), then finds the entries whose key offset is that
    position, using a C-speed scan of the key column. The key of each entry
    found is exactly ``name``. The file is in host byte order.
    """

    __slots__ = ("data", "base", "start", "end", "keys")

    def __init__(self, data: bytes):
        self.data = data
        self.base = self.start = self.end = 0
        self.keys: list[int] = []
        base = 0
        if data.startswith(_OLD_MAGIC):
            nlibs_old = struct.unpack_from("=I", data, 12)[0]
            base = (_OLD_HEADER_SIZE + nlibs_old * _OLD_ENTRY_SIZE + 7) & ~7
        if data[base : base + len(_NEW_MAGIC)] != _NEW_MAGIC:
            return  # unknown format: no entries
        _magic, nlibs, _strlen = _NEW_HEADER.unpack_from(data, base)
        start = base + _NEW_HEADER_SIZE
        end = start + nlibs * _NEW_ENTRY.size
        if end > len(data):
            return
        # String offsets count from the start of the new-format header.
        self.base, self.start, self.end = base, start, end
        # Key field of every entry (6 uint32 per entry, key is the 2nd): C-speed scan.
        self.keys = memoryview(data)[start:end].cast("B").cast("I")[1::6].tolist() if nlibs else []

    def lookup(self, name: str) -> tuple[str, ...]:
        """Paths listed for ``name``, in cache order (which is ld.so's preference order)."""
        data, base, start, end = self.data, self.base, self.start, self.end
        if end == start:
            return ()
        needle = os.fsencode(name) + b"\0"
        keys = self.keys
        hits: list[tuple[int, str]] = []
        pos = data.find(needle, end)
        while pos >= 0:
            koff = pos - base
            i = -1
            while True:
                try:
                    i = keys.index(koff, i + 1)
                except ValueError:
                    break
                v = struct.unpack_from("=I", data, start + i * _NEW_ENTRY.size + 8)[0] + base
                ve = data.find(b"\0", v)
                if ve > v:
                    hits.append((i, os.fsdecode(data[v:ve])))
            pos = data.find(needle, pos + 1)
        hits.sort()
        return tuple(path for _i, path in hits)


def _ld_cache() -> tuple[_StatKey | None, _LdCache]:
    key = _stat_key(LD_SO_CACHE)
    if key is None:
        return None, _LdCache(b"")
    return key, _ld_cache_cached(key)


@functools.lru_cache(maxsize=2)
def _ld_cache_cached(key: _StatKey) -> _LdCache:
    del key
    opened = _open_regular(LD_SO_CACHE)
    if opened is None:
        return _LdCache(b"")
    fd, st = opened
    try:
        if st.st_uid != 0 or st.st_mode & 0o022 or st.st_size > _MAX_LD_CACHE:
            return _LdCache(b"")  # only root's own cache names libraries
        return _LdCache(os.pread(fd, st.st_size, 0))
    except OSError:
        return _LdCache(b"")
    finally:
        os.close(fd)


_MAX_LD_CACHE = 64 << 20


# --------------------------------------------------------------------------
# Resolution


class _Obj:
    """One loaded ELF object."""

    __slots__ = ("path", "info", "loader", "origin")

    def __init__(self, path: str, info: _Elf, loader: "_Obj | None", origin: str):
        self.path = path
        self.info = info
        self.loader = loader
        self.origin = origin


class _OutOfBudget(Exception):
    """The resolution's budget of files or time is spent: keep what was found."""


class _Resolver:
    def __init__(self, env_path: str, ld_library_path: str, untrusted: tuple[str, ...] = ()):
        self.env_path = env_path
        self.ld_library_path = ld_library_path
        self.untrusted = untrusted
        self.probes_left = _MAX_PROBES
        self.objects_left = _MAX_OBJECTS
        self.deadline = time.monotonic() + _MAX_SECONDS
        self.executables: set[str] = set()
        self.libraries: set[str] = set()
        self.deps: dict[str, _StatKey] = {}
        self.realdirs: dict[str, str] = {}
        self.variant_dirs: dict[str, tuple[str, ...]] = {}
        self.ld_cache: _LdCache | None = None

    # -- bookkeeping
    def spend(self) -> None:
        self.probes_left -= 1
        if self.probes_left < 0 or time.monotonic() > self.deadline:
            raise _OutOfBudget

    def probe(self, path: str) -> _Probe | None:
        """What may be known of `path` (None: not a regular file); recorded as a dependency."""
        self.spend()
        got = _probe(path, self.untrusted)
        if got is None:
            return None
        self.deps[path] = got[0]
        return got[1]

    def add(self, target: set[str], path: str) -> None:
        self.spend()
        target.update(_names_for(path, self.realdirs))

    # -- entry point
    def run(self, path: str, depth: int = 0) -> None:
        if depth > _MAX_SCRIPT_DEPTH:
            return
        probe = self.probe(path)
        if probe is None:
            return
        self.add(self.executables, path)
        if not probe.trusted:
            return  # the plan or the program wrote it: it names nothing we grant
        if probe.head.startswith(b"#!"):
            for interp in self.shebang(probe.head):
                self.run(interp, depth + 1)
        elif probe.elf is not None:
            self.elf(path, probe.elf)

    def shebang(self, head: bytes) -> list[str]:
        """The interpreters the kernel (and env) will run for this '#!' line, when certain."""
        line = head[2:].split(b"\n", 1)
        if len(line) == 1 and len(head) >= _SHEBANG_BYTES:
            return []  # no end of line within the kernel's buffer: interpreter name may be cut
        line = line[0].split(b"\0", 1)[0].strip(b" \t")
        if not line:
            return []
        cut = min((i for i in (line.find(b" "), line.find(b"\t")) if i >= 0), default=len(line))
        interp = os.fsdecode(line[:cut])
        arg = os.fsdecode(line[cut:].strip(b" \t"))  # the kernel passes the rest as one argument
        if not interp.startswith("/"):
            return []  # relative to the unknown cwd of the caller; not followed
        out = [interp]
        if os.path.basename(interp) == "env" and arg:
            cmd = _env_command(arg)
            if cmd is not None:
                if "/" in cmd:
                    if cmd.startswith("/"):
                        out.append(cmd)
                else:
                    try:
                        out.append(find_executable(cmd, self.env_path, "/"))
                    except CommandNotFound:
                        pass
        return out

    # -- ELF
    def elf(self, exe_path: str, info: _Elf) -> None:
        if info.interp is None:
            return  # static: only the file itself
        kind = info.kind
        loaded_names: dict[str, _Obj] = {}
        loaded_files: dict[tuple[int, int], _Obj] = {}

        def register(obj: _Obj, *names: str | None) -> None:
            for n in names:
                if n:
                    loaded_names.setdefault(n, obj)
            key = self.deps.get(obj.path)
            if key is not None:
                loaded_files.setdefault(key[:2], obj)

        exe_real = os.path.realpath(exe_path)
        main = _Obj(exe_path, info, None, os.path.dirname(exe_real))
        register(main, info.soname)

        # The dynamic loader (PT_INTERP): mapped by the kernel, needs execute.
        interp = info.interp
        iprobe = self.probe(interp)
        if iprobe is not None:
            self.add(self.executables, interp)
            iinfo = iprobe.elf
            if iinfo is not None:
                iobj = _Obj(interp, iinfo, None, os.path.dirname(interp))
                register(iobj, interp, iinfo.soname)

        queue = [main]
        i = 0
        while i < len(queue):
            obj = queue[i]
            i += 1
            for name in obj.info.needed:
                if name in loaded_names:
                    continue
                found = self.search(name, obj, main, kind)
                if not found:
                    continue  # ld.so will report it
                primary = None
                for cand_path, cand_info in found:
                    key = self.deps[cand_path]
                    existing = loaded_files.get(key[:2])
                    if existing is not None:
                        primary = primary or existing
                        continue
                    self.objects_left -= 1
                    if self.objects_left < 0:
                        raise _OutOfBudget
                    self.add(self.libraries, cand_path)
                    new = _Obj(cand_path, cand_info, obj, os.path.dirname(cand_path))
                    register(new, cand_info.soname)
                    queue.append(new)
                    primary = primary or new
                if primary is not None:
                    loaded_names.setdefault(name, primary)

    def search(self, name: str, obj: _Obj, main: _Obj, kind) -> list[tuple[str, _Elf]]:
        """Candidates for ``name`` needed by ``obj``: first the one ld.so takes, then hwcaps variants."""
        if "/" in name:
            hit = self.try_file(name, kind) if name.startswith("/") else None
            return [hit] if hit else []
        found: list[tuple[str, _Elf]] = []

        platform, lib, defaults = _arch(kind)

        def in_dirs(dirs) -> bool:
            for d in dirs:
                if self.try_dir(d, name, kind, platform, found):
                    return True
            return False

        if obj.info.runpath is None:
            seen_main = False
            chain = obj
            while chain is not None:
                if chain.info.rpath and in_dirs(self.expand(chain.info.rpath, chain, platform, lib)):
                    return found
                seen_main |= chain is main
                chain = chain.loader
            if not seen_main and main.info.rpath:
                if in_dirs(self.expand(main.info.rpath, main, platform, lib)):
                    return found
        if self.ld_library_path:
            dirs = self.ld_library_path.replace(";", ":").split(":")
            if in_dirs(self.expand_list(dirs, main, platform, lib)):  # $ORIGIN: the executable
                return found
        if obj.info.runpath and in_dirs(self.expand(obj.info.runpath, obj, platform, lib)):
            return found
        if obj.info.nodeflib:
            return found
        # ld.so.cache
        if self.ld_cache is None:
            key, self.ld_cache = _ld_cache()
            if key is not None:
                self.deps[LD_SO_CACHE] = key
                self.add(self.libraries, LD_SO_CACHE)
        hit = False
        for cand in self.ld_cache.lookup(name):
            got = self.try_file(cand, kind)
            if got is not None:
                found.append(got)
                if "/glibc-hwcaps/" not in cand:
                    hit = True
                    break
        if hit:
            return found
        in_dirs(defaults)
        return found

    def expand(self, spec: str, obj: _Obj, platform: str, lib: str) -> list[str]:
        return self.expand_list(spec.split(":"), obj, platform, lib)

    @staticmethod
    def expand_list(entries: list[str], obj: _Obj, platform: str, lib: str) -> list[str]:
        out = []
        for e in entries[:_MAX_SEARCH_DIRS]:
            if "$" in e:
                e = _expand_dst(e, obj.origin, platform, lib)
            if e.startswith("/"):  # relative entries depend on the unknown cwd: skipped
                out.append(e)
        return out

    def try_file(self, path: str, kind) -> tuple[str, _Elf] | None:
        """A library candidate: only a trusted ELF of the right kind counts (an untrusted one is
        neither granted nor followed; ld.so may still find it, and the program then fails)."""
        probe = self.probe(path)
        if probe is None or probe.elf is None or probe.elf.kind != kind:
            return None
        return (path, probe.elf)

    def try_dir(self, d: str, name: str, kind, platform: str, found: list) -> bool:
        """Look for ``name`` in ``d``: hwcaps variants are collected, True once the plain file is found."""
        d = d.rstrip("/")  # "" for the root directory
        for sub in self.variants(d, platform):
            got = self.try_file(f"{sub}/{name}", kind)
            if got is not None and got not in found:
                found.append(got)
        got = self.try_file(f"{d}/{name}", kind)
        if got is None:
            return False
        if got not in found:
            found.insert(0, got)  # the plain file first: ld.so's baseline choice
        return True

    def variants(self, d: str, platform: str) -> tuple[str, ...]:
        """Existing hwcaps subdirectories of ``d`` that ld.so may search before ``d`` itself."""
        cached = self.variant_dirs.get(d)
        if cached is not None:
            return cached
        out: list[str] = []
        hw = f"{d}/glibc-hwcaps"
        self.spend()
        try:
            out.extend(f"{hw}/{e}" for e in sorted(os.listdir(hw)))
        except OSError:
            pass
        # Legacy hwcaps (glibc < 2.37): tls/P/P, tls/P, tls, P/P, P.
        for top in ("tls", platform):
            if os.path.isdir(f"{d}/{top}"):
                combos = (f"tls/{platform}/{platform}", f"tls/{platform}", "tls") if top == "tls" \
                    else (f"{platform}/{platform}", platform)
                out.extend(f"{d}/{c}" for c in combos if os.path.isdir(f"{d}/{c}"))
        result = tuple(out)
        self.variant_dirs[d] = result
        return result


def _expand_dst(entry: str, origin: str, platform: str, lib: str) -> str:
    """Expand $ORIGIN, $LIB and $PLATFORM (and ${...} forms) as ld.so does."""
    values = {"ORIGIN": origin, "LIB": lib, "PLATFORM": platform}
    out = []
    i = 0
    n = len(entry)
    while i < n:
        c = entry[i]
        if c != "$":
            out.append(c)
            i += 1
            continue
        matched = False
        for token, value in values.items():
            if entry.startswith("{" + token + "}", i + 1):
                out.append(value)
                i += len(token) + 3
                matched = True
                break
            if entry.startswith(token, i + 1):
                after = i + 1 + len(token)
                if after == n or not (entry[after].isalnum() or entry[after] == "_"):
                    out.append(value)
                    i = after
                    matched = True
                    break
        if not matched:
            out.append(c)
            i += 1
    return "".join(out)


_PLAIN_WORD = re.compile(r"[A-Za-z0-9_./+,:@%-]+")


def _env_command(arg: str) -> str | None:
    """The command ``#!/usr/bin/env ARG`` runs, only when that is certain.

    The kernel hands env the rest of the line as one argument: a plain NAME is run as is.
    ``-S WORDS`` (GNU env's split) is followed only when every word is plain (no quotes,
    escapes, ``$``, ``=``) and the first word is the command; anything else (other options,
    assignments, quoting env would read differently) is not followed, so nothing is granted.
    """
    if arg.startswith("-S"):
        words = arg[2:].split()
        if not words or not all(_PLAIN_WORD.fullmatch(w) for w in words) or words[0].startswith("-"):
            return None
        return words[0]
    if not _PLAIN_WORD.fullmatch(arg) or arg.startswith("-"):
        return None
    return arg


@functools.lru_cache(maxsize=1024)
def _runtime_cached(
    path: str, key: _StatKey, env_path: str, ld_library_path: str, untrusted: tuple[str, ...], salt: int
) -> tuple[Runtime, tuple[tuple[str, _StatKey], ...]]:
    del key, salt  # cache key only
    r = _Resolver(env_path, ld_library_path, untrusted)
    try:
        r.run(path)
    except Exception:  # noqa: BLE001 - promised never to raise; keep what was found (budget too)
        pass
    runtime = Runtime(frozenset(r.executables), frozenset(r.libraries))
    return runtime, tuple(r.deps.items())
