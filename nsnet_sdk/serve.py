"""`nsnet serve`: an HTTP detection service on Ray Serve (FastAPI ingress, dynamic batching).

Concurrent single-image requests are gathered by ``@serve.batch`` into one `Detector` call, one
forward pass. A request can only send bytes (a raw body or multipart uploads), never name a file
or URL on the server; bodies over ``max_bytes`` are refused with 413 from their Content-Length or,
when streamed, as soon as the count passes the limit; undecodable images and decompression bombs
(the `Detector`'s own header guard) get 422 with the typed error; other requests are unaffected.
Decoding runs in a worker process of the replica, so a native decoder crash costs one request;
a request's images may declare ``request_pixels`` in all, and small requests go before waiting
batches of large ones (`nsnet_sdk.serve_limits`).
Ray, Ray Serve and FastAPI are imported only when the service is built (the ``[ray]`` extra).
"""
# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request), which
# are names local to build_app and must be objects, not strings.

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import time
import uuid
from typing import Any

from .prediction import rename_source
from .artifact import model_sha256
from .pipeline.config import MAX_PIXELS
from .allocator import return_freed_memory
from .serve_limits import (DEFAULT_SMALL_PIXELS, LARGE_BATCH, TRIM_BYTES, HTTPError, PriorityGate,
                           RequestLimits, batch_cost, check_request_pixels, read_uploads)

DEFAULT_PORT = 8000
DEFAULT_MAX_BATCH = 32
DEFAULT_BATCH_WAIT_MS = 5.0
DEFAULT_MAX_BYTES = 50 * 10**6
MAX_UPLOADS = 256  # uploads in one /v1/detect/batch request
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_GRACEFUL_S = 30.0
ROUTES = ("/v1/detect", "/v1/detect/batch", "/v1/model", "/healthz", "/metrics")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
log = logging.getLogger("nsnet.serve")
APP_NAME = "nsnet"
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20,
          "gib": 2**30}


def parse_bytes(text: str) -> int:
    """``"50MB"`` → 50_000_000; ``"1MiB"`` → 1_048_576; a plain number is bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*", text, re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"expected a size such as 50MB, 512KiB or 1000000, got {text!r}")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def token_digest(token: str) -> str:
    """What the deployment keeps of the bearer token: its SHA-256, so the secret itself never
    enters Ray's deployment config."""
    return hashlib.sha256(token.encode()).hexdigest()


