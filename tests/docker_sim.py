"""Run a command as root the way a default Docker container runs it (for tests; needs root).

    unshare -m --propagation private python tests/docker_sim.py [--no-userns-only] -- CMD...

In the private mount namespace that `unshare -m` made: every cgroup mount is remounted read-only
(Docker mounts cgroupfs read-only); then a seccomp filter like Docker's default profile refuses
what it refuses to a container without CAP_SYS_ADMIN: unshare, setns, mount, umount2, pivot_root
(EPERM), clone with any namespace flag (EPERM) and clone3 (ENOSYS, so that callers fall back to
clone); then `setpriv` limits the bounding set to Docker's default capabilities, so CMD runs as
uid 0 holding exactly those (no CAP_SYS_ADMIN).

`--userns-only` installs only the part of the filter that refuses new user namespaces (for an
unprivileged caller on a host that refuses them, as Docker's profile or a sysctl does) and leaves
the mounts and capabilities alone; it then works without root too (the filter needs
no_new_privs, which it sets).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import subprocess
import sys

# Docker's default capability set (moby's oci/caps/defaults.go)
DOCKER_CAPS = ("chown", "dac_override", "fsetid", "fowner", "mknod", "net_raw", "setgid", "setuid", "setfcap",
               "setpcap", "net_bind_service", "sys_chroot", "kill", "audit_write")
NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
NUMBERS = {  # the calls refused, per architecture
    "x86_64": {"unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "clone": 56,
               "clone3": 435},
    "aarch64": {"unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41, "clone": 220,
                "clone3": 435},
}
RET_ALLOW, RET_ERRNO = 0x7FFF0000, 0x00050000
LD_W_ABS, JEQ_K, JSET_K, RET_K = 0x20, 0x15, 0x45, 0x06
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2


def _filter(userns_only: bool) -> bytes:
    arch = os.uname().machine
    nr = NUMBERS[arch]
    refused = [] if userns_only else ["unshare", "setns", "mount", "umount2", "pivot_root"]
    prog: list[tuple[int, int, int, int]] = [(LD_W_ABS, 0, 0, 4)]  # seccomp_data.arch
    # (jump offsets are filled below: every jump lands on one of the returns at the end)
    body: list[tuple[str, tuple]] = [("ld", (LD_W_ABS, 0, 0, 0))]  # seccomp_data.nr
    for name in refused:
        body.append(("jeq", (nr[name], "eperm")))
    if userns_only:
        body.append(("jeq", (nr["unshare"], "unshare")))
    body.append(("jeq", (nr["clone3"], "enosys")))
    body.append(("jeq", (nr["clone"], "clone")))
    tail = {
        "allow": [(RET_K, 0, 0, RET_ALLOW)],
        "eperm": [(RET_K, 0, 0, RET_ERRNO | errno.EPERM)],
        "enosys": [(RET_K, 0, 0, RET_ERRNO | errno.ENOSYS)],
        # clone(flags, ...): flags are the first argument (its low word on little-endian)
        "clone": [(LD_W_ABS, 0, 0, 16), (JSET_K, 0, 1, NAMESPACE_FLAGS), (RET_K, 0, 0, RET_ERRNO | errno.EPERM),
                  (RET_K, 0, 0, RET_ALLOW)],
        # unshare(flags): refused with CLONE_NEWUSER only (the rest needs CAP_SYS_ADMIN anyway)
        "unshare": [(LD_W_ABS, 0, 0, 16), (JSET_K, 0, 1, 0x10000000), (RET_K, 0, 0, RET_ERRNO | errno.EPERM),
                    (RET_K, 0, 0, RET_ALLOW)],
    }
    arch_check_at = len(prog)
    prog.append((JEQ_K, 0, 0, AUDIT_ARCH[arch]))  # jf patched: another arch -> allow
    start = len(prog)
    n_body = len(body)
    offsets = {}
    at = start + n_body
    for label, code in tail.items():
        offsets[label] = at
        at += len(code)
    for i, (kind, args) in enumerate(body):
        here = start + i
        if kind == "ld":
            prog.append(args)
        else:
            value, label = args
            prog.append((JEQ_K, offsets[label] - here - 1, 0, value))
    # after the body: fall through to "allow", the first tail block
    for code in tail.values():
        prog.extend(code)
    code, jt, _, k = prog[arch_check_at]
    prog[arch_check_at] = (code, jt, offsets["allow"] - arch_check_at - 1, k)
    return b"".join(struct.pack("HBBI", c, jt, jf, k) for c, jt, jf, k in prog)


def install_filter(userns_only: bool) -> None:
    program = _filter(userns_only)
    buf = ctypes.create_string_buffer(program)
    fprog = struct.pack("HxxxxxxP", len(program) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if os.geteuid() != 0 and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "no_new_privs")
    fbuf = ctypes.create_string_buffer(fprog)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fbuf), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "seccomp filter")


def cgroup_mounts() -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype in ("cgroup", "cgroup2") or fields[4] == "/sys/fs/cgroup":
                out.append(fields[4])
    return out


def main(argv: list[str]) -> None:
    userns_only = "--userns-only" in argv
    cmd = argv[argv.index("--") + 1:]
    if not userns_only:
        if os.geteuid() != 0:
            sys.exit("docker_sim.py needs root (run it under `unshare -m --propagation private`)")
        # children first: a read-only parent does not stop remounting them
        for target in sorted(cgroup_mounts(), key=len, reverse=True):
            subprocess.run(["mount", "-o", "remount,bind,ro", target], check=True)
    install_filter(userns_only)
    if userns_only:
        os.execvp(cmd[0], cmd)
    bounding = "-all," + ",".join("+" + c for c in DOCKER_CAPS)
    os.execvp("setpriv", ["setpriv", "--bounding-set", bounding, "--inh-caps", "-all", "--", *cmd])


if __name__ == "__main__":
    main(sys.argv[1:])
