"""The default system call policy: which calls a sandboxed program may make, and how.

Three answers: allowed (possibly only with safe arguments), refused with an errno that ordinary
programs handle (ENOSYS makes glibc, libuv and Python fall back), or the process is killed
(SIGSYS) for calls that only an attack needs. Anything not listed kills.
"""

from __future__ import annotations

import errno
import functools

from evalbox.kernel import bpf
from evalbox.kernel.bpf import Arg, Rule

ALLOW = bpf.RET_ALLOW
KILL = KILL_NOW = bpf.RET_KILL_PROCESS
# With a notify listener (every run where the kernel has user notification), the filter routes
# some calls to evalbox instead; the low bits tell evalbox why (the kernel ignores them):
BLOCKED = bpf.RET_USER_NOTIF | 1  # a killed call: evalbox names it (Output.blocked_syscall), then kills
EMULATED = bpf.RET_USER_NOTIF | 2  # path metadata of a same-uid sandbox: done by evalbox inside the workspace
INTERCEPTED = bpf.RET_USER_NOTIF | 3  # the plan's notify intercepts
NOTED = bpf.RET_USER_NOTIF | 4  # allowed once evalbox has taken note (setpgid: the tree spans groups)
LARGE_MAP = bpf.RET_USER_NOTIF | 5  # a large mapping under RLIMIT_AS: evalbox checks it against the limit
MEMFD = bpf.RET_USER_NOTIF | 6  # memfd_create: evalbox makes a non-executable one (MFD_NOEXEC_SEAL) for it


def refuse(e: int) -> int:
    return bpf.errno_action(e)


# Ordinary computation, files, memory, time, signals, processes and threads.
ALLOWED = """
read write readv writev pread64 pwrite64 preadv pwritev preadv2 pwritev2 lseek close close_range
open openat openat2 creat stat fstat lstat newfstatat statx statfs fstatfs access faccessat faccessat2
readlink readlinkat getdents getdents64 getcwd chdir fchdir
mkdir mkdirat rmdir unlink unlinkat rename renameat renameat2 link linkat symlink symlinkat
fchmod fchown
truncate ftruncate fallocate fsync fdatasync sync_file_range fadvise64 readahead flock fcntl
getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr getxattrat listxattrat
dup dup2 dup3 pipe pipe2 splice tee vmsplice sendfile copy_file_range cachestat
mmap munmap mprotect mremap msync mincore madvise brk mlock mlock2 munlock mlockall munlockall
remap_file_pages pkey_alloc pkey_free pkey_mprotect get_mempolicy mseal map_shadow_stack membarrier
poll ppoll select pselect6 epoll_create epoll_create1 epoll_ctl epoll_wait epoll_pwait epoll_pwait2
eventfd eventfd2 signalfd signalfd4 timerfd_create timerfd_settime timerfd_gettime
inotify_add_watch inotify_rm_watch
rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigtimedwait rt_sigsuspend rt_sigqueueinfo
rt_tgsigqueueinfo sigaltstack pause kill tkill tgkill pidfd_open pidfd_send_signal
nanosleep clock_nanosleep clock_gettime clock_getres gettimeofday time times alarm getitimer setitimer
timer_create timer_settime timer_gettime timer_getoverrun timer_delete
futex futex_waitv futex_wake futex_wait futex_requeue set_robust_list get_robust_list set_tid_address
kcmp adjtimex clock_adjtime
rseq arch_prctl sched_yield sched_getaffinity sched_getparam sched_getscheduler sched_getattr
sched_get_priority_max sched_get_priority_min sched_rr_get_interval getcpu getpriority ioprio_get
fork vfork execve exit exit_group wait4 waitid restart_syscall setsid setpgid
getpid getppid gettid getuid geteuid getgid getegid getgroups getresuid getresgid getpgrp getpgid getsid
setuid setgid setreuid setregid setresuid setresgid setfsuid setfsgid setgroups capget capset
getrlimit setrlimit getrusage umask uname sysinfo getrandom
socket socketpair accept accept4 getsockname getpeername getsockopt setsockopt
sendto recvfrom sendmsg recvmsg sendmmsg recvmmsg shutdown
landlock_create_ruleset landlock_add_rule landlock_restrict_self seccomp
""".split()

