"""SPEC §4.3: kernel attack surface: ptrace, mounts, namespaces, keys, bpf, perf, userfaultfd,
modules, reboot, kexec, terminal ioctls, fileless exec, personality, i386/x32 ABIs."""

from __future__ import annotations

import ctypes
import os

import pytest

from escape_kit import children_of_caller

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWTIME = 0x00000080


# -- ptrace and process memory ------------------------------------------------------------------


def test_ptrace_traceme(box):
    r = box.run("proc_attacks", "traceme")
    r.blocked_how("ptrace_traceme")


def test_ptrace_attach_host_process(box, sleeper):
    r = box.run("proc_attacks", "attach", str(sleeper.pid))
    r.blocked_how("ptrace_attach")
    if not r.sigsys:
        r.blocked_how("ptrace_seize")
    tracer = [ln for ln in open(f"/proc/{sleeper.pid}/status") if ln.startswith("TracerPid:")]
    assert tracer == ["TracerPid:\t0\n"], f"the host sleep process is being traced: {tracer}"
    assert sleeper.alive(), "the host sleep process died during a ptrace attempt"


def test_ptrace_attach_sibling_inside_sandbox(box):
    r = box.run("proc_attacks", "attach_sibling")
    assert r.info("sibling"), f"the payload could not even fork its sibling\n{r.describe()}"
    r.blocked_how("ptrace_attach_sibling")


def test_process_vm_readv_of_the_host_caller(box):
    """Read a secret straight out of this (host, root) test process's memory."""
    secret = f"EVALBOX-MEMORY-SECRET-{os.urandom(8).hex()}".encode()
    buf = ctypes.create_string_buffer(secret)
    r = box.run("proc_attacks", "vm_readv", str(os.getpid()), str(ctypes.addressof(buf)), str(len(secret)))
    assert secret not in r.out.stdout, f"ESCAPE: process_vm_readv read host memory\n{r.describe()}"
    r.blocked_how("process_vm_readv")


def test_pidfd_getfd_steals_nothing_from_the_parent(box):
    r = box.run("kernel_attacks", "misc", "pidfd_getfd")
    r.blocked_how("pidfd_getfd")


def test_kcmp(box):
    r = box.run("kernel_attacks", "misc", "kcmp")
    r.blocked_how("kcmp")


# -- mounts and namespaces ------------------------------------------------------------------------


def _mounted_tmpfs_anywhere(marker: str = "evalbox-test") -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [ln for ln in f if marker in ln]


def test_mount_tmpfs_on_workspace_dir(box):
    r = box.run("ns_attacks", "mount", "mnt")
    r.blocked_how("mount")
    assert not _mounted_tmpfs_anywhere(), "a tmpfs named evalbox-test is mounted on the host"


def test_fsopen_fsconfig(box):
    """CVE-2022-0185 went through fsopen + fsconfig."""
    r = box.run("ns_attacks", "fsopen")
    r.blocked_how("fsopen")


@pytest.mark.parametrize("flag_name,flags", [
    ("CLONE_NEWUSER", CLONE_NEWUSER),
    ("CLONE_NEWNS", CLONE_NEWNS),
    ("CLONE_NEWNET", CLONE_NEWNET),
    ("CLONE_NEWPID", CLONE_NEWPID),
    ("CLONE_NEWUTS|CLONE_NEWIPC|CLONE_NEWCGROUP|CLONE_NEWTIME", CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWCGROUP | CLONE_NEWTIME),
])
def test_unshare(box, flag_name, flags):
    r = box.run("ns_attacks", "unshare", hex(flags))
    r.blocked_how("unshare")


def test_user_namespace_then_mount(box):
    """The classic: a user namespace grants CAP_SYS_ADMIN in it, then mount (CVE-2022-0492 path)."""
    r = box.run("ns_attacks", "userns_mount")
    r.blocked_how("unshare")
    assert not _mounted_tmpfs_anywhere()


@pytest.mark.parametrize("flag_name,flags", [
    ("CLONE_NEWUSER|CLONE_NEWNS", CLONE_NEWUSER | CLONE_NEWNS),
    ("CLONE_NEWUSER", CLONE_NEWUSER),
    ("CLONE_NEWNET", CLONE_NEWNET),
    ("CLONE_PARENT", 0x00008000),
])
def test_clone_with_namespace_or_parent_flags(box, flag_name, flags):
    r = box.run("ns_attacks", "clone", hex(flags))
    r.blocked_how("clone")


def test_clone_parent_does_not_give_the_host_a_child(box):
    children_before = children_of_caller()
    r = box.run("proc_attacks", "clone_parent")
    r.blocked_how("clone_parent")
    # if it had worked, the child would be ours (the caller's), left as a zombie for us to reap
    before = {p[0] for p in children_before}
    adopted = [p for p in children_of_caller() if p[0] not in before]
    assert not adopted, f"ESCAPE: the sandbox created children of the host caller: {adopted}"


def test_setns(box):
    r = box.run("ns_attacks", "setns")
    r.blocked_how("setns")


