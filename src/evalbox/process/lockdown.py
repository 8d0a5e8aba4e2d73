"""Turn a Plan into everything the spawn child applies: ids, rlimits, cgroup, Landlock, seccomp.

All decisions happen here, in the parent, before the child exists. If a protection the plan
needs cannot be had on this host, `prepare` raises UnsupportedKernel and nothing runs.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import resource
import stat
import time
from dataclasses import dataclass, field

from evalbox.errors import SandboxError, UnsupportedKernel, ValidationError
from evalbox.kernel import capabilities as caps
from evalbox.kernel import cgroups, landlock, seccomp_notify
from evalbox.kernel import namespaces
from evalbox.policy import filesystem, jail, seccomp_policy
from evalbox.policy.plan import NotifyMode, Plan
from evalbox.policy.resolve import find_executable, runtime_files
from evalbox.process.identity import UidLease
from evalbox.process import netns, templates
from evalbox.process.host import MIN_LANDLOCK_ABI, MIN_LANDLOCK_ABI_SAME_UID, Host
from evalbox.process.result import Protections
from evalbox.process.workspace import Workspace

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
UMASK = 0o022
# What a slot's resident launcher may have charged to the group (its own pages it wrote after
# joining; what it had before stays charged where it was), added to the run's memory limit.
SLOT_MEMORY_RESERVE = 2 << 20
PRIVATE_SHM_INODES = 4096  # POSIX semaphores and shm segments: a few each; bounded like the size

_counter = itertools.count()


@dataclass
class Lockdown:
    """A prepared run. `close()` releases what the parent holds once the child has exec'd."""

    executable: str
    argv: list[bytes]
    env: list[bytes]
    cwd: str
    workspace: Workspace
    ruleset: landlock.Ruleset
    filters: list[tuple[bytes, int]]
    rlimits: list[tuple[int, int, int]]
    uid: int
    gid: int
    drop_bounding_set: bool
    securebits: int
    cgroup: cgroups.Group | None
    protections: Protections
    # tmpfs overlays in the program's own mount namespace: (target, options, Landlock rights,
    # [(path bound back, is_dir)]) -- a private /dev/shm, and reachable paths under hidden ones
    overlays: list[tuple[bytes, bytes, int, list[tuple[bytes, bool]]]] = field(default_factory=list)
    magic: int = 0  # non-zero when the plan intercepts calls (see _spawn.c `tagged`)
    routing: seccomp_policy.Routing | None = None  # set when a notify listener serves the filter
    jail_flags: int = 0  # CLONE_NEW* flags of the jail's init (0: no jail)
    proc_rights: int = 0  # Landlock rights on the jail's own /proc
    netns_fd: int = -1  # a pooled network namespace the init enters
    hostname: str | None = None
    root: list[tuple[int, bytes, bytes, int, int, int]] = field(default_factory=list)  # see policy/jail.py
    root_rights: int = 0
    template_fd: int = -1  # a template mount namespace the init copies (see process/templates.py)
    proc_gid: int = -1  # the jail's /proc lets this group see every process (the supervisor's opener)
    cgroup_fds: list[int] = field(default_factory=list)
    cgroup_dir_fd: int = -1  # v2: the group's directory, for a spawn born in it (CLONE_INTO_CGROUP)
    uid_lease: UidLease | None = None
    owns_cgroup: bool = True  # False: a resident slot's group, which the slot recycles itself
    pids_reserved: int = 0  # counted in _pids_reserved until close()

    def close_cgroup_fds(self) -> None:
        """The fds by which the child joins (or is born in) its group: no longer needed."""
        fds, self.cgroup_fds = self.cgroup_fds, []  # (forgotten before closed: see Sandbox.close)
        for fd in fds:
            os.close(fd)
        fd, self.cgroup_dir_fd = self.cgroup_dir_fd, -1
        if fd >= 0:
            os.close(fd)

    def release_spawn_resources(self) -> None:
        """Close what only the child needed (the Landlock ruleset, the cgroup.procs fds)."""
        self.ruleset.close()
        self.close_cgroup_fds()
        fd, self.template_fd = self.template_fd, -1
        if fd >= 0:
            templates.release(fd)

    def close(self, keep_uid: bool = False) -> None:
        """Release everything: call after every process of the run is dead."""
        if self.pids_reserved:
            _reserve_pids(-self.pids_reserved)
            self.pids_reserved = 0
            _forget_process_count()  # its processes are gone: a cached count would overstate the others
        self.release_spawn_resources()
        group, self.cgroup = self.cgroup, None
        if group is not None and self.owns_cgroup:
            cgroups.release(group)
        self.workspace.remove()
        fd, self.netns_fd = self.netns_fd, -1
        if fd >= 0:
            netns.release(fd)
        if not keep_uid:
            self.release_uid()

    def release_uid(self) -> None:
        """Give the uid back (last: nothing of the run may outlive its lease)."""
        lease, self.uid_lease = self.uid_lease, None
        if lease is not None:
            lease.release()


