"""The jail: which namespaces a run gets and the root it sees, so that it sees only what it is
given (SPEC §4.9).

PID (with the spawn's own init as PID 1 and a /proc of its own), IPC, UTS (hostname "sandbox")
and mount namespaces come together; a private network namespace with only its own loopback when
the plan has no network. The mount namespace gets a fresh root (a small tmpfs) holding exactly:
the system trees (read-only binds; merged-/usr links as links), the narrow /etc list, the /dev
nodes, a private /dev/shm, its own /proc, /sys/devices/system/cpu, the runtime files of a
program installed elsewhere, the plan's mounts, and the workspace: a tmpfs of `Plan.disk` bytes
(and a bounded number of files) with the plan's files written into it. /tmp is the workspace's
tmp/. Anything else does not exist there (ENOENT). Landlock and seccomp still apply inside.

The mechanism (mounting, pivot_root) is in kernel/_spawn.c; this module only lists what to build.
"""

from __future__ import annotations

import glob
import os

from evalbox.kernel import _spawn
from evalbox.kernel import landlock as ll
from evalbox.kernel import namespaces as ns
from evalbox.policy import filesystem as fs
from evalbox.policy.plan import WORK_DIR, Plan

HOSTNAME = "sandbox"
BASE_FLAGS = ns.CLONE_NEWPID | ns.CLONE_NEWNS | ns.CLONE_NEWIPC | ns.CLONE_NEWUTS
WORKSPACE_SUBDIRS = (WORK_DIR, "tmp", "home")
DEV_LINKS = {"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0", "/dev/stdout": "/proc/self/fd/1",
             "/dev/stderr": "/proc/self/fd/2"}
BYTES_PER_INODE = 16 << 10  # the workspace holds at most disk/16 KiB files and directories (at least 1024)
ROOT_RIGHTS = ll.READ_DIR  # on the new root's own directories: `ls /` and `ls /etc` list what was granted

Entry = tuple[int, bytes, bytes, int, int, int]

VIEW = ("jail: own root with only the granted paths, own process table (PID 1 is evalbox's init), own "
        "network namespace when network is off, own IPC objects and hostname")
NO_VIEW = ("no jail: the host's process table (command lines), network state, and the names and metadata of "
           "host paths are visible (promise 9 does not hold; promises 1-8 do)")


def inode_limit(disk: int) -> int:
    return max(1024, disk // BYTES_PER_INODE)


def clone_flags(plan: Plan) -> int:
    """The namespaces the init is cloned into (the network namespace comes from a pool)."""
    return BASE_FLAGS


def _inside(path: str, trees: tuple[str, ...] | list[str]) -> bool:
    return any(path == t or path.startswith(t.rstrip("/") + "/") for t in trees)


def _bind(path: str, source: str | None = None, ro: bool = True) -> Entry:
    source = source or path
    flags = (_spawn.ROOT_RO if ro else 0) | (_spawn.ROOT_IS_DIR if os.path.isdir(source) else 0)
    return (_spawn.ROOT_BIND, path.encode(), source.encode(), 0, flags, 0)


def _link(path: str, target: str, owned: bool = False) -> Entry:
    return (_spawn.ROOT_SYMLINK, path.encode(), target.encode(), 0, _spawn.ROOT_OWNED if owned else 0, 0)


def _dir(path: str, mode: int, owned: bool = False) -> Entry:
    return (_spawn.ROOT_DIR, path.encode(), b"", mode, _spawn.ROOT_OWNED if owned else 0, 0)


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


def root_entries(plan: Plan, workspace: str, rules: list[fs.PathRule], proc_rights: int, owner: tuple[int, int] | None,
                 handled_fs: int) -> list[Entry]:
    """What the run's root holds, in the order it is built (a mount point's parents first)."""
    out = _system_entries()
    out.append((_spawn.ROOT_TMPFS, b"/dev/shm", f"mode=1777,size={plan.memory or 64 << 20}".encode(), 0, 0,
                fs.PRIVATE_SHM_RIGHTS & handled_fs))
    out.append((_spawn.ROOT_PROC, b"/proc", b"", 0, 0, proc_rights))

    # The workspace: a tmpfs bounded in bytes and files, with the plan's files written into it.
    disk = plan.disk if plan.disk is not None else 0
    size = f"size={disk},nr_inodes={inode_limit(disk)}" if disk else "size=50%"
    uid, gid = owner if owner is not None else (os.getuid(), os.getgid())
    # /tmp is the workspace's tmp/ (a link), unless something granted lives in the host's /tmp (the
    # workspace itself without a memory cgroup, a mount): then a tmpfs of its own.
    tmp_is_workspace_base = _inside(workspace, ["/tmp"]) or any(_inside(r.path, ["/tmp"]) for r in rules) or any(
        _inside(m.source, ["/tmp"]) for m in plan.mounts)
    if tmp_is_workspace_base:
        out.append((_spawn.ROOT_TMPFS, b"/tmp", f"mode=1777,{size}".encode(), 0, 0, fs.PRIVATE_SHM_RIGHTS & handled_fs))
    out.append((_spawn.ROOT_TMPFS, workspace.encode(), f"mode=0700,uid={uid},gid={gid},{size}".encode(), 0, 0,
                fs.EVERYTHING & handled_fs))
    for sub in WORKSPACE_SUBDIRS:
        out.append(_dir(f"{workspace}/{sub}", 0o700, owned=True))
    if not tmp_is_workspace_base:
        out.append(_link("/tmp", f"{workspace}/tmp"))  # each sandbox's own /tmp, inside its disk budget
    work = f"{workspace}/{WORK_DIR}"
    made = {f"{workspace}/{sub}" for sub in WORKSPACE_SUBDIRS}
    cwd = os.path.normpath(f"{workspace}/{plan.workdir}")
    missing = []
    while cwd not in made and cwd != workspace:
        missing.append(cwd)
        cwd = os.path.dirname(cwd)
    for d in reversed(missing):
        out.append(_dir(d, 0o700, owned=True))
        made.add(d)
    for rel, f in plan.files.items():
        parent = os.path.dirname(f"{work}/{rel}")
        missing = []
        while parent not in made:
            missing.append(parent)
            parent = os.path.dirname(parent)
        for d in reversed(missing):
            out.append(_dir(d, 0o700, owned=True))
            made.add(d)
        out.append((_spawn.ROOT_FILE, f"{work}/{rel}".encode(), bytes(f.content), 0o755 if f.executable else 0o644,
                    _spawn.ROOT_OWNED, 0))
    for mount in plan.mounts:
        if mount.dest is not None:
            link = f"{work}/{mount.dest}"
            parent = os.path.dirname(link)
            if parent not in made:
                out.append(_dir(parent, 0o700, owned=True))
                made.add(parent)
            out.append(_link(link, mount.source, owned=True))

    # The plan's mounts and the runtime files of a program installed outside the system trees.
    system_real = [os.path.realpath(t) for t in fs.SYSTEM_TREES if os.path.exists(t)]
    bound: list[str] = [e[1].decode() for e in out if e[0] == _spawn.ROOT_BIND and e[4] & _spawn.ROOT_IS_DIR]
    placed = {e[1].decode() for e in out}
    for mount in plan.mounts:
        out.append(_bind(mount.source, ro=not mount.writable))
        bound.append(mount.source)
    for rule in rules:
        path = rule.path
        if path == workspace or path in placed or _inside(path, bound) or _inside(os.path.realpath(path), system_real):
            continue
        if os.path.islink(path):
            out.append(_link(path, os.readlink(path)))
        else:
            out.append(_bind(path))
        bound.append(path)
    return out
