"""`evalbox serve`: an HTTP face speaking SandboxFusion's `/run_code` contract.

RL trainers and eval harnesses that call SandboxFusion (verl's code reward, the `sandbox-fusion`
client) work unchanged when pointed here. Every request runs through evalbox's language stages
(`evalbox.run_code`) on one AsyncExecutor driven by uvicorn's own event loop: no thread or
process per request. At most `concurrency` requests run at once; the rest wait in line (FIFO)
and are answered 504 (the status verl retries) only when a slot does not free up within
`queue_timeout` seconds. A program's failure is an HTTP 200 with status "Failed"; a request
that does not fit the schema is a 422, as in SandboxFusion.

Needs the optional extra: pip install 'evalbox-sandbox[server]' (FastAPI and uvicorn).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, Optional

from evalbox.errors import SandboxError, ValidationError

INSTALL_HINT = "pip install 'evalbox-sandbox[server]'"
log = logging.getLogger("evalbox.serve")

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, Field
except ImportError as _e:  # pragma: no cover - exercised by a test with the extra hidden
    raise SandboxError(f"evalbox serve needs FastAPI and uvicorn ({_e.name} is missing): {INSTALL_HINT}") from None

from evalbox.faces.aio import AsyncExecutor
from evalbox.faces.batch import default_concurrency
from evalbox.faces.code import built, code_stages
from evalbox.policy.plan import workspace_path
from evalbox.process.result import Output, Status
from evalbox.runtimes import LANGUAGES

# SandboxFusion's language names (its request schema); the ones evalbox has no runtime for are
# accepted and answered with a SandboxError naming what is supported. "c" is evalbox's addition.
SANDBOX_FUSION_LANGUAGES = (
    "python", "cpp", "nodejs", "go", "go_test", "java", "php", "csharp", "bash", "typescript", "sql", "rust", "cuda",
    "lua", "R", "perl", "D_ut", "ruby", "scala", "julia", "pytest", "junit", "kotlin_script", "jest", "verilog",
    "python_gpu", "lean", "swift", "racket",
)
Language = Literal[SANDBOX_FUSION_LANGUAGES + ("c",)]  # type: ignore[valid-type]

MAX_REQUEST = 64 << 20  # bytes of one request body (code + base64 files): larger ones get a 413
GRACEFUL_SHUTDOWN = 10.0  # seconds runs in flight may finish after SIGTERM; then they are killed

DATASET_ENDPOINTS = ("/list_datasets", "/list_ids", "/get_prompts", "/get_prompt_by_id", "/submit", "/get_metrics",
                     "/get_metrics_function")


class RunCodeRequest(BaseModel):
    """SandboxFusion's request: the same fields, types and defaults."""

    compile_timeout: float = Field(10, description="compile timeout for compiled languages (seconds)")
    run_timeout: float = Field(10, description="code run timeout (seconds)")
    memory_limit_MB: int = Field(-1, description="memory limit in megabytes; -1: the server's default")
    code: str = Field(..., description="the code to run")
    stdin: Optional[str] = Field(None, description="optional string to pass into stdin")
    language: Language = Field(..., description="the language or execution mode")  # type: ignore[valid-type]
    files: dict[str, Optional[str]] = Field({}, description="file path -> base64 content, written before the run")
    fetch_files: list[str] = Field([], description="file paths to return (base64) after the run")


@dataclass(frozen=True)
class Settings:
    concurrency: int
    memory: str = "1G"  # when the request says memory_limit_MB=-1
    max_output: str | None = None  # None: Plan's default (16M, stdout and stderr together)
    queue_timeout: float = 20.0
    token: str | None = None
    python: str | None = None  # interpreter for python/pytest (default: the one running evalbox)


class NoSlot(Exception):
    """No sandbox slot freed up within the queue timeout."""


