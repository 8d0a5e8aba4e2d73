"""A warm server that dies after forking a run's copy, before saying its pid (red team 6,
finding 01, its last part): the copy never runs (it exits at its gate) and the run starts cold
once; that copy (in a jail: the jail's init) is the caller's child and is reaped, not left a
zombie of the caller."""

from __future__ import annotations

import os

import pytest

import evalbox
from evalbox.process import warm
from proc_helpers import zombie_children
from test_warm_start_overlap import our_children

# (an unprivileged caller's jail, in a user namespace, has no warm copies yet: every run is cold)
pytestmark = pytest.mark.skipif(bool(warm.why_cold_here()), reason=str(warm.why_cold_here()))

ANSWER = '        answered = _answer(control, request, fds, {"pid": pid})\n'


@pytest.fixture
def dying_template(monkeypatch, tmp_path):
    """Templates (and their slots' launchers) whose source SIGKILLs the server right after it
    forked a run's copy, before its answer."""
    with open(warm._SOURCE_PATH, encoding="utf-8") as f:
        source = f.read()
    assert source.count(ANSWER) == 1, "warm_template.py changed: update this test"
    dying = tmp_path / "warm_template_dying.py"
    dying.write_text(source.replace(ANSWER, '        if request.get("run"):\n'
                                            '            os.kill(os.getpid(), 9)\n' + ANSWER))
    warm.close_all()
    monkeypatch.setattr(warm, "_SOURCE_PATH", str(dying))
    yield
    warm.close_all()  # (the next tests get templates of the real source)


@pytest.mark.parametrize("slots", ["0", "1"])
def test_a_copy_whose_server_died_before_naming_it_is_reaped(monkeypatch, dying_template, slots):
    monkeypatch.setenv("EVALBOX_SLOTS", slots)
    before = our_children()
    out = evalbox.python.run("print('ran once')", timeout=30)
    assert out.stdout == b"ran once\n" and not out.warm, out
    assert zombie_children() == [], "the copy its server never named is left a zombie of the caller"
    assert not our_children() - before
    assert not warm.Slot.busy


WITHOUT_JAIL = """
import os, sys
sys.path[:0] = [{tests!r}, {executor!r}]
import evalbox
from evalbox.process import warm
from evalbox.process.host import probe
from proc_helpers import zombie_children
warm._SOURCE_PATH = {dying!r}
out = evalbox.python.run("print('ran once')", timeout=30)
assert not probe().jail
print(out.stdout, out.warm, zombie_children())
"""


@pytest.mark.parametrize("slots", ["0", "1"])
def test_without_the_jail_the_copy_itself_is_reaped(dying_template, slots):
    """(EVALBOX_JAIL=0 is read once per process: a child process of its own.)"""
    import subprocess
    import sys

    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = WITHOUT_JAIL.format(tests=tests, executor=os.path.join(tests, "executor"), dying=warm._SOURCE_PATH)
    env = {**os.environ, "EVALBOX_JAIL": "0", "EVALBOX_SLOTS": slots}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "b'ran once\\n' False []", done.stdout
