"""cgroup v1 and v2 file interfaces (no policy: callers choose the limits).

Hosts differ: most run the unified v2 hierarchy, some (this project's CI among them) the v1
"hybrid" layout where memory, pids and cpuacct are separate v1 hierarchies. A `Group` hides the
difference: one directory per controller on v1, one directory on v2. Groups are created below
the caller's own cgroup, so delegation (systemd, containers) is respected.
"""

from __future__ import annotations

import atexit
import errno
import functools
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

CONTROLLERS = ("memory", "pids", "cpuacct")  # cpuacct only matters on v1; v2 has cpu.stat always


@dataclass(frozen=True)
class Layout:
    version: int  # 1 or 2; 0 when no usable hierarchy
    roots: dict[str, str]  # controller -> directory under which this process may create groups

    @property
    def controllers(self) -> frozenset[str]:
        return frozenset(self.roots)


def _mounts() -> list[tuple[str, str, list[str]]]:
    """(mount point, fs type, super options) for each cgroup mount."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if rfields and rfields[0] in ("cgroup", "cgroup2"):
                out.append((fields[4], rfields[0], rfields[2].split(",") if len(rfields) > 2 else []))
    return out


def _own_paths() -> dict[str, str]:
    """Controller (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    out = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, controllers, path = line.rstrip("\n").split(":", 2)
            if hid == "0":
                out[""] = path
            for c in controllers.split(","):
                if c:
                    out[c] = path
    return out


def _writable_dir(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


@functools.cache
def layout() -> Layout:
    """Where this process can create child cgroups with memory/pids/cpu accounting."""
    try:
        mounts, own = _mounts(), _own_paths()
    except OSError:
        return Layout(0, {})
    v1: dict[str, str] = {}
    for point, fstype, opts in mounts:
        if fstype != "cgroup":
            continue
        for c in CONTROLLERS:
            if c in opts and c in own and c not in v1:
                d = os.path.normpath(point + own[c])
                if _writable_dir(d):
                    v1[c] = d
    if "memory" in v1 or "pids" in v1:
        return Layout(1, v1)
    global v2_refused
    for point, fstype, _ in mounts:
        if fstype == "cgroup2" and "" in own:
            d = os.path.normpath(point + own[""])
            if os.path.basename(d) == LEAF:  # an earlier evalbox moved this process's family here
                d = os.path.dirname(d)
            try:
                with open(os.path.join(d, "cgroup.controllers")) as f:
                    available = set(f.read().split())
            except OSError:
                continue
            wanted = [c for c in ("memory", "pids") if c in available]
            if _writable_dir(d) and wanted:
                v2_refused = _enable_v2(d, wanted, is_root=os.path.normpath(point) == d)
                if v2_refused is None:
                    return Layout(2, {c: d for c in (*wanted, "cpuacct")})
    return Layout(0, {})


LEAF = "evalbox-leaf"  # where the processes of a delegated cgroup move so that it may enable controllers
v2_refused: str | None = None  # why a writable v2 cgroup could not be used (report: check)


def _enable_v2(d: str, wanted: list[str], is_root: bool) -> str | None:
    """Make the controllers available to groups created below `d`; None on success, else why not.

    v2's "no internal processes" rule: a cgroup other than the root that holds processes cannot
    enable controllers for its children (the write fails with EBUSY). A caller always lives in its
    own cgroup, so in a delegated subtree (systemd's Delegate=yes, a container's cgroup namespace)
    its processes first move into a leaf below it, as systemd and container runtimes do."""
    control = os.path.join(d, "cgroup.subtree_control")
    want = " ".join(f"+{c}" for c in wanted)
    try:
        if set(wanted) <= set(_read(control).split()):
            return None
        _write(control, want)
        return None
    except OSError as e:
        if e.errno != errno.EBUSY or is_root:
            return f"enabling {', '.join(wanted)} in {d} refused ({e.strerror})"
    leaf = os.path.join(d, LEAF)
    try:
        try:
            os.mkdir(leaf)
        except FileExistsError:
            pass
        for _ in range(100):  # processes forked meanwhile appear in the next listing
            pids = _read(os.path.join(d, "cgroup.procs")).split()
            if not pids:
                break
            for pid in pids:
                try:
                    _write(os.path.join(leaf, "cgroup.procs"), pid)
                except ProcessLookupError:
                    pass  # exited meanwhile
        _write(control, want)
    except OSError as e:
        return (f"cgroup {d} holds processes and they could not move to {LEAF} below it ({e.strerror}): "
                f"run evalbox in a cgroup of its own (e.g. systemd-run --user --scope -p Delegate=yes)")
    return None


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    # os-level calls: a text-mode open() costs several more system calls per small file
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536).decode()
    finally:
        os.close(fd)


TCP_LIMIT_V1 = "memory.kmem.tcp.limit_in_bytes"
tcp_limit_refused: str | None = None  # why the v1 TCP buffer limit could not be set (report: check)


def _limit_tcp_v1(group_dir: str, limit: int) -> None:
    """cgroup v1 does not charge socket buffers to memory.limit_in_bytes: a program could pin
    hundreds of MiB of kernel memory in unread TCP queues (its own loopback). The v1 TCP counter
    gets the same limit (a second budget of that size): sends then wait or fail. Set before any
    process joins (sockets are accounted only when created after it). v2 charges socket memory
    to memory.max already."""
    global tcp_limit_refused
    path = os.path.join(group_dir, TCP_LIMIT_V1)
    try:
        _write(path, str(limit))
        tcp_limit_refused = None
    except OSError as e:
        tcp_limit_refused = (f"{TCP_LIMIT_V1} not available" if e.errno == errno.ENOENT
                             else f"{TCP_LIMIT_V1} refused: {e.strerror}")


def socket_memory_bounded(lay: Layout) -> bool:
    """Are a sandbox's socket buffers bounded by its memory limit on this host?"""
    if lay.version == 2:
        return True
    root = lay.roots.get("memory")
    return bool(root) and os.path.exists(os.path.join(root, TCP_LIMIT_V1)) and tcp_limit_refused is None


class Group:
    """One sandbox's cgroup(s): limits, the fds the child writes itself into, accounting, kill."""

    def __init__(self, lay: Layout, name: str) -> None:
        self.version = lay.version
        self.resident = 0  # a launcher that lives in the group between runs: not part of any run
        self.dirs: dict[str, str] = {}
        self._oom_baseline = 0
        self._limits: dict[str, int] = {}
        # Counter files read or reset at every run, opened once per group (pread/pwrite at 0
        # make a new reading each time). Not cgroup.procs for reading: on v1 an open file may
        # be answered from a pid list the kernel cached for up to a second.
        self._fds: dict[tuple[str, int], int] = {}
        self._procs_fds: list[int] = []
        parents = {c: os.path.join(d, f"evalbox-{os.getpid()}") for c, d in lay.roots.items()}
        try:
            if self.version == 2:
                parent = parents["memory"] if "memory" in parents else next(iter(parents.values()))
                if parent not in _made_parents:
                    self._make_parent_v2(parent, lay)
                    _made_parents.add(parent)
                d = os.path.join(parent, name)
                os.mkdir(d)
                self.dirs = {c: d for c in lay.roots}
            else:
                for c, parent in parents.items():
                    if parent not in _made_parents:
                        os.makedirs(parent, exist_ok=True)
                        _made_parents.add(parent)
                    d = os.path.join(parent, name)
                    os.mkdir(d)
                    self.dirs[c] = d
        except BaseException:
            self.remove()
            raise

    @staticmethod
    def _make_parent_v2(parent: str, lay: Layout) -> None:
        # v2 allows controllers only in groups without processes of their own: our parent group
        # holds no process, only enables the controllers for the sandboxes below it.
        # (layout() enabled them in the caller's cgroup, moving its processes to a leaf if need be)
        os.makedirs(parent, exist_ok=True)
        want = " ".join(f"+{c}" for c in ("memory", "pids") if c in lay.roots)
        try:
            _write(os.path.join(parent, "cgroup.subtree_control"), want)
        except OSError as e:
            raise OSError(e.errno, f"cannot enable the cgroup controllers {want} in {parent}: {e.strerror}; "
                          "delegate the whole cgroup to your user (its cgroup.subtree_control included)") from None

    _holds_fds = False

    def _keeps_fds(self) -> bool:
        """Only the first FD_HOLDERS groups keep files open (a sequential caller reuses one
        group run after run; two hundred concurrent runs must not cost a thousand fds)."""
        global _fd_holders
        if not self._holds_fds and _fd_holders < FD_HOLDERS:
            self._holds_fds = True
            _fd_holders += 1
        return self._holds_fds

    def _fd(self, path: str, flags: int = os.O_RDONLY) -> int:
        fd = self._fds.get((path, flags))
        if fd is None:
            fd = self._fds[(path, flags)] = os.open(path, flags | os.O_CLOEXEC)
        return fd

    def _read_counter(self, path: str) -> str:
        if not self._keeps_fds():
            return _read(path)
        return os.pread(self._fd(path), 65536, 0).decode()

    def _write_counter(self, path: str, value: str) -> None:
        if not self._keeps_fds():
            return _write(path, value)
        os.pwrite(self._fd(path, os.O_WRONLY), value.encode(), 0)

    def held_fds(self) -> set[int]:
        return {*self._fds.values(), *self._procs_fds}

    def _close_fds(self) -> None:
        global _fd_holders
        for fd in [*self._fds.values(), *self._procs_fds]:
            os.close(fd)
        self._fds.clear()
        self._procs_fds = []
        if self._holds_fds:
            self._holds_fds = False
            _fd_holders -= 1

    @property
    def distinct_dirs(self) -> list[str]:
        return sorted(set(self.dirs.values()))

    def set_memory(self, limit: int) -> None:
        if self._limits.get("memory") == limit:
            return  # a recycled group keeps what it was given
        d = self.dirs["memory"]
        if self.version == 2:
            _write(os.path.join(d, "memory.max"), str(limit))
            try:
                _write(os.path.join(d, "memory.swap.max"), "0")
            except OSError:
                pass  # no swap accounting: nothing to cap
        else:
            # memory+swap must stay >= memory: raise it first when raising, after when lowering.
            mem, memsw = os.path.join(d, "memory.limit_in_bytes"), os.path.join(d, "memory.memsw.limit_in_bytes")
            has_memsw = os.path.exists(memsw)
            raising = has_memsw and int(_read(mem)) < limit
            for path in ((memsw, mem) if raising else (mem, memsw) if has_memsw else (mem,)):
                _write(path, str(limit))
            _limit_tcp_v1(d, limit)
        self._limits["memory"] = limit

    def set_pids(self, limit: int) -> None:
        if self._limits.get("pids") != limit:
            _write(os.path.join(self.dirs["pids"], "pids.max"), str(limit))
            self._limits["pids"] = limit

    def _oom_kills(self) -> int:
        d = self.dirs.get("memory")
        if d is None:
            return 0
        try:
            if self.version == 2:
                text = self._read_counter(os.path.join(d, "memory.events"))
            else:
                text = self._read_counter(os.path.join(d, "memory.oom_control"))
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def oom_killed(self) -> bool:
        """Did the kernel kill a process of this group for memory since it was (re)used?"""
        return self._oom_kills() > self._oom_baseline

    def peak_memory(self) -> int | None:
        """Most memory charged to the group since it was (re)used, in bytes (None: unknown)."""
        d = self.dirs.get("memory")
        if d is None or self._peak_stale:
            return None
        try:
            if self.version == 2:
                if self._peak_fd >= 0:  # fd-local peak (Linux 6.12+): since this group's reset
                    return int(os.pread(self._peak_fd, 64, 0).decode())
                return int(_read(os.path.join(d, "memory.peak")))
            return int(self._read_counter(os.path.join(d, "memory.max_usage_in_bytes")))
        except (OSError, ValueError):
            return None

    _peak_fd = -1
    _peak_stale = False  # a recycled group whose peak could not be reset

    def _drop_page_cache(self) -> None:
        """The files the last run read or wrote stay charged to the group as page cache, and a
        peak reset starts from what is charged now: the next run's max_rss would include them.
        Reclaim them first (what a slot's launcher holds stays: it is not cache) when there is
        more than a launcher's worth."""
        d = self.dirs.get("memory")
        if d is None:
            return
        usage, reclaim = ("memory.usage_in_bytes", "memory.force_empty") if self.version == 1 else \
            ("memory.current", "memory.reclaim")
        try:
            charged = int(self._read_counter(os.path.join(d, usage)))
            if charged > CACHE_RESIDUE:
                _write(os.path.join(d, reclaim), "0" if self.version == 1 else str(charged))
        except (OSError, ValueError):
            pass  # (v2 before 5.19, or not all of it could go: the figure may include cache, never a limit)

    def _reset_peak(self) -> None:
        d = self.dirs.get("memory")
        if d is None:
            return
        try:
            if self.version == 1:
                self._write_counter(os.path.join(d, "memory.max_usage_in_bytes"), "0")
            else:
                if self._peak_fd < 0:
                    self._peak_fd = os.open(os.path.join(d, "memory.peak"), os.O_RDWR | os.O_CLOEXEC)
                os.pwrite(self._peak_fd, b"reset\n", 0)
            self._peak_stale = False
        except OSError:
            self._peak_stale = True

    def reset(self) -> None:
        """Make a group whose processes are all gone ready for the next sandbox."""
        self._oom_baseline = self._oom_kills()
        self._drop_page_cache()
        self._reset_peak()
        if self.version == 1:
            if "cpuacct" in self.dirs:
                try:
                    self._write_counter(os.path.join(self.dirs["cpuacct"], "cpuacct.usage"), "0")
                except OSError:
                    pass
        else:
            self._cpu_baseline = 0.0
            self._cpu_baseline = self.cpu_seconds() or 0.0

    _cpu_baseline = 0.0

    def cpu_seconds(self) -> float | None:
        """CPU time of every process that ran in the group since it was (re)used."""
        try:
            if self.version == 2:
                for line in self._read_counter(os.path.join(self.dirs["memory"], "cpu.stat")).splitlines():
                    if line.startswith("usage_usec "):
                        return int(line.split()[1]) / 1e6 - self._cpu_baseline
                return None
            d = self.dirs.get("cpuacct")
            return int(self._read_counter(os.path.join(d, "cpuacct.usage"))) / 1e9 if d else None
        except (OSError, ValueError, KeyError):
            return None

    def pids(self) -> set[int]:
        """Processes in the group. Every sandbox process joins all of its directories (and cannot
        leave: cgroupfs is not granted to it), so one directory tells."""
        d = self.dirs.get("pids") or self.distinct_dirs[0]
        try:
            return {int(p) for p in _read(os.path.join(d, "cgroup.procs")).split()} - {self.resident}
        except OSError:
            return set()

    def is_empty(self) -> bool:
        """No process in the group. pids.current counts every task of the group from its fork (or
        its move in) until it is reaped: 0 proves the group empty for a few microseconds, where
        listing cgroup.procs costs ~40 (anything else: the listing decides, as it always did)."""
        d = self.dirs.get("pids")
        if d is not None and not self.resident:
            try:
                if int(self._read_counter(os.path.join(d, "pids.current"))) == 0:
                    return True
            except (OSError, ValueError):
                pass
        return not self.pids()

    def only_resident_left(self, resident_alive: Callable[[], bool]) -> bool:
        """No process in the group but its resident (a slot's launcher, between runs). pids.current
        counts every task from its fork until it is reaped, so 1 read while the resident is alive
        (asked after the read: a process never comes back) is the resident's own task: a few
        microseconds against ~10 for listing cgroup.procs (anything else: the listing decides)."""
        d = self.dirs.get("pids")
        if d is not None and self.resident:
            try:
                if int(self._read_counter(os.path.join(d, "pids.current"))) == 1 and resident_alive():
                    return True
            except (OSError, ValueError):
                pass
        return not self.pids()

    def kill(self, deadline: float = 2.0) -> bool:
        """SIGKILL everything in the group until it is empty. False if something survived."""
        if self.version == 2 and not self.resident:
            try:
                _write(os.path.join(self.distinct_dirs[0], "cgroup.kill"), "1")
            except (OSError, IndexError):
                pass
        end = time.monotonic() + deadline
        while True:
            pids = self.pids()
            if not pids:
                return True
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > end:
                return False
            time.sleep(0.0005)

    def open_procs(self) -> list[int]:
        """Write-only cgroup.procs fds (the caller closes them): the spawned child writes "0" to
        each to join the group. Copies of fds the group keeps (a dup costs less than the open)."""
        if not self._keeps_fds():
            return self._open_procs()
        if not self._procs_fds:
            self._procs_fds = self._open_procs()
        out: list[int] = []
        try:
            for fd in self._procs_fds:
                out.append(os.dup(fd))  # (dup: close-on-exec, like the original)
        except BaseException:
            for fd in out:
                os.close(fd)
            raise
        return out

    def _open_procs(self) -> list[int]:
        fds: list[int] = []
        try:
            for d in self.distinct_dirs:
                fds.append(os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds

    def open_dir(self) -> int:
        """v2: an fd of the group's directory, to clone a process straight into it (the spawn's
        CLONE_INTO_CGROUP; no migration). -1 on v1, where a process can only be moved in."""
        if self.version != 2 or not self.dirs:
            return -1
        return os.open(self.distinct_dirs[0], os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def remove(self) -> None:
        """Remove the group directories (they must be empty of processes)."""
        if self._peak_fd >= 0:
            fd, self._peak_fd = self._peak_fd, -1  # (forgotten first: never closed twice)
            os.close(fd)
        self._close_fds()
        for d in self.distinct_dirs:
            for _ in range(200):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        break
                    time.sleep(0.001)  # the last task's exit is accounted a moment after its death
        self.dirs = {}


_made_parents: set[str] = set()
_pool: list[Group] = []
POOL_SIZE = 64
CACHE_RESIDUE = 8 << 20  # bytes a recycled v1 group may keep charged before its page cache is reclaimed
FD_HOLDERS = 4  # groups that keep their counter and cgroup.procs files open (see Group._keeps_fds)
_fd_holders = 0


def held_fds() -> set[int]:
    """The fds that pooled groups keep open (bounded: see FD_HOLDERS)."""
    return {fd for group in _pool for fd in group.held_fds()}


def acquire(lay: Layout, name: str) -> Group:
    """A fresh or recycled group (creating cgroup directories costs more than a spawn)."""
    while _pool:
        group = _pool.pop()
        if group.version == lay.version:
            return group
        group.remove()
    return Group(lay, name)


def release(group: Group) -> None:
    """Recycle a group whose processes are all dead, or remove it."""
    if len(_pool) < POOL_SIZE and group.is_empty():
        group.reset()
        _pool.append(group)
    else:
        group.remove()


def _forget_after_fork() -> None:
    # a forked child must not recycle (or remove) groups its parent still uses
    global _fd_holders
    for group in _pool:
        try:
            group._close_fds()
        except OSError:
            pass
    _pool.clear()
    _fd_holders = 0  # (groups the parent uses keep their counts there; here they are forgotten)
    _made_parents.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


@atexit.register
def drain_pool() -> None:
    while _pool:
        _pool.pop().remove()
    remove_parents()


def _kill_all_in(group_dir: str, deadline: float = 2.0) -> None:
    """SIGKILL every process of a cgroup directory until it is empty (or the deadline passes)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            pids = [int(p) for p in _read(os.path.join(group_dir, "cgroup.procs")).split()]
        except (OSError, ValueError):
            return
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.001)


def sweep_stale() -> None:
    """Remove empty parent groups left by evalbox processes that died without cleaning up."""
    for d in set(layout().roots.values()):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            prefix, _, pid = name.partition("-")
            if prefix == "evalbox" and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                parent = os.path.join(d, name)
                for child in os.listdir(parent) if os.path.isdir(parent) else ():
                    group = os.path.join(parent, child)
                    if os.path.isdir(group):
                        _kill_all_in(group)  # processes a dead caller's runs left (its guard died too)
                        try:
                            os.rmdir(group)
                        except OSError:
                            pass
                try:
                    os.rmdir(parent)
                except OSError:
                    pass


def remove_parents() -> None:
    """Remove this process's evalbox parent groups (empty once all sandboxes are gone)."""
    for d in set(layout().roots.values()):
        try:
            os.rmdir(os.path.join(d, f"evalbox-{os.getpid()}"))
        except OSError:
            pass
