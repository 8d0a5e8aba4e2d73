"""Which tests apply to the user running the suite (README: the suite runs as root and as an
unprivileged user; .ci/run does both)."""

from __future__ import annotations

import os

import pytest

IS_ROOT = os.geteuid() == 0


def needs_root(why: str) -> pytest.MarkDecorator:
    """Skip for a caller that is not root, saying why the test needs root."""
    return pytest.mark.skipif(not IS_ROOT, reason=f"needs root: {why} (run the suite as root, as .ci/run does)")


def known_nonroot_gap(what: str) -> pytest.MarkDecorator:
    """A behaviour that is wrong today for a caller that is not root: expected to fail there,
    reported as XFAIL (XPASS once fixed: then drop the mark). Root runs are unaffected."""
    return pytest.mark.xfail(not IS_ROOT, reason=f"KNOWN GAP for non-root callers: {what}", strict=False)


def known_nonroot_gap_without_jail(what: str) -> pytest.MarkDecorator:
    """As known_nonroot_gap, for a gap the jail closes (a non-root caller has it where the host
    allows user namespaces): expected to fail only for a non-root caller without it."""
    from evalbox.process.host import probe

    return pytest.mark.xfail(not IS_ROOT and not probe().jail, reason=f"KNOWN GAP for non-root callers without "
                             f"the jail: {what}", strict=False)
