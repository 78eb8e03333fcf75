"""Load test of `nsnet serve`: requests/s, latency percentiles, errors and mean batch size at a chosen
concurrency, beside the single-process `Detector` rate on the same model, images and machine.

    python -m benchmarks.serve_load --model nsnet.onnx [--images DIR | --synthetic N [--size 512]]
        [--concurrency 32] [--requests 500] [--url http://127.0.0.1:8000] [--token-env VAR]
        [--bad-every K] [--max-batch 32] [--batch-wait-ms 5] [--replicas 1] [--json out.json]
        [--launch script|cli|both] [--isolate-decode on|off|both] [--rounds 1]

Without ``--url`` the service is started here on a free loopback port and shut down afterwards,
once per configuration and round, interleaved (A, B, A, B): ``--launch script`` runs `build_app`
with ``serve.run`` on a local Ray in this process, ``cli`` runs the ``nsnet serve`` command (stopped
with SIGTERM); ``--isolate-decode`` decodes in a replica worker process or not. Each gets its
start-up time (launch to the first 200 from /healthz). With ``--url`` an already running service
is measured (loopback addresses only: this tool is not for loading other people's servers). ``--bad-every K`` makes every K-th request a
bad upload (garbage, oversize, decompression bomb in turn): those must get 4xx, the good ones 200.
The baseline is `Detector.predict_iter` over the same images in this process (default batch size
and decode workers), so ``ratio`` = service requests/s ÷ Detector images/s, same run.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
import sys
import tempfile
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from benchmarks._machine import library_versions, machine
from benchmarks.throughput import BenchError, image_files, synthetic_files


def bomb_png(side: int = 60000) -> bytes:
    """A 100-byte PNG whose header declares side×side RGB pixels: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def bad_uploads(max_bytes: int) -> list[tuple[str, bytes]]:
    return [("garbage", os.urandom(2048)), ("oversize", b"\xff\xd8" + bytes(max_bytes)),
            ("bomb", bomb_png())]


def percentiles(lat_s: list[float]) -> dict[str, float]:
    if not lat_s:
        return {}
    a = np.asarray(lat_s) * 1000
    return {f"p{q}_ms": round(float(np.percentile(a, q)), 2) for q in (50, 95, 99)}


async def load(url: str, bodies: list[bytes], bad: list[tuple[str, bytes]], *, requests: int,
               concurrency: int, bad_every: int, headers: dict[str, str]) -> dict[str, Any]:
    """Send ``requests`` POST /v1/detect from ``concurrency`` clients (after ``concurrency`` warm-up
    requests, not counted); tally what came back."""
    import httpx

    lat: list[float] = []
    sizes: list[int] = []
    good_errors: list[str] = []
    bad_status: dict[str, list[int]] = {name: [] for name, _ in bad}
    counter = iter(range(requests))

    async def client(c: "httpx.AsyncClient") -> None:
        for i in counter:
            if bad_every and i % bad_every == bad_every - 1:
                name, body = bad[(i // bad_every) % len(bad)]
            else:
                name, body = None, bodies[i % len(bodies)]
            t0 = time.perf_counter()
            try:
                r = await c.post(f"{url}/v1/detect", content=body)
            except httpx.HTTPError as e:
                (good_errors if name is None else bad_status[name]).append(
                    f"{type(e).__name__}: {e}" if name is None else -1)
                continue
            if name is not None:
                bad_status[name].append(r.status_code)
                continue
            lat.append(time.perf_counter() - t0)
            if r.status_code != 200:
                good_errors.append(f"{r.status_code}: {r.text[:200]}")
            elif "x-nsnet-batch-size" in r.headers:
                sizes.append(int(r.headers["x-nsnet-batch-size"]))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, timeout=300, limits=limits) as c:
        # Warm-up, not counted: the replica's first batches start its decode worker process.
        await asyncio.gather(*(c.post(f"{url}/v1/detect", content=bodies[i % len(bodies)])
                               for i in range(concurrency)))
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(concurrency)))
        seconds = time.perf_counter() - t0
    return {
        "requests": requests, "concurrency": concurrency, "seconds": round(seconds, 3),
        "requests_per_s": round(requests / seconds, 2), "good_requests": len(lat),
        **percentiles(lat), "errors": len(good_errors), "error_samples": good_errors[:5],
        "mean_batch_size": round(float(np.mean(sizes)), 2) if sizes else None,
        "bad_uploads": {k: {"sent": len(v), "4xx": sum(400 <= s < 500 for s in v)}
                        for k, v in bad_status.items() if v},
    }


