"""Warm Python (SPEC §10): a run started from a template's fresh copy behaves like a cold one,
gets the same lockdown, and nothing passes from one run to the next."""

from __future__ import annotations

import os
import re
import signal

import pytest

import evalbox
from evalbox.process import warm
from rt_helpers import describe, ok


PY = "/usr/bin/python3.11"  # a sandbox uid can run it on a root host; same ABI as the test venv
INTERPRETERS = [None, PY] if os.access(PY, os.X_OK) else [None]


def run(code: str, mode: bool, **kw) -> evalbox.Output:
    out = evalbox.python.run(code, warm=mode, **kw)
    assert out.warm is mode, f"asked warm={mode}, ran warm={out.warm}\n{describe(out)}"
    return out


def both(code: str, **kw) -> tuple[evalbox.Output, evalbox.Output]:
    return run(code, True, **kw), run(code, False, **kw)


def normalise(text: bytes) -> bytes:
    return re.sub(rb"/[\w/.-]*evalbox-\d+-\w+", b"<ws>", text)


PROBE = r"""
import os, signal, sys
print(__name__, sorted(k for k in globals() if k.startswith('__')))
print(os.path.basename(__file__), __cached__, __spec__, type(__loader__).__name__, type(__builtins__).__name__)
print(sys.argv, sys.orig_argv[1:], sys.path[0] == os.getcwd(), os.getcwd().endswith('/work'))
print(sys.flags)
print(sorted(k for k in os.environ), os.environ['SEED'], os.environ['HOME'].endswith('/home'))
print([signal.getsignal(s) for s in (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGCHLD)])
print(signal.pthread_sigmask(signal.SIG_BLOCK, []))
print(sorted(os.listdir('/proc/self/fd')))
print(os.getuid() == os.geteuid(), os.getgroups(), os.umask(0o22))
print(sys.stdin.read(), sys.stdout.isatty(), sys.stdout.encoding, sys.stdout.line_buffering)
print(open('/proc/self/status').read().split('NoNewPrivs:')[1].split()[0])
print([l.split()[1] for l in open('/proc/self/status') if l.startswith(('CapEff', 'CapBnd', 'Seccomp:'))])
print(os.getpgid(0) == os.getpid(), os.getsid(0) == os.getpid())
"""


@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_same_view_as_cold(interpreter):
    kw = dict(args=["a", "b c"], stdin=b"in\n", env={"SEED": "7"}, interpreter=interpreter, timeout=30)
    hot, cold = both(PROBE, **kw)
    ok(hot), ok(cold)
    assert normalise(hot.stdout) == normalise(cold.stdout), f"warm:\n{hot.stdout.decode()}\ncold:\n{cold.stdout.decode()}"
    assert hot.stderr == cold.stderr == b""
    assert b"['0', '1', '2', '3']" in hot.stdout  # stdio, and the listing's own fd: nothing inherited
    # uids differ from run to run; an unprivileged caller's nproc is its uid's live process count
    # plus max_pids, and the host's processes come and go between the two runs
    strip = lambda p: re.sub(r"nproc=\d+", "nproc=N", re.sub(r"\d{6,}", "N", repr(p)))  # noqa: E731
    assert strip(hot.protections) == strip(cold.protections)


ENDINGS = {
    "normal": ("print('x')", None),
    "exit code": ("import sys; print('x'); sys.exit(3)", None),
    "exit message": ("import sys; sys.exit('bye')", None),
    "exit None": ("raise SystemExit", None),
    "exception": ("x = 1\ndef f():\n    raise ValueError('boom')\nf()\n", None),
    "exception chain": ("try:\n    1/0\nexcept ZeroDivisionError as e:\n    raise KeyError('k') from e\n", None),
    "syntax error": ("x = (\n", None),
    "os._exit": ("import os; print('lost', end=''); os._exit(7)", None),
    "signal": ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", signal.SIGTERM),
    "keyboard interrupt": ("raise KeyboardInterrupt", signal.SIGINT),
    "atexit and __del__": ("import atexit\nclass D:\n    def __del__(self): print('del')\nd = D()\n"
                           "atexit.register(print, 'atexit')\nprint('body', end=' ')\n", None),
    "unflushed file": ("f = open('out.txt', 'w'); f.write('data'); import os\n"
                       "import atexit; atexit.register(lambda: print(open('out.txt').read() or 'empty'))", None),
    "thread joined at exit": ("import threading, time\n"
                              "threading.Thread(target=lambda: (time.sleep(0.2), print('thread'))).start()", None),
    "broken stdout": ("import sys; sys.stdout.close(); print('x')", None),
    "excepthook": ("import sys\nsys.excepthook = lambda t, v, tb: print('hook', t.__name__)\nraise OSError", None),
}


