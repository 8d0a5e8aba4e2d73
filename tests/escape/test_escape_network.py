"""SPEC §4.2: network off means off. Every listener here is the test's own; each test checks on
the listener that nothing arrived, not only what the payload says."""

from __future__ import annotations

import os
import secrets
import socket

import pytest

import evalbox
from escape_kit import nonblocking_accept, recv_nowait
from evalbox.process.host import probe

# With the jail, network off is a private network namespace holding only its own loopback: TCP,
# UDP and route netlink sockets are allowed there, and what matters is that nothing reaches the
# host's listeners (checked on the listeners themselves below, and in test_escape_jail).
JAILED = probe().jail
ALLOWED_IN_JAIL = {"tcp", "udp6", "netlink_route"}


@pytest.mark.parametrize("kind,attack", [
    ("netlink_netfilter", "netlink_netfilter"),  # CVE-2024-1086 (nf_tables) starts here
    ("netlink_route", "netlink_route"),
    ("netlink_audit", "netlink_audit"),
    ("raw", "raw"),
    ("raw_cloexec", "raw_cloexec"),
    ("raw6_nonblock", "raw6_nonblock"),
    ("ping", "ping"),
    ("packet", "packet"),
    ("packet_dgram", "packet_dgram"),
    ("vsock", "vsock"),  # never connected: creating it is the escape (vsock reaches the hypervisor)
    ("vsock_dgram", "vsock_dgram"),
    ("tcp", "tcp"),
    ("udp6", "udp6"),
])
def test_socket_families_refused(box, kind, attack):
    if JAILED and kind in ALLOWED_IN_JAIL:
        pytest.skip("allowed in the jail's private network namespace (see test_escape_jail)")
    r = box.run("net_attacks", "socket", kind)
    r.blocked_how(attack, errnos={"EPERM", "EACCES", "ENOSYS", "EAFNOSUPPORT", "EINVAL", "EPROTONOSUPPORT"})


def test_udp_sendto_host_loopback(box):
    token = f"EVALBOX-UDP-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        r = box.run("net_attacks", "udp_send", str(port), token)
        got = recv_nowait(s)
        assert got is None, f"ESCAPE: the host UDP socket received {got!r} from the sandbox\n{r.describe()}"
    if not JAILED:
        r.blocked_how("udp_socket")


def test_tcp_connect_to_host_listener(box):
    token = f"EVALBOX-TCP-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        port = s.getsockname()[1]
        r = box.run("net_attacks", "tcp_connect", str(port), token)
        conn = nonblocking_accept(s)
        if conn is not None:
            conn[0].close()
        assert conn is None, f"ESCAPE: the host listener on 127.0.0.1:{port} accepted a connection from the sandbox\n{r.describe()}"
    if not JAILED:
        r.blocked_how("tcp_socket")


@pytest.mark.skipif(JAILED, reason="the jail's private loopback allows servers (see test_escape_jail)")
def test_tcp_bind_and_listen_inside(box):
    r = box.run("net_attacks", "tcp_listen")
    r.blocked_how("tcp_listen_socket")
    if not r.sigsys:
        r.blocked_how("tcp6_listen_socket")


@pytest.fixture
def open_dir(targets):
    """A world-writable directory in /tmp: file permissions stop nobody here, only the sandbox can."""
    return targets.dir("/tmp", 0o777)


def _unix_listener(path_or_abstract: str, kind=socket.SOCK_STREAM) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, kind)
    s.bind(path_or_abstract)
    if not path_or_abstract.startswith("\0"):
        os.chmod(path_or_abstract, 0o777)
    if kind != socket.SOCK_DGRAM:
        s.listen(8)
    return s


def _accepted_anything(s: socket.socket):
    got = []
    while (conn := nonblocking_accept(s)) is not None:
        c, _ = conn
        c.setblocking(False)
        try:
            got.append(c.recv(100))
        except BlockingIOError:
            got.append(b"(connected)")
        c.close()
    return got


def test_abstract_unix_socket_of_the_host(box):
    name = f"evalbox-test-{secrets.token_hex(8)}"
    token = f"EVALBOX-ABSTRACT-{secrets.token_hex(8)}"
    for kind in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET):
        with _unix_listener("\0" + name, kind) as s:
            r = box.run("net_attacks", "unix_connect", "@" + name, token)
            got = _accepted_anything(s)
            assert not got, f"ESCAPE: the host's abstract socket @{name} accepted {got}\n{r.describe()}"
        if JAILED:  # the jail: the host's socket does not exist in the sandbox's root or network namespace
            continue
        r.blocked_how("unix_stream_connect")
        if not r.sigsys:
            r.blocked_how("unix_seqpacket_connect")


