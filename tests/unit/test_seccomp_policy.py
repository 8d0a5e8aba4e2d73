"""The default policy's decisions, evaluated by an independent BPF interpreter."""

import errno

import pytest

import bpf_interpreter as interp
from evalbox.kernel import bpf
from evalbox.kernel.syscall_table import AUDIT_ARCH, syscall_number
from evalbox.policy import seccomp_policy as sp

ARCH = "x86_64"
AUDIT = AUDIT_ARCH[ARCH]


def decide(network, name, *args, allow=(), deny=()):
    program = sp.program(network, tuple(allow), tuple(deny), ARCH)
    padded = list(args) + [0] * (6 - len(args))
    return interp.run(program, syscall_number(name, ARCH), AUDIT, padded)


def errno_of(action):
    assert action & 0xFFFF0000 == bpf.RET_ERRNO, hex(action)
    return action & 0xFFFF


@pytest.mark.parametrize("name", ["read", "write", "openat", "execve", "mmap", "futex", "wait4", "kill", "getdents64"])
def test_ordinary_calls_allowed(name):
    assert decide(False, name) == bpf.RET_ALLOW


@pytest.mark.parametrize("name", ["bpf", "keyctl", "add_key", "perf_event_open", "userfaultfd", "process_vm_readv",
                                  "process_vm_writev", "pidfd_getfd", "modify_ldt", "memfd_secret"])
def test_attack_surface_killed(name):
    assert decide(False, name) == bpf.RET_KILL_PROCESS


@pytest.mark.parametrize("name", ["ptrace", "mount", "umount2", "chroot", "pivot_root", "setns", "init_module",
                                  "kexec_load", "reboot", "fsopen", "fsconfig", "open_by_handle_at", "sethostname",
                                  "clock_settime", "settimeofday", "swapon", "acct", "iopl", "syslog"])
def test_privileged_calls_get_the_kernels_refusal(name):
    """What the kernel refuses a process without capabilities is refused (EPERM), not killed."""
    assert errno_of(decide(False, name)) == errno.EPERM


@pytest.mark.parametrize("name", ["kcmp", "adjtimex", "clock_adjtime"])
def test_harmless_calls_allowed(name):
    assert decide(False, name) == bpf.RET_ALLOW


@pytest.mark.parametrize("name", ["io_uring_setup", "clone3", "shmget", "mq_open", "memfd_create"])
def test_fallback_calls_answer_enosys(name):
    assert errno_of(decide(False, name)) == errno.ENOSYS


def test_unshare_of_namespaces_refused_other_unsharing_allowed():
    assert errno_of(decide(False, "unshare", 0x10000000)) == errno.EPERM  # CLONE_NEWUSER
    assert errno_of(decide(False, "unshare", 0x80)) == errno.EPERM  # CLONE_NEWTIME
    assert decide(False, "unshare", 0x400 | 0x200) == bpf.RET_ALLOW  # CLONE_FILES | CLONE_FS


def test_unknown_numbers_kill():
    program = sp.program(False, (), (), ARCH)
    assert interp.run(program, 1000, AUDIT, [0] * 6) == bpf.RET_KILL_PROCESS


def test_i386_and_x32_killed():
    program = sp.program(False, (), (), ARCH)
    assert interp.run(program, 20, 0x40000003, [0] * 6) == bpf.RET_KILL_PROCESS
    assert interp.run(program, 0x40000000 | 39, AUDIT, [0] * 6) == bpf.RET_KILL_PROCESS


@pytest.mark.parametrize("req", [0x5412, 0x541C, 0x5423, 0x541D, 0xDEADBEEF00005412, 0xFFFFFFFF00005412])
def test_terminal_injection_ioctls_killed_whatever_the_upper_bits(req):
    assert decide(False, "ioctl", 1, req) == bpf.RET_KILL_PROCESS


def test_other_ioctls_allowed():
    assert decide(False, "ioctl", 1, 0x5401) == bpf.RET_ALLOW  # TCGETS


@pytest.mark.parametrize("domain,kind,expected", [
    (1, 1, "allow"), (1, 1 | 0x80000, "allow"), (1, 5, "allow"), (1, 2, errno.EACCES),
    (2, 1, errno.EACCES), (2, 2, errno.EACCES), (2, 3, errno.EACCES), (10, 1, errno.EACCES),
    (16, 3, errno.EACCES), (17, 3, errno.EACCES), (40, 1, errno.EACCES),
    (1 | (1 << 32), 1, "allow"),  # the kernel reads the domain as int: garbage above is ignored
])
def test_network_off_sockets(domain, kind, expected):
    action = decide(False, "socket", domain, kind, 0)
    if expected == "allow":
        assert action == bpf.RET_ALLOW
    else:
        assert errno_of(action) == expected