@pytest.mark.parametrize("name", sorted(ENDINGS))
def test_endings_match_cold(name):
    code, sig = ENDINGS[name]
    hot, cold = both(code)
    for attr in ("status", "exit_code", "signal", "stdout"):
        assert getattr(hot, attr) == getattr(cold, attr), f"{attr} differs\nwarm: {describe(hot)}\ncold: {describe(cold)}"
    assert normalise(hot.stderr) == normalise(cold.stderr), f"warm: {hot.stderr!r}\ncold: {cold.stderr!r}"
    if sig is not None:
        assert hot.status is evalbox.Status.SIGNALED and hot.signal == sig


def test_unbuffered_like_python_u():
    code = ("import sys, os\nprint(type(sys.stdout.buffer).__name__, sys.stdout.buffer.name, sys.stdout.write_through,"
            " sys.stdout.line_buffering, sys.stderr.write_through, sys.stdout.mode)\n"
            "print('a', end=''); os.write(1, b'b'); sys.stderr.write('c'); os.write(2, b'd')\n")
    hot, cold = both(code, env={"PYTHONUNBUFFERED": "1"})
    assert ok(hot).stdout == ok(cold).stdout and hot.stderr == cold.stderr == b"cd", (hot, cold)
    assert hot.stdout.endswith(b"ab")


def test_traceback_shows_only_the_program():
    out = run("def f():\n    raise ValueError('boom')\nf()\n", True)
    err = out.stderr.decode()
    assert out.exit_code == 1 and err.startswith("Traceback (most recent call last):\n"), err
    assert err.count('File "') == 2 and "main.py" in err and "ValueError: boom" in err, err


def test_fresh_randomness_every_run():
    code = ("import random, os, uuid, tempfile\n"
            "print(random.random(), os.urandom(8).hex(), uuid.uuid4(), random.getrandbits(64), tempfile.mktemp())")
    outs = [ok(run(code, True)).stdout for _ in range(3)]
    assert len(set(outs)) == 3, outs
    fields = [o.split() for o in outs]
    for i in range(5):
        assert len({f[i] for f in fields}) == 3, outs


def test_nothing_passes_between_runs():
    """Each run is a new copy of the template: what one run did to modules, builtins, the
    environment, its memory or its files is gone for the next."""
    secret = os.urandom(8).hex()
    first = f"""
import builtins, json, os, random, sys, collections
json.dumps = lambda *a, **k: {secret!r}
builtins.LEAK = {secret!r}
sys.modules['leak_{secret}'] = type(sys)('leak')
collections.LEAK = [{secret!r}] * 1000
random.seed(1)
os.environ['LEAK'] = {secret!r}
os.putenv('LEAK2', {secret!r})
blob = bytearray({secret!r}.encode() * 100000)
for d in (os.environ['TMPDIR'], os.environ['HOME'], '.', '/dev/shm'):
    try:
        with open(os.path.join(d, 'leak-{secret}'), 'w') as f:
            f.write({secret!r})
    except PermissionError:
        assert d == '/dev/shm'  # a non-root caller's sandbox has no /dev/shm: nothing to leave there
print('planted')
"""
    ok(run(first, True))
    second = f"""
import builtins, glob, json, os, random, sys, collections
found = []
found += ['json'] if json.dumps({{}}) != '{{}}' else []
found += ['builtins'] if hasattr(builtins, 'LEAK') else []
found += ['sys.modules'] if any('{secret}' in k for k in sys.modules) else []
found += ['collections'] if hasattr(collections, 'LEAK') else []
found += ['env'] if {secret!r} in repr(dict(os.environ)) + open('/proc/self/environ').read() else []
found += ['files'] if glob.glob('/dev/shm/leak-*') + glob.glob('/dev/shm/*/*/leak-*') else []
random.seed(1); a = random.random(); random.seed(); found += ['random'] if random.random() == a else []
print('FOUND', found)
"""
    for _ in range(2):
        out = ok(run(second, True))
        assert out.stdout.strip() == b"FOUND []", describe(out)


