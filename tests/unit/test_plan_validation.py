"""Plan validation: every mistake is caught at construction with a message naming it."""

import pytest

import evalbox
from evalbox.policy.plan import parse_size


@pytest.mark.parametrize("kwargs,fragment", [
    ({"argv": []}, "argv is empty"),
    ({"argv": "echo hi"}, "list of strings"),
    ({"argv": [""]}, "argv[0] is empty"),
    ({"argv": ["echo", "a\0b"]}, "NUL"),
    ({"files": {"/etc/x": "a"}}, "relative path"),
    ({"files": {"../x": "a"}}, "leaves the workspace"),
    ({"files": {"a/../../x": "a"}}, "leaves the workspace"),
    ({"files": {"a\0": "a"}}, "NUL"),
    ({"env": {"A": "b\0"}}, "NUL"),
    ({"env": {"A=B": "c"}}, "no '='"),
    ({"timeout": -1}, "timeout"),
    ({"timeout": 0}, "timeout"),
    ({"timeout": "soon"}, "timeout"),
    ({"timeout": float("nan")}, "timeout"),
    ({"cpu_time": -2}, "cpu_time"),
    ({"memory": "12Q"}, "memory"),
    ({"memory": -5}, "memory"),
    ({"memory": True}, "memory"),
    ({"max_output": "lots"}, "max_output"),
    ({"max_pids": 0}, "max_pids"),
    ({"max_pids": 2.5}, "max_pids"),
    ({"max_open_files": 2}, "max_open_files"),
    ({"syscalls": evalbox.Syscalls} , "syscalls"),
    ({"cwd": "/abs"}, "cwd"),
    ({"mounts": ["/opt"]}, "Mount"),
])
def test_validation_messages(kwargs, fragment):
    argv = kwargs.pop("argv", ["true"])
    with pytest.raises(evalbox.ValidationError) as e:
        evalbox.Plan(argv, **kwargs)
    assert fragment in str(e.value)


def test_unknown_syscall_names():
    with pytest.raises(evalbox.ValidationError, match="no_such_call"):
        evalbox.Syscalls(deny=["no_such_call"])
    with pytest.raises(evalbox.ValidationError, match="both allowed and denied"):
        evalbox.Syscalls(allow=["mkdir"], deny=["mkdir"])


def test_mount_validation():
    with pytest.raises(evalbox.ValidationError, match="absolute"):
        evalbox.Mount.ro("relative/path")
    with pytest.raises(evalbox.ValidationError, match="namespaces"):
        evalbox.Mount.ro("/opt", "/elsewhere")
    assert evalbox.Mount.rw("/opt/", "data").dest == "data"


@pytest.mark.parametrize("text,value", [("64K", 65536), ("256M", 256 << 20), ("2G", 2 << 30), ("1.5G", 3 << 29),
                                        ("10", 10), ("256MiB", 256 << 20), ("1kb", 1024), (4096, 4096)])
def test_sizes(text, value):
    assert parse_size(text, "memory") == value


def test_defaults_follow_the_contract():
    p = evalbox.Plan(["true"])
    assert (p.timeout, p.memory, p.max_pids, p.max_output, p.max_open_files, p.max_file_size, p.network) == \
        (30.0, 256 << 20, 64, 16 << 20, 256, 16 << 20, False)
    assert p.workdir == "work"


def test_plans_are_immutable_values():
    p = evalbox.Plan(["cat"], files={"a": "x"}, env={"K": "v"})
    with pytest.raises(Exception):
        p.timeout = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        p.files["b"] = "y"  # type: ignore[index]
    q = p.replace(timeout=5)
    assert q.timeout == 5 and p.timeout == 30 and q.files == p.files
    assert p == evalbox.Plan(["cat"], files={"a": "x"}, env={"K": "v"})
    assert hash(p) == hash(evalbox.Plan(["cat"], files={"a": "x"}, env={"K": "v"}))
    assert p.files["a"] == evalbox.File("x")
