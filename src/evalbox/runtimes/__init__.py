"""Language runtimes: `evalbox.python`, `evalbox.shell`, `evalbox.node`, `evalbox.go`.

Each has `run(code, **limits) -> Output` and `plan(code, **limits) -> Plan` (for
`Executor.spawn` and `run_many`); `limits` are the keywords of `evalbox.Plan`.
"""

from evalbox.runtimes import go, node, python, shell

RUNTIMES = {"python": python, "shell": shell, "node": node, "go": go}

__all__ = ["RUNTIMES", "go", "node", "python", "shell"]