def test_memory_of_a_previous_run_is_not_readable():
    """The secret a previous run held in memory is in no page the next run can read."""
    secret = os.urandom(12).hex()
    ok(run(f"s = bytearray({secret!r}.encode() * 50000); print(len(s))", True))
    scan = f"""
needle = {secret[:12]!r}.encode() + {secret[12:]!r}.encode()
mine = bytearray(needle)  # the scanner must find this run's own copy (it would find 50000 others)
hits = 0
with open('/proc/self/maps') as maps:
    regions = [l.split() for l in maps]
mem = open('/proc/self/mem', 'rb', buffering=0)
for r in regions:
    if 'r' not in r[1] or (len(r) > 5 and r[5] in ('[vvar]', '[vsyscall]')):
        continue
    lo, hi = (int(x, 16) for x in r[0].split('-'))
    try:
        mem.seek(lo); data = mem.read(hi - lo)
    except OSError:
        continue
    hits += data.count(needle)
print('HITS', hits)
"""
    out = ok(run(scan, True))
    hits = int(out.stdout.split()[1])
    assert 1 <= hits < 100, describe(out)  # this run's own few copies, none of the 50000 before


SCAN = """
needles = [{env!r} + {env2!r}, {arg!r} + {arg2!r}]
mine = [n.encode() for n in needles]  # this run's own copies: the scan must find them
hits = [0, 0]
regions = [l.split() for l in open('/proc/self/maps')]
mem = open('/proc/self/mem', 'rb', buffering=0)
for r in regions:
    if 'r' not in r[1] or (len(r) > 5 and r[5] in ('[vvar]', '[vsyscall]')):
        continue
    lo, hi = (int(x, 16) for x in r[0].split('-'))
    try:
        mem.seek(lo); data = mem.read(hi - lo)
    except OSError:
        continue
    for i, n in enumerate(mine):
        hits[i] += data.count(n)
print('HITS', *hits)
"""


def _scan(env: str, arg: str) -> tuple[int, int]:
    out = ok(run(SCAN.format(env=env[:10], env2=env[10:], arg=arg[:10], arg2=arg[10:]), True))
    _, env_hits, arg_hits = out.stdout.split()
    return int(env_hits), int(arg_hits)


def test_a_runs_environment_and_arguments_never_reach_a_later_run():
    """A run's env= and args pass through no process whose memory later runs inherit (the
    template and the slot launchers fork the copies; the request goes straight to the copy)."""
    fresh = _scan(os.urandom(10).hex(), os.urandom(10).hex())  # how often a scan finds its own needles
    assert min(fresh) >= 1, fresh
    secret_env, secret_arg = os.urandom(10).hex(), os.urandom(10).hex()
    for _ in range(3):  # the same slot and template serve the next runs
        # long values: freed memory of an unusual size is not overwritten by the next request
        ok(run("print('ok')", True, env={"SECRET": secret_env * 200}, args=[secret_arg * 200]))
    assert _scan(secret_env, secret_arg) == fresh  # nothing beyond this run's own copies


