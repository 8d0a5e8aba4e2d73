"""What each Plan field does to a real run."""

from __future__ import annotations

import errno
import os
import socket

import pytest

import evalbox
from ft_helpers import describe, ok, py, sh

S = evalbox.Status
MiB = 1 << 20


# -- files ---------------------------------------------------------------------------------------

def test_files_str_bytes_executable_and_nested():
    files = {
        "text.txt": "héllo\n",
        "blob.bin": bytes(range(256)),
        "run.sh": evalbox.File("#!/bin/sh\necho ran-$1\n", executable=True),
        "plain.sh": evalbox.File(b"#!/bin/sh\necho x\n"),
        "a/b/c/deep.txt": "deep",
    }
    script = (
        "cat text.txt; od -An -tx1 blob.bin | tr -d ' \\n' | head -c 16; echo;"
        " stat -c '%n %a' run.sh plain.sh; ./run.sh ok; cat a/b/c/deep.txt; echo;"
        " ./plain.sh; echo plain-rc=$?"
    )
    out = sh(script, files=files)
    assert out.status is S.EXITED and out.exit_code == 0, describe(out)
    lines = out.stdout.decode().splitlines()
    assert lines[0] == "héllo", describe(out)
    assert lines[1] == "0001020304050607", describe(out)
    assert lines[2].split()[1] in ("755", "700"), describe(out)
    assert lines[3].split()[1] in ("644", "600"), describe(out)
    assert lines[4:6] == ["ran-ok", "deep"], describe(out)
    assert lines[6] == "plain-rc=126", describe(out)


def test_binary_file_is_byte_exact():
    blob = os.urandom(200_000)
    out = ok(evalbox.run(["sha256sum", "blob"], files={"blob": blob}, timeout=10))
    import hashlib

    assert out.stdout.split()[0].decode() == hashlib.sha256(blob).hexdigest()


# -- stdin ---------------------------------------------------------------------------------------

def test_stdin_delivered():
    out = ok(evalbox.run(["cat"], stdin=b"line1\nline2\n", timeout=10))
    assert out.stdout == b"line1\nline2\n"


def test_stdin_str_and_empty_stdin_is_eof():
    out = ok(evalbox.run(["wc", "-c"], stdin="abc", timeout=10))
    assert out.stdout.strip() == b"3"
    out = ok(evalbox.run(["cat"], timeout=10))  # no stdin: immediate EOF, no hang
    assert out.stdout == b""


def test_large_stdin_echoed_without_deadlock():
    data = os.urandom(10 * MiB)
    out = evalbox.run(["cat"], stdin=data, timeout=30, max_output="32M")
    assert out.status is S.EXITED and out.exit_code == 0, describe(out)
    assert len(out.stdout) == len(data) and out.stdout == data


WRITE_THEN_READ = r"""
import sys
sys.stdout.buffer.write(b"o" * (5 << 20))
sys.stdout.buffer.flush()
data = sys.stdin.buffer.read()
sys.stderr.write(f"read {len(data)} {data[:1]!r}{data[-1:]!r}\n")
"""


def test_write_5mb_before_reading_5mb_stdin():
    out = py(WRITE_THEN_READ, stdin=b"i" * (5 * MiB), timeout=30, max_output="32M")
    assert out.status is S.EXITED and out.exit_code == 0, describe(out)
    assert len(out.stdout) == 5 * MiB
    assert out.stderr == b"read 5242880 b'i'b'i'\n", describe(out)


# -- env and cwd ---------------------------------------------------------------------------------

def test_env_passed():
    out = ok(sh('printf "%s|%s|%s" "$SEED" "$WITH_SPACE" "$LANG"', env={"SEED": "42", "WITH_SPACE": "a b=c", "LANG": "C"}))
    assert out.stdout == b"42|a b=c|C"


