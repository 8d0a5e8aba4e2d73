"""`evalbox serve` against SandboxFusion's /run_code contract, over real HTTP."""

from __future__ import annotations

import base64
import concurrent.futures
import subprocess
import sys

import pytest
import requests

from server_helpers import start_server, stop_server

TOP_KEYS = {"status", "message", "compile_result", "run_result", "executor_pod_name", "files"}
RESULT_KEYS = {"status", "execution_time", "return_code", "stdout", "stderr"}  # SandboxFusion's; extras allowed


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_ping(server):
    response = requests.get(server.url + "/v1/ping", timeout=10)
    assert response.status_code == 200 and response.json() == "pong"


def test_success_has_every_field_and_no_compile_result(server):
    body = server.run_code(code="print(input()[::-1])", language="python", stdin="abc")
    assert TOP_KEYS <= set(body) and RESULT_KEYS <= set(body["run_result"])
    assert body["status"] == "Success" and body["message"] == ""
    assert body["compile_result"] is None and body["files"] == {} and body["executor_pod_name"] is None
    run = body["run_result"]
    assert run["status"] == "Finished" and run["return_code"] == 0
    assert run["stdout"] == "cba\n" and run["stderr"] == ""
    assert isinstance(run["execution_time"], float) and 0 < run["execution_time"] < 10


def test_defaults_apply_when_only_code_and_language_are_sent(server):
    body = server.run_code(code="import sys; print(repr(sys.stdin.read()))", language="python")
    assert body["status"] == "Success" and body["run_result"]["stdout"] == "''\n"


def test_a_failing_program_is_http_200_failed(server):
    body = server.run_code(code="import sys; print('out'); sys.exit(3)", language="python")
    assert body["status"] == "Failed" and body["message"] == ""
    assert body["run_result"]["return_code"] == 3 and body["run_result"]["stdout"] == "out\n"


def test_an_exception_is_a_failure_with_its_traceback(server):
    body = server.run_code(code="raise ValueError('boom')", language="python")
    assert body["status"] == "Failed" and body["run_result"]["return_code"] == 1
    assert "ValueError: boom" in body["run_result"]["stderr"]


def test_a_timeout_has_no_return_code_and_keeps_partial_output(server):
    body = server.run_code(code="import time\nprint('started', flush=True)\ntime.sleep(60)", language="python",
                           run_timeout=0.5)
    assert body["status"] == "Failed"
    run = body["run_result"]
    assert run["status"] == "TimeLimitExceeded" and run["return_code"] is None
    assert run["stdout"] == "started\n" and 0.5 <= run["execution_time"] < 10


def test_death_by_signal_is_a_negative_return_code(server):
    body = server.run_code(code="import os, signal; os.kill(os.getpid(), signal.SIGKILL)", language="python")
    assert body["status"] == "Failed" and body["run_result"]["status"] == "Finished"
    assert body["run_result"]["return_code"] == -9


def test_compiled_language_reports_both_phases(server):
    body = server.run_code(code="#include <cstdio>\nint main() { int n; scanf(\"%d\", &n); printf(\"%d\\n\", n + 1); }",
                           language="cpp", stdin="41")
    assert body["status"] == "Success"
    for phase in ("compile_result", "run_result"):
        assert body[phase]["status"] == "Finished" and body[phase]["return_code"] == 0
    assert body["run_result"]["stdout"] == "42\n"


def test_a_compile_error_has_no_run_result(server):
    body = server.run_code(code="int main() { return missing; }", language="cpp")
    assert body["status"] == "Failed" and body["run_result"] is None
    assert body["compile_result"]["return_code"] != 0 and "missing" in body["compile_result"]["stderr"]


def test_a_compile_timeout_has_no_run_result(server):
    body = server.run_code(code="#include <bits/stdc++.h>\nint main() {}", language="cpp", compile_timeout=0.01)
    assert body["status"] == "Failed" and body["run_result"] is None
    assert body["compile_result"]["status"] == "TimeLimitExceeded" and body["compile_result"]["return_code"] is None


def test_files_in_and_fetch_files_out_are_base64(server):
    code = "data = open('in/data.bin', 'rb').read()\nopen('out.bin', 'wb').write(data[::-1])\nprint(len(data))"
    body = server.run_code(code=code, language="python", files={"in/data.bin": b64(b"\x00\x01\xff"), "skip.txt": None},
                           fetch_files=["out.bin", "absent.txt", "../../etc/passwd", "/etc/passwd", "skip.txt"])
    assert body["status"] == "Success", body
    assert body["run_result"]["stdout"] == "3\n"
    assert body["files"] == {"out.bin": b64(b"\xff\x01\x00")}


def test_a_file_path_leaving_the_workspace_is_a_sandbox_error(server):
    body = server.run_code(code="print(1)", language="python", files={"../escape.txt": b64(b"x")})
    assert body["status"] == "SandboxError" and "leaves the workspace" in body["message"]
    assert body["compile_result"] is None and body["run_result"] is None


def test_memory_limit_mb_applies_and_minus_one_means_the_server_default(server):
    code = "b = bytearray(300 * 1024 * 1024)\nprint(len(b))"
    limited = server.run_code(code=code, language="python", memory_limit_MB=100)
    assert limited["status"] == "Failed" and limited["run_result"]["return_code"] != 0
    assert limited["run_result"]["evalbox_status"] == "memory_limit"
    default = server.run_code(code=code, language="python", memory_limit_MB=-1)  # server default: 1G
    assert default["status"] == "Success", default


