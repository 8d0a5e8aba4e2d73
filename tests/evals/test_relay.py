"""Function tests over the relay: what crosses the channel, how exceptions and failures read, and
that trusted workers stay clean and alive from one check to the next."""

from __future__ import annotations

import textwrap

import pytest

from evalbox.evals import relay
from evalbox.errors import SandboxError, ValidationError
from evalbox.evals.relay import FunctionTest, check_functions, iter_checks


def check(program: str, test: str, functions=("f",), limits=None, **kwargs) -> str:
    [result] = check_functions([FunctionTest(textwrap.dedent(program), tuple(functions), test=textwrap.dedent(test),
                                             **kwargs)], **(limits or {}))
    return result


def test_values_keep_their_types():
    program = """
        def f(x):
            return (x, [1, 2], {"k": {3}}, frozenset({4}), b"\\x00", 1 << 100, -0.5, None, True, 2j, float("inf"))
    """
    test = """
        got = f([1, (2, 3)])
        assert got == ([1, (2, 3)], [1, 2], {"k": {3}}, frozenset({4}), b"\\x00", 1 << 100, -0.5, None, True, 2j, float("inf"))
        assert type(got) is tuple and type(got[0][1]) is tuple and type(got[1]) is list and got[8] is True
        assert f([1]) != ([1],)
    """
    assert check(program, test) == "passed"


def test_keywords_and_several_functions():
    program = """
        def add(a, b=0):
            return a + b
        def mul(a, b):
            return a * b
    """
    assert check(program, "assert add(1, b=2) == 3 and mul(2, 3) == 6 and add(5) == 5", functions=("add", "mul")) == "passed"


def test_exceptions_reach_the_tests_as_their_builtin_type():
    program = """
        class MyError(Exception):
            pass
        def f(kind):
            if kind == "value":
                raise ValueError("negative")
            if kind == "key":
                raise KeyError("k")
            raise MyError("mine")
    """
    test = """
        try:
            f("value")
        except ValueError as e:
            assert str(e) == "negative"
        else:
            assert False
        try:
            f("key")
        except LookupError as e:
            assert str(e) == "'k'" and type(e).__name__ == "KeyError"
        try:
            f("mine")
        except Exception as e:
            assert type(e).__name__ == "MyError" and str(e) == "mine" and not isinstance(e, ValueError)
        f("value")
    """
    assert check(program, test) == "failed: negative"


def test_what_cannot_cross_fails_the_check():
    assert check("def f():\n    return (x for x in [1])\n", "f()").startswith(
        "failed: a value of type generator cannot be passed between the tests and the candidate")
    assert check("def f(g):\n    return 1\n", "f(len)").startswith("failed: the tests passed a value the candidate cannot receive")


def test_candidate_failures_read_as_failures():
    assert check("def g():\n    return 1\n", "assert f() == 1") == "failed: name 'f' is not defined"
    assert check("raise RuntimeError('at load')\ndef f():\n    return 1\n", "assert f() == 1") == "failed: at load"
    assert check("def f():\n    x = bytearray(1 << 30)\n", "f()", limits={"memory": "64M"}) in (
        "failed: memory limit exceeded", "failed: ")  # MemoryError's text is empty
    assert check("def f():\n    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)\n", "f()") == \
        "failed: killed by SIGKILL"
    assert check("def f(:\n", "f()", syntax_check="def f(:\n") == "failed: invalid syntax (<string>, line 1)"


def test_timeouts():
    assert check("def f():\n    while True:\n        pass\n", "f()", timeout=0.3) == "timed out"
    # trusted code stuck where the alarm cannot interrupt it (one long C call): the worker's backstop
    assert check("def f():\n    return 1\n", "f()\nimport re\nre.match(r'(a*)*b', 'a' * 64)", timeout=0.2) == "timed out"