def test_cwd_relative_to_workspace_root():
    out = ok(sh("pwd; cat f.txt", cwd="work/sub", files={"sub/f.txt": "in-sub"}))
    pwd, content = out.stdout.decode().splitlines()
    assert pwd.endswith("/work/sub"), describe(out)
    assert content == "in-sub"


def test_cwd_created_when_missing_and_other_workspace_dir():
    out = ok(sh("pwd; touch here", cwd="tmp/newdir"))
    assert out.stdout.decode().strip().endswith("/tmp/newdir"), describe(out)


# -- mounts --------------------------------------------------------------------------------------

def _make_tree(root, mode_dir, mode_file):
    (root / "in.txt").write_text("mounted data\n")
    os.chmod(root / "in.txt", mode_file)
    os.chmod(root, mode_dir)


def test_mount_ro_readable_default_permissions(host_dir):
    """A plain host directory as tempfile makes it (0700, the caller's) through Mount.ro.

    For a normal user the sandbox keeps their uid and reads it. On a root host every sandbox is
    its own uid, so a 0700 tree cannot be reached: evalbox refuses the plan up front and says
    which chmod fixes it, rather than letting the program fail with EACCES.
    """
    (host_dir / "in.txt").write_text("mounted data\n")
    if os.geteuid() == 0:
        with pytest.raises(evalbox.ValidationError, match=r"chmod o\+rX"):
            sh(f"cat {host_dir}/in.txt", mounts=[evalbox.Mount.ro(str(host_dir))])
        return
    out = sh(f"cat {host_dir}/in.txt", mounts=[evalbox.Mount.ro(str(host_dir))])
    assert out.status is S.EXITED and out.exit_code == 0, describe(out)
    assert out.stdout == b"mounted data\n", describe(out)


def test_mount_rw_writable_default_permissions(host_dir):
    """Mount.rw on a plain host directory (0700, the caller's): see the ro case for root hosts."""
    if os.geteuid() == 0:
        with pytest.raises(evalbox.ValidationError, match=r"chmod o\+rwX"):
            sh(f"echo written > {host_dir}/out.txt", mounts=[evalbox.Mount.rw(str(host_dir))])
        return
    out = sh(f"echo written > {host_dir}/out.txt && ls {host_dir}", mounts=[evalbox.Mount.rw(str(host_dir))])
    assert out.status is S.EXITED and out.exit_code == 0, describe(out)
    assert (host_dir / "out.txt").read_text() == "written\n"


def test_mount_ro_not_writable(host_dir):
    """Even when file permissions would allow it (0777), a read-only mount cannot be written."""
    _make_tree(host_dir, 0o777, 0o666)
    script = (
        f"cat {host_dir}/in.txt; "
        f"echo x >> {host_dir}/in.txt; echo append=$?; "
        f"echo x > {host_dir}/new.txt; echo create=$?; "
        f"rm -f {host_dir}/in.txt; echo rm=$?; "
        f"mkdir {host_dir}/d; echo mkdir=$?"
    )
    out = sh(script, mounts=[evalbox.Mount.ro(str(host_dir))])
    assert out.status is S.EXITED, describe(out)
    lines = out.stdout.decode().splitlines()
    assert lines[0] == "mounted data", describe(out)
    assert all(not line.endswith("=0") for line in lines[1:]), describe(out)
    assert (host_dir / "in.txt").read_text() == "mounted data\n"
    assert sorted(os.listdir(host_dir)) == ["in.txt"]


def test_mount_rw_writable_when_permissions_allow(host_dir):
    _make_tree(host_dir, 0o777, 0o666)
    script = f"echo more >> {host_dir}/in.txt && echo new > {host_dir}/new.txt && mkdir {host_dir}/d && echo ok"
    out = ok(sh(script, mounts=[evalbox.Mount.rw(str(host_dir))]))
    assert out.stdout == b"ok\n"
    assert (host_dir / "in.txt").read_text() == "mounted data\nmore\n"
    assert (host_dir / "new.txt").read_text() == "new\n"