def test_output_that_is_not_utf8_is_replaced_not_an_error(server):
    body = server.run_code(code="import sys; sys.stdout.buffer.write(b'ok\\xff\\n')", language="python")
    assert body["status"] == "Success" and body["run_result"]["stdout"] == "ok\ufffd\n"


def test_a_language_sandboxfusion_knows_but_evalbox_does_not_run_is_a_sandbox_error(server):
    body = server.run_code(code="<?php echo 1;", language="php")
    assert body["status"] == "SandboxError" and "'php' is not supported" in body["message"] and "cpp" in body["message"]


@pytest.mark.parametrize("payload,where", [
    ({"language": "python"}, ["body", "code"]),
    ({"code": "print(1)"}, ["body", "language"]),
    ({"code": "print(1)", "language": "cobol"}, ["body", "language"]),
    ({"code": "print(1)", "language": "python", "run_timeout": "soon"}, ["body", "run_timeout"]),
    ({"code": "print(1)", "language": "python", "files": ["a"]}, ["body", "files"]),
])
def test_bad_requests_are_422_with_fastapis_detail(server, payload, where):
    response = server.post("/run_code", payload)
    assert response.status_code == 422
    assert any(err["loc"] == where for err in response.json()["detail"]), response.text


def test_a_body_that_is_not_json_is_422(server):
    response = requests.post(server.url + "/run_code", data="{nope", headers={"Content-Type": "application/json"},
                             timeout=30)
    assert response.status_code == 422


@pytest.mark.parametrize("path", ["/run_jupyter", "/submit", "/get_prompts", "/list_datasets"])
def test_jupyter_and_dataset_endpoints_say_they_are_not_provided(server, path):
    response = server.post(path, {})
    assert response.status_code == 501 and "not provided" in response.json()["detail"]


def test_unknown_paths_are_404(server):
    assert server.post("/nope", {}).status_code == 404


def test_a_burst_of_requests_all_come_back_right(server):
    def one(i):
        return i, server.run_code(code=f"print({i} * {i})", language="python")

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(64)))
    for i, body in results:
        assert body["status"] == "Success" and body["run_result"]["stdout"] == f"{i * i}\n"


def test_output_beyond_the_cap_is_cut_promptly():
    server = start_server("--max-output", "64K")
    try:
        body = server.run_code(code="import sys\nwhile True: sys.stdout.write('x' * 65536)", language="python",
                               run_timeout=30)
    finally:
        stop_server(server)
    run = body["run_result"]
    assert body["status"] == "Failed" and run["status"] == "Finished" and run["evalbox_status"] == "output_limit"
    assert len(run["stdout"]) <= 64 * 1024 and run["execution_time"] < 15  # killed at the cap, not at the timeout


def test_a_token_is_required_when_set():
    server = start_server("--token", "s3cret")
    try:
        payload = {"code": "print(1)", "language": "python"}
        assert server.post("/run_code", payload).status_code == 401
        assert server.post("/run_code", payload, headers={"Authorization": "Bearer wrong"}).status_code == 401
        good = server.post("/run_code", payload, headers={"Authorization": "Bearer s3cret"})
        assert good.status_code == 200 and good.json()["status"] == "Success"
        assert requests.get(server.url + "/v1/ping", timeout=10).json() == "pong"  # health checks need no token
    finally:
        stop_server(server)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
def test_a_non_loopback_address_without_token_refuses_to_start(host):
    done = subprocess.run([sys.executable, "-m", "evalbox", "serve", "--host", host, "--port", "1"],
                          capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert "--token" in done.stderr and "127.0.0.1" in done.stderr


def test_a_full_queue_answers_504_and_a_patient_one_loses_nothing():
    server = start_server("--concurrency", "1", "--queue-timeout", "0.5")
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            blocker = pool.submit(server.post, "/run_code", {"code": "import time; time.sleep(60)", "language": "python",
                                                             "run_timeout": 60})
            statuses = []
            for _ in range(40):  # once the blocker holds the only slot, every other request waits 0.5 s, then 504
                response = server.post("/run_code", {"code": "print(1)", "language": "python"})
                statuses.append(response.status_code)
                if response.status_code == 504:
                    assert "retry" in response.json()["detail"]
                    break
            assert statuses[-1] == 504, statuses
    finally:
        stop_server(server)  # (the blocker's sandbox dies with the server)
    blocker.cancel()

    server = start_server("--concurrency", "1", "--queue-timeout", "120")
    try:
        def one(i):
            return i, server.run_code(code=f"print({i})", language="python")

        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            results = list(pool.map(one, range(24)))
        assert all(body["run_result"]["stdout"] == f"{i}\n" for i, body in results)
    finally:
        stop_server(server)


def test_importing_evalbox_does_not_import_the_server_stack():
    code = "import sys, evalbox, evalbox.faces.cli; print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'pydantic') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_without_the_extra_serve_says_what_to_install():
    code = ("import sys\nsys.modules['fastapi'] = None\nsys.modules['uvicorn'] = None\n"
            "from evalbox.faces.cli import main\nsys.argv = ['evalbox', 'serve']\nmain()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "pip install 'evalbox-sandbox[server]'" in done.stderr


def test_a_huge_request_is_refused_with_413(server):
    from evalbox.faces.server import MAX_REQUEST

    response = requests.post(server.url + "/run_code", data=b'{"code": "' + b"#" * (MAX_REQUEST + 10) + b'"}',
                             headers={"Content-Type": "application/json"}, timeout=120)
    assert response.status_code == 413
    assert server.run_code(code="print(1)", language="python")["status"] == "Success"  # still serving
