"""What the runtimes share: finding a toolchain (sandbox PATH, then the caller's) and building the Plan."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

import evalbox
from evalbox.runtimes.common import find_tool, make_plan, outermost


@pytest.fixture
def tool_prefix():
    """An install prefix outside the system trees: PREFIX/bin/evalbox-rt-tool (a copy of echo)."""
    top = tempfile.mkdtemp(prefix="evalbox-rt-tool-")
    os.chmod(top, 0o755)
    try:
        os.makedirs(os.path.join(top, "bin"))
        os.makedirs(os.path.join(top, "lib", "marker"))
        shutil.copy("/bin/echo", os.path.join(top, "bin", "evalbox-rt-tool"))
        yield top
    finally:
        shutil.rmtree(top)


def test_tool_on_the_sandbox_path_needs_no_grant():
    tool = find_tool("sh", "install sh")
    assert tool.path in ("/usr/bin/sh", "/bin/sh") and tool.mounts == ()


def test_tool_on_the_callers_path_gets_its_prefix(tool_prefix, monkeypatch):
    monkeypatch.setenv("PATH", f"relative/dir:{tool_prefix}/bin")
    tool = find_tool("evalbox-rt-tool", "install it", prefix_marker="lib/marker")
    assert tool.path == f"{tool_prefix}/bin/evalbox-rt-tool"
    assert tool.mounts == (evalbox.Mount.ro(tool_prefix),)
    out = evalbox.run([tool.path, "found"], mounts=tool.mounts, timeout=10)
    assert out.success and out.stdout == b"found\n"
    # Without the marker, only the directory of the binary is granted.
    assert find_tool("evalbox-rt-tool", "install it", prefix_marker="lib/other").mounts == (
        evalbox.Mount.ro(f"{tool_prefix}/bin"),)


def test_missing_tool_names_the_fix(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(evalbox.CommandNotFound, match="do this to get it"):
        find_tool("evalbox-no-such-tool", "do this to get it")


def test_make_plan_merges_what_the_caller_gives():
    plan = make_plan(["true"], {"files": {"b": "2"}, "env": {"X": "caller"}, "mounts": [evalbox.Mount.ro("/opt")],
                                "timeout": 5},
                     files={"a": "1"}, env={"X": "runtime", "Y": "runtime"}, mounts=[evalbox.Mount.ro("/srv")],
                     defaults={"timeout": 60, "max_pids": 256}, runtime="test")
    assert set(plan.files) == {"a", "b"}
    assert dict(plan.env) == {"X": "caller", "Y": "runtime"}
    assert [m.source for m in plan.mounts] == ["/srv", "/opt"]
    assert plan.timeout == 5 and plan.max_pids == 256


def test_outermost():
    assert outermost(["/a/b", "/a", "/c/", "/ab", "/a/b/c"]) == ["/a", "/ab", "/c"]
