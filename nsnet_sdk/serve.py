"""`nsnet serve`: an HTTP detection service on Ray Serve (FastAPI ingress, dynamic batching).

Concurrent single-image requests are gathered by ``@serve.batch`` into one `Detector` call, one
forward pass. A request can only send bytes (a raw body or multipart uploads), never name a file
or URL on the server; bodies over ``max_bytes`` are refused with 413 from their Content-Length or,
when streamed, as soon as the count passes the limit; undecodable images and decompression bombs
(the `Detector`'s own header guard) get 422 with the typed error; other requests are unaffected.
Ray, Ray Serve and FastAPI are imported only when the service is built (the ``[ray]`` extra).
"""
# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request), which
# are names local to build_app and must be objects, not strings.

import hashlib
import hmac
import ipaddress
import os
import re
import sys
import time
from typing import Any

from .prediction import rename_source
from .artifact import model_sha256

DEFAULT_PORT = 8000
DEFAULT_MAX_BATCH = 32
DEFAULT_BATCH_WAIT_MS = 5.0
DEFAULT_MAX_BYTES = 50 * 10**6
MAX_UPLOADS = 256  # uploads in one /v1/detect/batch request
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
              gpus_per_replica: float = 0.0, threshold: float | None = None) -> Any:
    """The Ray Serve application (``serve.run(build_app(...))``).

    ``replicas``: a count or ``"auto"`` (Serve's autoscaling); ``token_sha256``: `token_digest`
    of the bearer token every ``/v1`` request must carry, None for no auth.
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from ray import serve

    from . import __version__

    api = FastAPI(title="NS-Net detector", version=__version__,
                  description="Scores images as real or AI-generated. Requests send image bytes.")
    model = os.fspath(model)
    sha = model_sha256(model)

    class HTTPError(Exception):
        def __init__(self, status: int, error: str, detail: str) -> None:
            super().__init__(detail)
            self.status, self.error, self.detail = status, error, detail

    @api.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"error": exc.error, "detail": exc.detail}, exc.status, headers=headers)

    def authorize(request: Request) -> None:
        if token_sha256 is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token_digest(given.strip()),
                                                                  token_sha256):
            raise HTTPError(401, "Unauthorized", "a valid 'Authorization: Bearer <token>' is required")

    async def read_body(request: Request) -> bytes:
        """The body, refused with 413 as soon as it is known to exceed ``max_bytes``."""
        declared = request.headers.get("content-length")
        too_big = HTTPError(413, "PayloadTooLarge", f"request body over the {max_bytes:,}-byte limit")
        if declared is not None:
            try:
                if int(declared) > max_bytes:
                    raise too_big
            except ValueError:
                raise HTTPError(400, "BadRequest", "invalid Content-Length") from None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    async def uploads(request: Request, most: int) -> list[tuple[str, bytes]]:
        """(name, bytes) of each image sent: a multipart upload's files, else the raw body."""
        body = await read_body(request)
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            return [("<upload>", body)]
        from starlette.datastructures import UploadFile
        from starlette.formparsers import MultiPartException, MultiPartParser

        async def once():
            yield body

        try:
            form = await MultiPartParser(request.headers, once(), max_files=most,
                                         max_fields=most).parse()
        except MultiPartException as e:
            raise HTTPError(400, "BadRequest", f"malformed multipart body: {e}") from None
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise HTTPError(400, "BadRequest", "multipart body without a file part")
        out = [(f.filename or f"<upload #{i}>", await f.read()) for i, f in enumerate(files)]
        await form.close()
        return out

    ray_options: dict[str, Any] = {"num_cpus": 1}
    if gpus_per_replica:
        ray_options["num_gpus"] = gpus_per_replica

    @serve.deployment(num_replicas=replicas, ray_actor_options=ray_options,
                      max_ongoing_requests=max(4 * max_batch, 64))
    @serve.ingress(api)
    class NSNetService:
        """One `Detector` per replica; concurrent requests share its forward passes."""

        def __init__(self) -> None:
            from .detector import Detector
            from .options import InputOptions

            self.det = Detector(model, threshold=threshold, options=InputOptions(batch_size=max_batch, workers=0))
            self.score.set_max_batch_size(max_batch)
            self.score.set_batch_wait_timeout_s(batch_wait_ms / 1000.0)
            self.stats = {"requests": 0, "images": 0, "forward_passes": 0, "batched_images": 0}

        @serve.batch(max_batch_size=DEFAULT_MAX_BATCH, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_MS / 1000)
        async def score(self, items: list[tuple[str, bytes]]) -> list[tuple[Any, int]]:
            import asyncio

            def run() -> list:
                preds = self.det.predict_iter([b for _, b in items], on_error="record")
                return [rename_source(p, i, items[i][0]) for i, p in enumerate(preds)]

            preds = await asyncio.to_thread(run)  # requests keep queueing while the model runs
            self.stats["forward_passes"] += 1
            self.stats["batched_images"] += len(items)
            return [(p, len(items)) for p in preds]

        async def predictions(self, request: Request, most: int) -> list[tuple[Any, int]]:
            import asyncio

            authorize(request)
            items = await uploads(request, most)
            self.stats["requests"] += 1
            self.stats["images"] += len(items)
            return list(await asyncio.gather(*(self.score(it) for it in items)))

        @api.post("/v1/detect", summary="Score one image (raw body or one multipart file)")
        async def detect(self, request: Request) -> JSONResponse:
            items = await self.predictions(request, 1)
            if len(items) != 1:
                raise HTTPError(400, "BadRequest", "send exactly one image; use /v1/detect/batch")
            pred, shared = items[0]
            headers = {"X-NSNet-Batch-Size": str(shared)}
            if pred.error is not None:
                kind, _, detail = pred.error.partition(": ")
                return JSONResponse({"error": kind, "detail": detail, "source": pred.source},
                                    500 if kind == "InferenceError" else 422, headers=headers)
            return JSONResponse(pred.to_dict(), headers=headers)

        @api.post("/v1/detect/batch", summary="Score several multipart uploads; one result each")
        async def detect_batch(self, request: Request) -> JSONResponse:
            items = await self.predictions(request, MAX_UPLOADS)
            return JSONResponse([p.to_dict() for p, _ in items])

        @api.get("/v1/model", summary="The served model's metadata and this replica's counters")
        async def model_info(self, request: Request) -> dict:
            authorize(request)
            info = self.det.info()
            info["model"] = os.path.basename(info["model"])  # no server paths in answers
            return {**info, "model_sha256": sha, "max_batch": max_batch,
                    "batch_wait_ms": batch_wait_ms, "max_bytes": max_bytes, "stats": dict(self.stats)}

        @api.get("/healthz", summary="Liveness: 200 once the model is loaded")
        async def healthz(self) -> dict:
            return {"status": "ok"}

    return NSNetService.bind()


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
