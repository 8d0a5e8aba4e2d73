"""Which host paths a plan's program may read, execute and write (as Landlock rules).

Reads: the system program and library trees, a narrow list of /etc files (never shadow, sudoers,
ssh or TLS private keys), a few devices, /proc (Landlock's own ptrace rules keep other domains'
/proc/<pid>/environ, mem and fds out of reach), the runtime files of a program installed outside
the system trees (its ELF interpreter and libraries, found by `resolve`), and the plan's mounts.
Writes: the workspace and `rw` mounts only.
"""

from __future__ import annotations

import errno
import functools
import glob
import os
import stat
from dataclasses import dataclass

from evalbox.kernel import landlock as ll
from evalbox.kernel import paths
from evalbox.errors import ValidationError
from evalbox.policy.plan import Plan
from evalbox.policy.resolve import Runtime

# Program and library trees (merged-/usr systems make the top-level ones links into /usr).
SYSTEM_TREES = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")

# What ordinary programs read in /etc: the loader cache, user and host name lookups, time zone,
# locale, certificates (public), interpreter configuration.
ETC_FILES = (
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
    "/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/hosts", "/etc/host.conf",
    "/etc/resolv.conf", "/etc/gai.conf", "/etc/protocols", "/etc/services", "/etc/networks",
    "/etc/hostname", "/etc/localtime", "/etc/timezone", "/etc/locale.alias", "/etc/locale.conf",
    "/etc/os-release", "/etc/debian_version", "/etc/lsb-release", "/etc/shells",
    "/etc/mime.types", "/etc/magic", "/etc/magic.mime", "/etc/inputrc", "/etc/terminfo",
    "/etc/bash.bashrc", "/etc/alternatives", "/etc/ssl/certs", "/etc/ssl/openssl.cnf",
    "/etc/ca-certificates", "/etc/fonts", "/etc/perl", "/etc/gitconfig",
)
# (Debian/Ubuntu keep the JDK's configuration here, linked from its prefix: java.security, jvm.cfg)
ETC_GLOBS = ("/etc/python3*", "/etc/java-*")

DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
PROC = "/proc"
SYS_READABLE = ("/sys/devices/system/cpu",)

PROC_RIGHTS = ll.READ  # also on a jail's own /proc, added by the spawn child once mounted
DEVICE_RIGHTS = ll.READ_FILE | ll.WRITE_FILE | ll.TRUNCATE | ll.IOCTL_DEV
EVERYTHING = (1 << 16) - 1  # trimmed to the ABI's rights when the rule is added


@dataclass(frozen=True)
class PathRule:
    path: str
    rights: int
    no_symlinks: bool = False  # a path the plan names below what a sandbox may have written


def open_named_path(path: str, what: str, flags: int = os.O_PATH) -> int:
    """An O_PATH fd for a host path the plan names (mount source, VIRTUALIZE directory), resolved
    without following a symlink in any component: an earlier run may have planted links in a
    directory it could write, and the fd is the inode checked (a later swap cannot widen access)."""
    try:
        return paths.open_no_symlinks(path, flags)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
    link = paths.first_symlink(path) or path
    raise ValidationError(f"{what} {path} passes through a symlink ({link}); name the real path")


def _readable_system_paths() -> list[PathRule]:
    rules = [PathRule(p, ll.READ_EXEC) for p in SYSTEM_TREES]
    etc = list(ETC_FILES)
    for pattern in ETC_GLOBS:
        etc += sorted(glob.glob(pattern))
    rules += [PathRule(p, ll.READ) for p in etc]
    rules += [PathRule(p, DEVICE_RIGHTS) for p in DEVICES]
    rules.append(PathRule(PROC, PROC_RIGHTS))
    rules += [PathRule(p, ll.READ) for p in SYS_READABLE]
    return rules


