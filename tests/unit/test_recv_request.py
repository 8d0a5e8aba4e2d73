"""`_spawn.recv_request`: how a warm copy reads its run's request (any size, with its fds) in C."""

from __future__ import annotations

import fcntl
import os
import socket

import pytest

from evalbox.kernel import _spawn


def _pair() -> tuple[socket.socket, int]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return a, b.detach()


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_large_request_comes_whole_with_its_fds_and_the_socket_is_closed():
    sender, fd = _pair()
    payload = os.urandom(100_000)  # larger than any fixed buffer: a jail's root list can be large
    r, w = os.pipe()
    try:
        socket.send_fds(sender, [payload], [r, w, r])
        data, fds = _spawn.recv_request(fd)
        assert data == payload and len(fds) == 3
        assert all(fcntl.fcntl(f, fcntl.F_GETFD) & fcntl.FD_CLOEXEC for f in fds)
        os.write(fds[1], b"x")
        assert os.read(r, 1) == b"x"
        for f in fds:
            os.close(f)
        with pytest.raises(OSError):
            os.fstat(fd)  # closed
    finally:
        sender.close()
        os.close(r)
        os.close(w)


def test_too_many_fds_is_an_error_and_leaks_none():
    sender, fd = _pair()
    r, w = os.pipe()
    try:
        before = _open_fds()
        socket.send_fds(sender, [b"request"], [r] * 20)
        with pytest.raises(OSError):
            _spawn.recv_request(fd)
        assert _open_fds() <= before  # (fd, the channel, is closed too)
    finally:
        sender.close()
        os.close(r)
        os.close(w)


def test_a_closed_channel_gives_an_empty_request():
    sender, fd = _pair()
    sender.close()
    assert _spawn.recv_request(fd) == (b"", [])
