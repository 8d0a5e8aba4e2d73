"""run_many: order, per-item errors, bounded concurrency, progress only on a terminal."""

import io
import sys

import evalbox
from evalbox.executor import executor as executor_module


def test_order_kept_and_errors_in_place():
    plans = [["sh", "-c", f"sleep 0.0{5 - i}; echo {i}"] for i in range(5)]
    plans.insert(2, ["evalbox-no-such-command"])
    plans.append(["echo", "a\0b"])
    outs = evalbox.run_many(plans, concurrency=3, progress=False)
    assert isinstance(outs[2], evalbox.CommandNotFound)
    assert isinstance(outs[-1], evalbox.ValidationError)
    rest = [o for i, o in enumerate(outs) if i not in (2, len(outs) - 1)]
    assert [o.stdout for o in rest] == [f"{i}\n".encode() for i in range(5)]


def test_overrides_apply_to_argv_items():
    outs = evalbox.run_many([["sleep", "5"]], timeout=0.2, progress=False)
    assert outs[0].status is evalbox.Status.TIMEOUT


def test_concurrency_is_bounded(monkeypatch):
    peak = 0
    spawn = executor_module.Executor._spawn

    def counting_spawn(self, plan, **kw):
        nonlocal peak
        sid = spawn(self, plan, **kw)
        peak = max(peak, self.active_count)
        return sid

    monkeypatch.setattr(executor_module.Executor, "_spawn", counting_spawn)
    outs = evalbox.run_many([["sleep", "0.1"]] * 9, concurrency=3, progress=False)
    assert all(o.success for o in outs)
    assert peak == 3


def test_default_concurrency_is_the_cpu_count():
    from evalbox.faces.batch import default_concurrency

    assert default_concurrency() >= 1


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal(monkeypatch, capsys):
    evalbox.run_many([["true"]] * 3, progress=True)
    assert capsys.readouterr().err == ""  # not a terminal: silent
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    evalbox.run_many([["true"]] * 3, progress=True)
    assert "evalbox" in term.getvalue() and "/3" in term.getvalue()
