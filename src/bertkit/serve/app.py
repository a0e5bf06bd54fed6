"""The HTTP API: `create_app(settings)` builds a FastAPI app around one Service.

A thin shell: each endpoint checks its body (bodies.py), hands the inputs to the service, which runs
the offline code in batches, and writes the JSON. Endpoints:

  POST /v1/embeddings   OpenAI's embeddings API (input, model, encoding_format, dimensions); GET /v1/models
  POST /embed           text-embeddings-inference's ({"inputs", "normalize", "truncate"} -> [[...], ...])
  POST /predict         a fine-tuned model's predictions, as `bertkit predict` writes them
  POST /fill-mask       candidates for each [MASK] (a checkpoint with a masked-LM head)
  POST /tokenize        tokens, ids, token types and character offsets
  GET  /health /info /metrics, and / (a page to try the model)

Every error is {"error": MESSAGE, "type": TYPE} with its status. With an API key, every endpoint but
/health and the page (which holds no model data and asks for the key) needs `Authorization: Bearer KEY`.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request) at
# definition time, and they are imported inside create_app so that this module imports without FastAPI.
import base64
import contextlib
import hmac
import json
import logging
import time
from typing import Any

import numpy as np

from bertkit.errors import InputError
from bertkit.serve import bodies
from bertkit.serve.batcher import Closed
from bertkit.serve.errors import ApiError
from bertkit.serve.metrics import Metrics
from bertkit.serve.page import PAGE
from bertkit.serve.service import EMBED, FILL_MASK, Service, matryoshka
from bertkit.serve.settings import GRACEFUL_SHUTDOWN_S, MAX_BODY_BYTES, ServeArgs

log = logging.getLogger("bertkit.serve")

PUBLIC_PATHS = ("/health", "/")
MAX_TOP_K = 100
RETRY_AFTER_S = "1"


def create_app(settings: ServeArgs):
    """A FastAPI app serving `settings.model`; the model is loaded here, before any port is opened."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    metrics = Metrics()
    service = Service(settings, on_batch=metrics.observe_batch)
    state = _State(settings.max_concurrent_requests)
    metrics.watch(queue_depth=lambda: service.batcher.pending, in_flight=lambda: state.in_flight)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.close(GRACEFUL_SHUTDOWN_S)  # after uvicorn has let the requests in flight finish

    app = FastAPI(title="bertkit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service, app.state.metrics, app.state.settings, app.state.admission = service, metrics, settings, state
    app.add_middleware(_Gate, api_key=settings.api_key, metrics=metrics)
    limit, hidden = settings.max_client_batch_size, service.config.hidden_size

    def respond_error(request: Request, status: int, type: str, message: str, headers=None) -> Response:
        metrics.observe_error(request.url.path, type)
        return _json({"error": message, "type": type}, status, headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return respond_error(request, e.status, e.type, str(e), e.headers)

    @app.exception_handler(InputError)
    async def input_error(request: Request, e: InputError):  # the prediction layer's one-line errors
        return respond_error(request, 400, "invalid_input", str(e))

    @app.exception_handler(Closed)
    async def closed(request: Request, e: Closed):
        return respond_error(request, 503, "unavailable", str(e), {"Retry-After": RETRY_AFTER_S})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        if e.status_code == 404:
            return respond_error(request, 404, "not_found", f"no endpoint {request.url.path}; GET /info lists them")
        if e.status_code == 405:
            return respond_error(request, 405, "method_not_allowed",
                                 f"{request.method} is not allowed on {request.url.path}", e.headers)
        return respond_error(request, e.status_code, "http_error", str(e.detail))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return respond_error(request, 500, "internal", f"internal error: {type(e).__name__}")

    async def model_job(key, prepare, inputs, *, truncate: bool):
        """Prepare in a worker thread (tokenizing is CPU work), then wait for the batcher's results."""
        with state.admitted():
            prepared = await run_in_threadpool(prepare, inputs, truncate=truncate)
            metrics.input_tokens.inc(prepared.tokens)
            return prepared, await service.run(key, prepared)

    @app.post("/v1/embeddings")
    async def openai_embeddings(request: Request):
        body = await bodies.read_json(request, MAX_BODY_BYTES)
        texts, _ = bodies.texts(body, "input", limit)
        bodies.string(body, "model")  # any name: this server has one model
        bodies.string(body, "user")
        encoding = bodies.choice(body, "encoding_format", "float", ("float", "base64"))
        dimensions = bodies.integer(body, "dimensions", None, 1, hidden)
        truncate = bodies.boolean(body, "truncate", settings.truncate)
        prepared, vectors = await model_job((EMBED, True), service.prepare_embeddings, texts, truncate=truncate)
        vectors = matryoshka(np.stack(vectors), dimensions)  # (N, C) or (N, dimensions)
        data = [{"object": "embedding", "index": i, "embedding": _encode(v, encoding)} for i, v in enumerate(vectors)]
        return _json({"object": "list", "data": data, "model": service.name,
                      "usage": {"prompt_tokens": prepared.tokens, "total_tokens": prepared.tokens}})

    @app.get("/v1/models")
    async def openai_models():  # what OpenAI clients list before choosing a model
        return _json({"object": "list", "data": [{"id": service.name, "object": "model", "created": 0,
                                                  "owned_by": "bertkit"}]})

    @app.post("/embed")
    async def embed(request: Request):
        body = await bodies.read_json(request, MAX_BODY_BYTES)
        texts, _ = bodies.texts(body, "inputs", limit)
        normalize = bodies.boolean(body, "normalize", True)
        truncate = bodies.boolean(body, "truncate", settings.truncate)
        _, vectors = await model_job((EMBED, normalize), service.prepare_embeddings, texts, truncate=truncate)
        return _json([v.tolist() for v in vectors])

    @app.post("/predict")
    async def predict(request: Request):
        body = await bodies.read_json(request, MAX_BODY_BYTES)
        inputs, single = bodies.inputs(body, "inputs", limit)
        truncate = bodies.boolean(body, "truncate", settings.truncate)
        prepared, predictions = await model_job(("predict", None), service.prepare_predictions, inputs,
                                                truncate=truncate)
        task = service.loaded.task
        out = [task.to_json(example, p) for (example, _), p in zip(prepared.payloads, predictions)]
        return _json(out[0] if single else out)

    @app.post("/fill-mask")
    async def fill_mask(request: Request):
        body = await bodies.read_json(request, MAX_BODY_BYTES)
        texts, single = bodies.texts(body, "inputs", limit)
        top_k = bodies.integer(body, "top_k", 5, 1, MAX_TOP_K)
        truncate = bodies.boolean(body, "truncate", settings.truncate)
        _, results = await model_job((FILL_MASK, top_k), service.prepare_fill_mask, texts, truncate=truncate)
        out = [[[{"token": c.token, "score": c.probability} for c in mask] for mask in masks] for masks in results]
        return _json(out[0] if single else out)

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body = await bodies.read_json(request, MAX_BODY_BYTES)
        texts, single = bodies.texts(body, "inputs", limit)
        truncate = bodies.boolean(body, "truncate", settings.truncate)
        out = await run_in_threadpool(service.tokenize, texts, truncate=truncate)
        return _json(out[0] if single else out)

    @app.get("/health")
    async def health():
        if not service.batcher.alive:
            return _json({"error": "the model worker has stopped", "type": "unavailable"}, 503)
        return _json({"status": "ok"})

    @app.get("/info")
    async def info():
        limits = {"max_batch_tokens": settings.max_batch_tokens, "max_wait_ms": settings.max_wait_ms,
                  "max_concurrent_requests": settings.max_concurrent_requests,
                  "max_client_batch_size": settings.max_client_batch_size, "max_body_bytes": MAX_BODY_BYTES,
                  "truncate": settings.truncate}
        return _json({**service.info(), "limits": limits, "api_key": settings.api_key is not None})

    @app.get("/metrics")
    async def prometheus():
        content, media_type = metrics.render()
        return Response(content, media_type=media_type)

    @app.get("/")
    async def page():
        return HTMLResponse(PAGE)

    return app


class _State:
    """Requests using the model now, and the cap past which new ones are refused (429)."""

    def __init__(self, cap: int):
        self.cap = cap
        self.in_flight = 0

    @contextlib.contextmanager
    def admitted(self):
        # one event loop: no lock needed between the check and the increment
        if self.in_flight >= self.cap:
            raise ApiError(429, "overloaded", f"the server is busy: {self.cap:,} requests are already waiting "
                           "for the model; retry shortly", headers={"Retry-After": RETRY_AFTER_S})
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None):
    """A JSON response written directly: FastAPI's default encoder walks every float of every vector."""
    from fastapi.responses import Response

    content = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(content, status_code=status, media_type="application/json", headers=headers)


def _encode(vector: np.ndarray, encoding: str) -> list[float] | str:
    """OpenAI's encodings: a list of floats, or base64 of the little-endian float32 bytes."""
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


class _Gate:
    """ASGI middleware around every request: the API key check, and the request count and latency."""

    def __init__(self, app, *, api_key: str | None, metrics: Metrics):
        self.app, self.api_key, self.metrics = app, api_key, metrics
        self._expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def watched(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self._expected is not None and scope["path"] not in PUBLIC_PATHS and not self._authorized(scope):
                self.metrics.observe_error(scope["path"], "unauthorized")
                response = _json({"error": "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                                  "type": "unauthorized"}, 401, {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, watched)
            else:
                await self.app(scope, receive, watched)
        finally:
            self.metrics.observe_request(scope["path"], status[0], time.perf_counter() - start)

    def _authorized(self, scope) -> bool:
        given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        return hmac.compare_digest(given, self._expected)