def build_app(model: str | os.PathLike, *, max_batch: int = DEFAULT_MAX_BATCH,
              batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS, max_bytes: int = DEFAULT_MAX_BYTES,
              token_sha256: str | None = None, replicas: int | str = 1,
              gpus_per_replica: float = 0.0, threshold: float | None = None,
              upload_bytes: int | None = None, body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
              graceful_s: float = DEFAULT_GRACEFUL_S, max_pixels: int = MAX_PIXELS,
              cache: str | os.PathLike | None = None, isolate_decode: bool = True,
              request_pixels: int | None = None, small_pixels: int = DEFAULT_SMALL_PIXELS,
              runtime_env: dict[str, Any] | None = None) -> Any:
    """The Ray Serve application (``serve.run(build_app(...))``).

    ``replicas``: a count or ``"auto"`` (Serve's autoscaling); ``token_sha256``: `token_digest`
    of the bearer token every ``/v1`` request (and ``/metrics``) must carry, None for no auth.
    ``upload_bytes``: request body bytes one replica holds at once, all requests together
    (default 4 × ``max_bytes``; past it a request gets 503 before its body is read);
    ``body_timeout_s``: a body must arrive within this (else 408); ``graceful_s``: how long a
    replica Serve stops (scale-down, redeploy) lets its requests in flight finish.
    ``isolate_decode``: decode in a worker process of the replica, so that a native decoder
    crash costs the request that caused it, not the replica and every request in it.
    ``request_pixels``: the pixels the images of one request may declare in all (413 past it;
    default 10 × ``max_pixels``); ``small_pixels``: requests up to this many pixels are scored
    before waiting batches of larger ones (`nsnet_sdk.serve_limits.PriorityGate`).
    ``runtime_env``: Ray runtime environment of the replicas, merged over the service's own
    (``MALLOC_ARENA_MAX``).
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from ray import serve

    from . import __version__
    from .metrics import ServiceMetrics, UploadBudget

    limits = RequestLimits(
        max_bytes=max_bytes, upload_bytes=4 * max_bytes if upload_bytes is None else int(upload_bytes),
        body_timeout_s=body_timeout_s, max_pixels=max_pixels, small_pixels=small_pixels,
        request_pixels=10 * max_pixels if request_pixels is None else int(request_pixels))
    replica: dict[str, Any] = {}  # this process's metrics and budget, made by the replica

    api = FastAPI(title="NS-Net detector", version=__version__,
                  description="Scores images as real or AI-generated. Requests send image bytes.")
    model = os.fspath(model)
    sha = model_sha256(model)

    @api.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
        if "metrics" in replica:
            replica["metrics"].refuse(exc.error)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.error, "detail": exc.detail}, exc.status, headers=headers)

    def authorize(request: Request) -> None:
        if token_sha256 is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token_digest(given.strip()),
                                                                  token_sha256):
            raise HTTPError(401, "Unauthorized", "a valid 'Authorization: Bearer <token>' is required")

    @api.middleware("http")
    async def observe(request: Request, call_next: Any) -> Any:
        """Metrics and one JSON log line per request, with Serve's request id (the client's
        X-Request-ID, else one Serve made; Serve returns it in the answer's X-Request-ID); the
        body bytes the request held go back to the budget."""
        rid = _serve_request_id() or request.headers.get("x-request-id", "")
        rid = rid if _REQUEST_ID.fullmatch(rid) else uuid.uuid4().hex
        request.state.request_id, request.state.held = rid, 0
        start, status = time.perf_counter(), 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            if request.state.held and "budget" in replica:
                await replica["budget"].release(request.state.held)
                if request.state.held >= TRIM_BYTES:
                    return_freed_memory()
            seconds = time.perf_counter() - start
            route = request.url.path if request.url.path in ROUTES else "other"
            if "metrics" in replica:
                replica["metrics"].request(route, status, seconds)
            log.info(json.dumps({"request_id": rid, "method": request.method, "route": route,
                                 "status": status, "seconds": round(seconds, 4),
                                 "bytes": request.state.held}))

    # Fewer glibc arenas: the heap that concurrent uploads grow is shared and can be trimmed.
    env = {"env_vars": {"MALLOC_ARENA_MAX": "2"}}
    for key, value in (runtime_env or {}).items():
        env[key] = {**env.get(key, {}), **value} if key == "env_vars" else value
    ray_options: dict[str, Any] = {"num_cpus": 1, "runtime_env": env}
    if gpus_per_replica:
        ray_options["num_gpus"] = gpus_per_replica

    @serve.deployment(num_replicas=replicas, ray_actor_options=ray_options,
                      max_ongoing_requests=max(4 * max_batch, 64),
                      graceful_shutdown_timeout_s=graceful_s, graceful_shutdown_wait_loop_s=1.0)
    @serve.ingress(api)
    class NSNetService:
        """One `Detector` per replica; concurrent requests share its forward passes."""

        def __init__(self) -> None:
            from .detector import Detector
            from .options import InputOptions

            # Isolated: one decode worker process, kept between requests; a crash in it is
            # retried alone and recorded as that input's ImageDecodeError (pipeline.executors).
            opts = (InputOptions(batch_size=max_batch, workers=1, executor="processes", max_pixels=max_pixels)
                    if isolate_decode else InputOptions(batch_size=max_batch, workers=0, max_pixels=max_pixels))
            self.det = Detector(model, threshold=threshold, options=opts).keep_workers()
            self.gate = PriorityGate()
            self.cache = None
            if cache is not None:  # keyed by the model and every option that changes an answer
                from .cache import ResultCache, result_options

                self.cache = ResultCache(cache, model_sha256=sha, options=result_options(self.det, service=True))
            self.stats = {"requests": 0, "images": 0, "forward_passes": 0, "batched_images": 0}
            self.metrics = replica["metrics"] = ServiceMetrics(sha)
            replica["budget"] = UploadBudget(limits.upload_bytes, self.metrics.upload_bytes.labels(sha))
            if not log.handlers:  # one JSON line per request on the replica's stderr log
                handler = logging.StreamHandler()
                handler.setFormatter(logging.Formatter("%(message)s"))
                log.addHandler(handler)
                log.setLevel(logging.INFO)

        # A batch holds at most 2 bodies of the largest size (a body alone always fits).
        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=batch_wait_ms / 1000,
                     batch_size_fn=batch_cost(max_batch, 2 * max_bytes))
        async def score(self, items: list[tuple[str, bytes]]) -> list[tuple[Any, int]]:
            """A batch of small requests' images."""
            return await self.run_batch(items, small=True)

        @serve.batch(max_batch_size=min(LARGE_BATCH, max_batch), batch_wait_timeout_s=batch_wait_ms / 1000,
                     batch_size_fn=batch_cost(min(LARGE_BATCH, max_batch), 2 * max_bytes))
        async def score_large(self, items: list[tuple[str, bytes]]) -> list[tuple[Any, int]]:
            """A batch of large requests' images: waits while small requests are waiting."""
            return await self.run_batch(items, small=False)

        async def run_batch(self, items: list[tuple[str, bytes]], small: bool) -> list[tuple[Any, int]]:
            import asyncio

            def run() -> list:
                preds = self.det.predict_iter([b for _, b in items], on_error="record")
                return [rename_source(p, i, items[i][0]) for i, p in enumerate(preds)]

            await self.gate.acquire(small)
            try:
                preds = await asyncio.to_thread(run)  # requests keep queueing while the model runs
            finally:
                self.gate.release()
            self.stats["forward_passes"] += 1
            self.stats["batched_images"] += len(items)
            self.metrics.forward_pass(len(items))
            for p in preds:
                if p.error is not None:
                    self.metrics.refuse(p.error.partition(":")[0])
            return [(p, len(items)) for p in preds]

        async def predictions(self, request: Request, most: int) -> list[tuple[Any, int, bool]]:
            import asyncio

            authorize(request)
            items = await read_uploads(request, most, limits, replica["budget"])
            small = check_request_pixels(items, limits) <= limits.small_pixels
            self.stats["requests"] += 1
            self.stats["images"] += len(items)
            return list(await asyncio.gather(*(self.answer(it, small) for it in items)))

        async def answer(self, item: tuple[str, bytes], small: bool) -> tuple[Any, int, bool]:
            """(Prediction, images in its forward pass, answered from the cache)."""
            import hashlib

            from .cache import reused, storable

            key = hashlib.sha256(item[1]).hexdigest() if self.cache is not None else None
            row = self.cache.get(key) if key is not None else None
            if row is not None:  # a re-upload: answered without decoding
                return reused(row, item[0]), 0, True
            pred, shared = await (self.score(item) if small else self.score_large(item))
            if key is not None and storable(pred):
                self.cache.put(key, pred.to_dict())
            return pred, shared, False

        @api.post("/v1/detect", summary="Score one image (raw body or one multipart file)")
        async def detect(self, request: Request) -> JSONResponse:
            items = await self.predictions(request, 1)
            if len(items) != 1:
                raise HTTPError(400, "BadRequest", "send exactly one image; use /v1/detect/batch")
            pred, shared, cached = items[0]
            headers = {"X-NSNet-Batch-Size": str(shared)}
            if pred.error is not None:
                kind, _, detail = pred.error.partition(": ")
                return JSONResponse({"error": kind, "detail": detail, "source": pred.source},
                                    500 if kind == "InferenceError" else 422, headers=headers)
            return JSONResponse({**pred.to_dict(), "cached": cached}, headers=headers)

        @api.post("/v1/detect/batch", summary="Score several multipart uploads; one result each")
        async def detect_batch(self, request: Request) -> JSONResponse:
            items = await self.predictions(request, MAX_UPLOADS)
            return JSONResponse([{**p.to_dict(), "cached": cached} for p, _, cached in items])

        @api.get("/v1/model", summary="The served model's metadata and this replica's counters")
        async def model_info(self, request: Request) -> dict:
            authorize(request)
            info = self.det.info()
            info["model"] = os.path.basename(info["model"])  # no server paths in answers
            return {**info, "model_sha256": sha, "max_batch": max_batch,
                    "batch_wait_ms": batch_wait_ms, "max_bytes": max_bytes, "stats": dict(self.stats)}

        @api.get("/metrics", summary="Prometheus metrics of the replica that answers")
        async def metrics(self, request: Request) -> Response:
            authorize(request)
            body, ctype = self.metrics.exposition()
            return Response(body, media_type=ctype)

        @api.get("/healthz", summary="Liveness: 200 once the model is loaded")
        async def healthz(self) -> dict:
            return {"status": "ok"}

    return NSNetService.bind()


def _serve_request_id() -> str:
    """The id Ray Serve gave the request being handled ("" where this Ray has no such context)."""
    try:
        from ray.serve.context import _get_serve_request_context

        return str(_get_serve_request_context().request_id or "")
    except (ImportError, AttributeError):
        return ""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
