"""evalbox.shell: sh or bash, the script given with -c (or as a file when it is too long)."""

from __future__ import annotations

import pytest

import evalbox
from rt_helpers import describe, ok


def test_sh_runs_a_script_with_args_and_stdin():
    out = ok(evalbox.shell.run('read line; echo "$0|$1|$2|$line"', args=["a", "b c"], stdin=b"in\n"))
    assert out.stdout == b"sh|a|b c|in\n"
    assert evalbox.shell.plan("true").argv[:2] in (("/usr/bin/sh", "-c"), ("/bin/sh", "-c"))


def test_bash():
    out = ok(evalbox.shell.run('echo "${BASH_VERSION%%.*}"; arr=(x y); echo ${#arr[@]}', shell="bash"))
    lines = out.stdout.decode().split()
    assert lines[0].isdigit() and lines[1] == "2"


def test_workspace_holds_only_the_files_given():
    out = ok(evalbox.shell.run("ls -A; cat data.txt", files={"data.txt": "x"}))
    assert out.stdout == b"data.txt\nx"


def test_exit_code_and_limits():
    out = evalbox.shell.run("echo partial; exit 7")
    assert out.exit_code == 7 and out.stdout == b"partial\n"
    out = evalbox.shell.run("sleep 5", timeout=0.3)
    assert out.status is evalbox.Status.TIMEOUT, describe(out)


def test_long_script_goes_through_a_file():
    script = "x=0\n" + "x=$((x+1))\n" * 20000 + 'echo "$x $0 $1"\n'
    assert len(script) > 128 * 1024
    plan = evalbox.shell.plan(script, args=["arg"])
    assert plan.argv[1] == ".main.sh" and ".main.sh" in plan.files
    out = ok(evalbox.run(plan))
    assert out.stdout == b"20000 .main.sh arg\n"


def test_not_utf8_script_goes_through_a_file():
    out = ok(evalbox.shell.run(b"printf '%s' '\xff' | od -An -tx1"))
    assert out.stdout.split() == [b"ff"]


def test_missing_shell_says_how_to_install():
    with pytest.raises(evalbox.CommandNotFound, match="apt-get install zsh-nonexistent"):
        evalbox.shell.plan("true", shell="zsh-nonexistent")
