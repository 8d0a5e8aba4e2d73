"""`evalbox bench --only server`: `evalbox serve` under a burst, against `run_many` on the same Plans.

A real server (a subprocess, as deployed) gets 512 `/run_code` requests for a small Python
program all at once, each on its own connection (as verl sends them), from a minimal asyncio
HTTP client in this process; every answer must be HTTP 200 "Success" with the right output
(none lost, none refused). Batches alternate with `run_many` of the very Plans the server builds
(same interpreter, limits and concurrency), so the ratio is the cost of HTTP + JSON + the
server's queue. Latency rows: per request within the burst (dominated by waiting for a slot) and
one request at a time (HTTP overhead on top of one sandboxed run).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from evalbox.faces.batch import default_concurrency, run_many
from evalbox.faces.bench import (TARGET_SERVER, BenchError, Config, Row, compare, find_python, latency_row, rate_row,
                                 skipped_row, _percentile)

BURST = 512
QUEUE_TIMEOUT = 600
PROGRAM = "print(sum(range(10)))"
EXPECTED = "45\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _post(port: int, path: str, body: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 POST on a fresh connection; (status code, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (path.encode(), len(body), body))
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, payload


async def _burst(port: int, n: int) -> tuple[float, list[float], list[tuple[int, bytes]]]:
    body = json.dumps({"code": PROGRAM, "language": "python"}).encode()

    async def one() -> tuple[float, tuple[int, bytes]]:
        start = time.perf_counter()
        try:
            answer = await _post(port, "/run_code", body)
        except OSError as e:
            answer = (0, repr(e).encode())
        return time.perf_counter() - start, answer

    start = time.perf_counter()
    done = await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - start, [t * 1000 for t, _ in done], [a for _, a in done]


def _own_cpu(pid: int | None = None) -> float:
    """CPU seconds of a process itself (not of the programs it reaped): this one, or `pid`."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _check(answers: Sequence[tuple[int, bytes]]) -> None:
    bad = []
    for status, payload in answers:
        try:
            body = json.loads(payload) if status == 200 else None
        except ValueError:
            body = None
        if body is None or body.get("status") != "Success" or (body.get("run_result") or {}).get("stdout") != EXPECTED:
            bad.append((status, payload[-300:]))
    if bad:
        raise BenchError(f"evalbox serve: {len(bad)} of {len(answers)} requests lost or wrong, e.g. {bad[0]!r}")


def _start(py: str, concurrency: int) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    # A long queue timeout: this measures throughput and loss; the default (20 s) answers 504 to
    # whatever a loaded machine cannot start within 20 s, which verl then retries.
    proc = subprocess.Popen([sys.executable, "-m", "evalbox", "serve", "--port", str(port), "--concurrency",
                             str(concurrency), "--python", py, "--queue-timeout", str(QUEUE_TIMEOUT)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"evalbox serve exited {proc.returncode}: {proc.stderr.read().decode()[-500:]}")
        try:
            if asyncio.run(_get_ping(port)):
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise BenchError("evalbox serve did not answer /v1/ping within 60 s")


async def _get_ping(port: int) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /v1/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        await writer.drain()
        return (await reader.read()).endswith(b'"pong"')
    finally:
        writer.close()


def server_section(cfg: Config) -> list[Row]:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        why = "needs the server extra: pip install 'evalbox-sandbox[server]'"
        return [skipped_row(f"evalbox serve, {BURST} requests at once", "server", "runs/s", why)]
    from evalbox.faces.code import code_stages

    py = find_python(cfg.python)
    concurrency = default_concurrency()
    # exactly the Plan the server builds for each request (its defaults: run_timeout 10, memory 1G)
    plan = code_stages("python", PROGRAM, run_timeout=10.0, memory="1G", interpreter=py, stdin=b"", files={}).run
    burst = 128 if cfg.quick else BURST
    batches = 1 if cfg.quick else 3
    proc, port = _start(py, concurrency)
    try:
        asyncio.run(_burst(port, 8))  # warm up: the server's executor, the guard, page cache
        run_many([plan] * 8, concurrency=concurrency, progress=False)
        rates: dict[str, list[float]] = {"direct": [], "http": []}
        cpu: dict[str, list[float]] = {"direct": [], "http": []}  # ms of the runner's own CPU per run
        burst_ms: list[float] = []
        for b in range(batches):
            for who in (("direct", "http") if b % 2 == 0 else ("http", "direct")):
                if who == "direct":
                    cpu_start, start = _own_cpu(), time.perf_counter()
                    outs = run_many([plan] * burst, concurrency=concurrency, progress=False)
                    elapsed = time.perf_counter() - start
                    cpu[who].append((_own_cpu() - cpu_start) / burst * 1000)
                    if not all(getattr(o, "stdout", None) == EXPECTED.encode() for o in outs):
                        raise BenchError(f"run_many: wrong output {outs[0]!r}")
                else:
                    cpu_start = _own_cpu(proc.pid)
                    elapsed, times, answers = asyncio.run(_burst(port, burst))
                    cpu[who].append((_own_cpu(proc.pid) - cpu_start) / burst * 1000)
                    _check(answers)
                    burst_ms += times
                rates[who].append(burst / elapsed)
        single: list[float] = []
        body = json.dumps({"code": PROGRAM, "language": "python"}).encode()
        for _ in range(cfg.runs or (20 if cfg.quick else 100)):
            start = time.perf_counter()
            answer = asyncio.run(_post(port, "/run_code", body))
            single.append((time.perf_counter() - start) * 1000)
            _check([answer])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    note = f"{burst} requests at once, {concurrency} running at a time; {burst * batches} answered, 0 lost"
    base = rate_row(f"run_many python, {burst} plans", "server", rates["direct"], note=f"concurrency {concurrency}")
    row = rate_row(f"evalbox serve /run_code, {burst} at once", "server", rates["http"], note=note)
    latency = latency_row(f"serve latency in a {burst}-burst", "server", burst_ms,
                          note=f"p50 {statistics.median(burst_ms):.0f} ms, p99 {_percentile(burst_ms, 0.99):.0f} ms "
                               "(mostly queueing for a slot)")
    one = latency_row("serve latency, 1 request at a time", "server", single,
                      note=f"p99 {_percentile(single, 0.99):.1f} ms; one sandboxed python run + HTTP + JSON")
    cpu_base = latency_row("run_many: caller CPU per run", "server", cpu["direct"],
                           note="the evalbox process itself, not the sandboxed programs")
    cpu_row = latency_row("evalbox serve: server CPU per request", "server", cpu["http"],
                          note="the server process itself (HTTP, JSON, validation, the same executor work)")
    return [base, compare(row, base, TARGET_SERVER), latency, one, cpu_base, compare(cpu_row, cpu_base)]