_user_procs_cache: tuple[float, int] = (0.0, 0)
_pids_reserved = 0  # max_pids of this process's live sandboxes that share the caller's uid
_pids_expected = 0  # what sandboxes a running batch will start next to each other (see expect_neighbours)


def _reserve_pids(n: int) -> None:
    global _pids_reserved
    _pids_reserved += n


@contextlib.contextmanager
def expect_neighbours(concurrency: int, max_pids: int | None):
    """A batch about to run `concurrency` sandboxes of up to `max_pids` processes at once: where
    RLIMIT_NPROC counts every process of the caller's uid (no cgroup, no uid of its own), each
    sandbox's limit leaves room for all of them from the start, so that a sandbox started first
    does not run out when its neighbours start (the verdict must not depend on concurrency)."""
    global _pids_expected
    extra = max(0, concurrency - 1) * (max_pids or 0)
    _pids_expected += extra
    try:
        yield
    finally:
        _pids_expected -= extra


def _forget_process_count() -> None:
    global _user_procs_cache
    _user_procs_cache = (0.0, 0)


def _processes_of_uid(uid: int) -> int:
    """How many live threads this uid runs now (RLIMIT_NPROC counts them all: a threaded host
    program, a Ray worker say, holds dozens), cached briefly. Zombies are left out: an orphan of an
    earlier run waits for the host's PID 1 to reap it (0.5-2 s here) and then frees its place, so
    counting it would give the next run that much more than its max_pids once it is gone; while it
    lingers, the run has that much less."""
    global _user_procs_cache
    now = time.monotonic()
    if now - _user_procs_cache[0] < 0.5:
        return _user_procs_cache[1]
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid != uid:
                    continue
                with open(f"/proc/{name}/stat", "rb") as f:
                    state = f.read().rpartition(b")")[2][1:2]
                if state not in (b"Z", b"X"):
                    count += len(os.listdir(f"/proc/{name}/task"))
            except OSError:
                pass
    _user_procs_cache = (now, count)
    return count


def _below(paths: list[str], top: str) -> list[str]:
    """The paths strictly below `top`, without those inside another one of them."""
    inside = sorted({p for p in paths if p.startswith(top + "/")})
    return [p for i, p in enumerate(inside) if not any(p.startswith(q + "/") for q in inside[:i])]


def _take_pid_reservation(plan: Plan, host: Host, use_cgroup_pids: bool, in_userns: bool = False) -> int:
    if host.switches_uid or in_userns or use_cgroup_pids or plan.max_pids is None:
        return 0
    _reserve_pids(plan.max_pids)
    return plan.max_pids


def hidden_ancestor(path: str) -> str | None:
    """The topmost directory above `path` that other users may not search (e.g. /root), if any."""
    parts = os.path.normpath(path).split("/")
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i]) or "/"
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return parent
    return None


def _exposure_overlays(paths: list[str], named: set[str] = frozenset()) -> list[tuple[bytes, bytes, int, list[tuple]]]:
    """Overlays that let a sandbox of its own uid reach `paths` below unsearchable directories: a
    tmpfs over each such directory with just those paths bound back (root's home stays hidden)."""
    groups: dict[str, list[str]] = {}
    for path in sorted(set(paths)):
        top = hidden_ancestor(path)
        if top is not None and not any(path.startswith(p + "/") for p in groups.get(top, ())):
            groups.setdefault(top, []).append(path)
    return [
        (top.encode(), b"mode=0755,size=1m", 0, [(os.fsencode(p), os.path.isdir(p), None, False, p in named) for p in binds])
        for top, binds in groups.items()
    ]


