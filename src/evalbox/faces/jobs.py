"""Node jobs: the only functions the Ray node actors run besides plans (faces/cluster.py).

A cluster ships data, never callables. Work that is more than one plan (a HumanEval check: two
sandboxes relayed by the host) is a function of evalbox marked `@node_job`; the driver names it
("evalbox.evals.humaneval:node_checks") and sends plain data, the actor imports it on its node
and runs it there with that node's sandboxes. Kept apart from faces/cluster.py (asyncio, Ray's
machinery) so that evals can mark their functions without importing any of that.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from evalbox.errors import ValidationError

__all__ = ["JOB_MARK", "find_job", "node_job"]

JOB_MARK = "__evalbox_node_job__"


def node_job(function: Callable[..., Any]) -> Callable[..., Any]:
    """Mark `function` as work the node actors may run for `evalbox.faces.cluster.iter_job`.

    The actor finds it by name ("evalbox.<module>:<function>", imported on the node): no callable
    travels, and only functions of evalbox that carry this mark can be named. It is called in a
    thread of the actor as `function(common, items, stop, slots)` and yields (position in `items`,
    value) as each item finishes: `common` and each item are the plain data the driver sent, each
    value plain data too; `slots` is how many items the node runs at once (the actor never gives it
    more items than are free); it should stop early once `stop` (a threading.Event) is set. A SandboxError it
    raises becomes the result of every item it had not yet given.
    """
    setattr(function, JOB_MARK, True)
    return function


def find_job(name: str) -> Callable[..., Any]:
    """The node job called `name` ("evalbox.module:function"); ValidationError for any other name."""
    module, _, attribute = name.partition(":")
    if not (module == "evalbox" or module.startswith("evalbox.")) or not attribute.isidentifier():
        raise ValidationError(f"node job {name!r}: name an evalbox function marked @node_job, as 'evalbox.module:function'")
    try:
        function = getattr(importlib.import_module(module), attribute, None)
    except ImportError as e:
        raise ValidationError(f"node job {name!r}: cannot import {module} on this node: {e}") from None
    if not getattr(function, JOB_MARK, False):
        raise ValidationError(f"node job {name!r} is not a function marked @node_job")
    return function
