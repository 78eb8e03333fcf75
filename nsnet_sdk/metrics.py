"""What `nsnet serve` tells an operator: Prometheus metrics of one replica, and the bound on the
request bytes a replica holds at once.

Each replica keeps its own registry (``prometheus-client``, the [ray] extra); every series carries
the served model's sha256 as a label, so a dashboard sees which model answered. Scrape each
replica through ``GET /metrics`` (behind Serve's proxy a scrape reaches one replica; with several,
sum over scrapes or run one replica per scrape target).
"""
from __future__ import annotations

import asyncio
from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """The replica's series: requests by route and status, latency, images per forward pass,
    inputs refused by reason, upload bytes held."""

    def __init__(self, model_sha256: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.sha = model_sha256
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("nsnet_requests", "HTTP requests answered, by route and status",
                                ["route", "status", "model_sha256"], registry=r)
        self.latency = Histogram("nsnet_request_seconds", "time from request to answer, by route",
                                 ["route", "model_sha256"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("nsnet_batch_size", "images scored in one forward pass",
                               ["model_sha256"], buckets=BATCH_BUCKETS, registry=r)
        self.refused = Counter("nsnet_inputs_refused", "requests or images refused, by reason "
                               "(the error name: PayloadTooLarge, ImageDecodeError, ...)",
                               ["reason", "model_sha256"], registry=r)
        self.upload_bytes = Gauge("nsnet_upload_bytes_held", "request body bytes this replica "
                                  "holds now", ["model_sha256"], registry=r)

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status), self.sha).inc()
        self.latency.labels(route, self.sha).observe(seconds)

    def forward_pass(self, images: int) -> None:
        self.batch.labels(self.sha).observe(images)

    def refuse(self, reason: str, n: int = 1) -> None:
        self.refused.labels(reason, self.sha).inc(n)

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of a scrape."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class UploadBudget:
    """A bound on the request body bytes a replica holds at once (all uploads together): a body
    reserves its declared length before its first byte is read (or, sent without a length, each
    chunk as it arrives) and gives it back when its answer is sent."""

    def __init__(self, limit: int, gauge: Any = None) -> None:
        self.limit = limit
        self.held = 0
        self._gauge = gauge
        self._lock = asyncio.Lock()

    async def reserve(self, n: int) -> bool:
        """Take ``n`` bytes if that keeps the total within the limit; False otherwise."""
        async with self._lock:
            if self.held + n > self.limit:
                return False
            self.held += n
            self._set()
            return True

    async def release(self, n: int) -> None:
        async with self._lock:
            self.held -= n
            self._set()

    def _set(self) -> None:
        if self._gauge is not None:
            self._gauge.set(self.held)