def _check_other_access(path: str, writable: bool, can_expose: bool) -> None:
    """On a root host the sandbox is an unrelated uid: only the "other" permission bits apply.

    Unsearchable ancestors are fine when the sandbox can get its own mount namespace (the path
    is then bound into it); the path itself must still be open to others.
    """
    # (only asked when it matters: a stat per ancestor, every run)
    top = hidden_ancestor(path) if not can_expose else None
    if top is not None:
        raise ValidationError(
            f"mount {path}: sandboxes of a root host run as their own uid, and {top} is not searchable by "
            f"other users (mode {stat.filemode(os.stat(top).st_mode)}); chmod o+x {top}, or mount a "
            "path that others can reach"
        )
    mode = os.stat(path).st_mode
    need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0) | (stat.S_IWOTH if writable else 0)
    if mode & need != need:
        kind = "read and write" if writable else "read"
        fix = "o+rwX" if writable else "o+rX"
        raise ValidationError(
            f"mount {path}: sandboxes of a root host run as their own uid, so others must be able to {kind} it "
            f"(mode {stat.filemode(mode)}); chmod {fix} it (recursively for a tree), or copy it in with files="
        )


def _opens_on_behalf(plan: Plan) -> bool:
    """Will a supervisor open files with the program's rights (process/opener.py)?"""
    from evalbox.process.supervisor import SOUND_CALLS

    return plan.notify in (NotifyMode.SUPERVISE, NotifyMode.MONITOR) and bool(SOUND_CALLS & set(plan.intercept))


def check_floor(host: Host) -> None:
    """Fail closed when the kernel lacks a layer every run depends on."""
    if not host.seccomp:
        raise UnsupportedKernel("seccomp filters are not available (CONFIG_SECCOMP_FILTER, Linux 3.5+); nothing was run")
    if host.landlock_abi == 0:
        raise UnsupportedKernel(
            "Landlock is not available: evalbox needs Linux 6.2+ built with CONFIG_SECURITY_LANDLOCK and "
            "'landlock' in the lsm= boot parameter (check /sys/kernel/security/lsm); nothing was run"
        )
    if host.landlock_abi < MIN_LANDLOCK_ABI:
        raise UnsupportedKernel(
            f"Landlock ABI {host.landlock_abi} cannot stop truncation of readable files; evalbox needs ABI "
            f"{MIN_LANDLOCK_ABI} (Linux 6.2+); nothing was run"
        )
    if not host.switches_uid and host.landlock_abi < MIN_LANDLOCK_ABI_SAME_UID:
        raise UnsupportedKernel(
            f"Landlock ABI {host.landlock_abi} has no signal scoping, so a sandbox sharing your uid could signal "
            f"your other processes; evalbox needs ABI {MIN_LANDLOCK_ABI_SAME_UID} (Linux 6.12+) when not run as "
            "root; run as root (sandboxes then get their own uid) or upgrade the kernel; nothing was run"
        )


