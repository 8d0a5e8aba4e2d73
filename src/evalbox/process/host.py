"""What this host can enforce, probed once per process (and reported by `evalbox check`)."""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
from dataclasses import dataclass

from evalbox.kernel import capabilities as caps
from evalbox.kernel import cgroups, landlock
from evalbox.kernel.syscall_table import native_arch
from evalbox.process import workspace

CAP_SETGID, CAP_SETUID = 6, 7
PR_GET_SECCOMP = 21
PR_SET_NO_NEW_PRIVS = 38

# Landlock floors (see README "Security model"): truncation control needs ABI 3 (Linux 6.2);
# a sandbox that shares the caller's uid needs ABI 6 (Linux 6.12) so it cannot signal the
# caller's other processes.
MIN_LANDLOCK_ABI = 3
MIN_LANDLOCK_ABI_SAME_UID = 6


@dataclass(frozen=True)
class Host:
    kernel: str
    arch: str
    euid: int
    landlock_abi: int
    seccomp: bool
    seccomp_notify: bool
    pidfd: bool
    switches_uid: bool  # root with CAP_SETUID/SETGID/SETPCAP: each sandbox gets a uid of its own
    cgroup: cgroups.Layout
    user_namespaces: bool
    private_shm: bool  # CAP_SYS_ADMIN: a mount namespace for a private /dev/shm tmpfs
    has_setpcap: bool  # the bounding set can be cleared and securebits locked
    jail: bool = False  # namespaces for promise 9 (PID + init, IPC, UTS, mount, network): see policy/jail.py
    jail_userns: bool = False  # the jail is built inside a user namespace of its own (unprivileged caller)
    no_jail_reason: str = ""  # without a jail: why, and what the user can do about it


def _seccomp_available() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_GET_SECCOMP, 0, 0, 0, 0) < 0:
        return ctypes.get_errno() != errno.EINVAL
    return True


def _user_namespaces() -> bool:
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            if int(f.read()) == 0:
                return False
    except (OSError, ValueError):
        return False
    try:
        with open("/proc/sys/kernel/unprivileged_userns_clone") as f:
            return f.read().strip() != "0" or os.geteuid() == 0
    except OSError:
        return True


def _new_mount_api() -> bool:
    """The jail builds its root with fsopen/open_tree/move_mount/mount_setattr (Linux 5.12+; a
    container's seccomp profile may refuse them): try fsopen and mount_setattr."""
    from evalbox.kernel import _spawn
    from evalbox.kernel.syscall_table import ARCHES

    nr = ARCHES[native_arch()]
    try:
        os.close(_spawn.syscall(nr["fsopen"], b"tmpfs\0", 1))  # FSOPEN_CLOEXEC
    except OSError:
        return False
    try:
        _spawn.syscall(nr["mount_setattr"], -1, b"\0", 0, 0, 0)
    except OSError as e:
        return e.errno not in (errno.ENOSYS, errno.EPERM)
    return True


def _kernel_at_least(major: int, minor: int) -> bool:
    parts = platform.release().split(".")
    try:
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (IndexError, ValueError):
        return False