# Calls an unprivileged user could make that only an attack needs (or that reach far outside
# the sandbox): the process is killed.
KILLED = """
process_vm_readv process_vm_writev pidfd_getfd process_madvise process_mrelease
bpf perf_event_open userfaultfd keyctl add_key request_key modify_ldt uselib memfd_secret
""".split()

# Calls the kernel refuses a process without capabilities anyway: they get that refusal (EPERM),
# not a kill, so that tools probing them (test suites, `hostname`, `date -s`, container
# detection) report instead of dying. The filter answers before the kernel runs any of their
# code, so the kernel surface behind them stays out of reach. Namespaces: unshare/setns and
# clone with namespace flags (below) are refused the same way, as on a host without user
# namespaces.
PRIVILEGED = """
mount umount2 pivot_root chroot fsopen fsconfig fsmount fspick move_mount open_tree open_tree_attr
mount_setattr setns init_module finit_module delete_module kexec_load kexec_file_load reboot
swapon swapoff acct quotactl quotactl_fd open_by_handle_at name_to_handle_at iopl ioperm vhangup
settimeofday clock_settime syslog sethostname setdomainname fanotify_init fanotify_mark
lsm_set_self_attr
""".split()

# ptrace is refused (EPERM) rather than killed: AddressSanitizer's leak checker, gdb and strace
# then report "not permitted" at once instead of hanging or dying. Nothing is traced either way.
# kcmp (compares two processes' resources, checked by the kernel like a ptrace read, which
# Landlock confines to the sandbox) and adjtimex/clock_adjtime (read the clock; setting it needs
# CAP_SYS_TIME, which the sandbox never has) are allowed.
REFUSED_NOT_KILLED = ("ptrace",)

# Refused with an error ordinary programs expect and handle; nothing is done.
REFUSED = {
    # newer interfaces with a fallback: glibc retries clone3 as clone, libuv and others fall back
    # from io_uring
    "clone3": errno.ENOSYS,
    "io_uring_setup": errno.ENOSYS,
    "io_uring_enter": errno.ENOSYS,
    "io_uring_register": errno.ENOSYS,
    "io_setup": errno.ENOSYS,
    "io_destroy": errno.ENOSYS,
    "io_submit": errno.ENOSYS,
    "io_cancel": errno.ENOSYS,
    "io_getevents": errno.ENOSYS,
    "io_pgetevents": errno.ENOSYS,
    # System V and POSIX message IPC are shared by the whole host
    "shmget": errno.ENOSYS, "shmat": errno.ENOSYS, "shmdt": errno.ENOSYS, "shmctl": errno.ENOSYS,
    "semget": errno.ENOSYS, "semop": errno.ENOSYS, "semtimedop": errno.ENOSYS, "semctl": errno.ENOSYS,
    "msgget": errno.ENOSYS, "msgsnd": errno.ENOSYS, "msgrcv": errno.ENOSYS, "msgctl": errno.ENOSYS,
    "mq_open": errno.ENOSYS, "mq_unlink": errno.ENOSYS, "mq_timedsend": errno.ENOSYS,
    "mq_timedreceive": errno.ENOSYS, "mq_notify": errno.ENOSYS, "mq_getsetattr": errno.ENOSYS,
    # host-wide effects answered as if done
    "sync": 0,
    "syncfs": 0,
    # memory placement of other processes, mount listings of the host
    "mbind": errno.EPERM, "set_mempolicy": errno.EPERM, "set_mempolicy_home_node": errno.EPERM,
    "migrate_pages": errno.EPERM, "move_pages": errno.EPERM,
    "statmount": errno.ENOSYS, "listmount": errno.ENOSYS, "lookup_dcookie": errno.ENOSYS,
    "lsm_get_self_attr": errno.ENOSYS, "lsm_list_modules": errno.ENOSYS,
    "file_getattr": errno.ENOSYS, "file_setattr": errno.EPERM,
    # the system trees are the host's own inodes (bind mounts): an inotify watch on them would
    # report which host programs and files are used, and when. Without an inotify fd,
    # inotify_add_watch has nothing to act on; `tail -f`, Python's watchers and libuv poll instead.
    "inotify_init": errno.ENOSYS, "inotify_init1": errno.ENOSYS,
}

# Changing mode or owner by path: Landlock does not cover file metadata, so only file permissions
# stop a program from chmod'ing a file it can name. A sandbox with its own uid owns nothing
# outside its workspace; one that shares the caller's uid owns all the caller's files, and gets
# these calls refused (fchmod/fchown on a file it could open stay allowed).
PATH_METADATA = ("chmod", "fchmodat", "fchmodat2", "chown", "lchown", "fchownat", "utime", "utimes", "futimesat")

