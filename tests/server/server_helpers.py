"""Helpers for the server tests: a real `evalbox serve` in a subprocess on a free 127.0.0.1 port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

requests = pytest.importorskip("requests", reason="the server tests need the test extra: pip install -e '.[test]'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen

    def post(self, path: str, body, **kw):
        return requests.post(self.url + path, json=body, timeout=120, **kw)

    def run_code(self, **body):
        response = self.post("/run_code", body)
        assert response.status_code == 200, response.text
        return response.json()


def start_server(*args: str, env: dict | None = None) -> Server:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "evalbox", "serve", "--port", str(port), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"evalbox serve exited {process.returncode}: {process.stdout.read().decode()}")
        try:
            if requests.get(url + "/v1/ping", timeout=1).json() == "pong":
                return Server(url, process)
        except requests.RequestException:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("evalbox serve did not answer /v1/ping within 60 s")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
