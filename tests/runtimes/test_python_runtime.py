"""evalbox.python: the interpreter running evalbox (a venv included), another interpreter, a venv's packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

import evalbox
import evalbox.process.warm
from evalbox.runtimes.common import in_system_trees
from rt_helpers import describe, ok

SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(params=["warm", "cold"], autouse=True)
def python_start(request, monkeypatch):
    """Every test here runs with warm runs (the default) and with cold ones."""
    warm = request.param == "warm"
    monkeypatch.setattr(evalbox.runtimes.python, "WARM_DEFAULT", warm)
    real_run = evalbox.runtimes.python._run

    def checked_run(plan):
        out = real_run(plan)
        assert out.warm is warm, f"a {request.param} run came back with warm={out.warm}"
        return out
    monkeypatch.setattr(evalbox.runtimes.python, "_run", checked_run)
    return request.param


@pytest.fixture
def venv_dir():
    """A venv of the system Python with one module of its own, readable by other users."""
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.fail(f"{SYSTEM_PYTHON} is needed (Debian: apt-get install python3)")
    top = tempfile.mkdtemp(prefix="evalbox-rt-venv-")
    os.chmod(top, 0o755)
    try:
        env_dir = os.path.join(top, "env")
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", env_dir], check=True)
        site = subprocess.run([os.path.join(env_dir, "bin", "python"), "-c", "import site; print(site.getsitepackages()[0])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        with open(os.path.join(site, "evalbox_rt_probe.py"), "w") as f:
            f.write("WHO = 'from the venv'\n")
        yield env_dir
    finally:
        shutil.rmtree(top)


# -- the interpreter running evalbox ----------------------------------------------------------

def test_default_interpreter_is_the_one_running_evalbox_with_its_venv():
    out = ok(evalbox.python.run("import sys, click, tqdm; print(sys.prefix); print(sys.version_info[:2])", timeout=30))
    prefix, version = out.stdout.decode().splitlines()
    assert prefix == sys.prefix
    assert version == str(tuple(sys.version_info[:2]))


def test_default_interpreter_grants_only_its_prefixes():
    plan = evalbox.python.plan("pass")
    assert plan.argv[0] == sys.executable
    granted = {m.source for m in plan.mounts}
    assert all(not m.writable for m in plan.mounts)
    wanted = {p for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix) if not in_system_trees(p)}
    # Each prefix is covered by one grant, and every grant is one of the prefixes (or a site dir inside them).
    for p in wanted:
        assert any(p == g or p.startswith(g + "/") for g in granted), (p, granted)
    for g in granted:
        assert any(g == p or g.startswith(p + "/") for p in wanted), (g, wanted)


def test_no_user_site_and_the_workspace_on_sys_path():
    helper = "VALUE = 42\n"
    code = "import sys, site, helper; print(sys.flags.no_user_site, site.ENABLE_USER_SITE, helper.VALUE)"
    out = ok(evalbox.python.run(code, files={"helper.py": helper}, timeout=30))
    assert out.stdout == b"1 False 42\n"


def test_nothing_next_to_the_venv_is_granted():
    """The directory holding the venv (a project checkout, typically) stays out of reach."""
    d = tempfile.mkdtemp(prefix="evalbox-rt-beside-venv-", dir=os.path.dirname(sys.prefix))
    try:
        os.chmod(d, 0o755)
        secret = os.path.join(d, "secret.txt")
        with open(secret, "w") as f:
            f.write("host secret")
        os.chmod(secret, 0o644)
        out = evalbox.python.run(f"print(open({secret!r}).read())", timeout=30)
        assert out.exit_code == 1 and (b"PermissionError" in out.stderr or b"FileNotFoundError" in out.stderr), describe(out)  # ENOENT in the jail
        assert b"host secret" not in out.stdout
    finally:
        shutil.rmtree(d)


# -- code, arguments, limits -----------------------------------------------------------------------

def test_args_stdin_env_and_exit_code():
    code = "import os, sys; print(sys.argv[1:], input(), os.environ['SEED']); sys.exit(3)"
    out = evalbox.python.run(code, args=["a", "b c"], stdin=b"line\n", env={"SEED": "7"}, interpreter=SYSTEM_PYTHON)
    assert out.exit_code == 3 and out.stdout == b"['a', 'b c'] line 7\n", describe(out)


def test_traceback_names_main_py():
    out = evalbox.python.run("x = 1\nraise ValueError('boom')\n", interpreter=SYSTEM_PYTHON)
    assert out.exit_code == 1
    assert b'File "/' in out.stderr and b'main.py", line 2' in out.stderr and out.stderr.endswith(b"ValueError: boom\n")


def test_limits_pass_through():
    out = evalbox.python.run("while True: pass", timeout=0.5, interpreter=SYSTEM_PYTHON)
    assert out.status is evalbox.Status.TIMEOUT
    out = evalbox.python.run("b = bytearray(400 << 20); print(len(b))", memory="64M", interpreter=SYSTEM_PYTHON)
    assert out.status is evalbox.Status.MEMORY_LIMIT or b"MemoryError" in out.stderr, describe(out)


def test_bytes_code_and_plans_for_run_many():
    plans = [evalbox.python.plan(f"print({i} * {i})".encode(), interpreter=SYSTEM_PYTHON) for i in range(6)]
    outs = evalbox.run_many(plans, progress=False)
    assert [o.stdout for o in outs] == [f"{i * i}\n".encode() for i in range(6)]


# -- other interpreters and venvs ----------------------------------------------------------------

def test_system_interpreter_needs_no_grant():
    plan = evalbox.python.plan("pass", interpreter=SYSTEM_PYTHON)
    assert plan.mounts == ()
    out = ok(evalbox.run(plan))
    assert out.stdout == b""


def test_interpreter_by_name_is_found_on_the_sandbox_path():
    plan = evalbox.python.plan("pass", interpreter="python3")
    assert plan.argv[0] in ("/usr/local/bin/python3", "/usr/bin/python3", "/bin/python3")


def test_packages_from_a_venv(venv_dir):
    code = "import sys, evalbox_rt_probe; print(evalbox_rt_probe.WHO, sys.prefix)"
    plan = evalbox.python.plan(code, packages_from=venv_dir)
    assert plan.argv[0] == os.path.join(venv_dir, "bin", "python3")
    assert [m.source for m in plan.mounts] == [venv_dir]  # its base Python is under /usr
    out = ok(evalbox.run(plan, timeout=30))
    assert out.stdout.decode() == f"from the venv {venv_dir}\n"
    # The same module is not there for another interpreter.
    out = evalbox.python.run("import evalbox_rt_probe", interpreter=SYSTEM_PYTHON)
    assert out.exit_code == 1 and b"ModuleNotFoundError" in out.stderr


def test_venv_python_as_interpreter(venv_dir):
    out = ok(evalbox.python.run("import evalbox_rt_probe; print(evalbox_rt_probe.WHO)",
                                interpreter=os.path.join(venv_dir, "bin", "python"), timeout=30))
    assert out.stdout == b"from the venv\n"


def test_interpreter_and_packages_from_must_agree(venv_dir):
    with pytest.raises(evalbox.ValidationError, match="packages_from"):
        evalbox.python.plan("pass", interpreter=SYSTEM_PYTHON, packages_from=venv_dir)
    plan = evalbox.python.plan("pass", interpreter=os.path.join(venv_dir, "bin", "python3"), packages_from=venv_dir)
    assert plan.argv[0] == os.path.join(venv_dir, "bin", "python3")


# -- errors -----------------------------------------------------------------------------------------

def test_missing_interpreter_says_how_to_install():
    with pytest.raises(evalbox.CommandNotFound, match="apt-get install python3"):
        evalbox.python.plan("pass", interpreter="/nonexistent/python3")
    with pytest.raises(evalbox.CommandNotFound, match="install"):
        evalbox.python.plan("pass", interpreter="python2.4-nonexistent")


def test_not_a_python():
    with pytest.raises(evalbox.ValidationError, match="not a working Python"):
        evalbox.python.plan("pass", interpreter="/bin/true")


def test_not_an_environment(tmp_path):
    with pytest.raises(evalbox.ValidationError, match="not a Python environment"):
        evalbox.python.plan("pass", packages_from=str(tmp_path))


def test_plan_mistakes_are_validation_errors():
    with pytest.raises(evalbox.ValidationError, match="main.py"):
        evalbox.python.plan("pass", files={"main.py": "x"})
    with pytest.raises(evalbox.ValidationError, match="unknown keyword"):
        evalbox.python.plan("pass", timout=3)
    with pytest.raises(evalbox.ValidationError, match="list of strings"):
        evalbox.python.plan("pass", args="one string")
    with pytest.raises(evalbox.ValidationError):
        evalbox.python.plan(12)