def detector_rate(model: Path, files: list[str], n: int) -> dict[str, Any]:
    """Images/s of one in-process `Detector` (its default batch size and decode workers) over
    ``n`` of the same images, after one warm-up batch."""
    from nsnet_sdk import Detector

    with Detector(model) as det:
        list(det.predict_iter(files[:det.batch_size]))
        inputs = [files[i % len(files)] for i in range(n)]
        t0 = time.perf_counter()
        preds = list(det.predict_iter(inputs))
        seconds = time.perf_counter() - t0
    return {"images": n, "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 2),
            "errors": sum(p.error is not None for p in preds), "batch_size": det.batch_size,
            "workers": det.workers}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout_s: float = 300, alive: Any = None) -> None:
    """Return once ``GET /healthz`` answers 200; BenchError after ``timeout_s`` or when
    ``alive()`` turns false (the service process ended)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise BenchError(f"the service at {url} ended before answering /healthz")
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise BenchError(f"{url}/healthz did not answer within {timeout_s:g} s")


class LocalService:
    """`nsnet serve`'s application on a local Ray, on a free loopback port (a context manager):
    ``build_app`` + ``serve.run`` in this process (``launch="script"``) or the ``nsnet serve``
    command in a child process (``"cli"``). ``startup_s``: launch to the first healthy answer."""

    def __init__(self, model: Path, args: argparse.Namespace, token: str | None,
                 launch: str = "script", isolate_decode: bool = True) -> None:
        self.model, self.args, self.token = model, args, token
        self.launch, self.isolate = launch, isolate_decode
        self.proc: Any = None

    def __enter__(self) -> str:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        self.tmp = tempfile.mkdtemp(prefix="nsload-", dir="/tmp")
        a = self.args
        t0 = time.perf_counter()
        if self.launch == "cli":
            import subprocess

            cmd = [sys.executable, "-c", "import sys; from nsnet_sdk.cli import main; sys.exit(main())",
                   "serve", "--model", str(self.model), "--port", str(port), "--max-batch", str(a.max_batch),
                   "--batch-wait-ms", str(a.batch_wait_ms), "--max-bytes", str(a.max_bytes),
                   "--replicas", str(a.replicas)] + ([] if self.isolate else ["--no-isolate-decode"])
            if getattr(a, "upload_bytes", None):
                cmd += ["--upload-bytes", str(a.upload_bytes)]
            env = {**os.environ, "RAY_TMPDIR": self.tmp}
            env.pop("RAY_ADDRESS", None)
            if self.token:
                env["NSNET_LOAD_TOKEN"] = self.token
                cmd += ["--token-env", "NSNET_LOAD_TOKEN"]
            self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_healthy(url, alive=lambda: self.proc.poll() is None)
        else:
            import ray
            from ray import serve

            from nsnet_sdk.serve import build_app, token_digest

            ray.init(include_dashboard=False, log_to_driver=False, _temp_dir=self.tmp)
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_app(self.model, max_batch=a.max_batch, batch_wait_ms=a.batch_wait_ms,
                                max_bytes=a.max_bytes, replicas=a.replicas, isolate_decode=self.isolate,
                                upload_bytes=getattr(a, "upload_bytes", None),
                                token_sha256=token_digest(self.token) if self.token else None),
                      name="nsnet", route_prefix="/")
            wait_healthy(url)
        self.startup_s = round(time.perf_counter() - t0, 2)
        return url

    def __exit__(self, *exc) -> None:
        import shutil

        if self.proc is not None:
            import signal

            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        else:
            import ray
            from ray import serve

            serve.shutdown()
            ray.shutdown()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("ray", "fastapi", "httpx", "uvicorn"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_load",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path, help="the model the service runs")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", type=Path, help="directory of image files (recursive)")
    src.add_argument("--synthetic", type=int, default=32, metavar="N",
                     help="N synthetic photo-like JPEGs (default 32)")
    p.add_argument("--size", type=int, default=512, help="side of the synthetic images (512)")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent clients (32)")
    p.add_argument("--requests", type=int, default=500, help="requests in all (500)")
    p.add_argument("--url", help="a running service on a loopback address (default: start one)")
    p.add_argument("--token-env", metavar="VAR", help="bearer token from this variable")
    p.add_argument("--bad-every", type=int, default=0, metavar="K",
                   help="every K-th request a bad upload (0 = none)")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--max-bytes", type=int, default=50 * 10**6)
    p.add_argument("--replicas", default=1, type=lambda s: s if s == "auto" else int(s))
    p.add_argument("--baseline-images", type=int, default=None,
                   help="images for the Detector baseline (default: --requests)")
    p.add_argument("--launch", choices=("script", "cli", "both"), default="script",
                   help="start the service with build_app + serve.run here, with the nsnet serve "
                   "command, or both (script)")
    p.add_argument("--isolate-decode", choices=("on", "off", "both"), default="on",
                   help="decode in a worker process of the replica (on)")
    p.add_argument("--rounds", type=int, default=1, help="rounds over the configurations (1)")
    p.add_argument("--json", type=Path, help="write the report here")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    from nsnet_sdk.serve import is_loopback

    if not args.model.is_file() and not args.model.is_dir():
        raise BenchError(f"--model {args.model}: not found")
    if args.concurrency < 1 or args.requests < 1:
        raise BenchError("--concurrency and --requests must be >= 1")
    if args.url and not is_loopback(urlsplit(args.url).hostname or ""):
        raise BenchError(f"--url {args.url}: loopback addresses only (127.0.0.1, ::1, localhost)")
    token = None
    if args.token_env:
        token = os.environ.get(args.token_env) or None
        if token is None:
            raise BenchError(f"--token-env {args.token_env}: variable is empty or unset")
    with tempfile.TemporaryDirectory(prefix="nsload-img-") as tmp:
        files = (image_files(args.images) if args.images
                 else synthetic_files(args.synthetic, args.size, Path(tmp)))
        bodies = [Path(f).read_bytes() for f in files]
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        baseline = detector_rate(args.model, files, args.baseline_images or args.requests)
        print(f"Detector (one process): {baseline['images_per_s']} images/s", file=sys.stderr)
        bad = bad_uploads(args.max_bytes)
        def measure(url: str) -> dict[str, Any]:
            return asyncio.run(load(url, bodies, bad, requests=args.requests, concurrency=args.concurrency,
                                    bad_every=args.bad_every, headers=headers))

        if args.url:
            result = measure(args.url.rstrip("/"))
            configs = {}
        else:
            launches = ("script", "cli") if args.launch == "both" else (args.launch,)
            isolations = {"on": (True,), "off": (False,), "both": (True, False)}[args.isolate_decode]
            configs = {f"{launch}, isolate_decode={'on' if iso else 'off'}": (launch, iso)
                       for launch in launches for iso in isolations}
            runs: dict[str, list] = {name: [] for name in configs}
            for r in range(max(1, args.rounds)):
                for name, (launch, iso) in configs.items():
                    svc = LocalService(args.model, args, token, launch, iso)
                    with svc as url:
                        out = {"startup_s": svc.startup_s, **measure(url)}
                    runs[name].append(out)
                    print(f"round {r + 1} {name}: start-up {out['startup_s']} s, "
                          f"{out['requests_per_s']} req/s", file=sys.stderr)
            result = runs[next(iter(runs))][-1]
            configs = runs
    return {
        "started": started, "machine": machine(), "versions": {**library_versions(), **_versions()},
        "model": str(args.model), "images": len(files),
        "service": {"max_batch": args.max_batch, "batch_wait_ms": args.batch_wait_ms,
                    "replicas": args.replicas, "url": args.url or "local (started here)"},
        "load": result, "configurations": configs, "detector_baseline": baseline,
        "ratio_service_vs_detector": round(result["requests_per_s"] / baseline["images_per_s"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        report = run(args)
    except BenchError as e:
        print(f"serve_load: error: {e}", file=sys.stderr)
        return 2
    base = report["detector_baseline"]["images_per_s"]
    for name, runs in report["configurations"].items():  # medians over the rounds
        med = lambda key: float(np.median([x[key] for x in runs if x.get(key) is not None]))  # noqa: E731
        print(f"{name}: start-up {med('startup_s'):.1f} s, {med('requests_per_s'):.1f} req/s "
              f"(service / Detector {med('requests_per_s') / base:.3f}), p50 {med('p50_ms'):.0f} ms, "
              f"{sum(x['errors'] for x in runs)} errors on good images, {len(runs)} round(s)")
    r = report["load"]
    print(f"{r['requests']} requests at concurrency {r['concurrency']}: {r['requests_per_s']} req/s, "
          f"p50 {r.get('p50_ms')} ms, p95 {r.get('p95_ms')} ms, p99 {r.get('p99_ms')} ms, "
          f"{r['errors']} errors on good images, mean batch size {r['mean_batch_size']}")
    for name, b in r["bad_uploads"].items():
        print(f"  {name}: {b['sent']} sent, {b['4xx']} answered 4xx")
    print(f"Detector in one process: {report['detector_baseline']['images_per_s']} images/s; "
          f"service / Detector = {report['ratio_service_vs_detector']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
