"""The jail: which namespaces a run gets and the root it sees, so that it sees only what it is
given (SPEC §4.9).

PID (with the spawn's own init as PID 1 and a /proc of its own), IPC, UTS (hostname "sandbox")
and mount namespaces come together; a private network namespace with only its own loopback when
the plan has no network. The mount namespace gets a fresh root (a small tmpfs) holding exactly:
the system trees (read-only binds; merged-/usr links as links), the narrow /etc list, the /dev
nodes, a private /dev/shm, its own /proc, /sys/devices/system/cpu, the runtime files of a
program installed elsewhere, the plan's mounts, and the workspace. One tmpfs of `Plan.disk` bytes
(and a bounded number of files) holds everything the run may write: the workspace with the plan's
files written into it, /tmp (the workspace's tmp/) and /dev/shm (its shm/). Anything else does
not exist there (ENOENT). Landlock and seccomp still apply inside.

The mechanism (mounting, pivot_root) is in kernel/_spawn.c; this module only lists what to build.
"""

from __future__ import annotations

import functools
import glob
import os
import time

from evalbox.kernel import _spawn
from evalbox.kernel import landlock as ll
from evalbox.kernel import namespaces as ns
from evalbox.policy import filesystem as fs
from evalbox.policy.plan import WORK_DIR, Plan

HOSTNAME = "sandbox"
BASE_FLAGS = ns.CLONE_NEWPID | ns.CLONE_NEWNS | ns.CLONE_NEWIPC | ns.CLONE_NEWUTS
WORKSPACE_SUBDIRS = (WORK_DIR, "tmp", "home")
SHM_SUBDIR = "shm"  # the jail's /dev/shm, inside the workspace's tmpfs (counted in `disk`)
DEV_LINKS = {"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0", "/dev/stdout": "/proc/self/fd/1",
             "/dev/stderr": "/proc/self/fd/2"}
BYTES_PER_INODE = 16 << 10  # the workspace holds at most disk/16 KiB files and directories (at least 1024)
ROOT_RIGHTS = ll.READ_DIR  # on the new root's own directories: `ls /` and `ls /etc` list what was granted

Entry = tuple[int, bytes, bytes, int, int, int]

VIEW = ("jail: own root with only the granted paths, own process table (PID 1 is evalbox's init), own "
        "network namespace when network is off, own IPC objects and hostname")
NO_VIEW = ("no jail: the host's process table (command lines), network state, and the names and metadata of "
           "host paths are visible (promise 9 does not hold; promises 1-8 do)")


SHM_INODES = 4096  # (unused: in the jail /dev/shm shares the `disk` tmpfs's bound on files)
# A group exempt from the jail's /proc hidepid, held by nothing but the supervisor's opener thread
# (process/opener.py): that thread resolves the program's paths with the program's uid and
# Landlock rules, but from outside its PID namespace and Landlock domain, so hidepid would hide
# the program's own /proc/<pid> from it. Just below the sandbox uid range (process/identity.py);
# no file should be owned by it.
OPENER_PROC_GID = 1_999_999_999


