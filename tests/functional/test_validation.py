"""Bad plans are refused before anything runs, with a message that names what to fix."""

from __future__ import annotations

import dataclasses
import os
import re

import pytest

import evalbox
from ft_helpers import ok

V = evalbox.ValidationError


def refused(pattern: str, *args, **kwargs) -> str:
    """Assert Plan(*args, **kwargs) raises ValidationError whose message matches `pattern`."""
    with pytest.raises(V) as info:
        evalbox.Plan(*args, **kwargs)
    msg = str(info.value)
    assert re.search(pattern, msg, re.IGNORECASE | re.DOTALL), f"message {msg!r} does not match {pattern!r}"
    assert isinstance(info.value, evalbox.SandboxError)
    return msg


def test_error_hierarchy():
    for cls in (evalbox.ValidationError, evalbox.CommandNotFound, evalbox.UnsupportedKernel):
        assert issubclass(cls, evalbox.SandboxError)


def test_empty_argv():
    refused(r"argv.*empty|empty.*argv", [])


def test_argv_as_string():
    msg = refused(r"argv", "echo hi")
    assert "echo hi" in msg and "list" in msg


def test_empty_program_name():
    refused(r"argv\[0\]|program", [""])


def test_nul_in_argv():
    refused(r"argv\[1\].*NUL|NUL.*argv\[1\]", ["echo", "a\0b"])


def test_nul_in_env_value_and_name():
    refused(r"env.*KEY.*NUL|NUL.*KEY", ["true"], env={"KEY": "v\0"})
    refused(r"env.*NUL", ["true"], env={"K\0": "v"})


def test_bad_env_name():
    refused(r"env name.*'A=B'", ["true"], env={"A=B": "v"})


def test_nul_in_file_path():
    refused(r"file path.*NUL|NUL.*file path", ["true"], files={"a\0b": "x"})


def test_absolute_file_path():
    msg = refused(r"/etc/evil", ["true"], files={"/etc/evil": "x"})
    assert "relative" in msg or "workspace" in msg


@pytest.mark.parametrize("path", ["../x", "a/../../x", "a/../../../etc/passwd", ".."])
def test_file_path_leaving_workspace(path):
    msg = refused(re.escape(repr(path)), ["true"], files={path: "x"})
    assert "workspace" in msg or ".." in msg


def test_file_path_with_harmless_dotdot_is_not_the_point_but_must_not_escape():
    """'a/../b' either stays inside the workspace or is refused; it never writes outside."""
    try:
        plan = evalbox.Plan(["cat", "b"], files={"a/../b": "inside"}, timeout=10)
    except V:
        return
    out = ok(evalbox.run(plan))
    assert out.stdout == b"inside"


def test_bad_file_content_type():
    refused(r"content|str or bytes", ["true"], files={"x": 42})


def test_cwd_leaving_workspace():
    refused(r"cwd.*'\.\./\.\.'", ["true"], cwd="../..")
    refused(r"cwd.*'/tmp'", ["true"], cwd="/tmp")


@pytest.mark.parametrize("field", ["timeout", "cpu_time"])
@pytest.mark.parametrize("value", [-1, 0, "abc", float("nan"), float("inf"), True])
def test_bad_seconds(field, value):
    refused(field, ["true"], **{field: value})


@pytest.mark.parametrize("field", ["memory", "max_output", "max_file_size"])
@pytest.mark.parametrize("value", [-1, 0, "-5M", "0M", "lots", "12Q", "", True, False, 1.5j])
def test_bad_sizes(field, value):
    msg = refused(field, ["true"], **{field: value})
    if isinstance(value, str) and value:
        assert value in msg, msg


def test_memory_12Q_message():
    msg = refused(r"memory", ["true"], memory="12Q")
    assert "12Q" in msg and re.search(r"K, M, G|256M", msg), msg


@pytest.mark.parametrize("field", ["max_pids", "max_open_files"])
@pytest.mark.parametrize("value", [-1, 0, True, "8", 2.5])
def test_bad_counts(field, value):
    refused(field, ["true"], **{field: value})


def test_sizes_accepted():
    plan = evalbox.Plan(["true"], memory="64K", max_output="1M", max_file_size="2G")
    assert (plan.memory, plan.max_output, plan.max_file_size) == (64 << 10, 1 << 20, 2 << 30)
    assert evalbox.Plan(["true"], memory=12345).memory == 12345
    assert evalbox.Plan(["true"], memory=None).memory is None
    assert evalbox.Plan(["true"], timeout="2.5").timeout == 2.5


