"""inotify is refused (findings 03-inotify-host-activity): the system trees are bind mounts of the
host's own inodes, so a watch on them would report host activity. Programs fall back to polling."""

import os
import tempfile
import textwrap

import evalbox

PY = "/usr/bin/python3"


def test_inotify_init_answers_enosys():
    code = textwrap.dedent("""
        import ctypes, errno, os
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK)
        print("init1", fd, errno.errorcode.get(ctypes.get_errno()))
        fd = libc.syscall(253 if os.uname().machine == "x86_64" else -1)  # inotify_init (x86_64 only)
        print("init", fd, errno.errorcode.get(ctypes.get_errno()))
    """)
    out = evalbox.run([PY, "-I", "-S", "-c", code], timeout=20)
    assert out.success, out.stderr
    assert b"init1 -1 ENOSYS" in out.stdout, out.stdout
    if os.uname().machine == "x86_64":
        assert b"init -1 ENOSYS" in out.stdout, out.stdout


def test_tail_follow_still_works_by_polling():
    # tail -f on a file another process of the sandbox appends to: the appended line is shown
    script = ("echo first > log; (sleep 1; echo second >> log) & "
              "timeout 4 tail -f -s 0.2 log; true")
    out = evalbox.run(["sh", "-c", script], timeout=20)
    assert b"first" in out.stdout and b"second" in out.stdout, (out.stdout, out.stderr)
    assert b"inotify" not in out.stderr or b"polling" in out.stderr, out.stderr