def _read_sysctl(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


USERNS_STEPS = {1: "create user namespaces", 2: "map your uid and gid", 3: "mount a tmpfs (mount, fsopen)",
                4: "mount a /proc of its own", 5: "set up a loopback interface"}


def why_no_user_namespace(step: int, err: int) -> str:
    """What keeps an unprivileged caller's jail from being built here, in the user's terms."""
    what = f"the host refused to {USERNS_STEPS.get(step, f'step {step}')} ({os.strerror(err)})"
    if _read_sysctl("/proc/sys/user/max_user_namespaces") == "0":
        return (f"{what}: user namespaces are off (sysctl user.max_user_namespaces=0); as root, "
                "`sysctl -w user.max_user_namespaces=15000` turns them on")
    if _read_sysctl("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return (f"{what}: unprivileged user namespaces are off (sysctl kernel.unprivileged_userns_clone=0); as "
                "root, `sysctl -w kernel.unprivileged_userns_clone=1` turns them on")
    if step in (2, 3) and _read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return (f"{what}: AppArmor restricts unprivileged user namespaces (Ubuntu 23.10+, "
                "kernel.apparmor_restrict_unprivileged_userns=1); give this Python an AppArmor profile with "
                "`userns,` or, as root, `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`")
    if step == 1 and err == errno.ENOSPC:
        return (f"{what}: the limit of user namespaces is reached (user.max_user_namespaces, or 32 nested "
                "levels); raise the sysctl or run fewer nested containers")
    if step == 1 and err in (errno.EINVAL, errno.ENOSYS):
        return f"{what}: this kernel has no user namespaces (CONFIG_USER_NS)"
    if step == 1:
        return (f"{what}: a container's seccomp profile (Docker's default) or a security module refuses "
                "them; run evalbox as root with CAP_SYS_ADMIN (docker run --cap-add SYS_ADMIN --security-opt "
                "apparmor=unconfined), or allow user namespaces (docker run --security-opt seccomp=unconfined)")
    if step == 4:
        return (f"{what}: the host's /proc has masked parts (as in a container), so the kernel refuses a "
                "fresh /proc to an unprivileged user; run evalbox as root with CAP_SYS_ADMIN")
    return f"{what}; run evalbox as root with CAP_SYS_ADMIN for the jail"


def _jail_mode(privileged: bool, sys_admin: bool) -> tuple[bool, bool, str]:
    """(jail, in a user namespace, why not): root with CAP_SYS_ADMIN builds the jail directly; an
    unprivileged caller in a user namespace of its own where the host allows it (tried for real)."""
    if os.environ.get("EVALBOX_JAIL", "1") == "0":
        return False, False, "EVALBOX_JAIL=0 turns it off; unset it for the jail"
    if privileged and sys_admin:
        if _new_mount_api():
            return True, False, ""
        return False, False, ("the kernel or a seccomp profile refuses the new mount API (fsopen, open_tree, "
                              "move_mount, mount_setattr: Linux 5.12+) that builds the jail's root")
    if os.geteuid() == 0:
        return False, False, ("root without CAP_SYS_ADMIN (a container): no namespaces can be made; run the "
                              "container with --cap-add SYS_ADMIN --security-opt apparmor=unconfined (Docker) "
                              "for the jail")
    from evalbox.kernel import _spawn

    step, err = _spawn.probe_user_namespace()
    if step == 0:
        return True, True, ""
    return False, False, why_no_user_namespace(step, err)


@functools.cache
def probe() -> Host:
    effective = caps.effective()
    sys_admin = bool(effective >> caps.CAP_SYS_ADMIN & 1)
    privileged = os.geteuid() == 0 and all(effective >> c & 1 for c in (CAP_SETUID, CAP_SETGID, caps.CAP_SETPCAP))
    seccomp = _seccomp_available()
    cgroups.sweep_stale()
    workspace.sweep_stale()
    jail, jail_userns, no_jail_reason = _jail_mode(privileged, sys_admin)
    return Host(
        kernel=platform.release(),
        arch=native_arch(),
        euid=os.geteuid(),
        landlock_abi=landlock.abi_version(),
        seccomp=seccomp,
        seccomp_notify=seccomp and _kernel_at_least(5, 5),
        pidfd=hasattr(os, "pidfd_open"),
        switches_uid=privileged,
        cgroup=cgroups.layout(),
        user_namespaces=_user_namespaces(),
        private_shm=privileged and sys_admin and os.path.isdir("/dev/shm"),
        has_setpcap=bool(effective >> caps.CAP_SETPCAP & 1),
        jail=jail,
        jail_userns=jail_userns,
        no_jail_reason=no_jail_reason,
    )