XATTR_SET = ("setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr", "setxattrat",
             "removexattrat")
XATTR_SET_BY_PATH = ("setxattr", "lsetxattr", "removexattr", "lremovexattr", "fsetxattr", "fremovexattr")

# mknod: FIFOs, sockets and regular files (mkfifo); device nodes need CAP_MKNOD anyway.
S_IFMT, S_IFIFO, S_IFREG, S_IFSOCK = 0o170000, 0o010000, 0o100000, 0o140000

# Terminal ioctls that inject input or reconfigure the line discipline (CVE-2017-5226 and
# friends). The kernel reads the request as 32 bits, so only the low word is compared: garbage in
# the high word (CVE-2019-10063) cannot slip past.
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
TIOCSETD = 0x5423
TIOCCONS = 0x541D

# Namespaces, and CLONE_PARENT (a child of the host process would escape reaping).
CLONE_FORBIDDEN = 0x7E020000 | 0x00008000
# unshare: every namespace flag (CLONE_NEWTIME too); CLONE_FILES/CLONE_FS/CLONE_SYSVSEM are harmless.
UNSHARE_NAMESPACES = 0x7E020000 | 0x00000080

AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
SOCK_STREAM, SOCK_SEQPACKET = 1, 5
SOCK_TYPE_MASK = 0xF
NETLINK_ROUTE = 0
AT_EMPTY_PATH = 0x1000
PRIO_PROCESS, PRIO_PGRP = 0, 1  # not PRIO_USER
IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP = 1, 2  # not IOPRIO_WHO_USER

# prctl options with no reach beyond the calling process.
PRCTL_ALLOWED = (
    1, 2, 3, 4, 7, 15, 16, 21, 22, 23, 27, 29, 30, 36, 37, 38, 39, 40, 41, 42, 47, 52, 53,
    0x53564D41,  # PR_SET_VMA (anonymous mapping names)
    0x59616D61,  # PR_SET_PTRACER (ptrace is refused anyway)
    0x41555856,  # PR_GET_AUXV
    65, 66,  # memory-deny-write-execute
    74, 75, 76,  # shadow stack status (glibc with CET)
)


def _self_only(name: str, index: int, kinds: tuple[int, ...] = ()) -> list[Rule]:
    """Calls that may target another process: allowed on the caller itself only.

    `kinds`: for calls whose first argument says what `who` names (a process, a process group,
    a user), the kinds for which who=0 means the caller; for a user, 0 means every process of
    the caller's uid, which on a non-root host includes the caller's own host processes.
    """
    if not kinds:
        return [Rule(name, ALLOW, (Arg(index, "eq", 0, width=32),)), Rule(name, refuse(errno.EPERM))]
    allowed = [Rule(name, ALLOW, (Arg(0, "eq", kind, width=32), Arg(index, "eq", 0, width=32))) for kind in kinds]
    return allowed + [Rule(name, refuse(errno.EPERM))]


