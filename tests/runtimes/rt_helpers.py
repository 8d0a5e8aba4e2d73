"""Helpers for the language runtime and CLI tests (real programs in real sandboxes)."""

from __future__ import annotations

import evalbox


def describe(out: evalbox.Output) -> str:
    return (f"status={out.status} exit_code={out.exit_code} signal={out.signal} wall={out.wall_time:.3f}\n"
            f"--- stdout ---\n{out.stdout[-1500:]!r}\n--- stderr ---\n{out.stderr[-2500:]!r}")


def ok(out: evalbox.Output) -> evalbox.Output:
    assert out.status is evalbox.Status.EXITED and out.exit_code == 0, describe(out)
    return out
