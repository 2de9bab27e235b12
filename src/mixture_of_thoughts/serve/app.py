"""The playground's ASGI app (Starlette): one page, its static files, and three streaming endpoints.

Routes:

* ``GET /``: the page (``static/index.html``); ``GET /static/...``: its script and style sheet, served
  from the package, so the page makes no request outside this server (its Content-Security-Policy
  says so to the browser too).
* ``GET /api/models``: the served models and the server's limits.
* ``GET /api/status``: the queue's counters (pending, running, finished, cancelled, failed).
* ``POST /api/think``, ``/api/diffuse``, ``/api/renoise``: a JSON request (see :mod:`.params`) answered
  with a ``text/event-stream`` of the job's events (see :mod:`.generate`).

A bad request gets a 4xx JSON ``{"error": "one line"}`` before anything is queued (400 for a bad
field or a character the model cannot encode, 404 for an unknown model, 429 when the queue is full);
nothing a client sends names a file. When the client goes away mid-stream its job is cancelled and
the worker thread moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import MotError
from . import generate
from .models import ServedModel
from .params import Limits, diffuse_request, renoise_request, think_request
from .worker import END, Busy, Job, Worker

STATIC = Path(__file__).parent / "static"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
MAX_BODY = 64 * 1024  # bytes of a request body: a prompt at the limit is far smaller
MODES = {  # endpoint -> (request parser, job, model kinds it takes)
    "think": (think_request, generate.run_think, ("ar", "hf")),
    "diffuse": (diffuse_request, generate.run_diffuse, ("diffusion",)),
    "renoise": (renoise_request, generate.run_renoise, ("diffusion",)),
}


class EventStream(StreamingResponse):
    """A server-sent-event stream that always listens for the client's disconnect, whatever ASGI
    version the server speaks, so that a silent stream (a job still queued) is cancelled too."""

    def __init__(self, events, on_close: Callable[[], None]):
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with anyio.create_task_group() as tg:
                async def stream() -> None:
                    await self.stream_response(send)
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                await self.listen_for_disconnect(receive)
                tg.cancel_scope.cancel()
        finally:
            self._on_close()


async def _read_body(request: Request) -> bytes | None:
    """The request body, or None once it passes :data:`MAX_BODY` (read no further)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _sse(event: str, data) -> str:
    return f"event: {event}\ndata: {json.dumps(data, allow_nan=False)}\n\n"


def create_app(models: dict[str, ServedModel], *, limits: Limits | None = None, worker: Worker | None = None,
               allowed_hosts: list[str] | None = None, embedder=None) -> Starlette:
    """The playground app over already loaded ``models``.

    Args:
        models: ``{name: ServedModel}`` (see :func:`.models.load_models`); the first is the page's default.
        limits: what one request may ask for (default :class:`Limits`).
        worker: the job queue (default: one thread, 16 pending jobs); closed when the app shuts down.
        allowed_hosts: ``Host`` header values to accept (``mot serve`` on loopback accepts only
            loopback names, against DNS rebinding); ``None`` accepts any.
        embedder: a sentence embedder (``metrics.semantic.get_embedder()``) to add semantic diversity
            to every result; ``None``: lexical metrics only.
    """
    limits = limits or Limits()
    worker = worker or Worker()

    async def index(request: Request):
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CSP,
                                                             "Cache-Control": "no-cache"})

    async def list_models(request: Request):
        return JSONResponse({"models": [m.describe() for m in models.values()],
                             "limits": dataclasses.asdict(limits)})

    async def status(request: Request):
        return JSONResponse(worker.stats())

    async def run(request: Request):
        mode = request.path_params["mode"]
        if mode not in MODES:
            return _error(404, f"no endpoint /api/{mode}: use think, diffuse or renoise")
        parse, job_fn, kinds = MODES[mode]
        body = await _read_body(request)
        if body is None:
            return _error(413, f"the request is larger than {MAX_BODY // 1024} KiB")
        try:
            data = json.loads(body or b"null")
        except ValueError:  # not JSON, or not UTF-8
            return _error(400, "the request body must be JSON")
        try:
            req = parse(data, limits)
        except MotError as e:
            return _error(400, str(e))
        m = models.get(req.model)
        if m is None:
            return _error(404, f"unknown model {req.model!r}; this server has: {', '.join(models)}")
        if m.kind not in kinds:
            need = "an autoregressive" if mode == "think" else "a diffusion"
            return _error(400, f"{mode} needs {need} model; {m.name} is {m.kind}")
        try:
            generate.check_request(m, req)
        except MotError as e:
            return _error(400, str(e).replace(", or pass --unknown-chars skip|replace", ""))
        job = Job(lambda j: job_fn(m, req, j, embedder), asyncio.get_running_loop())
        try:
            worker.submit(job)
        except Busy as e:
            return _error(429, str(e))

        async def events():
            while True:
                event, data = await job.events.get()
                if event == END:
                    return
                yield _sse(event, data)

        return EventStream(events(), on_close=job.cancel)

    routes = [
        Route("/", index),
        Route("/api/models", list_models),
        Route("/api/status", status),
        Route("/api/{mode}", run, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)] if allowed_hosts else []

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await anyio.to_thread.run_sync(worker.close)

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.worker, app.state.models, app.state.limits = worker, models, limits
    return app