def test_defaults_match_spec():
    plan = evalbox.Plan(["true"])
    assert plan.timeout == 30
    assert plan.cpu_time is None
    assert plan.memory == 256 << 20
    assert plan.max_pids == 64
    assert plan.max_output == 16 << 20
    assert plan.max_open_files == 256
    assert plan.max_file_size == 16 << 20
    assert plan.network is False
    assert plan.cwd is None


def test_unknown_syscall_name():
    with pytest.raises(V) as info:
        evalbox.Syscalls(deny=["mkdri"])
    assert "mkdri" in str(info.value)
    with pytest.raises(V) as info:
        evalbox.Plan(["true"], syscalls=evalbox.Syscalls(allow=["not_a_syscall"]))
    assert "not_a_syscall" in str(info.value)


def test_syscall_both_allowed_and_denied():
    with pytest.raises(V) as info:
        evalbox.Syscalls(allow=["mkdir"], deny=["mkdir"])
    assert "mkdir" in str(info.value)


def test_relative_mount_source():
    with pytest.raises(V) as info:
        evalbox.Mount.ro("relative/dir")
    assert "relative/dir" in str(info.value)


def test_mount_dest_leaving_workspace():
    with pytest.raises(V) as info:
        evalbox.Mount.ro("/usr/share", "../share")
    assert "../share" in str(info.value)


def test_missing_mount_source_raised_at_run(private_tmp):
    missing = "/nonexistent/evalbox-functest-missing-dir"
    plan = evalbox.Plan(["true"], mounts=[evalbox.Mount.ro(missing)])  # a plan can be built ahead of time
    with pytest.raises(V) as info:
        evalbox.run(plan)
    assert missing in str(info.value)
    assert os.listdir(private_tmp) == [], "a refused run left its workspace behind"


def test_command_not_found_message(private_tmp):
    with pytest.raises(evalbox.CommandNotFound) as info:
        evalbox.run(["no-such-program-xyz", "--help"], timeout=5)
    msg = str(info.value)
    assert "no-such-program-xyz" in msg
    assert "/usr/bin" in msg and "PATH" in msg, msg  # says where it looked
    assert isinstance(info.value, evalbox.SandboxError)
    assert os.listdir(private_tmp) == [], "a refused run left its workspace behind"


def test_command_not_found_relative_path():
    with pytest.raises(evalbox.CommandNotFound) as info:
        evalbox.run(["./missing.sh"], timeout=5)
    assert "missing.sh" in str(info.value)


def test_command_not_found_absolute_path():
    with pytest.raises(evalbox.CommandNotFound) as info:
        evalbox.run(["/usr/bin/definitely-not-here"], timeout=5)
    assert "/usr/bin/definitely-not-here" in str(info.value)


def test_plan_is_immutable():
    plan = evalbox.Plan(["cat", "x"], files={"x": "1"}, env={"A": "1"})
    with pytest.raises(TypeError):
        plan.files["y"] = "2"  # type: ignore[index]
    with pytest.raises(TypeError):
        plan.env["B"] = "2"  # type: ignore[index]
    with pytest.raises(TypeError):
        del plan.files["x"]  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.timeout = 1  # type: ignore[misc]
    with pytest.raises((AttributeError, TypeError)):
        plan.argv.append("y")  # type: ignore[attr-defined]
    assert dict(plan.files) == {"x": evalbox.File("1")}


def test_plan_does_not_alias_caller_containers():
    files = {"x": "1"}
    argv = ["cat", "x"]
    plan = evalbox.Plan(argv, files=files)
    files["x"] = "changed"
    argv.append("y")
    assert plan.files["x"].content == b"1"
    assert plan.argv == ("cat", "x")


def test_replace():
    plan = evalbox.Plan(["sh", "-c", "echo $A"], env={"A": "a"}, timeout=30)
    short = plan.replace(timeout=5)
    assert short.timeout == 5 and plan.timeout == 30
    assert short.argv == plan.argv and dict(short.env) == {"A": "a"}
    assert short is not plan
    with pytest.raises(V):
        plan.replace(timeout=-1)
    with pytest.raises(V):
        plan.replace(memory="12Q")
    out = ok(evalbox.run(short))
    assert out.stdout == b"a\n"


def test_plans_are_hashable_values():
    a = evalbox.Plan(["true"], files={"x": "1"}, env={"A": "1"})
    b = evalbox.Plan(["true"], files={"x": "1"}, env={"A": "1"})
    assert a == b and hash(a) == hash(b)
    assert a != a.replace(timeout=1)


def test_run_with_plan_and_overrides():
    plan = evalbox.Plan(["sh", "-c", "echo $X"], env={"X": "1"})
    assert ok(evalbox.run(plan, env={"X": "2"})).stdout == b"2\n"
    with pytest.raises(V):
        evalbox.run(["true"], timeout=0)
