"""`evalbox bench --compat`: do ordinary programs keep working? Measured with CPython's own tests.

Each chosen module of the interpreter's regression suite (`python -m test --junit-xml F MODULE`)
runs bare and then inside evalbox (generous limits, network off and/or on); the figure is the
share of test cases that pass bare and also pass sandboxed, per module and overall. A module that
the sandbox kills, or that times out, loses all its cases.

The bare side runs unprivileged too: on a root host as uid/gid 65534 (nobody), because every
sandbox of a root host runs as an unprivileged uid of its own, and tests that pass only for root
(chown to other users, chroot...) say nothing about the sandbox. The interpreter must have its
test package (`/usr/lib/python3.11/test` on Debian: `apt-get install libpython3.11-testsuite`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# Modules that exercise the operating system (files, processes, signals, terminals, sockets,
# time, users) more than pure computation; each runs in well under a minute bare.
MODULES = (
    "test_os", "test_posix", "test_shutil", "test_subprocess", "test_signal", "test_pty", "test_tempfile",
    "test_glob", "test_pathlib", "test_fileio", "test_file", "test_mmap", "test_select", "test_selectors",
    "test_poll", "test_epoll", "test_threading", "test_thread", "test_threadsignals", "test_fcntl",
    "test_resource", "test_pwd", "test_grp", "test_getpass", "test_ioctl", "test_socket", "test_socketserver",
    "test_time", "test_stat", "test_fnmatch", "test_zipfile", "test_tarfile", "test_gzip", "test_zlib",
    "test_bz2", "test_lzma", "test_logging", "test_platform", "test_sysconfig", "test_site",
    "test_venv", "test_compileall", "test_py_compile", "test_import", "test_cmd_line", "test_cmd_line_script",
    "test_sys", "test_faulthandler", "test_tracemalloc", "test_gc", "test_uuid", "test_locale", "test_filecmp",
    "test_largefile", "test_genericpath", "test_posixpath", "test_dbm", "test_shelve", "test_mailbox",
    "test_netrc", "test_urllib", "test_urllib2", "test_httplib", "test_httpservers", "test_wsgiref",
    "test_xmlrpc", "test_eintr", "test_wait3", "test_wait4", "test_fork1", "test_openpty", "test_pipes",
    "test_popen", "test_mimetypes", "test_calendar", "test_getopt", "test_argparse", "test_pdb", "test_trace",
    "test_profile", "test_cprofile", "test_timeit", "test_builtin", "test_exceptions", "test_io",
    "test_concurrent_futures", "test_multiprocessing_forkserver", "test_multiprocessing_fork",
    "test_asyncio", "test_ssl", "test_smtplib", "test_ftplib", "test_imaplib", "test_poplib",
    "test_code_module", "test_readline", "test_curses", "test_ctypes", "test_unittest", "test_doctest",
    "test_support",
)
QUICK_MODULES = ("test_os", "test_posix", "test_shutil", "test_pty", "test_tempfile", "test_getpass",
                 "test_resource", "test_signal")
PYTHON_CANDIDATES = ("/usr/bin/python3.11", "/usr/bin/python3")
NOBODY = 65534
MODULE_TIMEOUT = 600.0  # wall clock per module run; one test may take at most PER_TEST_TIMEOUT
PER_TEST_TIMEOUT = 120


@dataclass
class ModuleResult:
    module: str
    bare_passed: int
    bare_total: int
    bare_seconds: float
    sandboxed: dict[str, "SandboxedRun"] = field(default_factory=dict)  # by network setting: "off"/"on"


@dataclass
class SandboxedRun:
    passed_of_bare: int  # cases that passed bare and pass here
    lost: list[str]  # cases that passed bare and not here (first few)
    status: str  # how the run ended ("exited 0", "signaled SIGSYS (blocked ptrace)", "timeout"...)
    seconds: float


def find_test_python(explicit: str | None = None) -> str:
    for candidate in ([explicit] if explicit else list(PYTHON_CANDIDATES)):
        if candidate and os.path.exists(os.path.join(_stdlib_dir(candidate), "test", "test_os.py")):
            return candidate
    raise RuntimeError(
        "no interpreter with CPython's test package found; on Debian/Ubuntu run "
        "`apt-get install libpython3.11-testsuite`, or pass --python PATH of a Python with Lib/test")


def _stdlib_dir(python: str) -> str:
    try:
        out = subprocess.run([python, "-I", "-S", "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "/nonexistent"
    return out.stdout.strip() or "/nonexistent"


def _cases(xml_path: str, verbose: bytes = b"") -> dict[str, str]:
    """test id -> "pass" | "fail" | "skip": from regrtest's JUnit XML, or, when the run died
    before writing it, from its verbose lines ("test_x (test.test_m.C.test_x) ... ok")."""
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError):
        root = None
    out = {}
    if root is not None:
        for case in root.iter("testcase"):
            kinds = {child.tag for child in case}
            out[case.get("name", "")] = ("fail" if kinds & {"failure", "error"} else "skip" if "skipped" in kinds
                                         else "pass")
        return out
    for m in _VERBOSE.finditer(verbose.decode("utf-8", "replace")):
        word = m.group(2)
        out[m.group(1)] = "pass" if word in ("ok", "expected failure") else "skip" if word == "skipped" else "fail"
    return out


_VERBOSE = re.compile(r"^test\w* \(([\w.]+)\)[^\n]*? \.\.\. (ok|FAIL|ERROR|skipped|expected failure|unexpected success)",
                      re.MULTILINE)


def _argv(python: str, xml_path: str, module: str) -> list[str]:
    # -u all: the resources a developer enables (network tests still need network=True)
    return [python, "-X", "faulthandler", "-m", "test", "-v", "-u", "all,-gui,-cpu,-largefile,-urlfetch",
            "--timeout", str(PER_TEST_TIMEOUT), "--junit-xml", xml_path, module]


def _bare_env(home: str, tmp: str) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": tmp, "LANG": "C.UTF-8"}
    if os.geteuid() == 0:
        env.update(USER="nobody", LOGNAME="nobody")
    else:
        import pwd

        name = pwd.getpwuid(os.getuid()).pw_name
        env.update(USER=name, LOGNAME=name)
    return env


def run_bare(python: str, module: str, scratch: str) -> tuple[dict[str, str], float]:
    root = tempfile.mkdtemp(prefix="bare-", dir=scratch)
    for sub in ("work", "tmp", "home"):
        os.mkdir(os.path.join(root, sub))
    xml_path = os.path.join(root, "work", "result.xml")
    as_nobody = os.geteuid() == 0
    if as_nobody:
        for dirpath, dirnames, _ in os.walk(root):
            for name in [""] + dirnames:
                os.chown(os.path.join(dirpath, name), NOBODY, NOBODY)
    started = time.monotonic()
    log = tempfile.TemporaryFile(dir=scratch)
    try:
        subprocess.run(_argv(python, xml_path, module), cwd=os.path.join(root, "work"),
                       env=_bare_env(os.path.join(root, "home"), os.path.join(root, "tmp")),
                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                       timeout=MODULE_TIMEOUT, start_new_session=True,
                       **({"user": NOBODY, "group": NOBODY, "extra_groups": []} if as_nobody else {}))
    except subprocess.TimeoutExpired:
        pass
    seconds = time.monotonic() - started
    log.seek(0)
    cases = _cases(xml_path, log.read())
    log.close()
    shutil.rmtree(root, ignore_errors=True)
    return cases, seconds


def run_sandboxed(python: str, module: str, scratch: str, network: bool) -> tuple[dict[str, str], str, float]:
    import evalbox

    out_dir = tempfile.mkdtemp(prefix="out-", dir=scratch)
    os.chmod(out_dir, 0o777)  # a root host's sandbox runs as another uid
    xml_path = os.path.join(out_dir, "result.xml")
    plan = evalbox.Plan(
        _argv(python, xml_path, module), timeout=MODULE_TIMEOUT, memory="4G", max_pids=512,
        max_output="256M", max_open_files=None, max_file_size=None, disk=None, network=network,
        mounts=[evalbox.Mount.rw(out_dir)],
    )
    out = evalbox.run(plan)
    cases = _cases(xml_path, out.stdout + out.stderr)
    shutil.rmtree(out_dir, ignore_errors=True)
    status = out.status.value
    if out.exit_code is not None:
        status += f" {out.exit_code}"
    if out.signal is not None:
        import signal

        status += f" {signal.Signals(out.signal).name}"
    blocked = getattr(out, "blocked_syscall", None)
    if blocked:
        status += f" (blocked {blocked})"
    return cases, status, out.wall_time


def run_compat(modules: Sequence[str] = MODULES, networks: Sequence[bool] = (False, True), python: str | None = None,
               log: Callable[[str], None] | None = None) -> tuple[str, list[ModuleResult]]:
    py = find_test_python(python)
    results = []
    scratch = tempfile.mkdtemp(prefix="evalbox-compat-")
    os.chmod(scratch, 0o755)
    try:
        for module in modules:
            bare, seconds = run_bare(py, module, scratch)
            passed = {k for k, v in bare.items() if v == "pass"}
            result = ModuleResult(module, len(passed), len(bare), seconds)
            for network in networks:
                cases, status, wall = run_sandboxed(py, module, scratch, network)
                lost = sorted(k for k in passed if cases.get(k) != "pass")
                result.sandboxed["on" if network else "off"] = SandboxedRun(len(passed) - len(lost), lost, status, wall)
            results.append(result)
            if log:
                log(format_row(result))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return py, results


def _ratio(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:6.2f}%" if whole else "      -"


def format_row(r: ModuleResult) -> str:
    cells = [f"{r.module:<34} {r.bare_passed:>6}"]
    for net in ("off", "on"):
        s = r.sandboxed.get(net)
        if s is not None:
            cells.append(f"{s.passed_of_bare:>6} {_ratio(s.passed_of_bare, r.bare_passed)}  {s.status[:34]:<34}")
    return " ".join(cells)


def format_report(python: str, results: list[ModuleResult], lost_examples: int = 3) -> str:
    nets = [n for n in ("off", "on") if any(n in r.sandboxed for r in results)]
    head = f"{'module':<34} {'bare':>6}" + "".join(f" {'net ' + n:>6} {'ratio':>7}  {'sandboxed run':<34}" for n in nets)
    lines = [f"# CPython regression tests: {python}, euid {os.geteuid()}"
             + (" (bare side as uid 65534)" if os.geteuid() == 0 else ""), head, "-" * len(head)]
    lines += [format_row(r) for r in results]
    total = sum(r.bare_passed for r in results)
    lines.append("-" * len(head))
    summary = f"{'overall':<34} {total:>6}"
    for n in nets:
        kept = sum(r.sandboxed[n].passed_of_bare for r in results if n in r.sandboxed)
        summary += f" {kept:>6} {_ratio(kept, total)}  {'':<34}"
    lines.append(summary)
    lines.append("")
    lines.append("cases that pass bare and not sandboxed (first few per module):")
    for r in results:
        for n in nets:
            s = r.sandboxed.get(n)
            if s and s.lost:
                shown = ", ".join(x.rsplit(".", 2)[-2] + "." + x.rsplit(".", 1)[-1] for x in s.lost[:lost_examples])
                more = f" (+{len(s.lost) - lost_examples})" if len(s.lost) > lost_examples else ""
                lines.append(f"  [{n}] {r.module}: {shown}{more}")
    return "\n".join(lines)


def as_json(python: str, results: list[ModuleResult]) -> dict[str, Any]:
    from dataclasses import asdict

    return {"python": python, "euid": os.geteuid(), "modules": [asdict(r) for r in results]}


if __name__ == "__main__":  # python -m evalbox.faces.compat [MODULE...]
    mods = tuple(sys.argv[1:]) or MODULES
    py_used, res = run_compat(mods, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_report(py_used, res))
