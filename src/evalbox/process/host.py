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


@functools.cache
def probe() -> Host:
    effective = caps.effective()
    sys_admin = bool(effective >> caps.CAP_SYS_ADMIN & 1)
    privileged = os.geteuid() == 0 and all(effective >> c & 1 for c in (CAP_SETUID, CAP_SETGID, caps.CAP_SETPCAP))
    seccomp = _seccomp_available()
    cgroups.sweep_stale()
    workspace.sweep_stale()
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
        jail=privileged and sys_admin and os.environ.get("EVALBOX_JAIL", "1") != "0" and _new_mount_api(),
    )
