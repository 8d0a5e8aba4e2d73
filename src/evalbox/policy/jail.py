"""The jail: which namespaces a run gets, so that it sees only what it is given (SPEC §4.9).

PID (with the spawn's own init as PID 1 and a /proc of its own), IPC, UTS (hostname "sandbox")
and mount namespaces always come together; a private network namespace with only its own
loopback when the plan has no network. Used where the host allows it (see Host.jail).
"""

from __future__ import annotations

from evalbox.kernel import namespaces as ns
from evalbox.policy.plan import Plan

HOSTNAME = "sandbox"
BASE_FLAGS = ns.CLONE_NEWPID | ns.CLONE_NEWNS | ns.CLONE_NEWIPC | ns.CLONE_NEWUTS


def clone_flags(plan: Plan) -> int:
    """The namespaces the init is cloned into (a pooled network namespace is entered instead of
    CLONE_NEWNET where one is available)."""
    return BASE_FLAGS