def test_clone3_is_enosys_and_threads_and_fork_still_work(box):
    r = box.run("ns_attacks", "clone3")
    r.assert_no_escape("clone3")
    assert r.info("clone3_plain_errno") == "38", (
        f"clone3 must answer ENOSYS (so glibc falls back to clone), got {r.info('clone3_plain_errno') or 'success'}"
        f"\n{r.describe()}")
    r.blocked_how("clone3_newuser")
    oks = r.lines("OK")
    assert any(o.startswith("pthread") for o in oks), f"pthread_create broke under the clone3 fallback\n{r.describe()}"
    assert any(o.startswith("fork") for o in oks), f"fork broke under the clone3 fallback\n{r.describe()}"
    assert r.out.exit_code == 0, r.describe()


# -- kernel interfaces only an attack needs ------------------------------------------------------


@pytest.mark.parametrize("cmd,attack", [
    ("keyctl", "keyctl"),
    ("add_key", "add_key"),
    ("bpf", "bpf"),
    ("perf", "perf_event_open"),
    ("userfaultfd", "userfaultfd"),
])
def test_kernel_interfaces(box, cmd, attack):
    r = box.run("kernel_attacks", cmd)
    r.blocked_how(attack)


def test_reboot_with_bad_magic(box):
    r = box.run("kernel_attacks", "reboot")
    r.blocked_how("reboot")


def test_kernel_modules(box):
    r = box.run("kernel_attacks", "init_module")
    r.blocked_how("init_module")
    if not r.sigsys:
        r.blocked_how("finit_module")
        r.blocked_how("delete_module")


def test_kexec(box):
    r = box.run("kernel_attacks", "kexec")
    r.blocked_how("kexec_load")
    if not r.sigsys:
        r.blocked_how("kexec_file_load")


@pytest.mark.parametrize("name", [
    "open_by_handle_at", "name_to_handle_at", "modify_ldt", "iopl", "ioperm", "chroot", "pivot_root",
    "syslog", "acct", "swapoff", "settimeofday", "clock_settime", "sethostname", "fanotify_init", "open_tree",
])
def test_other_privileged_calls(box, name):
    r = box.run("kernel_attacks", "misc", name)
    r.blocked_how(name)


# -- terminal ioctls ----------------------------------------------------------------------------

TIOCSTI = 0x5412
TIOCLINUX = 0x541C
TIOCSETD = 0x5423
TIOCCONS = 0x541D


@pytest.mark.parametrize("fd", [0, 1])
@pytest.mark.parametrize("name,req", [
    ("TIOCSTI", TIOCSTI),
    ("TIOCSTI with garbage upper bits (CVE-2019-10063)", 0xDEADBEEF00000000 | TIOCSTI),
    ("TIOCSTI with bit 32 set", 0x100000000 | TIOCSTI),
    ("TIOCLINUX", TIOCLINUX),
    ("TIOCLINUX with garbage upper bits", 0xFFFFFFFF00000000 | TIOCLINUX),
    ("TIOCSETD", TIOCSETD),
    ("TIOCCONS", TIOCCONS),
])
def test_terminal_injection_ioctls(box, fd, name, req):
    """On a pipe the kernel would answer ENOTTY: only the filter can have stopped it otherwise."""
    r = box.run("kernel_attacks", "ioctl", str(fd), hex(req))
    r.blocked_how(f"ioctl_{hex(req)}")


# -- fileless exec --------------------------------------------------------------------------------


@pytest.mark.parametrize("how,attack", [("execveat", "execveat_memfd"), ("proc", "execve_proc_fd")])
def test_memfd_fileless_exec(box, how, attack):
    """memfd_create works (runtimes use it); running a memfd does not: execveat(AT_EMPTY_PATH)
    answers ENOSYS and /proc/self/fd/N is checked by Landlock like any path (EACCES)."""
    r = box.run("kernel_attacks", "memfd_exec", how)
    r.blocked_how(attack)


def test_execveat_empty_path(box):
    r = box.run("kernel_attacks", "execveat")
    r.blocked_how("execveat_empty_path")


# -- personality and foreign ABIs --------------------------------------------------------------

READ_IMPLIES_EXEC = 0x0400000
ADDR_NO_RANDOMIZE = 0x0040000


@pytest.mark.parametrize("name,value", [
    ("READ_IMPLIES_EXEC", READ_IMPLIES_EXEC),
    ("ADDR_NO_RANDOMIZE", ADDR_NO_RANDOMIZE),
    ("PER_LINUX32|ADDR_NO_RANDOMIZE", 0x0008 | ADDR_NO_RANDOMIZE),
])
def test_personality_change_refused(box, name, value):
    r = box.run("kernel_attacks", "personality", hex(value))
    r.blocked_how("personality")


def test_i386_int80_syscall_killed(box):
    r = box.run("kernel_attacks", "int80")
    r.assert_no_escape("int $0x80")
    assert r.sigsys and r.last_try == "int80_getpid", (
        f"an i386 system call (int $0x80, getpid) must be killed by SIGSYS\n{r.describe()}")


def test_x32_syscall_killed(box):
    r = box.run("kernel_attacks", "x32")
    r.assert_no_escape("x32")
    assert r.sigsys and r.last_try == "x32_getpid", (
        f"an x32 system call number (0x40000000|39) must be killed by SIGSYS (this kernel has no x32, so "
        f"an ENOSYS answer came from the kernel, past the filter)\n{r.describe()}")


# -- io_uring -------------------------------------------------------------------------------------


def test_io_uring_setup(box):
    r = box.run("net_attacks", "io_uring")
    r.blocked_how("io_uring_setup")
