"""Memory of an `nsnet serve` replica through a burst of large uploads: its resident size (with its
decode worker processes) before, at the peak and after the burst, and what each request got.

    python -m benchmarks.serve_memory --model nsnet.onnx [--bodies 40] [--side 4000]
        [--upload-bytes SIZE] [--settle 10] [--url http://127.0.0.1:8000] [--json out.json]

Each body is the same noise PNG of side² pixels (4000: 48 MB, a body the default ``--max-bytes``
of 50 MB admits), all sent at once. Without ``--url`` the service is started here (``build_app`` on
a local Ray, ``--upload-bytes`` admitting the whole burst unless given); with it, a running service
on this machine is measured (its replica found by Ray's process title). Figures depend on glibc,
Python and the machine: compare runs of this script on one machine, in one session.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._machine import machine
from benchmarks.throughput import BenchError

REPLICA_TITLE = "ServeReplica:nsnet:NSNetService"


def noise_png(side: int) -> bytes:
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def replica_rss() -> tuple[int, int, int]:
    """Resident bytes of the replica process, of its children (decode workers; pages they share
    with the replica, the batch buffers, count in both), and the replica's own pages (USS: not
    Ray's shared object-store mapping); zeros if not found."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        if any(REPLICA_TITLE in part for part in p.info["cmdline"] or ()):
            try:
                full = p.memory_full_info()
                return full.rss, sum(c.memory_info().rss for c in p.children(recursive=True)), full.uss
            except psutil.Error:
                return 0, 0, 0
    return 0, 0, 0


async def burst(url: str, body: bytes, n: int) -> dict[str, int]:
    import httpx

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=n)) as c:
        answers = await asyncio.gather(*(c.post(f"{url}/v1/detect", content=body) for _ in range(n)),
                                       return_exceptions=True)
    status: dict[str, int] = {}
    for a in answers:
        key = type(a).__name__ if isinstance(a, Exception) else str(a.status_code)
        status[key] = status.get(key, 0) + 1
    return status


def measure(url: str, body: bytes, n: int, settle_s: float) -> dict[str, Any]:
    mb = lambda b: round(b / 2**20, 1)  # noqa: E731
    before = replica_rss()
    if not before[0]:
        raise BenchError(f"no process titled {REPLICA_TITLE!r} on this machine")
    peak, stop = [before], threading.Event()

    def sample() -> None:
        while not stop.wait(0.1):
            peak.append(replica_rss())

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    status = asyncio.run(burst(url, body, n))
    seconds = time.perf_counter() - t0
    time.sleep(settle_s)
    stop.set()
    t.join()
    after = replica_rss()
    rss = {"before": before, "peak": max(peak, key=lambda v: v[0] + v[1]), "after": after}
    return {"bodies": n, "body_mb": mb(len(body)), "answers": status, "burst_s": round(seconds, 1),
            "rss_mb": {k: mb(v[0] + v[1]) for k, v in rss.items()},
            "replica_uss_mb": {k: mb(v[2]) for k, v in rss.items()},
            "replica_mb": {k: mb(v[0]) for k, v in rss.items()},
            "workers_mb": {k: mb(v[1]) for k, v in rss.items()}, "settle_s": settle_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--bodies", type=int, default=40, help="concurrent uploads (40)")
    p.add_argument("--side", type=int, default=4000, help="side of the noise PNG (4000: 48 MB)")
    p.add_argument("--upload-bytes", type=int, help="the service's --upload-bytes (default: the burst)")
    p.add_argument("--settle", type=float, default=10.0, help="seconds after the burst before 'after'")
    p.add_argument("--url", help="a running service on this machine (default: start one)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    body = noise_png(args.side)
    try:
        if args.url:
            report = measure(args.url.rstrip("/"), body, args.bodies, args.settle)
        else:
            from benchmarks.serve_load import LocalService

            opts = argparse.Namespace(max_batch=32, batch_wait_ms=5.0, max_bytes=len(body) + 1024,
                                      replicas=1, upload_bytes=args.upload_bytes or args.bodies * (len(body) + 1024))
            with LocalService(args.model, opts, None) as url:
                time.sleep(2)  # the replica's start-up allocations are done
                report = measure(url, body, args.bodies, args.settle)
    except BenchError as e:
        print(f"serve_memory: error: {e}", file=sys.stderr)
        return 2
    report = {"machine": machine(), "url": args.url or "local (started here)", **report}
    print(f"{args.bodies} x {report['body_mb']} MB bodies: answers {report['answers']} in {report['burst_s']} s")
    for key, what in (("rss_mb", "RSS replica + decode workers"), ("replica_mb", "RSS replica"), ("workers_mb", "RSS decode workers"),
                      ("replica_uss_mb", "replica's own pages (USS)")):
        r = report[key]
        print(f"  {what}: {r['before']} -> peak {r['peak']} -> {r['after']} MB {args.settle:g} s after")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