def _network_rules(network: bool, private_net: bool = False, private_root: bool = False) -> list[Rule]:
    if network or private_net:
        # The host network, or (private_net) a network namespace of the run's own holding only
        # its loopback: TCP/UDP servers and clients on 127.0.0.1 reach nothing outside it.
        inet = [
            Rule("socket", ALLOW, (Arg(0, "eq", AF_UNIX, width=32),)),
            Rule("socket", ALLOW, (Arg(0, "eq", AF_INET, width=32),)),
            Rule("socket", ALLOW, (Arg(0, "eq", AF_INET6, width=32),)),
            # interface listing (getaddrinfo's AI_ADDRCONFIG); no netfilter, no audit
            Rule("socket", ALLOW, (Arg(0, "eq", AF_NETLINK, width=32), Arg(2, "eq", NETLINK_ROUTE, width=32))),
            Rule("socket", refuse(errno.EAFNOSUPPORT)),
            Rule("connect", ALLOW),
            Rule("bind", ALLOW),
            Rule("listen", ALLOW),
        ]
        if network or private_root:
            # (private_root: no host socket exists in the run's root; abstract names are per
            # network namespace)
            return inet
        # Private network but the host's filesystem in view: connect() cannot be checked by
        # address family, so Unix sockets are limited to pairs (no pathname connect to a host
        # service such as D-Bus); abstract names are per network namespace, so private.
        return [
            Rule("socket", ALLOW, (Arg(0, "eq", AF_INET, width=32),)),
            Rule("socket", ALLOW, (Arg(0, "eq", AF_INET6, width=32),)),
            Rule("socket", ALLOW, (Arg(0, "eq", AF_NETLINK, width=32), Arg(2, "eq", NETLINK_ROUTE, width=32))),
            Rule("socket", refuse(errno.EACCES)),
            # a datagram pair could still sendto() a host pathname socket (/dev/log)
            Rule("socketpair", ALLOW, (Arg(0, "eq", AF_UNIX, width=32),
                                       Arg(1, "masked_eq", SOCK_STREAM, mask=SOCK_TYPE_MASK, width=32))),
            Rule("socketpair", ALLOW, (Arg(0, "eq", AF_UNIX, width=32),
                                       Arg(1, "masked_eq", SOCK_SEQPACKET, mask=SOCK_TYPE_MASK, width=32))),
            Rule("socketpair", refuse(errno.EACCES)),
            Rule("connect", ALLOW),
            Rule("bind", ALLOW),
            Rule("listen", ALLOW),
        ]
    # Only connection-oriented Unix sockets: a datagram socket could send to any pathname socket
    # (/dev/log) without connect(), and connect() itself cannot be checked by path here, so it is
    # refused. With no connect, a listener is useless inside and dangerous outside (an abstract
    # name is host-wide: a sandbox could squat the name a host service listens on), so bind and
    # listen are refused too. Socket pairs remain for in-sandbox IPC.
    unix_only = [Rule("bind", refuse(errno.EACCES)), Rule("listen", refuse(errno.EACCES))]
    for call in ("socket", "socketpair"):
        for kind in (SOCK_STREAM, SOCK_SEQPACKET):
            unix_only.append(
                Rule(call, ALLOW, (Arg(0, "eq", AF_UNIX, width=32), Arg(1, "masked_eq", kind, mask=SOCK_TYPE_MASK, width=32)))
            )
        unix_only.append(Rule(call, refuse(errno.EACCES)))
    unix_only.append(Rule("connect", refuse(errno.EACCES)))
    return unix_only


# Files the sandbox can only read (system trees, /etc, ro mounts) must not be usable to stall or
# slow host processes (issue 9, class 7). seccomp cannot see an fd's mode or path, so:
# - advisory locks are not taken at all: flock() and fcntl F_SETLK/F_SETLKW/F_OFD_SETLK(W)
#   succeed without locking (a sandbox never blocks a host writer; processes inside one sandbox
#   cannot exclude each other with them); F_GETLK still reports host locks truthfully;
# - leases (F_SETLEASE) are refused: a lease stalls any other opener of the file;
# - cache eviction advice (POSIX_FADV_DONTNEED/NOREUSE, MADV_COLD/MADV_PAGEOUT) succeeds without
#   effect: evicting host files' page cache would slow the host.
F_SETLK, F_SETLKW, F_OFD_SETLK, F_OFD_SETLKW, F_SETLEASE = 6, 7, 37, 38, 1024
POSIX_FADV_DONTNEED, POSIX_FADV_NOREUSE = 4, 5
MADV_COLD, MADV_PAGEOUT = 20, 21
PRETEND = bpf.errno_action(0)  # the call returns 0 and does nothing


def _host_interference_rules() -> list[Rule]:
    out = [Rule("flock", PRETEND), Rule("fcntl", refuse(errno.EPERM), (Arg(1, "eq", F_SETLEASE, width=32),))]
    out += [Rule("fcntl", PRETEND, (Arg(1, "eq", cmd, width=32),)) for cmd in (F_SETLK, F_SETLKW, F_OFD_SETLK, F_OFD_SETLKW)]
    out += [Rule("fadvise64", PRETEND, (Arg(3, "eq", a, width=32),)) for a in (POSIX_FADV_DONTNEED, POSIX_FADV_NOREUSE)]
    out += [Rule("madvise", PRETEND, (Arg(2, "eq", a, width=32),)) for a in (MADV_COLD, MADV_PAGEOUT)]
    return out + [Rule(name, ALLOW) for name in ("fcntl", "fadvise64", "madvise")]


SET_ID_BITS = 0o6000  # S_ISUID | S_ISGID
O_CREAT = 0o100
O_TMPFILE_BIT = 0o20000000  # __O_TMPFILE (O_TMPFILE also sets O_DIRECTORY)


