"""``nsnet serve``: its parser and command (the work is `nsnet_sdk.serve`)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from ..errors import NSNetError
from ..pipeline.config import MAX_PIXELS
from ..serve_limits import DEFAULT_SMALL_PIXELS
from ..serve import (APP_NAME, DEFAULT_BATCH_WAIT_MS, DEFAULT_BODY_TIMEOUT_S, DEFAULT_GRACEFUL_S,
                     DEFAULT_MAX_BATCH, DEFAULT_MAX_BYTES, DEFAULT_PORT, build_app, is_loopback,
                     parse_bytes, token_digest)
from .args import positive_int, probability


def _replicas(text: str) -> int | str:
    if text == "auto":
        return text

    return positive_int(text)


def _size(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _ray_init_options(address: str | None) -> dict[str, Any]:
    """``ray.init`` options: a cluster named by ``--address`` or ``RAY_ADDRESS`` is joined as it
    is; otherwise a local Ray of our own is started without Ray's dashboard, whose processes
    cost start-up time and CPU beside the replicas (the service has its own /metrics)."""
    if address or os.environ.get("RAY_ADDRESS"):
        return {"address": address, "log_to_driver": False}
    return {"address": "local", "log_to_driver": False, "include_dashboard": False}


def _drain(serve: Any) -> None:
    """Delete the application before stopping Serve: the proxy stops routing to it (a new request
    gets 404) while every replica lets its requests in flight, uploads included, finish for up to
    --graceful-seconds; stopping Serve directly would close their connections."""
    print("nsnet: draining requests in flight, then stopping", file=sys.stderr)
    try:
        serve.delete(APP_NAME)
    except Exception as e:  # nothing was deployed yet, or Serve is already gone
        print(f"nsnet: warning: drain: {type(e).__name__}: {e}", file=sys.stderr)


def add_parser(subparsers: Any) -> None:
    """Register ``nsnet serve`` (Ray Serve is imported only when it runs)."""
    s = subparsers.add_parser(
        "serve", help="run an HTTP detection service on Ray Serve",
        description="Serve POST /v1/detect, POST /v1/detect/batch, GET /v1/model, GET /metrics "
        "(Prometheus) and GET /healthz on Ray Serve with dynamic batching; one JSON log line per "
        "request with its X-Request-ID. SIGTERM stops it (exit 0). "
        "Binds to loopback unless --host says otherwise. Needs the [ray] extra.")
    s.add_argument("--model", "-m", required=True, help="model artifact (.onnx, .engine, run dir)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    s.add_argument("--port", type=positive_int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT})")
    s.add_argument("--address", help="Ray cluster: 'auto', HOST:6379 (a head's GCS port) or "
                   "RAY_ADDRESS (default: a local Ray)")
    s.add_argument("--replicas", type=_replicas, default=1, metavar="N|auto",
                   help="model replicas, or 'auto' for autoscaling (1)")
    s.add_argument("--gpus-per-replica", type=float, default=0.0, metavar="G", help="GPUs per replica")
    s.add_argument("--max-batch", type=positive_int, default=DEFAULT_MAX_BATCH,
                   help=f"requests per forward pass at most ({DEFAULT_MAX_BATCH})")
    s.add_argument("--batch-wait-ms", type=float, default=DEFAULT_BATCH_WAIT_MS,
                   help="how long a forward pass waits for more requests (5)")
    s.add_argument("--max-bytes", type=_size, default=DEFAULT_MAX_BYTES,
                   help="largest request body; larger ones get 413 (50MB)")
    s.add_argument("--upload-bytes", type=_size, metavar="SIZE",
                   help="request body bytes a replica holds at once, all requests together; "
                   "past it 503 before the body is read (4 x --max-bytes)")
    s.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT_S, metavar="S",
                   help=f"a request body must arrive within S seconds, else 408 "
                   f"({DEFAULT_BODY_TIMEOUT_S:g})")
    s.add_argument("--graceful-seconds", type=float, default=DEFAULT_GRACEFUL_S, metavar="S",
                   help=f"how long a replica Serve stops (scale-down, redeploy) lets its requests "
                   f"in flight finish ({DEFAULT_GRACEFUL_S:g})")
    s.add_argument("--threshold", type=probability, help="decision threshold (default: the model's)")
    s.add_argument("--max-pixels", type=positive_int, default=MAX_PIXELS, metavar="N",
                   help=f"refuse images declaring more than N pixels ({MAX_PIXELS:,})")
    s.add_argument("--request-pixels", type=positive_int, metavar="N",
                   help="pixels the images of one request may declare in all; past it 413 "
                   "before decoding (10 x --max-pixels)")
    s.add_argument("--small-pixels", type=positive_int, default=DEFAULT_SMALL_PIXELS, metavar="N",
                   help="requests whose images declare at most N pixels in all are scored before "
                   f"waiting batches of larger requests ({DEFAULT_SMALL_PIXELS:,})")
    s.add_argument("--no-isolate-decode", dest="isolate_decode", action="store_false",
                   help="decode in the replica process itself instead of a worker process of it "
                   "(a native decoder crash then restarts the replica and fails every request in it)")
    s.add_argument("--cache", metavar="FILE", help="SQLite result cache shared by the replicas on this machine: a "
                   "re-upload of a file already scored with this model and options is answered from it "
                   "without decoding; answers carry cached=true")
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
    if args.body_timeout <= 0 or args.graceful_seconds < 0:
        parser.error("--body-timeout must be > 0 and --graceful-seconds >= 0")
    try:
        import ray
        from ray import serve
    except ImportError:
        parser.error("nsnet serve needs Ray Serve: pip install 'nsnet-sdk[ray]'")
    from ..artifact import artifact_kind

    try:
        artifact_kind(args.model)
        app = build_app(args.model, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                        max_bytes=args.max_bytes, token_sha256=token_sha, replicas=args.replicas,
                        gpus_per_replica=args.gpus_per_replica, threshold=args.threshold,
                        upload_bytes=args.upload_bytes, body_timeout_s=args.body_timeout,
                        graceful_s=args.graceful_seconds, max_pixels=args.max_pixels, cache=args.cache,
                        isolate_decode=args.isolate_decode, request_pixels=args.request_pixels,
                        small_pixels=args.small_pixels)
    except (NSNetError, OSError) as e:
        print(f"nsnet: error: cannot load model: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # --upload-bytes below --max-bytes, --request-pixels below --max-pixels
        parser.error(str(e))
    if not is_loopback(args.host) and token_sha is None:
        print(f"nsnet: warning: serving on {args.host} without --token-env: anyone who can reach "
              "it can use it", file=sys.stderr)
    import signal

    def stop(signum, frame):  # SIGTERM (systemd, docker stop) stops as cleanly as Ctrl-C
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the drain is not interrupted
        raise KeyboardInterrupt

    ray.init(**_ray_init_options(args.address))
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
        _drain(serve)
        return 0
    except Exception as e:  # the deployment failed (model not loadable on a replica, port taken)
        print(f"nsnet: error: service failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        serve.shutdown()
        ray.shutdown()