def test_pathname_unix_socket_of_the_host(box, open_dir):
    """Like docker.sock or the D-Bus socket, but mode 0777 in a 0777 dir: only the sandbox can stop it."""
    token = f"EVALBOX-PATHSOCK-{secrets.token_hex(8)}"
    for kind in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET):
        path = os.path.join(open_dir, f"sock{kind}")
        with _unix_listener(path, kind) as s:
            r = box.run("net_attacks", "unix_connect", path, token)
            got = _accepted_anything(s)
            assert not got, f"ESCAPE: the host socket {path} accepted {got}\n{r.describe()}"
        if JAILED:  # the jail: the host's socket does not exist in the sandbox's root or network namespace
            continue
        r.blocked_how("unix_stream_connect")
        if not r.sigsys:
            r.blocked_how("unix_seqpacket_connect")


def test_datagram_to_host_log_socket(box, open_dir):
    """A /dev/log-style datagram socket (world-writable): no message may arrive."""
    path = os.path.join(open_dir, "log")
    token = f"EVALBOX-DGRAM-{secrets.token_hex(8)}"
    with _unix_listener(path, socket.SOCK_DGRAM) as s:
        r = box.run("net_attacks", "unix_dgram", path, token)
        got = recv_nowait(s)
        assert got is None, f"ESCAPE: the host datagram socket {path} received {got!r}\n{r.describe()}"
    if JAILED:  # the jail: the host's socket does not exist in the sandbox's root or network namespace
        return
    r.blocked_how("unix_dgram_socket")
    if not r.sigsys:
        r.blocked_how("unix_dgram_socketpair")
        # a stream socket cannot address a datagram peer at all; any refusal is fine there
        r.assert_no_escape("sendto from a Unix stream socket")


def test_datagram_to_abstract_host_socket(box):
    name = f"evalbox-test-log-{secrets.token_hex(8)}"
    token = f"EVALBOX-ADGRAM-{secrets.token_hex(8)}"
    with _unix_listener("\0" + name, socket.SOCK_DGRAM) as s:
        r = box.run("net_attacks", "unix_dgram", "@" + name, token)
        got = recv_nowait(s)
        assert got is None, f"ESCAPE: the host's abstract datagram socket received {got!r}\n{r.describe()}"
    if not JAILED:  # the jail: abstract names are per network namespace
        r.blocked_how("unix_dgram_socket")


def test_unix_socketpair_still_works(box):
    r = box.run("net_attacks", "socketpair")
    assert r.out.exit_code == 0 and r.lines("OK"), f"a Unix stream socketpair must keep working\n{r.describe()}"


@pytest.mark.parametrize("where", ["abstract", "open_dir"])
def test_host_cannot_reach_a_sandbox_listener_outside_the_workspace(box, targets, where):
    """A sandbox serving on a host-visible name (an abstract name, which is global to the network
    namespace, or a path outside its workspace) could squat a host service's name (X11, D-Bus,
    containerd use abstract names) and receive its clients. Nothing on the host may reach it."""
    if where == "abstract":
        name = f"@evalbox-test-squat-{secrets.token_hex(6)}"
        addr = "\0" + name[1:]
    else:
        name = addr = os.path.join(targets.dir("/tmp", 0o777), "squat.sock")
    token = f"EVALBOX-SQUAT-{secrets.token_hex(8)}"
    plan, _ = box.plan("net_attacks", "listen", name, "3", timeout=10)
    with evalbox.Executor() as ex:
        ex.spawn(plan)
        out = b""
        done = None
        while b"listening=" not in out and done is None:
            for ev in ex.poll(timeout=5):
                if isinstance(ev, evalbox.Stdout):
                    out += ev.data
                elif isinstance(ev, (evalbox.Completed, evalbox.Timeout)):
                    done = ev.output
        connected = False
        if b"listening=yes" in out:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                try:
                    c.connect(addr)
                    c.sendall(token.encode())
                    connected = True
                except OSError:
                    pass
        while done is None:
            for ev in ex.poll(timeout=5):
                if isinstance(ev, evalbox.Stdout):
                    out += ev.data
                elif isinstance(ev, (evalbox.Completed, evalbox.Timeout)):
                    done = ev.output
    text = done.stdout.decode(errors="replace")
    assert not connected, (
        f"ESCAPE: the sandbox served on the host-visible name {name!r} and a host process connected to it:\n{text}")
    assert "ESCAPED" not in text, text