def test_network_off_refuses_listeners():
    # an abstract name is host-wide: a listener could squat a host service's name
    assert errno_of(decide(False, "bind", 3, 0, 0)) == errno.EACCES
    assert errno_of(decide(False, "listen", 3, 0)) == errno.EACCES
    assert decide(True, "bind", 3, 0, 0) == bpf.RET_ALLOW


def test_path_metadata_calls_refused_only_when_sharing_the_callers_uid():
    shared = sp.program(False, (), (), ARCH, same_uid=True)
    for name in sp.PATH_METADATA:
        assert errno_of(interp.run(shared, syscall_number(name, ARCH), AUDIT, [0] * 6)) == errno.EPERM
        assert decide(False, name) == bpf.RET_ALLOW
    # by fd too (a read-only mount of the caller's own files): without a listener to do them
    # inside the workspace, refused; a sandbox of its own uid has them (the kernel checks owners)
    for name in ("fchmod", "fchown"):
        assert errno_of(interp.run(shared, syscall_number(name, ARCH), AUDIT, [0] * 6)) == errno.EPERM
        assert decide(False, name) == bpf.RET_ALLOW
    utimensat = syscall_number("utimensat", ARCH)
    assert errno_of(interp.run(shared, utimensat, AUDIT, [3, 0, 0, 0, 0, 0])) == errno.EPERM  # futimens
    assert errno_of(interp.run(shared, utimensat, AUDIT, [-100, 0x7FFF0000, 0, 0, 0, 0])) == errno.EPERM


def test_mknod_fifos_but_not_devices():
    assert decide(False, "mknodat", -100, 0, 0o010644) == bpf.RET_ALLOW
    assert decide(False, "mknod", 0, 0o010644) == bpf.RET_ALLOW
    assert errno_of(decide(False, "mknodat", -100, 0, 0o020644, 0x0501)) == errno.EPERM  # char device
    assert errno_of(decide(False, "mknod", 0, 0o060644)) == errno.EPERM  # block device


def test_network_off_refuses_connect_and_datagram_pairs():
    assert errno_of(decide(False, "connect", 3, 0, 0)) == errno.EACCES
    assert errno_of(decide(False, "socketpair", 1, 2, 0)) == errno.EACCES
    assert decide(False, "socketpair", 1, 1, 0) == bpf.RET_ALLOW


def test_network_on_allows_inet_but_not_netfilter():
    assert decide(True, "socket", 2, 1, 0) == bpf.RET_ALLOW
    assert decide(True, "connect", 3, 0, 0) == bpf.RET_ALLOW
    assert decide(True, "socket", 16, 3, 0) == bpf.RET_ALLOW  # NETLINK_ROUTE
    assert errno_of(decide(True, "socket", 16, 3, 12)) == errno.EAFNOSUPPORT  # NETLINK_NETFILTER
    assert errno_of(decide(True, "socket", 17, 3, 0)) == errno.EAFNOSUPPORT  # AF_PACKET


@pytest.mark.parametrize("flags", [0x10000000, 0x20000000, 0x40000000, 0x00020000, 0x08000000, 0x04000000,
                                   0x02000000, 0x00008000, 0x10000000 | 0x11])
def test_clone_with_namespaces_or_parent_refused(flags):
    assert errno_of(decide(False, "clone", flags)) == errno.EPERM


def test_clone_for_threads_and_fork_allowed():
    assert decide(False, "clone", 0x3D0F00) == bpf.RET_ALLOW  # pthread_create's flags
    assert decide(False, "clone", 0x01200011) == bpf.RET_ALLOW  # fork()


def test_exec_of_an_open_file_answers_enosys():
    # glibc's fexecve then falls back to /proc/self/fd/N, which Landlock checks like any path
    assert errno_of(decide(False, "execveat", 3, 0, 0, 0, 0x1000)) == errno.ENOSYS
    assert decide(False, "execveat", 3, 0, 0, 0, 0) == bpf.RET_ALLOW


