"""What one `nsnet serve` request may cost a replica: its body (bytes, arrival time, the replica's
upload budget), its images' declared pixels, its turn at the model, and the memory it leaves behind.

Imported only by `nsnet_sdk.serve` when the service is built (Starlette comes with the [ray] extra).
"""
from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from .pipeline.decode import image_size

# A request whose images declare at most this many pixels in all is "small": it is scored before
# any batch of a larger request that has not started yet (see `PriorityGate`).
DEFAULT_SMALL_PIXELS = 16_000_000
# Images a batch of large requests' images holds at most: what a small request may wait for.
LARGE_BATCH = 4
# After a request that held at least this many body bytes, freed heap goes back to the system.
TRIM_BYTES = 8 * 10**6


class HTTPError(Exception):
    """A refused request: its HTTP status, error name and a detail that says what to change."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


@dataclass(frozen=True)
class RequestLimits:
    """The per-request bounds of a replica (see `nsnet_sdk.serve.build_app`)."""

    max_bytes: int
    upload_bytes: int
    body_timeout_s: float
    request_pixels: int
    small_pixels: int
    max_pixels: int

    def __post_init__(self) -> None:
        if self.upload_bytes < self.max_bytes:
            raise ValueError(f"upload_bytes ({self.upload_bytes:,}) must be at least max_bytes "
                             f"({self.max_bytes:,}), or no body of the largest size could be read")
        if self.request_pixels < self.max_pixels:
            raise ValueError(f"request_pixels ({self.request_pixels:,}) must be at least max_pixels "
                             f"({self.max_pixels:,}), or no image of the largest size could be scored")


async def read_body(request: Any, limits: RequestLimits, budget: Any,
                    one_buffer: bool = True) -> bytes | bytearray:
    """The body, refused with 413 as soon as it is known to exceed ``max_bytes``, with 503 when
    the replica already holds its upload budget, with 408 when it is not all there within
    ``body_timeout_s``. With ``one_buffer``, a body with a Content-Length is read into one buffer
    of that size (no list of chunks plus a joined copy: half the peak memory of a large upload)."""
    max_bytes = limits.max_bytes
    declared = request.headers.get("content-length")
    too_big = HTTPError(413, "PayloadTooLarge", f"request body over the {max_bytes:,}-byte limit")
    busy = HTTPError(503, "Busy", f"the service holds its {limits.upload_bytes:,} bytes of uploads; "
                     "retry shortly")
    length = None
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise HTTPError(400, "BadRequest", "invalid Content-Length") from None
        if length > max_bytes:
            raise too_big
        if not await budget.reserve(length):  # before the first byte is read
            raise busy
        request.state.held = length

    async def receive() -> bytes | bytearray:
        buf = bytearray(length) if length and one_buffer else None
        chunks, size = [], 0
        async for chunk in request.stream():
            end = size + len(chunk)
            if end > max_bytes:
                raise too_big
            if end > request.state.held:  # sent without a length, or longer than declared
                if not await budget.reserve(end - request.state.held):
                    raise busy
                request.state.held = end
            if buf is not None and end <= len(buf):
                buf[size:end] = chunk
            else:
                chunks.append(chunk)
            size = end
        if buf is None:
            return b"".join(chunks)
        if chunks:  # longer than declared (Starlette passes what the client sent on)
            return bytes(buf) + b"".join(chunks)
        return buf if size == len(buf) else buf[:size]

    try:
        return await asyncio.wait_for(receive(), limits.body_timeout_s)
    except asyncio.TimeoutError:
        raise HTTPError(408, "RequestTimeout", f"the request body did not arrive within "
                        f"{limits.body_timeout_s:g} s") from None


async def read_uploads(request: Any, most: int, limits: RequestLimits,
                       budget: Any) -> list[tuple[str, Any]]:
    """(name, bytes) of each image sent: a multipart upload's files, else the raw body."""
    multipart = request.headers.get("content-type", "").lower().startswith("multipart/form-data")
    # A multipart body is parsed from bytes: read as chunks and joined once, not copied twice.
    body = await read_body(request, limits, budget, one_buffer=not multipart)
    if not multipart:
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


def check_request_pixels(items: list[tuple[str, Any]], limits: RequestLimits) -> int:
    """The pixels the request's images declare in their headers, all together; 413 over
    ``request_pixels``. An image the decoder refuses unread (unrecognised, or over
    ``max_pixels``) costs nothing and gets its own typed error later."""
    total = 0
    for _, data in items:
        size = image_size(data)
        if size is not None and size[1] * size[2] <= limits.max_pixels:
            total += size[1] * size[2]
    if total > limits.request_pixels:
        raise HTTPError(413, "TooManyPixels",
                        f"the request's {len(items)} image(s) declare {total:,} pixels, over the "
                        f"per-request limit of {limits.request_pixels:,} (nsnet serve "
                        "--request-pixels); send them in several requests")
    return total


def batch_cost(slots: int, batch_bytes: int) -> Callable[[list], int]:
    """A ``@serve.batch`` size function: a batch of ``slots`` holds that many images and at most
    ``batch_bytes`` of their encoded bytes (an image takes its share of the slots by size), so
    the copies a batch makes on its way to the decoder stay bounded however large the bodies."""
    def cost(items: list) -> int:
        return max(len(items), -(-sum(len(data) for _, data in items) * slots // batch_bytes))

    return cost


class PriorityGate:
    """One batch at the model at a time; when it ends, a waiting batch of small requests goes
    before any waiting batch of large ones. A small request thus waits for at most the one
    batch in progress (at most `LARGE_BATCH` large images), never for a large request's queue."""

    def __init__(self) -> None:
        self._busy = False
        self._waiting: dict[bool, deque] = {True: deque(), False: deque()}

    async def acquire(self, small: bool) -> None:
        if not self._busy:
            self._busy = True
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting[small].append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # handed the turn while being cancelled
                self.release()
            raise

    def release(self) -> None:
        for small in (True, False):
            queue = self._waiting[small]
            while queue:
                turn = queue.popleft()
                if not turn.done():
                    turn.set_result(None)
                    return
        self._busy = False