def test_mount_outside_is_not_visible_without_mount(host_dir):
    _make_tree(host_dir, 0o755, 0o644)
    out = sh(f"cat {host_dir}/in.txt")
    assert out.exit_code != 0 and b"mounted data" not in out.stdout, describe(out)


def test_mount_relative_dest_appears_in_workspace(host_dir):
    _make_tree(host_dir, 0o755, 0o644)
    out = ok(sh("cat data/in.txt && ls data", mounts=[evalbox.Mount.ro(str(host_dir), "data")]))
    assert out.stdout == b"mounted data\nin.txt\n", describe(out)


def test_mount_nested_relative_dest(host_dir):
    _make_tree(host_dir, 0o755, 0o644)
    out = ok(sh("cat inputs/ds/in.txt", mounts=[evalbox.Mount.ro(str(host_dir), "inputs/ds")]))
    assert out.stdout == b"mounted data\n"


# -- network -------------------------------------------------------------------------------------

CONNECT = r"""
import socket, sys
port = int(sys.argv[1])
try:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"hello from sandbox")
    s.close()
    print("connected")
except OSError as e:
    print(f"refused {e.errno}")
"""


@pytest.fixture
def listener():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)
    try:
        yield srv
    finally:
        srv.close()


def _accepted(srv) -> bytes | None:
    try:
        conn, _ = srv.accept()
    except BlockingIOError:
        return None
    with conn:
        conn.settimeout(5)
        return conn.recv(100)


def test_network_off_blocks_tcp_connect(listener):
    port = listener.getsockname()[1]
    out = py(CONNECT, str(port), network=False)
    assert b"connected" not in out.stdout, describe(out)
    assert _accepted(listener) is None, "the listener received a connection from a network=False sandbox"
    # the program is told no (an error it can report), or killed by seccomp: never connected
    assert out.stdout.startswith(b"refused") or out.status is S.SIGNALED, describe(out)


def test_network_on_allows_tcp_connect(listener):
    port = listener.getsockname()[1]
    out = ok(py(CONNECT, str(port), network=True))
    assert out.stdout == b"connected\n", describe(out)
    assert _accepted(listener) == b"hello from sandbox"


# -- syscalls ------------------------------------------------------------------------------------

MKDIR = r"""
import os
try:
    os.mkdir("newdir")
    print("made")
except OSError as e:
    print(f"errno {e.errno}")
"""


def test_syscalls_deny_mkdir_gives_eperm():
    out = ok(py(MKDIR, syscalls=evalbox.Syscalls(deny=["mkdir"])))
    assert out.stdout == f"errno {errno.EPERM}\n".encode(), describe(out)
    shell = sh("mkdir x; echo rc=$?", syscalls=evalbox.Syscalls(deny=["mkdir"]))
    assert shell.stdout == b"rc=1\n" and b"Operation not permitted" in shell.stderr, describe(shell)


def test_mkdir_allowed_by_default():
    out = ok(py(MKDIR))
    assert out.stdout == b"made\n"


PERSONALITY = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
ADDR_NO_RANDOMIZE = 0x0040000
r = libc.personality(ADDR_NO_RANDOMIZE)
print(r, ctypes.get_errno() if r == -1 else 0)
"""


def test_syscalls_allow_lifts_default_refusal():
    default = ok(py(PERSONALITY))
    assert default.stdout == f"-1 {errno.EPERM}\n".encode(), describe(default)
    allowed = ok(py(PERSONALITY, syscalls=evalbox.Syscalls(allow=["personality"])))
    assert allowed.stdout == b"0 0\n", describe(allowed)
    assert any("personality" in w for w in allowed.protections.weakened), allowed.protections


def test_syscalls_plan_as_mapping():
    out = ok(py(MKDIR, syscalls={"deny": ["mkdir"]}))
    assert out.stdout == f"errno {errno.EPERM}\n".encode()