def test_calls_on_other_processes_refused_when_sharing_the_callers_uid():
    shared = sp.program(False, (), (), ARCH, same_uid=True)
    for name, index, kind in [("prlimit64", 0, 0), ("sched_setaffinity", 0, 0), ("setpriority", 1, 0),
                              ("ioprio_set", 1, 1)]:
        args = [0] * 6
        args[0] = kind if index else 0
        assert interp.run(shared, syscall_number(name, ARCH), AUDIT, args) == bpf.RET_ALLOW
        args[index] = 4242
        assert errno_of(interp.run(shared, syscall_number(name, ARCH), AUDIT, args)) == errno.EPERM
        # a uid of its own: the kernel's same-uid checks keep them to the sandbox's processes
        assert decide(False, name, *args) == bpf.RET_ALLOW


def test_priority_of_all_the_users_processes_refused():
    assert errno_of(decide(False, "setpriority", 2, 0, 19)) == errno.EPERM  # PRIO_USER, who=0: every process of the uid
    assert errno_of(decide(False, "ioprio_set", 3, 0, 0)) == errno.EPERM  # IOPRIO_WHO_USER
    assert decide(False, "setpriority", 1, 0, 19) == bpf.RET_ALLOW  # own process group


def test_personality_query_only():
    assert decide(False, "personality", 0xFFFFFFFF) == bpf.RET_ALLOW
    assert errno_of(decide(False, "personality", 0x0400000)) == errno.EPERM  # READ_IMPLIES_EXEC


def test_prctl_allow_list():
    assert decide(False, "prctl", 15) == bpf.RET_ALLOW  # PR_SET_NAME
    assert errno_of(decide(False, "prctl", 35)) == errno.EPERM  # PR_SET_MM


def test_process_group_cannot_be_left_when_it_is_the_only_tracker():
    program = sp.program(False, (), (), ARCH, group_only=True)
    assert errno_of(interp.run(program, syscall_number("setsid", ARCH), AUDIT, [0] * 6)) == errno.EPERM
    assert errno_of(interp.run(program, syscall_number("setpgid", ARCH), AUDIT, [0] * 6)) == errno.EPERM
    assert decide(False, "setsid") == bpf.RET_ALLOW  # a cgroup or the sandbox's own uid tracks the tree


def test_plan_choices_come_first():
    assert errno_of(decide(False, "mkdir", deny=["mkdir"])) == errno.EPERM
    assert decide(False, "ptrace", allow=["ptrace"]) == bpf.RET_ALLOW


def test_routed_program_sends_kills_and_metadata_to_the_listener():
    routing = sp.routing(False, (), (), ARCH, same_uid=True)
    program = routing.program
    for name, args, reason in [("bpf", [0] * 6, sp.BLOCKED), ("chmod", [0] * 6, sp.EMULATED),
                               ("memfd_create", [0] * 6, sp.MEMFD),
                               ("ioctl", [1, 0x5412, 0, 0, 0, 0], sp.BLOCKED)]:
        nr = syscall_number(name, ARCH)
        assert interp.run(program, nr, AUDIT, args) & 0xFFFF0000 == bpf.RET_USER_NOTIF
        assert routing.reason(nr, tuple(args)) == reason
    assert interp.run(program, 1000, AUDIT, [0] * 6) & 0xFFFF0000 == bpf.RET_USER_NOTIF  # unknown number
    assert interp.run(program, 20, 0x40000003, [0] * 6) & 0xFFFF0000 == bpf.RET_USER_NOTIF  # i386
    assert interp.run(program, syscall_number("read", ARCH), AUDIT, [0] * 6) == bpf.RET_ALLOW
    assert errno_of(interp.run(program, syscall_number("ptrace", ARCH), AUDIT, [0] * 6)) == errno.EPERM


def test_intercepts_reach_the_supervisor_only_where_the_policy_allows():
    magic = 0x1234567890ABCDEF
    routing = sp.routing(False, (), (), ARCH, intercept=("connect", "openat"), magic=magic)
    openat, connect = syscall_number("openat", ARCH), syscall_number("connect", ARCH)
    assert routing.reason(openat, (0,) * 6) == sp.INTERCEPTED
    assert interp.run(routing.program, openat, AUDIT, [0] * 5 + [magic]) == bpf.RET_ALLOW
    assert errno_of(interp.run(routing.program, connect, AUDIT, [0] * 6)) == errno.EACCES  # network off


def test_program_is_cached_and_loadable_size():
    a = sp.program(False, (), (), ARCH)
    assert a is sp.program(False, (), (), ARCH)
    assert len(a) // 8 < 1000