def _rlimits(plan: Plan, host: Host, uid: int, use_cgroup_memory: bool, use_cgroup_pids: bool,
             in_userns: bool = False) -> tuple[list[tuple[int, int, int]], list[str], str, str]:
    limits: list[tuple[int, int, int]] = [(resource.RLIMIT_CORE, 0, 0)]
    if plan.max_open_files is not None:
        limits.append((resource.RLIMIT_NOFILE, plan.max_open_files, plan.max_open_files))
    if plan.max_file_size is not None:
        limits.append((resource.RLIMIT_FSIZE, plan.max_file_size, plan.max_file_size))
    if plan.cpu_time is not None:
        soft = max(1, math.ceil(plan.cpu_time))
        limits.append((resource.RLIMIT_CPU, soft, soft + 1))  # SIGXCPU, then SIGKILL a second later
    memory_how = "unlimited"
    if plan.memory is not None:
        if use_cgroup_memory:
            memory_how = f"cgroup v{host.cgroup.version} limit on the whole tree"
        else:
            limits.append((resource.RLIMIT_AS, plan.memory, plan.memory))
            memory_how = ("RLIMIT_AS per process (no memory cgroup on this host): address space, not resident "
                          "memory; refused large allocations are reported as MEMORY_LIMIT")
    pids_how = "unlimited"
    if plan.max_pids is not None:
        if host.switches_uid:
            limits.append((resource.RLIMIT_NPROC, plan.max_pids, plan.max_pids))
        elif in_userns:
            # counted per user namespace: the run's own processes only, its init included
            limits.append((resource.RLIMIT_NPROC, plan.max_pids + 1, plan.max_pids + 1))
        else:
            # RLIMIT_NPROC counts every process of the uid, whichever sandbox (or host program)
            # runs it: leave room for the ones already running and for what every sandbox of
            # this process may still start, so that neighbours never change a run's verdict.
            room = _processes_of_uid(uid) + max(_pids_reserved, _pids_expected) + plan.max_pids
            limits.append((resource.RLIMIT_NPROC, room, room))
        if use_cgroup_pids:
            pids_how = f"cgroup v{host.cgroup.version} pids.max on the whole tree, and RLIMIT_NPROC"
        elif host.switches_uid:
            pids_how = "RLIMIT_NPROC of the sandbox's own uid"
        elif in_userns:
            pids_how = "RLIMIT_NPROC in the run's own user namespace (counts its processes only)"
        else:
            pids_how = ("RLIMIT_NPROC of your uid, raised by its current process count and the max_pids of the "
                        "other running sandboxes (shared headroom: no cgroup)")
    if not host.switches_uid:
        for res, soft, hard in limits:
            current = resource.getrlimit(res)[1]
            if current != resource.RLIM_INFINITY and hard > current:
                raise SandboxError(
                    f"the plan asks for a limit above this process's hard limit ({res=}, {hard} > {current}); "
                    "lower the plan's limit or raise the hard limit (ulimit -H) before starting"
                )
    names = {
        resource.RLIMIT_CORE: "core=0", resource.RLIMIT_NOFILE: "nofile", resource.RLIMIT_FSIZE: "fsize",
        resource.RLIMIT_CPU: "cpu", resource.RLIMIT_AS: "as", resource.RLIMIT_NPROC: "nproc",
    }
    described = [names[r] if names[r] == "core=0" else f"{names[r]}={h}" for r, _, h in limits]
    return limits, described, memory_how, pids_how


SANDBOX_USER = "sandbox"  # the passwd name of a root host's per-sandbox uid


def _user_name(uid: int) -> str:
    if uid >= 0:
        return SANDBOX_USER
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, ImportError):
        return str(os.getuid())


def _environment(plan: Plan, ws: Workspace, uid: int) -> dict[str, str]:
    # USER/LOGNAME: getpass.getuser() and many tools read them before asking passwd
    name = _user_name(uid)
    env = {"PATH": DEFAULT_PATH, "HOME": ws.home, "TMPDIR": ws.tmp, "LANG": "C.UTF-8", "USER": name, "LOGNAME": name}
    env.update(plan.env)
    return env


_passwd_cache: dict[str, tuple[float, bytes]] = {}


def _host_file(path: str) -> bytes:
    """A public host file (/etc/passwd, /etc/group), re-read only when it changes."""
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return b""
    cached = _passwd_cache.get(path)
    if cached is None or cached[0] != mtime:
        with open(path, "rb") as f:
            cached = (mtime, f.read())
        _passwd_cache[path] = cached
    return cached[1]


def _identity_contents(ws: Workspace, uid: int, gid: int) -> list[tuple[bytes, bytes]]:
    """/etc/passwd and /etc/group with the sandbox's own uid in them (whoami, getpwuid, Node's
    os.userInfo()): (target, content) for each."""
    out = []
    for name, line in (("passwd", f"{SANDBOX_USER}:x:{uid}:{gid}:evalbox sandbox:{ws.home}:/bin/sh\n"),
                       ("group", f"{SANDBOX_USER}:x:{gid}:\n")):
        host = _host_file(f"/etc/{name}")
        if host and not host.endswith(b"\n"):
            host += b"\n"
        out.append((f"/etc/{name}".encode(), host + line.encode()))
    return out