class Slots:
    """At most `size` requests run at once; the others wait in arrival order, up to `patience` seconds."""

    def __init__(self, size: int, patience: float) -> None:
        self._gate = asyncio.Semaphore(size)
        self.patience = patience
        self.waiting = 0

    @asynccontextmanager
    async def slot(self):  # type: ignore[no-untyped-def]
        self.waiting += 1
        try:
            await asyncio.wait_for(self._gate.acquire(), self.patience)
        except asyncio.TimeoutError:
            raise NoSlot from None
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._gate.release()


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def command_result(out: Output) -> dict[str, Any]:
    """An Output as SandboxFusion's CommandRunResult (plus cpu_time, which its client knows, and
    evalbox_status: which evalbox limit, if any, ended the run)."""
    timed_out = out.status in (Status.TIMEOUT, Status.CPU_LIMIT)
    if timed_out:
        code = None  # SandboxFusion's convention: no return code on a timeout
    elif out.exit_code is not None:
        code = out.exit_code
    else:
        code = -(out.signal or 9)  # killed by signal N: -N, as Python's subprocess reports it
    return {
        "status": "TimeLimitExceeded" if timed_out else "Finished",
        "execution_time": out.wall_time,
        "return_code": code,
        "stdout": _text(out.stdout),
        "stderr": _text(out.stderr),
        "cpu_time": out.cpu_time,
        "evalbox_status": out.status.value,
    }


def error_result(message: str) -> dict[str, Any]:
    return {"status": "Error", "execution_time": None, "return_code": None, "stdout": None, "stderr": message}


def overall_status(results: list[dict[str, Any]]) -> tuple[str, str]:
    """SandboxFusion's top-level status and message from the phase results, in order."""
    for r in results:
        if r["status"] == "Error":
            return "SandboxError", r["stderr"] or ""
    if any(r["status"] == "TimeLimitExceeded" for r in results):
        return "Failed", ""
    if any(r["return_code"] not in (None, 0) for r in results):
        return "Failed", ""
    return "Success", ""


def _response(status: str, message: str, compile_result: dict | None = None, run_result: dict | None = None,
              files: dict[str, str] | None = None) -> dict[str, Any]:
    return {"status": status, "message": message, "compile_result": compile_result, "run_result": run_result,
            "executor_pod_name": os.environ.get("MY_POD_NAME"), "files": files or {}}


def _request_files(files: dict[str, Optional[str]]) -> dict[str, bytes]:
    out = {}
    for path, content in files.items():
        if content is None or "IGNORE_THIS_FILE" in path:  # both skipped by SandboxFusion too
            continue
        try:
            out[path] = base64.b64decode(content)
        except (binascii.Error, ValueError) as e:
            raise ValidationError(f"files[{path!r}] is not base64: {e}") from None
    return out


def _fetchable(names: list[str]) -> dict[str, str]:
    """{normalised workspace path: name as asked}; names that leave the workspace are never found."""
    wanted = {}
    for name in names:
        try:
            wanted.setdefault(workspace_path(name, "fetch_files entry"), name)
        except ValidationError:
            pass
    return wanted