@pytest.mark.parametrize("mode", [True, False])
def test_limits_and_statuses(mode):
    assert run("while True: pass", mode, timeout=0.5).status is evalbox.Status.TIMEOUT
    assert run("while True: pass", mode, cpu_time=0.5, timeout=10).status is evalbox.Status.CPU_LIMIT
    assert run("b = bytearray(400 << 20); print(len(b))", mode, memory="64M").status is evalbox.Status.MEMORY_LIMIT
    assert run("print('x' * 100000)", mode, max_output="1K").status is evalbox.Status.OUTPUT_LIMIT
    out = run("import os\nfor _ in range(100):\n    os.fork()", mode, max_pids=8, timeout=10)
    assert out.status is not evalbox.Status.TIMEOUT, describe(out)


@pytest.mark.parametrize("mode", [True, False])
def test_lockdown_holds(mode):
    code = """
import os, socket
r = []
try:
    open('/etc/shadow').read(); r.append('read shadow')
except OSError:
    pass
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(('127.0.0.1', 22)); r.append('tcp')
except OSError:
    pass
try:
    os.kill(1, 0); r.append('signal pid 1')
except OSError:
    pass
try:
    open('/etc/evalbox-warm-test', 'w'); r.append('write /etc')
except OSError:
    pass
print('ESCAPES', r, os.getuid() != 0 or os.geteuid() != 0)
"""
    out = ok(run(code, mode))
    assert out.stdout.strip() == b"ESCAPES [] True", describe(out)
    assert not os.path.exists("/etc/evalbox-warm-test")


def test_preload_option_and_cold_fallbacks():
    out = ok(run("import sys; print('json' in sys.modules, 'decimal' in sys.modules)", True))
    assert out.stdout == b"True True\n"
    out = ok(evalbox.python.run("import sys; print('json' in sys.modules, 'decimal' in sys.modules)", warm=["json"]))
    assert out.warm and out.stdout == b"True False\n"
    # start-up variables act before any code runs: such runs go cold, with the variable honoured
    out = ok(evalbox.python.run("import sys; print(sys.flags.optimize)", env={"PYTHONOPTIMIZE": "1"}))
    assert not out.warm and out.stdout == b"1\n"
    out = ok(evalbox.python.run("import os; print(1)", notify=evalbox.NotifyMode.MONITOR, intercept=["openat"]))
    assert not out.warm and out.syscalls


def test_plan_validation():
    with pytest.raises(evalbox.ValidationError, match="module name"):
        evalbox.python.plan("pass", warm=["not a module"])
    with pytest.raises(evalbox.ValidationError, match="warm="):
        evalbox.python.plan("pass", warm="json")
    with pytest.raises(evalbox.ValidationError, match="python, '-s'"):
        evalbox.Plan(["/bin/true"], warm=("json",))
    assert evalbox.python.plan("pass", warm=False).warm is None


def test_template_that_died_is_replaced():
    ok(run("print(1)", True))
    for template in list(warm._templates.values()):
        if isinstance(template, warm.Template):
            os.kill(template.pid, signal.SIGKILL)
            template.process.wait()
    out = ok(run("print(2)", True))
    assert out.stdout == b"2\n"


def test_run_many_and_executor_go_warm():
    plans = [evalbox.python.plan(f"print({i} * {i})") for i in range(6)]
    outs = evalbox.run_many(plans, concurrency=3, progress=False)
    assert [o.stdout for o in outs] == [f"{i * i}\n".encode() for i in range(6)]
    assert all(o.warm for o in outs)
    with evalbox.Executor() as ex:
        sid = ex.spawn(evalbox.python.plan("print(input()[::-1])"))
        ex.write_stdin(sid, b"olleh\n")
        ex.close_stdin(sid)
        done = None
        while done is None:
            for ev in ex.poll():
                if isinstance(ev, evalbox.Completed):
                    done = ev.output
    assert done.warm and done.stdout == b"hello\n"


def test_runs_from_a_thread_that_ends():
    """A template belongs to no caller thread: runs from short-lived threads keep working."""
    import threading

    results = []
    for _ in range(3):
        t = threading.Thread(target=lambda: results.append(run("import time; time.sleep(0.1); print('ok')", True)))
        t.start()
        t.join()
    assert [r.stdout for r in results] == [b"ok\n"] * 3
