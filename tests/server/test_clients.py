"""Real SandboxFusion clients against `evalbox serve`, unchanged but for the URL: the official
`sandbox-fusion` package and verl's reward code (verl/utils/reward_score/sandbox_fusion/utils.py,
taken from the verl wheel and loaded on its own)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import zipfile

import pytest

sandbox_fusion = pytest.importorskip("sandbox_fusion", reason="needs the test extra: pip install -e '.[test]'")
from sandbox_fusion import (CommandRunStatus, RunCodeRequest, RunStatus, SummaryMapping,  # noqa: E402
                            run_code, run_code_async, run_concurrent, summary_run_code_result)

VERL_VERSION = os.environ.get("EVALBOX_VERL_VERSION", "0.9.1")
VERL_FILE = "verl/utils/reward_score/sandbox_fusion/utils.py"

CPP_SUM = "#include <iostream>\nint main() { long a, b; std::cin >> a >> b; std::cout << a + b << std::endl; }"
PY_SUM = "a, b = map(int, input().split())\nprint(a + b)"
JAVA_SUM = ("import java.util.*;\npublic class Main { public static void main(String[] x) {\n"
            "  Scanner s = new Scanner(System.in); System.out.println(s.nextLong() + s.nextLong()); } }")


# -- the official client -------------------------------------------------------------------------

def test_official_client_runs_python(server):
    resp = run_code(RunCodeRequest(code="print(6 * 7)", language="python"), endpoint=server.url, max_attempts=1)
    assert resp.status == RunStatus.Success and resp.compile_result is None
    assert resp.run_result.status == CommandRunStatus.Finished and resp.run_result.stdout == "42\n"
    assert resp.run_result.return_code == 0 and resp.run_result.cpu_time is not None


def test_official_client_stdin_and_compiled_languages(server):
    for language, code in (("cpp", CPP_SUM), ("java", JAVA_SUM), ("python", PY_SUM)):
        resp = run_code(RunCodeRequest(code=code, language=language, stdin="20 22\n", compile_timeout=60),
                        endpoint=server.url, max_attempts=1)
        assert resp.status == RunStatus.Success, resp
        assert resp.run_result.stdout == "42\n"
        assert (resp.compile_result is not None) == (language != "python")


def test_official_summary_of_each_outcome(server):
    mapping = SummaryMapping(CompileFailed="CE", CompileTimeout="CTLE", RunFailed="RE", RunTimeout="TLE")
    cases = [
        (RunCodeRequest(code="print(1)", language="python"), "Success"),
        (RunCodeRequest(code="int main() { return missing; }", language="cpp"), "CE"),
        (RunCodeRequest(code="#include <bits/stdc++.h>\nint main() {}", language="cpp", compile_timeout=0.01), "CTLE"),
        (RunCodeRequest(code="raise SystemExit(4)", language="python"), "RE"),
        (RunCodeRequest(code="while True: pass", language="python", run_timeout=0.5), "TLE"),
    ]
    for request, expected in cases:
        resp = run_code(request, endpoint=server.url, max_attempts=1)
        assert summary_run_code_result(resp, mapping) == expected, resp


def test_official_client_files_roundtrip(server):
    import base64

    request = RunCodeRequest(code="open('b.txt', 'w').write(open('a.txt').read().upper())", language="python",
                             files={"a.txt": base64.b64encode(b"shout").decode()}, fetch_files=["b.txt"])
    resp = run_code(request, endpoint=server.url, max_attempts=1)
    assert resp.status == RunStatus.Success and base64.b64decode(resp.files["b.txt"]) == b"SHOUT"


def test_official_async_client_and_concurrency(server):
    async def many():
        requests = [RunCodeRequest(code=f"print({i} + 1)", language="python") for i in range(16)]
        return await asyncio.gather(*(run_code_async(r, endpoint=server.url, max_attempts=1) for r in requests))

    for i, resp in enumerate(asyncio.run(many())):
        assert resp.status == RunStatus.Success and resp.run_result.stdout == f"{i + 1}\n"
    threaded = run_concurrent(run_code, kwargs=[{"request": RunCodeRequest(code=f"print({i})", language="python"),
                                                 "endpoint": server.url, "max_attempts": 1} for i in range(16)])
    assert [r.run_result.stdout for r in threaded] == [f"{i}\n" for i in range(16)]


def test_official_client_raises_on_a_sandbox_error(server):
    with pytest.raises(Exception, match="Sandbox responded with error.*not supported"):
        run_code(RunCodeRequest(code="<?php echo 1;", language="php"), endpoint=server.url, max_attempts=1)


# -- verl's reward code ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def verl_utils(tmp_path_factory):
    where = tmp_path_factory.mktemp("verl")
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(where),
                           f"verl=={VERL_VERSION}"], capture_output=True, text=True, timeout=600)
    wheels = list(where.glob("verl-*.whl"))
    if done.returncode != 0 or not wheels:
        pytest.skip(f"could not download verl {VERL_VERSION} from the package index (needed to test verl's reward "
                    f"code; network access to PyPI enables it): {done.stderr.strip()[-300:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        source = where / "verl_sandbox_fusion_utils.py"
        source.write_bytes(wheel.read(VERL_FILE))
    spec = importlib.util.spec_from_file_location("verl_sandbox_fusion_utils", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # stdlib and requests only: it loads on its own
    return module


def check(verl_utils, server, in_outs, generation, language="python", timeout=10):
    results, metadata = verl_utils.check_correctness(server.url + "/run_code", in_outs, generation, timeout=timeout,
                                                     language=language)
    return results, metadata


def test_verl_accepts_right_answers_and_rejects_wrong_ones(verl_utils, server):
    in_outs = {"inputs": ["1 2\n", "20 22\n", "5 5\n"], "outputs": ["3\n", "42\n", "11\n"]}
    results, metadata = check(verl_utils, server, in_outs, PY_SUM)
    assert results == [True, True, False], metadata
    assert [m["status"] for m in metadata] == ["success", "success", "wrong_answer"]


@pytest.mark.parametrize("language,code", [("cpp", CPP_SUM), ("java", JAVA_SUM)])
def test_verl_compiled_languages(verl_utils, server, language, code):
    results, metadata = check(verl_utils, server, {"inputs": ["1 2\n", "3 4\n"], "outputs": ["3", "7"]}, code,
                              language=language, timeout=30)
    assert results == [True, True], metadata
    assert metadata[0]["compile_status"] == "Finished"


def test_verl_error_codes(verl_utils, server):
    one = {"inputs": ["1\n"], "outputs": ["1\n"]}
    assert check(verl_utils, server, one, "raise RuntimeError('x')")[0] == [-2]  # runtime error
    assert check(verl_utils, server, one, "while True: pass", timeout=1)[0] == [-3]  # time limit
    results, metadata = check(verl_utils, server, {"inputs": ["1\n", "2\n"], "outputs": ["1\n", "2\n"]},
                              "int main() { return missing; }", language="cpp")
    assert results == [-4, -4], metadata  # compile error
    assert metadata[0]["status"] == "compile_error"


def test_verl_function_call_mode(verl_utils, server):
    in_outs = {"fn_name": "add", "inputs": ["1\n2", "[1]\n[2, 3]"], "outputs": ["3", "[1, 2, 3]"]}
    results, metadata = check(verl_utils, server, in_outs, "def add(a, b):\n    return a + b\n")
    assert results == [True, True], metadata


def test_verl_many_cases_at_once(verl_utils, server):
    n = 40
    in_outs = {"inputs": [f"{i} {i}\n" for i in range(n)], "outputs": [f"{2 * i}\n" for i in range(n)]}
    results, metadata = check(verl_utils, server, in_outs, PY_SUM)
    assert results == [True] * n, [m["status"] for m in metadata]
