"""Linux namespaces: clone flags, and network namespaces made ahead of time (no policy)."""

from __future__ import annotations

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

NAMES = {CLONE_NEWPID: "pid", CLONE_NEWNS: "mount", CLONE_NEWIPC: "ipc", CLONE_NEWUTS: "uts",
         CLONE_NEWNET: "network", CLONE_NEWUSER: "user"}


def describe(flags: int) -> tuple[str, ...]:
    return tuple(name for flag, name in NAMES.items() if flags & flag)


SYS_UNSHARE = {"x86_64": 272, "aarch64": 97}
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFF_UP, IFF_RUNNING = 0x1, 0x40


def _loopback_up() -> None:
    """Set `lo` up in the calling thread's network namespace (ioctl, no netlink)."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP | IFF_RUNNING))


# sockstat (its sockets now), then counters any traffic moves: a run that sent or received
# anything (even a datagram to a closed port, or a packet with no route) leaves them changed
STAT_FILES = ("sockstat", "dev", "snmp", "netstat", "snmp6")


def counters(stat_fds: list[int]) -> bytes:
    """The traffic counters of a network namespace (its /proc/net files after sockstat)."""
    import os

    return b"\0".join(os.pread(fd, 65536, 0) for fd in stat_fds[1:])


def sockets_left(stats_fd: int) -> int:
    """How many sockets the network namespace of `stats_fd` (its /proc/net/sockstat, opened from
    inside it: see new_network_namespace) holds: every socket of any kind ("sockets: used", which
    includes TCP connections still closing) plus TCP's TIME_WAIT entries ("tw"). Both counters
    are the namespace's own; a read costs ~15 us (a sock_diag dump walks the host-wide TCP hash
    instead: ~6 ms here)."""
    import os

    used = tw = 0
    for line in os.pread(stats_fd, 4096, 0).split(b"\n"):
        fields = line.split()
        if line.startswith(b"sockets:"):
            used = int(fields[fields.index(b"used") + 1])
        elif line.startswith(b"TCP:"):
            tw = int(fields[fields.index(b"tw") + 1])
    return used + tw


def new_network_namespace(with_stats: bool = False, keep=None):  # type: ignore[no-untyped-def]
    """A fresh network namespace with only its loopback, up; returns an fd that keeps it alive
    (with `with_stats`: (that fd, fds of its /proc/net files STAT_FILES: sockstat first, for
    sockets_left, then its traffic counters, for counters)). `keep(fd, stats)`, if given, is
    called by the thread that made it, before the caller hears of it: it takes ownership there
    (a caller whose wait is cut short by a signal handler's exception leaks nothing).

    Made in a short-lived thread (unshare changes the calling thread's namespace only), so the
    caller's own threads never leave the host network. Needs CAP_SYS_ADMIN.
    """
    import os
    import platform
    import threading

    from evalbox.kernel import _spawn

    result: list[object] = []

    def make() -> None:
        try:
            _spawn.syscall(SYS_UNSHARE[platform.machine() if platform.machine() != "arm64" else "aarch64"],
                           CLONE_NEWNET)
            fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _loopback_up()
                # (seq files of this namespace: read again from offset 0, each is made anew)
                stats: list[int] = []
                try:
                    for name in STAT_FILES if with_stats else ():
                        if os.path.exists(f"/proc/thread-self/net/{name}"):
                            stats.append(os.open(f"/proc/thread-self/net/{name}", os.O_RDONLY | os.O_CLOEXEC))
                    if keep is not None:
                        keep(fd, stats)
                except BaseException:
                    for stat in stats:
                        os.close(stat)
                    raise
            except BaseException:
                os.close(fd)
                raise
            result.append((fd, stats) if with_stats else fd)
        except BaseException as e:  # reported in the caller's thread
            result.append(e)

    t = threading.Thread(target=make, name="evalbox-netns")
    t.start()
    t.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]  # type: ignore[return-value]
