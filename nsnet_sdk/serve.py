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

import argparse
import hashlib
import hmac
import ipaddress
import os
import re
import sys
import time
from typing import Any

from .batch import rename_source
from .results import model_sha256

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

            self.det = Detector(model, threshold=threshold, batch_size=max_batch, workers=0)
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


# -- CLI ------------------------------------------------------------------------------------

def _replicas(text: str) -> int | str:
    if text == "auto":
        return text
    from .cli_args import positive_int

    return positive_int(text)


def _size(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parser(subparsers: Any) -> None:
    """Register ``nsnet serve`` (Ray Serve is imported only when it runs)."""
    from .cli_args import positive_int, probability

    s = subparsers.add_parser(
        "serve", help="run an HTTP detection service on Ray Serve",
        description="Serve POST /v1/detect, POST /v1/detect/batch, GET /v1/model and GET /healthz "
        "on Ray Serve with dynamic batching. Binds to loopback unless --host says otherwise. "
        "Needs the [ray] extra.")
    s.add_argument("--model", "-m", required=True, help="model artifact (.onnx, .engine, run dir)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    s.add_argument("--port", type=positive_int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT})")
    s.add_argument("--address", help="Ray cluster: 'auto' or ray://host:10001 (default: local Ray)")
    s.add_argument("--replicas", type=_replicas, default=1, metavar="N|auto",
                   help="model replicas, or 'auto' for autoscaling (1)")
    s.add_argument("--gpus-per-replica", type=float, default=0.0, metavar="G", help="GPUs per replica")
    s.add_argument("--max-batch", type=positive_int, default=DEFAULT_MAX_BATCH,
                   help=f"requests per forward pass at most ({DEFAULT_MAX_BATCH})")
    s.add_argument("--batch-wait-ms", type=float, default=DEFAULT_BATCH_WAIT_MS,
                   help="how long a forward pass waits for more requests (5)")
    s.add_argument("--max-bytes", type=_size, default=DEFAULT_MAX_BYTES,
                   help="largest request body; larger ones get 413 (50MB)")
    s.add_argument("--threshold", type=probability, help="decision threshold (default: the model's)")
    s.add_argument("--token-env", metavar="VAR", help="require 'Authorization: Bearer <token>', "
                   "the token read from this environment variable")
    s.set_defaults(run=cmd_serve)


def cmd_serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the service until interrupted; 1 when it cannot start, 2 on usage errors."""
    token_sha = None
    if args.token_env:
        token = os.environ.get(args.token_env, "")
        if not token.strip():
            parser.error(f"--token-env {args.token_env}: that environment variable is empty or unset")
        token_sha = token_digest(token.strip())
    if args.batch_wait_ms < 0 or args.gpus_per_replica < 0:
        parser.error("--batch-wait-ms and --gpus-per-replica must be >= 0")
    try:
        import ray
        from ray import serve
    except ImportError:
        parser.error("nsnet serve needs Ray Serve: pip install 'nsnet-sdk[ray]'")
    from .artifact import artifact_kind
    from .errors import NSNetError

    try:
        artifact_kind(args.model)
        app = build_app(args.model, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                        max_bytes=args.max_bytes, token_sha256=token_sha, replicas=args.replicas,
                        gpus_per_replica=args.gpus_per_replica, threshold=args.threshold)
    except (NSNetError, OSError) as e:
        print(f"nsnet: error: cannot load model: {e}", file=sys.stderr)
        return 1
    if not is_loopback(args.host) and token_sha is None:
        print(f"nsnet: warning: serving on {args.host} without --token-env: anyone who can reach "
              "it can use it", file=sys.stderr)
    import signal

    def stop(signum, frame):  # SIGTERM (systemd, docker stop) stops as cleanly as Ctrl-C
        raise KeyboardInterrupt

    ray.init(address=args.address, log_to_driver=False)
    signal.signal(signal.SIGTERM, stop)  # after ray.init, which installs its own crash handler
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(app, name=APP_NAME, route_prefix="/")
        print(f"nsnet: serving {args.model} on http://{args.host}:{args.port} "
              "(POST /v1/detect, /v1/detect/batch; GET /v1/model, /healthz, /docs); Ctrl-C stops",
              file=sys.stderr)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    except Exception as e:  # the deployment failed (model not loadable on a replica, port taken)
        print(f"nsnet: error: service failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        serve.shutdown()
        ray.shutdown()