class Service:
    """The request handling, on one AsyncExecutor."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.slots = Slots(settings.concurrency, settings.queue_timeout)
        self.executor: AsyncExecutor | None = None

    def stages(self, req: RunCodeRequest, fetch: dict[str, str]):  # type: ignore[no-untyped-def]
        limits: dict[str, Any] = {
            "stdin": (req.stdin or "").encode(),
            "files": _request_files(req.files),
            "memory": f"{req.memory_limit_MB}M" if req.memory_limit_MB > 0 else self.settings.memory,
        }
        if self.settings.max_output is not None:
            limits["max_output"] = self.settings.max_output
        if self.settings.python is not None and req.language in ("python", "pytest"):
            limits["interpreter"] = self.settings.python
        return code_stages(req.language, req.code, compile_timeout=req.compile_timeout, run_timeout=req.run_timeout,
                           fetch=tuple(fetch), **limits)

    async def run_code(self, req: RunCodeRequest, request: Request) -> dict[str, Any] | None:
        """The response body, or None when the client left before its turn came."""
        if req.language not in LANGUAGES:
            return _response("SandboxError", f"language {req.language!r} is not supported by evalbox serve; supported: "
                                             f"{', '.join(sorted(LANGUAGES))}")
        fetch = _fetchable(req.fetch_files)
        try:
            stages = self.stages(req, fetch)
        except SandboxError as e:  # a missing toolchain, a bad file path or size...
            return _response("SandboxError", str(e))
        async with self.slots.slot():
            if await request.is_disconnected():
                return None
            assert self.executor is not None
            results: list[dict[str, Any]] = []
            compiled = ran = None
            try:
                if stages.compile is not None:
                    compiled = await self.executor.run(stages.compile)
                    results.append(command_result(compiled))
                if built(compiled):
                    ran = await self.executor.run(stages.run_after(compiled) if compiled is not None else stages.run)
                    results.append(command_result(ran))
            except SandboxError as e:
                results.append(error_result(str(e)))
        compile_result = results[0] if stages.compile is not None and results else None
        run_result = results[-1] if len(results) > (stages.compile is not None) else None
        status, message = overall_status(results)
        files = {}
        if ran is not None:
            files = {fetch[p]: base64.b64encode(c).decode() for p, c in ran.files.items() if p in fetch}
        return _response(status, message, compile_result, run_result, files)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 before it is all read."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"detail": f"request body over {self.limit >> 20} MiB"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class TooLarge(Exception):
    pass


def create_app(settings: Settings) -> FastAPI:
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        async with AsyncExecutor() as ex:  # on the server's own loop
            service.executor = ex
            yield
            service.executor = None

    app = FastAPI(title="evalbox", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.add_middleware(BodyLimit, limit=MAX_REQUEST)

    if settings.token is not None:
        expected = f"Bearer {settings.token}".encode()

        @app.middleware("http")
        async def require_token(request: Request, call_next):  # type: ignore[no-untyped-def]
            if request.url.path != "/v1/ping":
                given = request.headers.get("authorization", "").encode()
                if not hmac.compare_digest(given, expected):
                    return JSONResponse({"detail": "missing or wrong token: send 'Authorization: Bearer <token>'"},
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
            return await call_next(request)

    @app.get("/v1/ping")
    async def ping() -> str:
        return "pong"

    @app.post("/run_code")
    async def run_code(req: RunCodeRequest, request: Request) -> JSONResponse:
        try:
            body = await service.run_code(req, request)
        except NoSlot:
            return JSONResponse({"detail": f"no free sandbox slot within {settings.queue_timeout:g} s "
                                           f"({settings.concurrency} running, {service.slots.waiting} waiting); retry"},
                                status_code=504)
        except Exception as e:  # as SandboxFusion: anything unexpected is a SandboxError answer, and logged
            log.exception("run_code failed")
            body = _response("SandboxError", f"evalbox serve could not run the request: {type(e).__name__}: {e}")
        if body is None:
            return JSONResponse({"detail": "client disconnected"}, status_code=499)
        return JSONResponse(body)

    not_here = {"detail": "evalbox serve implements /run_code and /v1/ping; SandboxFusion's Jupyter and dataset "
                          "endpoints are not provided (use evalbox.evals for datasets)"}

    async def unsupported() -> JSONResponse:
        return JSONResponse(not_here, status_code=501)

    for path in ("/run_jupyter", *DATASET_ENDPOINTS):
        app.add_api_route(path, unsupported, methods=["POST", "GET"], include_in_schema=False)
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token."""
    if token is not None and not token.strip():
        raise ValidationError("--token is empty: give a secret clients send as 'Authorization: Bearer <token>'")
    if not is_loopback(host) and token is None:
        raise ValidationError(
            f"--host {host} is reachable from other machines: pass --token SECRET (or set EVALBOX_SERVE_TOKEN) so "
            "that only clients sending 'Authorization: Bearer SECRET' can run code, or bind --host 127.0.0.1"
        )


def serve(host: str = "127.0.0.1", port: int = 8080, *, token: str | None = None, concurrency: int | None = None,
          memory: str = "1G", max_output: str | None = None, queue_timeout: float = 20.0, python: str | None = None,
          access_log: bool = False, log_level: str = "info") -> None:
    """Run the server until interrupted (uvicorn's loop drives evalbox's executor)."""
    try:
        import uvicorn
    except ImportError:
        raise SandboxError(f"evalbox serve needs uvicorn: {INSTALL_HINT}") from None
    check_binding(host, token)
    from evalbox.policy.plan import parse_size
    from evalbox.runtimes.python import find_interpreter

    parse_size(memory, "--memory")
    parse_size(max_output, "--max-output")
    find_interpreter(python)  # a wrong --python fails now, not on every request
    settings = Settings(concurrency=concurrency or default_concurrency(), memory=memory, max_output=max_output,
                        queue_timeout=queue_timeout, token=token, python=python)
    uvicorn.run(create_app(settings), host=host, port=port, access_log=access_log, log_level=log_level,
                timeout_keep_alive=75, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN)