def test_each_check_starts_clean_and_workers_survive(monkeypatch):
    """One worker at a time, replaced every 2 checks: a check's state never reaches the next one,
    and a check that leaves the worker out of step (timed out mid-frame, stuck) costs only itself."""
    monkeypatch.setattr(relay, "WORKER_CHECKS", 2)
    program = "def f():\n    return 1\n"
    leak = "import sys\nassert not hasattr(sys, 'leaked')\nsys.leaked = f()\nimport builtins\nbuiltins.abs = None\n"
    stuck = "f()\nimport re\nre.match(r'(a*)*b', 'a' * 64)"
    tests = [FunctionTest(program, ("f",), test=t, timeout=0.3)
             for t in [leak, leak, "f()\nwhile True:\n    pass", leak, stuck, leak, "assert abs(-1) == f()", leak]]
    assert check_functions(tests, concurrency=1) == [
        "passed", "passed", "timed out", "passed", "timed out", "passed", "passed", "passed"]


def test_empty_and_errors():
    assert check_functions([]) == []
    with pytest.raises(SandboxError):
        check_functions([FunctionTest("", ("f",), test="f()")], interpreter="/nonexistent/python")
    with pytest.raises(ValidationError, match="memory"):
        check_functions([FunctionTest("", ("f",), test="f()")], memory="lots")
    with pytest.raises(ValueError, match="timeout"):
        check_functions([FunctionTest("", ("f",), test="f()", timeout=0)])
    with pytest.raises(ValidationError, match="concurrency"):
        check_functions([FunctionTest("", ("f",), test="f()")], concurrency=0)


def test_results_as_they_come():
    tests = [FunctionTest("def f():\n    import time; time.sleep(3)\n", ("f",), test="f()", timeout=20),
             FunctionTest("def f():\n    return 1\n", ("f",), test="assert f() == 1")]
    assert list(iter_checks(tests, concurrency=2)) == [(1, "passed"), (0, "passed")]


def test_a_dead_worker_costs_only_its_check():
    """Trusted code that kills its own worker (a stand-in for a harness crash): that check fails
    saying so, and the next checks get a new worker."""
    program = "def f():\n    return 1\n"
    tests = [FunctionTest(program, ("f",), test="import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nf()"),
             FunctionTest(program, ("f",), test="assert f() == 1"), FunctionTest(program, ("f",), test="assert f() == 1")]
    results = check_functions(tests, concurrency=1)
    assert results[0].startswith("failed: the test harness ended (killed by SIGKILL)") and results[1:] == ["passed"] * 2


def test_relay_service_fed_from_many_threads():
    """The long-lived relay of a Ray node actor: checks submitted from several threads, a few at
    a time, get exactly the results of one check_functions run; bad limits fail each check with
    their error; a closed service refuses more."""
    import concurrent.futures

    tests = [FunctionTest("def f(x):\n    return x * 2\n", ("f",), test=f"assert f({i}) == {i * 2 if i % 3 else -1}")
             for i in range(9)]
    tests.append(FunctionTest("def f(x):\n    while True:\n        pass\n", ("f",), test="f(1)", timeout=0.5))
    tests.append(FunctionTest("import os\nos._exit(0)\n", ("f",), test="assert f(1) == 2"))
    service = relay.RelayService(2)
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = list(pool.map(service.submit, tests))
        results = [f.result(timeout=60) for f in futures]
        assert results == check_functions(tests, concurrency=2)
        assert results.count("passed") == 6 and results[-2] == "timed out" and results[-1].startswith("failed: exited")
        assert service.pending == 0
        again = service.submit(tests[1])  # (the same workers, a later call)
        assert again.result(timeout=60) == "passed"
    finally:
        service.close()
    with pytest.raises(SandboxError):
        service.submit(tests[0])

    broken = relay.RelayService(1, memory="lots")
    try:
        with pytest.raises(ValidationError, match="memory"):
            broken.submit(tests[0]).result(timeout=60)
    finally:
        broken.close()


@pytest.mark.parametrize("test", [
    "assert all(map(lambda n: is_prime(n) == (n in (2, 3, 5, 7)), range(10)))",
    "assert not any(map(is_prime, [0, 1, 4, 6, 8, 9]))",
])
def test_a_candidates_stop_iteration_does_not_end_the_tests_loop(test):
    """Red-team finding (round 3): the candidate's StopIteration, raised as a real one in the
    trusted tests, ended their map() early and all() of nothing passed."""
    [result] = check_functions([FunctionTest("def is_prime(n):\n    raise StopIteration\n", ("is_prime",), test=test)])
    assert result.startswith("failed"), result