def _identity_files(ws: Workspace, contents: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bool, bytes]]:
    """`contents` written root-owned and read-only into the workspace root (removed with it; a uid
    is never leased twice, so no later run binds them), to be bound over the host's files in the
    sandbox's mount namespace (bind list entries: target, is_dir, source). (The jail writes them
    into its own root instead: see jail.run_entries.)"""
    binds = []
    for target, content in contents:
        name = f".{os.path.basename(target.decode())}"
        path = os.path.join(ws.root, name)
        ws.root_files.append(name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        binds.append((target, False, path.encode()))
    return binds


def _open_named_path(path: str, what: str) -> int:
    """A path the plan names must exist and be reached without a symlink (filesystem.open_named_path)."""
    try:
        return filesystem.open_named_path(path, what)
    except (FileNotFoundError, NotADirectoryError):
        raise ValidationError(f"{what} {path} does not exist on this host; create it or fix the path") from None


def _check_named_path(path: str, what: str) -> None:
    os.close(_open_named_path(path, what))


def _jail_makes_workspace_alone(plan: Plan) -> bool:
    """Whether a jailed run can do without a host directory for its workspace: the jail builds
    the workspace in its own tmpfs from the plan (jail.run_entries), and the host would make
    and remove an empty directory for nothing. It is needed when the plan has files or mount
    links (the program's name may be resolved through them, and its #! line read), collects
    files (work/ is then bound from the host), or when the program's name could be looked up
    in the workspace (a relative name, a relative PATH entry)."""
    if plan.collect or plan.files or any(m.dest is not None for m in plan.mounts):
        return False
    name = plan.argv[0]
    if name.startswith("/"):
        return True
    return "/" not in name and all(entry.startswith("/") for entry in plan.env.get("PATH", DEFAULT_PATH).split(":"))


def prepare(plan: Plan, host: Host, slot_group: cgroups.Group | None = None) -> Lockdown:
    """`slot_group`: the group of a resident slot whose launcher (`slot_group.resident`, one
    process, counted in pids.max) forks the run inside it; nothing then joins a group."""
    check_floor(host)
    # the mount sources as checked: their Landlock rules are made from these very fds (one open
    # without symlinks per source and run, not two)
    sources: dict[str, int] = {}
    try:
        for mount in plan.mounts:
            if mount.source not in sources:
                sources[mount.source] = _open_named_path(mount.source, "mount source")
        return _prepare(plan, host, slot_group, sources)
    finally:
        for fd in sources.values():
            os.close(fd)


def _prepare(plan: Plan, host: Host, slot_group: cgroups.Group | None, sources: dict[str, int]) -> Lockdown:
    if host.switches_uid:
        for mount in plan.mounts:
            _check_other_access(mount.source, mount.writable, host.private_shm)
    for virtual, directory in plan.virtual_paths.items():
        _check_named_path(directory, f"virtual_paths[{virtual!r}]")
        if not os.path.isdir(directory):
            raise ValidationError(f"virtual_paths[{virtual!r}]: {directory} is not a directory on this host")
        if host.switches_uid:
            _check_other_access(directory, False, host.private_shm)

    uid = gid = -1
    lease = UidLease() if host.switches_uid else None
    ws = ruleset = group = None
    netns_fd = -1
    template = -1
    try:
        if lease is not None:
            uid = gid = lease.uid
        # the files a supervisor opens for the program are resolved in the program's mount namespace,
        # which a caller without capabilities cannot join when a user namespace owns it
        userns_refused = host.jail and host.jail_userns and _opens_on_behalf(plan)
        ws = Workspace(plan, (uid, gid) if lease else None,
                       memory_bounded=plan.memory is not None and "memory" in host.cgroup.controllers,
                       on_host=not (host.jail and not userns_refused and _jail_makes_workspace_alone(plan)))
        env = _environment(plan, ws, uid)
        cwd = ws.path(plan.workdir) if plan.workdir == "work" else ws.make_dir(plan.workdir)
        executable = find_executable(plan.argv[0], env["PATH"], cwd)
        # what the sandbox can write is never trusted to name further files (SPEC §4.8)
        untrusted = tuple(m.source for m in plan.mounts if m.writable)
        runtime = runtime_files(executable, env_path=env["PATH"], ld_library_path=env.get("LD_LIBRARY_PATH", ""),
                                untrusted=untrusted, fresh=(ws.root,))

        no_jail_reason = ("supervised opens (notify with open, stat, access or exec calls intercepted) are done in "
                          "the program's mount namespace, which an unprivileged caller cannot join; intercept "
                          "other calls, or run as root, for the jail") if userns_refused else host.no_jail_reason
        userns_jail = host.jail and host.jail_userns and not userns_refused
        want = {c for c, needed in (("memory", plan.memory), ("pids", plan.max_pids)) if needed is not None}
        extra_pids, extra_memory = 0, 0
        if slot_group is not None:
            # the launcher, and in a jail the warm copy that is its init, live in the group too
            jailed = host.jail and bool(jail.clone_flags(plan))
            group, extra_pids, extra_memory = slot_group, 2 if jailed else 1, SLOT_MEMORY_RESERVE * (2 if jailed else 1)
        elif host.cgroup.version and want & host.cgroup.controllers:
            group = cgroups.acquire(host.cgroup, f"sb-{next(_counter)}")
        if group is not None:
            if plan.memory is not None and "memory" in group.dirs:
                group.set_memory(plan.memory + extra_memory)
            if plan.max_pids is not None and "pids" in group.dirs:
                group.set_pids(plan.max_pids + extra_pids)
        use_mem = group is not None and "memory" in group.dirs
        use_pids = group is not None and "pids" in group.dirs
        rlimits, rlimit_names, memory_how, pids_how = _rlimits(plan, host, uid if uid >= 0 else os.getuid(), use_mem, use_pids,
                                                               in_userns=userns_jail)

        jail_flags = jail.clone_flags(plan, host.jail_userns) if host.jail and not userns_refused else 0
        in_userns = bool(jail_flags & namespaces.CLONE_NEWUSER)
        # (in the jail the pseudo-terminals are a devpts instance of its own; the run's cgroup
        # directory is not in its root)
        rules = filesystem.path_rules(plan, ws.root, runtime, own_uid=uid >= 0 and not jail_flags,
                                      cgroup_dirs=tuple(group.distinct_dirs) if group is not None and not jail_flags
                                      else ())
        if not ws.on_host:  # (the jail grants its own workspace: jail.run_entries)
            rules = [r for r in rules if r.path != ws.root]
        identity_contents = _identity_contents(ws, uid, gid) if host.private_shm and lease is not None else []
        # (the jail writes them into its own root: nothing to write on the host)
        identity = _identity_files(ws, identity_contents) if identity_contents and not jail_flags else []
        # (Landlock sees a bound file by its own inode, not by the path it is mounted at)
        rules += [filesystem.PathRule(source.decode(), landlock.READ_FILE) for _, _, source in identity]
        # In its own network namespace the run may use TCP: only its loopback is there.
        ruleset = filesystem.build_ruleset(rules, host.landlock_abi, plan.network or bool(jail_flags), opened=sources)
        # The tree is found by its PID namespace, the cgroup, the sandbox's own uid, else by its
        # process group.
        group_only = group is None and uid < 0 and not jail_flags
        private_net = bool(jail_flags) and not plan.network
        if private_net and not in_userns:  # (in a user namespace the init gets a fresh one)
            netns_fd = netns.acquire()
        # (in a user namespace's jail the caller's own files are reachable only through read-only
        # binds, where metadata changes fail anyway, or writable mounts the plan grants; and only
        # the sandbox's own processes have pids: the same-uid rules have nothing left to guard)
        same_uid = uid < 0 and not in_userns
        magic = 0
        routing = None
        if plan.notify is not NotifyMode.DISABLED:
            if not host.seccomp_notify:
                raise UnsupportedKernel("notify modes need seccomp user notification (Linux 5.5+, 5.14+ for "
                                        "virtualized opens); run with notify=NotifyMode.DISABLED")
            magic = int.from_bytes(os.urandom(8), "little") | 1
        if host.seccomp_notify:
            # One filter served by a listener: killed calls are named before the kill
            # (Output.blocked_syscall), a same-uid sandbox's path metadata changes are done inside
            # its workspace, and the plan's intercepts reach its supervisor.
            routing = seccomp_policy.routing(plan.network, plan.syscalls.allow, plan.syscalls.deny, host.arch,
                                             group_only=group_only, same_uid=same_uid,
                                             intercept=plan.intercept if magic else (), magic=magic,
                                             large_map=seccomp_policy.large_map_threshold(plan.memory)
                                             if plan.memory is not None and not use_mem else 0,
                                             private_net=private_net, private_root=bool(jail_flags),
                                             callers_uid=uid < 0)
            program = routing.program
            filters = [(program, seccomp_notify.FILTER_FLAG_NEW_LISTENER)]
        else:
            program = seccomp_policy.program(plan.network, plan.syscalls.allow, plan.syscalls.deny, host.arch,
                                             group_only=group_only, same_uid=same_uid, private_net=private_net,
                                             private_root=bool(jail_flags), callers_uid=uid < 0)
            filters = [(program, 0)]
        overlays = []
        root = []
        proc_gid = -1
        if jail_flags:
            # the jail's own root replaces the overlays (/dev/shm, /tmp, passwd, paths below hidden
            # directories)
            system, extras, stamp = jail.template_entries(plan, ws.root, rules)
            # a supervised run's opener thread (process/opener.py) must see the program in /proc
            if uid >= 0 and plan.notify in (NotifyMode.MONITOR, NotifyMode.SUPERVISE):
                proc_gid = jail.OPENER_PROC_GID
            root = jail.run_entries(plan, ws.root, filesystem.PROC_RIGHTS & ruleset.handled_fs,
                                    (uid, gid) if lease else None, ruleset.handled_fs,
                                    identity=identity_contents, shm_inodes=PRIVATE_SHM_INODES,
                                    opener_proc_gid=proc_gid, memory_bounded=use_mem)
            # (a plan that collects binds the host's work/ directory: only a root built per run, in
            # a namespace where that host path is still visible, can do so)
            # (nor can a user namespace's init copy a template: it holds no capability over it)
            if jail.shareable(extras, ws.root) and not plan.collect and not in_userns:
                template = templates.template_fd(system + extras, stamp)
            if template >= 0:
                jail_flags &= ~namespaces.CLONE_NEWNS  # the template's copy is the mount namespace
            else:  # built per run: the run's own tmpfs first, the plan's mounts over them
                root = system + root + extras
        elif host.private_shm:
            # a private /dev/shm (POSIX semaphores) and /tmp (code that hard-codes /tmp/...); the
            # workspace, mounts and runtime files may live below them: bind those back
            granted = [ws.root] + [r.path for r in rules if r.path != ws.root and not r.path.startswith(ws.root + "/")]
            writable = {ws.root} | {m.source for m in plan.mounts if m.writable}
            named = {m.source for m in plan.mounts}  # bound by the inode checked (no symlinks)
            for top in ("/dev/shm", "/tmp"):
                keep = _below(granted, top)
                # (what is not writable is bound read-only: the tmpfs's own Landlock rights would
                # otherwise reach into it)
                options = f"mode=1777,size={plan.memory or 64 << 20},nr_inodes={PRIVATE_SHM_INODES}"
                overlays.append((top.encode(), options.encode(), filesystem.PRIVATE_SHM_RIGHTS,
                                 [(p.encode(), os.path.isdir(p), None, p not in writable, p in named) for p in keep]))
            if identity:
                overlays.append((b"/etc", b"", 0, identity))
            outside = [r.path for r in rules if r.path != ws.root and not r.path.startswith(ws.root + "/")]
            overlays += _exposure_overlays(outside, named)
        private_shm = host.private_shm

        # (in its user namespace the program holds every capability until its lockdown drops them)
        has_setpcap = host.has_setpcap or in_userns
        scope_names = []
        if landlock.scopes(host.landlock_abi):
            scope_names = ["abstract_unix_socket", "signal"]
        protections = Protections(
            landlock_abi=host.landlock_abi,
            filesystem=(f"jail: own root (tmpfs) holding only the granted paths, entered with pivot_root; and landlock "
                        f"ABI {host.landlock_abi}: system trees read-only, narrow /etc, workspace read-write, private "
                        "/dev/shm and /tmp") if jail_flags else
            f"landlock ABI {host.landlock_abi}: system trees read-only, narrow /etc, workspace read-write"
            + (", private /dev/shm and /tmp" if private_shm else ""),
            network="host network" if plan.network else
            "off: private network namespace with only its own loopback (TCP/UDP on 127.0.0.1 work inside it); "
            "Unix sockets within its own root" if private_net else
            "off: seccomp allows only Unix stream socket pairs (no connect, bind, listen)",
            tcp_landlock=bool(not plan.network and not private_net and landlock.net_rights(host.landlock_abi)),
            scopes=tuple(scope_names),
            seccomp=f"allow-list, {len(program) // 8} instructions, kill on forbidden calls, i386/x32 killed"
            + (" (named by the notify listener)" if routing else " (SIGSYS)"),
            no_new_privs=True,
            capabilities="all dropped, bounding set cleared" if has_setpcap else "all dropped (none were held)",
            securebits="locked (noroot, no_setuid_fixup, keep_caps, no_cap_ambient_raise)" if has_setpcap else "not needed (no capabilities)",
            identity=f"uid/gid {uid} (own uid per sandbox; host is root)" if uid >= 0 else
            f"caller's uid {os.getuid()}" + (", mapped to itself in the jail's user namespace" if in_userns else ""),
            cgroup=f"v{host.cgroup.version}: {', '.join(sorted(set(group.dirs)))}" if group else "none",
            processes=pids_how,
            memory=memory_how,
            rlimits=tuple(rlimit_names),
            weakened=tuple(f"syscall {n} allowed unconditionally" for n in plan.syscalls.allow),
            view=(jail.VIEW + (" (in a user namespace of its own)" if in_userns else "")) if jail_flags else
            jail.no_view(no_jail_reason),
            disk=f"one tmpfs of {plan.disk} bytes, {jail.inode_limit(plan.disk)} files and directories for the "
                 "workspace, /tmp and /dev/shm together"
            if jail_flags and plan.disk else
            "not bounded (no jail): max_file_size bounds each file" + (", the memory cgroup the workspace's pages"
                                                                        if ws.root.startswith("/dev/shm/") and use_mem else ""),
            namespaces=namespaces.describe(jail_flags | namespaces.CLONE_NEWNS | (namespaces.CLONE_NEWNET if private_net else 0))
            if jail_flags else
            ("mount (private /dev/shm and /tmp, own passwd entry, hidden paths bound in)",) if overlays else (),
        )
        return Lockdown(
            executable=executable,
            argv=[os.fsencode(a) for a in plan.argv],  # fsencode: non-UTF-8 bytes (surrogateescape) pass through
            env=[os.fsencode(f"{k}={v}") for k, v in env.items()],
            cwd=cwd,
            workspace=ws,
            ruleset=ruleset,
            filters=filters,
            magic=magic,
            routing=routing,
            rlimits=rlimits,
            uid=uid,
            gid=gid,
            drop_bounding_set=has_setpcap,
            securebits=caps.LOCKED_SECUREBITS if has_setpcap else -1,
            cgroup=group,
            protections=protections,
            overlays=overlays,
            jail_flags=jail_flags,
            hostname=jail.HOSTNAME if jail_flags else None,
            root=root,
            template_fd=template,
            proc_gid=proc_gid,
            root_rights=jail.ROOT_RIGHTS & ruleset.handled_fs,
            netns_fd=netns_fd,
            proc_rights=filesystem.PROC_RIGHTS & ruleset.handled_fs,
            cgroup_fds=group.open_procs() if group is not None and slot_group is None else [],
            cgroup_dir_fd=group.open_dir() if group is not None and slot_group is None else -1,
            uid_lease=lease,
            owns_cgroup=slot_group is None,
            pids_reserved=_take_pid_reservation(plan, host, use_pids, in_userns),
        )
    except BaseException:
        if template >= 0:
            templates.release(template)
        if netns_fd >= 0:
            netns.release(netns_fd)
        if ruleset is not None:
            ruleset.close()
        if group is not None and slot_group is None:
            cgroups.release(group)
        if ws is not None:
            ws.remove()
        if lease is not None:
            lease.release()
        raise