@functools.cache
def _system_rules_packed(handled: int) -> bytes:
    """The system rules, packed for one Landlock call, with their O_PATH fds opened once per
    process: every run grants the same system paths, so holding their fds (a few dozen,
    close-on-exec) saves a path walk per rule per run. Paths missing on this host are left out."""
    packed = []
    for rule in _readable_system_paths():
        try:
            fd = os.open(rule.path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        rights = rule.rights & handled
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= ll.FILE_RIGHTS
        packed.append(ll.pack_rule(fd, rights))
    return b"".join(packed)


@functools.cache
def _system_trees_real() -> tuple[str, ...]:
    return tuple(os.path.realpath(t) for t in SYSTEM_TREES if os.path.exists(t))


@functools.cache
def _system_trees_both() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The system trees by real path and by name, and the same with a trailing "/" (one
    str.startswith call per runtime file instead of a Python loop over the trees)."""
    trees = _system_trees_real() + SYSTEM_TREES
    return trees, tuple(t + "/" for t in trees)


# A sandbox that can have a private tmpfs on /dev/shm (root host: POSIX semaphores work) gets
# these rights on it; the spawn child adds the rule once the tmpfs is mounted.
PRIVATE_SHM_RIGHTS = ll.READ | ll.WRITE_FILE | ll.TRUNCATE | ll.MAKE_REG | ll.REMOVE_FILE | ll.MAKE_DIR | ll.REMOVE_DIR


# Pseudo-terminals (openpty, script, pexpect, termios tests). Granted only to a sandbox with a uid
# of its own: the host's devpts then holds only terminals it may not open (other owners, mode
# 0620), while a sandbox sharing the caller's uid could open the caller's own terminals. (A
# private devpts instance in the sandbox's mount namespace lifts this: the jail's job.)
PTY_PATHS = ("/dev/ptmx", "/dev/pts")
PTY_RIGHTS = ll.READ_FILE | ll.WRITE_FILE | ll.IOCTL_DEV


def path_rules(plan: Plan, workspace: str, runtime: Runtime, own_uid: bool = False,
               cgroup_dirs: tuple[str, ...] = ()) -> list[PathRule]:
    """The Landlock rules specific to this run (the system rules are added by build_ruleset).

    `own_uid`: the sandbox runs as a uid of its own (pseudo-terminals are granted).
    `cgroup_dirs`: the run's own cgroup directories, readable so that runtimes size themselves
    to the limits (the JVM reads memory.limit_in_bytes / memory.max to size its heap)."""
    rules: list[PathRule] = []
    if own_uid:
        rules += [PathRule(p, PTY_RIGHTS) for p in PTY_PATHS if os.path.exists(p)]
    rules += [PathRule(d, ll.READ) for d in cgroup_dirs]
    # (a path inside a system tree by name, /bin/true through /bin -> usr/bin say, reaches a file
    # below the tree's own rule, or, through a link further down, one `resolve` lists by its
    # real path too: either way its own rule would add nothing)
    # (`resolve` lists every file by its real path too, so a plain prefix test is enough: a link
    # outside the trees that points into them only adds a redundant rule)
    system_trees, system_prefixes = _system_trees_both()
    workspace_prefix = workspace + "/"
    for path in sorted(runtime.executables | runtime.libraries):
        if not (path in system_trees or path.startswith(system_prefixes)
                or path == workspace or path.startswith(workspace_prefix)):
            rules.append(PathRule(path, ll.READ_FILE | ll.EXECUTE))
    for mount in plan.mounts:
        rules.append(PathRule(mount.source, EVERYTHING if mount.writable else ll.READ_EXEC, no_symlinks=True))
    rules.append(PathRule(workspace, EVERYTHING))
    return rules


def build_ruleset(rules: list[PathRule], abi: int, network: bool, opened: dict[str, int] | None = None) -> ll.Ruleset:
    """A Landlock ruleset enforcing `rules`, TCP off unless `network`, and the ABI's scopes.
    `opened`: fds the caller already opened with open_named_path for no_symlinks rules (kept open)."""
    handled_net = 0 if network else ll.net_rights(abi)
    ruleset = ll.Ruleset(ll.fs_rights(abi), handled_net, ll.scopes(abi))
    try:
        try:
            ruleset.allow_packed(_system_rules_packed(ruleset.handled_fs))
        except OSError as e:
            if e.errno not in (errno.ESTALE, errno.EBADF):
                raise
            # the host process closed (and maybe reused) one of the cached fds: open them again.
            # The old fds are left alone: closing them could close what the host now uses.
            _system_rules_packed.cache_clear()
            ruleset.allow_packed(_system_rules_packed(ruleset.handled_fs))
        for rule in rules:
            if rule.no_symlinks:
                fd = opened.get(rule.path, -1) if opened else -1
                own = fd < 0
                if own:
                    fd = open_named_path(rule.path, "mount source")
                try:
                    ruleset.allow_fd(fd, stat.S_ISDIR(os.fstat(fd).st_mode), rule.rights)
                finally:
                    if own:
                        os.close(fd)
            else:
                ruleset.allow_path(rule.path, rule.rights)
    except BaseException:
        ruleset.close()
        raise
    return ruleset