def _no_set_id_rules() -> list[Rule]:
    """EPERM for a mode with a set-id bit: chmod family, mknod of a regular file, and files
    created by open/openat/creat; openat2 (its mode is behind a pointer) answers ENOSYS, and
    every libc's open falls back to openat."""
    out: list[Rule] = []
    bits = (0o4000, 0o2000, 0o6000)
    for name, mode_arg in (("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("fchmodat2", 2), ("creat", 1),
                           ("mknod", 1), ("mknodat", 2)):
        out += [Rule(name, refuse(errno.EPERM), (Arg(mode_arg, "masked_eq", b, mask=SET_ID_BITS, width=32),))
                for b in bits]
    for name, flags_arg, mode_arg in (("open", 1, 2), ("openat", 2, 3)):
        for flag in (O_CREAT, O_TMPFILE_BIT):
            out += [Rule(name, refuse(errno.EPERM), (Arg(flags_arg, "masked_eq", flag, mask=flag, width=32),
                                                    Arg(mode_arg, "masked_eq", b, mask=SET_ID_BITS, width=32)))
                    for b in bits]
    out.append(Rule("openat2", refuse(errno.ENOSYS)))
    return out


def rules(network: bool, allow: tuple[str, ...] = (), deny: tuple[str, ...] = (), group_only: bool = False,
          same_uid: bool = False, routed: bool = False, large_map: int = 0, private_net: bool = False,
          private_root: bool = False, callers_uid: bool = False) -> list[Rule]:
    """The rule list for a plan's network switch and its Syscalls(allow=..., deny=...).

    `group_only`: the process group is the only way to find the whole tree (no cgroup, no uid of
    its own), so the program may not leave it; `timeout` and job-control shells then stay in it.
    `same_uid`: the program runs as the caller's uid in the caller's view (see PATH_METADATA).
    `callers_uid`: the program has the caller's uid on the host, in that view or mapped to itself
    in a user namespace (implied by `same_uid`): no set-id bits on files (anything it leaves in a
    writable mount would run as the caller for whoever can reach it), and calls that can reach
    another process of the uid (the jail's init has it too) act on the caller itself only.
    `routed`: a notify listener serves the sandbox: killed calls go to it (BLOCKED), and so do
    path metadata changes of a same-uid sandbox (EMULATED).
    `large_map`: memory is an RLIMIT_AS: mappings of at least this many bytes (mmap, mremap
    growth) go to the listener too (LARGE_MAP), which tells a refused allocation from the limit.
    `private_net`: the run has a network namespace of its own (the jail), `private_root` a root
    built from what it was granted: sockets are then allowed within them.
    """
    KILL = BLOCKED if routed else KILL_NOW
    metadata = EMULATED if routed else refuse(errno.EPERM)
    out: list[Rule] = []
    if group_only:
        # With a listener, a new process group (timeout, job-control shells) is noted and allowed:
        # the tree is then found by its session, which it still cannot leave.
        out += [Rule("setsid", refuse(errno.EPERM)), Rule("setpgid", NOTED if routed else refuse(errno.EPERM))]
    # The plan's explicit choices come first: the first matching rule decides.
    out += [Rule(name, refuse(errno.EPERM)) for name in deny]
    out += [Rule(name, ALLOW) for name in allow]
    callers_uid = callers_uid or same_uid
    set_id = _no_set_id_rules() if callers_uid else []
    out += set_id
    out += [Rule("ioctl", KILL, (Arg(1, "masked_eq", req, width=32),)) for req in (TIOCSTI, TIOCLINUX, TIOCSETD, TIOCCONS)]
    out.append(Rule("ioctl", ALLOW))
    out.append(Rule("clone", ALLOW, (Arg(0, "masked_eq", 0, mask=CLONE_FORBIDDEN),)))
    out.append(Rule("clone", refuse(errno.EPERM)))
    out.append(Rule("unshare", ALLOW, (Arg(0, "masked_eq", 0, mask=UNSHARE_NAMESPACES, width=32),)))
    out.append(Rule("unshare", refuse(errno.EPERM)))
    # execveat(fd, "", AT_EMPTY_PATH) runs an open file (fexecve): ENOSYS makes glibc fall back to
    # execve("/proc/self/fd/N"), which Landlock checks like any path, so an fd of a memfd or of any
    # file outside the granted trees is refused (EACCES) there: no fileless exec.
    out.append(Rule("execveat", ALLOW, (Arg(4, "masked_eq", 0, mask=AT_EMPTY_PATH, width=32),)))
    out.append(Rule("execveat", refuse(errno.ENOSYS)))
    out += [Rule("prctl", ALLOW, (Arg(0, "eq", option, width=32),)) for option in PRCTL_ALLOWED]
    out.append(Rule("prctl", refuse(errno.EPERM)))
    # personality: reading it is fine, changing it (e.g. READ_IMPLIES_EXEC, no ASLR) is not
    out.append(Rule("personality", ALLOW, (Arg(0, "eq", 0xFFFFFFFF, width=32),)))
    out.append(Rule("personality", ALLOW, (Arg(0, "eq", 0, width=32),)))
    out.append(Rule("personality", refuse(errno.EPERM)))
    if callers_uid:
        # the kernel would let these reach every process of the caller's uid: the caller only
        out += _self_only("prlimit64", 0)
        out += _self_only("setpriority", 1, kinds=(PRIO_PROCESS, PRIO_PGRP))
        out += _self_only("ioprio_set", 1, kinds=(IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP))
        for name in ("sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr"):
            out += _self_only(name, 0)
    else:
        # a uid of its own: the kernel's same-uid checks keep these to the sandbox's own processes
        # (no other process has its uid); "every process of my user" stays refused all the same
        for name, kinds in (("setpriority", (PRIO_PROCESS, PRIO_PGRP)), ("ioprio_set", (IOPRIO_WHO_PROCESS, IOPRIO_WHO_PGRP))):
            out += [Rule(name, ALLOW, (Arg(0, "eq", kind, width=32),)) for kind in kinds]
            out.append(Rule(name, refuse(errno.EPERM)))
    if routed and large_map:
        out += [Rule("mmap", LARGE_MAP, (Arg(1, "ge", large_map),)), Rule("mmap", ALLOW),
                Rule("mremap", LARGE_MAP, (Arg(2, "ge", large_map),)), Rule("mremap", ALLOW)]
    # memfd_create: Landlock does not cover memfds (kernel-internal mount), so a memfd could be
    # written with a program and executed (fileless exec). With a listener evalbox creates it
    # for the program with MFD_NOEXEC_SEAL (Linux 6.3+: not executable, and cannot become so);
    # without one, ENOSYS (callers fall back to a file).
    out.append(Rule("memfd_create", MEMFD if routed else refuse(errno.ENOSYS)))
    out += _network_rules(network, private_net, private_root)
    out += _host_interference_rules()
    out += [Rule(name, metadata if same_uid else ALLOW) for name in PATH_METADATA]
    if same_uid:
        # by fd too: the caller's own files may be open read-only to the sandbox (a Mount.ro of
        # them), and the kernel lets their owner change mode, owner and times through any fd.
        # So fchmod, fchown and futimens (utimensat(fd, NULL, ...)) are done by evalbox, on a
        # file named inside the workspace only.
        out += [Rule("fchmod", metadata), Rule("fchown", metadata)]
    out.append(Rule("utimensat", metadata if same_uid else ALLOW))
    # Extended attributes: Landlock does not cover them, and user.* ones may be set on any file
    # one may write (a world-writable host file, or any of the caller's own). So user attributes
    # are set inside the workspace only (EMULATED: by path, or on an fd whose file is named
    # there); elsewhere the answer is "not supported here", which `cp -a` and friends accept.
    for name in XATTR_SET:
        out.append(Rule(name, EMULATED if routed and name in XATTR_SET_BY_PATH else refuse(errno.EOPNOTSUPP)))
    for name, mode_arg in (("mknod", 1), ("mknodat", 2)):
        for kind in (0, S_IFIFO, S_IFREG, S_IFSOCK):
            out.append(Rule(name, ALLOW, (Arg(mode_arg, "masked_eq", kind, mask=S_IFMT, width=32),)))
        out.append(Rule(name, refuse(errno.EPERM)))
    # (the set-id refusals are conditions in front of a call's usual answer, not the answer)
    exempt = {id(r) for r in set_id}
    listed = {r.syscall for r in out if id(r) not in exempt}
    out += [Rule(name, ALLOW) for name in ALLOWED if name not in listed]
    if not callers_uid:
        out += [Rule(name, ALLOW) for name in ("prlimit64", "sched_setaffinity", "sched_setscheduler",
                                               "sched_setparam", "sched_setattr") if name not in listed]
    out += [Rule(name, KILL) for name in KILLED if name not in listed]
    out += [Rule(name, refuse(errno.EPERM)) for name in PRIVILEGED + list(REFUSED_NOT_KILLED) if name not in listed]
    out += [Rule(name, refuse(e)) for name, e in REFUSED.items() if name not in listed]
    return out


@functools.lru_cache(maxsize=64)
def program(network: bool, allow: tuple[str, ...] = (), deny: tuple[str, ...] = (), arch: str | None = None,
            group_only: bool = False, same_uid: bool = False, private_net: bool = False,
            private_root: bool = False, callers_uid: bool = False) -> bytes:
    """The BPF program for these choices, killing forbidden calls outright (no listener)."""
    return bpf.build(rules(network, allow, deny, group_only, same_uid, private_net=private_net,
                           private_root=private_root, callers_uid=callers_uid), default=KILL, arch=arch)


def with_intercepts(rule_list: list[Rule], intercept: tuple[str, ...], magic: int) -> list[Rule]:
    """Route the calls the plan intercepts to the supervisor, where the policy allows them.

    A call the policy refuses or kills keeps that answer (it never reaches a supervisor). Calls
    tagged with `magic` in the sixth argument are the spawn child's own last steps before exec,
    made while the supervisor cannot answer yet (see _spawn.c `tagged`).
    """
    wanted = set(intercept)
    out: list[Rule] = []
    for rule in rule_list:
        if rule.syscall in wanted and rule.action == ALLOW:
            out.append(Rule(rule.syscall, ALLOW, rule.args + (Arg(5, "eq", magic),)))
            out.append(Rule(rule.syscall, INTERCEPTED, rule.args))
        else:
            out.append(rule)
    return out


class Routing:
    """A listener-served filter and, for each call the kernel routes to evalbox, why (the same
    first-match decision the filter made, evaluated again from the call's number and arguments)."""

    def __init__(self, rule_list: list[Rule], arch: str | None) -> None:
        from evalbox.kernel.syscall_table import ARCHES, native_arch

        self.arch = arch or native_arch()
        self.program = bpf.build(rule_list, default=BLOCKED, arch=self.arch, bad_arch=BLOCKED)
        self.by_nr: dict[int, list[Rule]] = {}
        table = ARCHES[self.arch]
        for rule in rule_list:
            nr = table.get(rule.syscall)
            if nr is not None:
                self.by_nr.setdefault(nr, []).append(rule)
        self.names = {nr: name for name, nr in table.items()}

    def reason(self, nr: int, args: tuple[int, ...]) -> int:
        """BLOCKED, EMULATED or INTERCEPTED for a notification of (native) call `nr`."""
        return bpf.first_match(self.by_nr.get(nr, ()), args, BLOCKED)


@functools.lru_cache(maxsize=64)
def _routing(network: bool, allow: tuple[str, ...], deny: tuple[str, ...], arch: str | None, group_only: bool,
             same_uid: bool, large_map: int, private_net: bool = False, private_root: bool = False,
             callers_uid: bool = False) -> Routing:
    return Routing(rules(network, allow, deny, group_only, same_uid, routed=True, large_map=large_map,
                         private_net=private_net, private_root=private_root, callers_uid=callers_uid), arch)


def large_map_threshold(memory: int) -> int:
    """Mappings at least this large are checked against an RLIMIT_AS memory limit (rare enough
    to cost nothing measurable; large enough that the allocation that fails is usually one)."""
    return max(1 << 20, memory // 32)


def routing(network: bool, allow: tuple[str, ...] = (), deny: tuple[str, ...] = (), arch: str | None = None,
            group_only: bool = False, same_uid: bool = False, intercept: tuple[str, ...] = (),
            magic: int = 0, large_map: int = 0, private_net: bool = False, private_root: bool = False,
            callers_uid: bool = False) -> Routing:
    """The filter for a run served by a notify listener (cached unless the plan intercepts calls)."""
    if not intercept:
        return _routing(network, allow, deny, arch, group_only, same_uid, large_map, private_net, private_root,
                        callers_uid)
    base = rules(network, allow, deny, group_only, same_uid, routed=True, large_map=large_map,
                 private_net=private_net, private_root=private_root, callers_uid=callers_uid)
    return Routing(with_intercepts(base, intercept, magic), arch)
