"""A signal handler's exception while a new resident slot is made (red team 6, finding 05): the
slot's launcher (the caller's child) is killed and reaped, its cgroup removed, its fds closed,
whether the exception reaches the caller while it waits or cuts the launcher's "ready" short;
the next run works."""

from __future__ import annotations

import os
import time

import pytest

import evalbox
from evalbox.process import netns, warm
from evalbox.process.host import probe
from proc_helpers import alive, zombie_children

# (an unprivileged caller's jail, in a user namespace, has no warm copies yet: every run is cold)
pytestmark = pytest.mark.skipif(bool(warm.why_cold_here()), reason=str(warm.why_cold_here()))


def slot_fds() -> set[str]:
    """Open pidfds and cgroup files of this process, but those of evalbox's live servers."""
    held = {str(fd) for fd in warm.held_fds()}
    found = set()
    for name in set(os.listdir("/proc/self/fd")) - held:
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if "pidfd" in target or "/cgroup" in target:
            found.add(name)
    return found


@pytest.mark.parametrize("where", ["caller", "ready"])
def test_an_interrupt_while_a_slot_is_made_leaves_no_launcher_nor_group(monkeypatch, where):
    monkeypatch.setenv("EVALBOX_SLOTS", "1")
    if not warm.slots_usable(evalbox.python.plan("pass"), probe()):
        pytest.skip("resident slots are used on cgroup v1 hosts only (with a memory or pids controller)")
    assert evalbox.python.run("pass").warm
    warm.close_all()  # the next run makes a new slot
    made: list[warm.Slot] = []
    groups: list[dict[str, str]] = []
    making: list[int] = []
    init, make = warm.Slot.__init__, warm.Slot._make

    def making_a_slot(self, template, layout):
        making.append(1)  # (in the caller's thread, before the spawner thread is asked)
        init(self, template, layout)

    def noted(self, template, layout):
        made.append(self)
        make(self, template, layout)
        groups.append(dict(self.group.dirs))

    monkeypatch.setattr(warm.Slot, "__init__", making_a_slot)
    monkeypatch.setattr(warm.Slot, "_make", noted)
    if where == "caller":
        # the caller, waiting for the spawner thread to make the slot, gets the exception (a
        # handler run in its thread); the slot is made all the same, then undone
        check_released = netns.check_released
        hit = []

        def interrupted(*args, stop=None, **kwargs):
            if making and not hit and stop is not None:
                hit.append(1)
                end = time.monotonic() + 60
                while not stop() and time.monotonic() < end:
                    time.sleep(0.001)
                raise KeyboardInterrupt
            return check_released(*args, stop=stop, **kwargs)

        monkeypatch.setattr(netns, "check_released", interrupted)
    else:
        receive = warm._Server._receive

        def interrupted(self, timeout):
            if isinstance(self, warm.Slot) and not groups:
                groups.append(dict(self.group.dirs))
                raise KeyboardInterrupt  # the launcher exists, "ready" is not read yet
            return receive(self, timeout)

        monkeypatch.setattr(warm._Server, "_receive", interrupted)
    before = slot_fds()
    with pytest.raises(KeyboardInterrupt):
        evalbox.python.run("pass", timeout=30)
    monkeypatch.undo()
    monkeypatch.setenv("EVALBOX_SLOTS", "1")
    assert made and groups and groups[0], "no slot was made"
    launcher = made[0].pid
    assert launcher > 0
    assert not alive(launcher), f"the launcher {launcher} is left running"
    assert launcher not in zombie_children(), f"the launcher {launcher} is left a zombie"
    assert zombie_children() == []
    left = [d for d in groups[0].values() if os.path.exists(d)]
    assert not left, f"the slot's cgroup is left: {left}"
    assert not warm.Slot.busy
    assert not slot_fds() - before, "the launcher's pidfd or its group's files are left open"
    again = evalbox.python.run("print('next')", timeout=30)
    assert again.stdout == b"next\n" and again.warm, again