def inode_limit(disk: int) -> int:
    return max(1024, disk // BYTES_PER_INODE)


def clone_flags(plan: Plan, userns: bool = False) -> int:
    """The namespaces the init is cloned into. On a root host the network namespace comes from
    a pool; in a user namespace (an unprivileged caller) the run gets a fresh one, since a pooled
    namespace belongs to another user namespace, over which the init holds no capability."""
    if userns:
        return BASE_FLAGS | ns.CLONE_NEWUSER | (0 if plan.network else ns.CLONE_NEWNET)
    return BASE_FLAGS


# Without the jail, what of promise 9 does not hold (promises 1-8 do, by Landlock and seccomp).
NOT_HELD = ("the host's process table is visible (every process and its command line, /proc/<pid>)",
            "the host's network state is visible (/proc/net: listening sockets, connections)",
            "the names and metadata (stat, link targets) of host paths, and inotify events in readable host "
            "directories, are visible; `ls /` fails",
            "orphaned processes are reparented to the host's init, or to the caller when it is a subreaper (a "
            "container's PID 1), which must reap them",
            "the workspace is a host directory: `disk` is not enforced, only max_file_size per file")


def no_view(reason: str) -> str:
    """Output.protections.view without the jail: what does not hold, and why."""
    return f"no jail ({reason}); promise 9 does not hold: " + "; ".join(NOT_HELD) + " (promises 1-8 do)"


def _inside(path: str, trees: tuple[str, ...] | list[str]) -> bool:
    return path in trees or path.startswith(_prefixes(tuple(trees)))


@functools.lru_cache(maxsize=256)
def _prefixes(trees: tuple[str, ...]) -> tuple[str, ...]:
    # (one str.startswith call over all of them: ~100 Python steps a run less)
    return tuple(t.rstrip("/") + "/" for t in trees)


def _bind(path: str, source: str | None = None, ro: bool = True, no_symlinks: bool = False) -> Entry:
    source = source or path
    flags = (_spawn.ROOT_RO if ro else 0) | (_spawn.ROOT_IS_DIR if os.path.isdir(source) else 0)
    flags |= _spawn.ROOT_NOFOLLOW if no_symlinks else 0
    return (_spawn.ROOT_BIND, path.encode(), source.encode(), 0, flags, 0)


def _link(path: str, target: str, owned: bool = False) -> Entry:
    return (_spawn.ROOT_SYMLINK, path.encode(), target.encode(), 0, _spawn.ROOT_OWNED if owned else 0, 0)


def _dir(path: str, mode: int, owned: bool = False, rights: int = 0) -> Entry:
    return (_spawn.ROOT_DIR, path.encode(), b"", mode, _spawn.ROOT_OWNED if owned else 0, rights)


def _system_entries() -> list[Entry]:
    out: list[Entry] = []
    for tree in fs.SYSTEM_TREES:
        if os.path.islink(tree):
            out.append(_link(tree, os.readlink(tree)))
        elif os.path.isdir(tree):
            out.append(_bind(tree))
    system_real = [os.path.realpath(t) for t in fs.SYSTEM_TREES if os.path.exists(t)]
    out.append(_dir("/etc", 0o755))
    etc = list(fs.ETC_FILES)
    for pattern in fs.ETC_GLOBS:
        etc += sorted(glob.glob(pattern))
    for path in etc:
        if not os.path.lexists(path):
            continue
        if os.path.islink(path):
            real = os.path.realpath(path)
            if _inside(real, system_real):
                out.append(_link(path, os.readlink(path)))  # e.g. localtime -> /usr/share/zoneinfo/...
            elif os.path.exists(real):
                out.append(_bind(path, real))  # e.g. resolv.conf -> /run/...: its content, not the link
        else:
            out.append(_bind(path))
    out.append(_dir("/dev", 0o755))
    out += [(_spawn.ROOT_BIND, p.encode(), p.encode(), 0, 0, 0) for p in fs.DEVICES if os.path.exists(p)]
    out += [_link(p, t) for p, t in DEV_LINKS.items()]
    out += [_bind(p) for p in fs.SYS_READABLE if os.path.isdir(p)]
    return out


def _etc_stamp() -> tuple[int, int]:
    st = os.stat("/etc")
    return st.st_ino, st.st_mtime_ns


def _sources_stamp(entries: list[Entry]) -> tuple:
    """The identity of every bound source: a file replaced on the host (by rename, as package
    managers and editors do) must not stay bound in a template."""
    out = []
    for e in entries:
        if e[0] == _spawn.ROOT_BIND and not e[4] & _spawn.ROOT_LATE:
            try:
                st = os.stat(e[2])
                out.append((st.st_dev, st.st_ino))
            except OSError:
                out.append(None)
    return tuple(out)


STAMP_TTL = 1.0  # seconds between checks of the host's system paths
_system_cache: tuple[tuple[int, int], list[Entry], tuple, float] | None = None


def _system_entries_cached() -> list[Entry]:
    return _system_state()[0]


def _system_state() -> tuple[list[Entry], tuple]:
    """The system part and its sources' stamp, checked at most every STAMP_TTL seconds; the list
    is recomputed when /etc changed (an entry may have appeared or gone)."""
    global _system_cache
    now = time.monotonic()
    if _system_cache is not None and now - _system_cache[3] < STAMP_TTL:
        return _system_cache[1], _system_cache[2]
    etc = _etc_stamp()
    entries = _system_cache[1] if _system_cache is not None and _system_cache[0] == etc else _system_entries()
    _system_cache = (etc, entries, _sources_stamp(entries), now)
    return entries, _system_cache[2]


_places_cache: tuple[int, list[str], set[str], dict[str, str]] | None = None


def _system_places() -> tuple[list[str], set[str], dict[str, str]]:
    """Directories bound by the system part, every path it places, and the system trees it
    places as links (e.g. /bin -> usr/bin) with their real paths (cached with it)."""
    global _places_cache
    entries = _system_entries_cached()
    if _places_cache is None or _places_cache[0] != id(entries):
        bound = [e[1].decode() for e in entries if e[0] == _spawn.ROOT_BIND and e[4] & _spawn.ROOT_IS_DIR]
        links = {e[1].decode(): os.path.realpath(e[1].decode()) for e in entries
                 if e[0] == _spawn.ROOT_SYMLINK and e[1].decode() in fs.SYSTEM_TREES}
        _places_cache = (id(entries), bound, {e[1].decode() for e in entries}, links)
    return _places_cache[1], _places_cache[2], _places_cache[3]


def _through_tree_link(path: str, links: dict[str, str]) -> str:
    """`path` with a leading system tree placed as a link (/bin/true) replaced by the link's real
    path (/usr/bin/true): the same file in the jail as on the host, the link being recreated."""
    top, sep, rest = path.partition("/")[2].partition("/")
    real = links.get("/" + top)
    return path if real is None else real + sep + rest


def _parents(path: str, stop: str, made: set[str]) -> list[str]:
    missing = []
    while path not in made and path != stop and path != "/":
        missing.append(path)
        path = os.path.dirname(path)
    return list(reversed(missing))


def template_entries(plan: Plan, workspace: str, rules: list[fs.PathRule]
                     ) -> tuple[list[Entry], list[Entry], tuple]:
    """The part of a run's root shared by runs of the same shape (built once into a template mount
    namespace, see kernel/_spawn.c build_template): system trees, /etc, /dev nodes, the plan's
    mounts and runtime files, and empty directories where each run mounts its own tmpfs. Also
    a stamp that changes when a bound source was replaced on the host.

    Returns (system part with the mount points, the plan's mounts and runtime files, stamp).
    """
    out = list(_system_entries_cached())
    base = os.path.dirname(workspace)
    for d in ("/dev/shm", "/dev/pts", "/proc", "/tmp") + (() if base in ("/dev/shm", "/tmp") else (base,)):
        out.append(_dir(d, 0o755))
    out.append(_link("/dev/ptmx", "pts/ptmx"))
    system = out
    out = []
    system_real = fs._system_trees_real()
    system_bound, placed, tree_links = _system_places()
    bound = list(system_bound)
    sources = []
    for mount in plan.mounts:
        out.append(_bind(mount.source, ro=not mount.writable, no_symlinks=True))
        bound.append(mount.source)
        sources.append(mount.source)
    for rule in rules:
        path = rule.path
        # (a path below a system tree that the system part places as a link, /bin/true say, is
        # reached through it, inside a bound tree: no realpath walk needed to know it is there)
        if (path == workspace or path in placed or _inside(path, bound)
                or _inside(_through_tree_link(path, tree_links), system_bound)
                or _inside(os.path.realpath(path), system_real)):
            continue
        if _inside(path, ["/sys/fs/cgroup", "/dev/pts", "/dev/ptmx"]):
            continue  # per run (its cgroup), or the jail's own (pseudo-terminals)
        if os.path.islink(path):
            out.append(_link(path, os.readlink(path)))
        else:
            out.append(_bind(path))
            sources.append(path)
        bound.append(path)
    stamp = [_system_state()[1]]
    for src in sources:
        st = os.stat(src, follow_symlinks=False)
        stamp.append((st.st_dev, st.st_ino))
    return system, out, tuple(stamp)


def shareable(extras: list[Entry], workspace: str) -> bool:
    """Whether the plan's mounts and runtime files can live in a template: not below a directory
    that each run covers with a tmpfs of its own."""
    covered = ["/tmp", "/dev/shm", os.path.dirname(workspace)]
    return not any(_inside(e[1].decode(), covered) for e in extras)


def run_entries(plan: Plan, workspace: str, proc_rights: int, owner: tuple[int, int] | None,
                handled_fs: int, identity: list[tuple[bytes, bytes]] = (), shm_inodes: int = SHM_INODES,
                opener_proc_gid: int = -1, memory_bounded: bool = True) -> list[Entry]:
    """What each run mounts into its copy of the template: its own /proc and devpts, and one tmpfs
    of `Plan.disk` bytes and files holding everything the run may write: the workspace (with the
    plan's files written into it), /tmp and /dev/shm. That tmpfs is mounted at /tmp or /dev/shm
    when the workspace is below it, else at the workspace's parent directory; /tmp and /dev/shm,
    where it is not mounted, are bound from subdirectories of the workspace (tmp/ is also
    $TMPDIR). (`shm_inodes` is unused, see SHM_INODES.)"""
    disk = plan.disk if plan.disk is not None else 0
    if not memory_bounded and plan.memory is not None:
        # no memory cgroup charges the tmpfs's pages (an unprivileged caller's jail): what the run
        # writes there is memory, and stays within `memory` too
        disk = min(disk, plan.memory) if disk else plan.memory
    size = f"size={disk},nr_inodes={inode_limit(disk)}" if disk else "size=50%"
    tmp_rights = fs.PRIVATE_SHM_RIGHTS & handled_fs
    base = os.path.dirname(workspace)
    # the tmpfs goes at /tmp or /dev/shm when the workspace is below it (the workspace and the
    # directories above it are then plain directories in it), else at the workspace's parent
    anchor = next((top for top in ("/tmp", "/dev/shm") if _inside(base, [top])), base)
    shared_top = anchor in ("/tmp", "/dev/shm")
    out: list[Entry] = [
        (_spawn.ROOT_PROC, b"/proc", f"gid={opener_proc_gid}".encode() if opener_proc_gid >= 0 else b"", 0, 0,
         proc_rights),
        (_spawn.ROOT_DEVPTS, b"/dev/pts", b"", 0, 0, fs.PTY_RIGHTS & handled_fs),
        (_spawn.ROOT_TMPFS, anchor.encode(), f"mode={'1777' if shared_top else '0755'},{size}".encode(), 0, 0,
         tmp_rights if shared_top else 0),
        (_spawn.ROOT_DIR, workspace.encode(), b"", 0o700, _spawn.ROOT_OWNED, fs.EVERYTHING & handled_fs),
    ]
    made = {workspace}
    for sub in WORKSPACE_SUBDIRS + (SHM_SUBDIR,):
        out.append(_dir(f"{workspace}/{sub}", 0o700, owned=True))
        made.add(f"{workspace}/{sub}")
    for top, sub in (("/tmp", "tmp"), ("/dev/shm", SHM_SUBDIR)):
        if top != anchor:
            out.append((_spawn.ROOT_BIND, top.encode(), f"{workspace}/{sub}".encode(), 0,
                        _spawn.ROOT_LATE | _spawn.ROOT_IS_DIR, tmp_rights))
    # /etc/passwd and /etc/group with the sandbox's own uid: written into the workspace's root
    # (root-owned, read-only) and bound over the system ones
    for target, content in identity:
        name = f"{workspace}/.{os.path.basename(target.decode())}"
        out.append((_spawn.ROOT_FILE, name.encode(), content, 0o644, 0, ll.READ_FILE & handled_fs))
        out.append((_spawn.ROOT_BIND, target, name.encode(), 0, _spawn.ROOT_RO | _spawn.ROOT_LATE, 0))
    work = f"{workspace}/{WORK_DIR}"
    for d in _parents(os.path.normpath(f"{workspace}/{plan.workdir}"), workspace, made):
        out.append(_dir(d, 0o700, owned=True))
        made.add(d)
    if plan.collect:
        # Plan.collect reads work/ after the run, when this namespace is gone: work/ is then the
        # host's workspace directory (the plan's files already in it), bound read-write, so it
        # is not bounded by `disk` (as without the jail).
        out.append(_bind(work, work, ro=False))
        return out
    for rel, f in plan.files.items():
        for d in _parents(os.path.dirname(f"{work}/{rel}"), workspace, made):
            out.append(_dir(d, 0o700, owned=True))
            made.add(d)
        out.append((_spawn.ROOT_FILE, f"{work}/{rel}".encode(), bytes(f.content), 0o755 if f.executable else 0o644,
                    _spawn.ROOT_OWNED, 0))
    for mount in plan.mounts:
        if mount.dest is not None:
            link = f"{work}/{mount.dest}"
            for d in _parents(os.path.dirname(link), workspace, made):
                out.append(_dir(d, 0o700, owned=True))
                made.add(d)
            out.append(_link(link, mount.source, owned=True))
    return out
