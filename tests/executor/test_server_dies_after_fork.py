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


def dying_source(tmp_path, request_kind: str) -> str:
    """A template source whose server SIGKILLs itself right after forking for a request of this
    kind ("run": a run's copy; "slot": a slot's launcher), before its answer."""
    with open(warm._SOURCE_PATH, encoding="utf-8") as f:
        source = f.read()
    assert source.count(ANSWER) == 1, "warm_template.py changed: update this test"
    dying = tmp_path / f"warm_template_dying_at_{request_kind}.py"
    dying.write_text(source.replace(ANSWER, f'        if request.get("{request_kind}"):\n'
                                            '            os.kill(os.getpid(), 9)\n' + ANSWER))
    return str(dying)


@pytest.fixture
def dying_template(monkeypatch, tmp_path):
    """Templates (and their slots' launchers) that die right after forking a run's copy."""
    warm.close_all()
    monkeypatch.setattr(warm, "_SOURCE_PATH", dying_source(tmp_path, "run"))
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


def test_a_launcher_whose_template_died_before_naming_it_is_reaped(monkeypatch, tmp_path):
    """The same for a slot's launcher: forked, then its template died before saying its pid."""
    from evalbox.process.host import probe

    monkeypatch.setenv("EVALBOX_SLOTS", "1")
    if not warm.slots_usable(evalbox.python.plan("pass"), probe()):
        pytest.skip("resident slots are used on cgroup v1 hosts only (with a memory or pids controller)")
    warm.close_all()
    monkeypatch.setattr(warm, "_SOURCE_PATH", dying_source(tmp_path, "slot"))
    try:
        before = our_children()
        out = evalbox.python.run("print('ran once')", timeout=30)
        assert out.stdout == b"ran once\n" and not out.warm, out
        assert zombie_children() == [], "the launcher its template never named is left a zombie of the caller"
        assert not our_children() - before, "the launcher its template never named is left running"
        assert not warm.Slot.busy
    finally:
        warm.close_all()


def test_a_slot_given_back_to_a_closed_template_is_closed(monkeypatch):
    """A busy slot whose template was closed meanwhile (it died, or failed another run) is not
    kept idle in a template nobody holds: its launcher is killed and reaped."""
    from evalbox.process.host import probe

    monkeypatch.setenv("EVALBOX_SLOTS", "1")
    if not warm.slots_usable(evalbox.python.plan("pass"), probe()):
        pytest.skip("resident slots are used on cgroup v1 hosts only (with a memory or pids controller)")
    assert evalbox.python.run("pass").warm
    with evalbox.Executor() as ex:
        sid = ex.spawn(evalbox.python.plan("import time; time.sleep(30)", timeout=120), close_stdin=True)
        box = ex._running[sid].box
        slot, template = box.slot, box.launcher
        assert slot is not None and slot.pid > 0
        warm.forget(template)  # (as a failed neighbour's start does)
        ex.kill(sid)
        done = []
        while not done:
            done = [e for e in ex.poll(10) if isinstance(e, evalbox.Completed) and e.id == sid]
    assert slot not in template.idle_slots
    assert not os.path.exists(f"/proc/{slot.pid}"), f"the slot's launcher {slot.pid} is left"
    assert zombie_children() == []
