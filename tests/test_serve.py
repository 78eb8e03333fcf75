"""`nsnet serve` on a local Ray Serve: answers equal `Detector.predict`, concurrent requests share
forward passes, bad and oversize uploads get 4xx JSON without harming other requests, bearer auth."""
from __future__ import annotations

import asyncio
import socket

import pytest

from _ray_util import local_ray
from _sdk_util import build_stand_in_onnx, textured, write_png
from test_sdk_inputs import png_claiming
from nsnet_sdk import Detector, InputOptions
from nsnet_sdk.cli import main
from nsnet_sdk.serve import parse_bytes

TOKEN = "correct horse battery staple"
MAX_BYTES = 300_000
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UPLOAD_BYTES = 2 * MAX_BYTES  # two largest bodies at once
BODY_TIMEOUT_S = 8.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_stand_in_onnx(tmp_path_factory.mktemp("m") / "nsnet.onnx")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[bytes]:
    d = tmp_path_factory.mktemp("img")
    return [write_png(d / f"{i}.png", textured(40 + 8 * i, 56, seed=i)).read_bytes() for i in range(12)]


@pytest.fixture(scope="module")
def url(model):
    pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    for ray in local_ray():
        from ray import serve

        from nsnet_sdk.serve import build_app, token_digest

        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        # A long batch wait makes batching of concurrent requests certain on a loaded machine.
        serve.run(build_app(model, max_batch=8, batch_wait_ms=200, max_bytes=MAX_BYTES,
                            token_sha256=token_digest(TOKEN), upload_bytes=UPLOAD_BYTES,
                            body_timeout_s=BODY_TIMEOUT_S), name="nsnet", route_prefix="/")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            serve.shutdown()


@pytest.fixture(scope="module")
def reference(model, images) -> list:
    with Detector(model, options=InputOptions(workers=0)) as det:
        return [det.predict(b) for b in images]


def post(url: str, content: bytes, **kw):
    import httpx

    return httpx.post(f"{url}/v1/detect", content=content, headers={**AUTH, **kw.pop("headers", {})},
                      timeout=60, **kw)


def test_answers_equal_detector_predict(url, images, reference):
    import httpx

    for b, ref in zip(images[:3], reference):
        r = post(url, b)
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["prob_fake"] == pytest.approx(ref.prob_fake, abs=1e-6)
        assert got["logit"] == pytest.approx(ref.logit, abs=1e-5)
        assert got["is_fake"] == ref.is_fake and got["error"] is None
    r = httpx.post(f"{url}/v1/detect", files={"file": ("x.png", images[3], "image/png")},
                   headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.json()["source"] == "x.png"
    assert r.json()["prob_fake"] == pytest.approx(reference[3].prob_fake, abs=1e-6)


def test_concurrent_requests_share_forward_passes(url, images, reference):
    import httpx

    before = httpx.get(f"{url}/v1/model", headers=AUTH, timeout=60).json()["stats"]

    async def run():
        async with httpx.AsyncClient(headers=AUTH, timeout=120) as c:
            return await asyncio.gather(*(c.post(f"{url}/v1/detect", content=b) for b in images))

    answers = asyncio.run(run())
    assert [a.status_code for a in answers] == [200] * len(images)
    for a, ref in zip(answers, reference):
        assert a.json()["prob_fake"] == pytest.approx(ref.prob_fake, abs=1e-6)
    assert max(int(a.headers["x-nsnet-batch-size"]) for a in answers) > 1
    after = httpx.get(f"{url}/v1/model", headers=AUTH, timeout=60).json()["stats"]
    assert after["images"] - before["images"] == len(images)
    assert after["forward_passes"] - before["forward_passes"] < len(images)


def test_bad_uploads_get_4xx_json_and_good_ones_still_answer(url, model, images, reference):
    import httpx

    bad = {b"": "ImageDecodeError", b"\xff\xd8\xff\xe0 not a JPEG after all": "ImageDecodeError",
           b"/etc/hostname": "ImageDecodeError",  # a path is only bytes: never opened
           png_claiming(50000, 50000): "ImageTooLargeError"}
    with Detector(model, options=InputOptions(workers=0)) as det:  # the service answers with the CLI's typed errors
        assert {b: det.predict(b, on_error="record").error.split(":")[0] for b in bad} == bad

    async def run():
        async with httpx.AsyncClient(headers=AUTH, timeout=120) as c:
            bodies = [x for pair in zip(bad, images) for x in pair]  # interleaved with good ones
            return bodies, await asyncio.gather(*(c.post(f"{url}/v1/detect", content=b) for b in bodies))

    bodies, answers = asyncio.run(run())
    for body, a in zip(bodies, answers):
        if body in bad:
            assert a.status_code == 422 and a.json()["error"] == bad[body], a.text
        else:
            assert a.status_code == 200
            assert a.json()["prob_fake"] == pytest.approx(reference[images.index(body)].prob_fake, abs=1e-6)
    assert post(url, images[0]).status_code == 200

    r = httpx.post(f"{url}/v1/detect/batch", headers=AUTH, timeout=60,
                   files=[("f", ("a.png", images[0])), ("f", ("bad.jpg", b"\xff\xd8junk")),
                          ("f", ("c.png", images[2]))])
    rows = r.json()
    assert r.status_code == 200 and [x["source"] for x in rows] == ["a.png", "bad.jpg", "c.png"]
    assert rows[1]["error"].startswith("ImageDecodeError: bad.jpg")
    assert rows[2]["prob_fake"] == pytest.approx(reference[2].prob_fake, abs=1e-6)


def test_oversize_body_is_413_and_the_next_request_succeeds(url, images):
    import httpx

    big = b"\x89PNG" + bytes(MAX_BYTES)
    r = post(url, big)
    assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"

    def chunks():  # no Content-Length: the streamed count must trip the limit
        for _ in range(10):
            yield bytes(MAX_BYTES // 4)

    r = httpx.post(f"{url}/v1/detect", content=chunks(), headers=AUTH, timeout=60)
    assert r.status_code == 413
    assert post(url, images[1]).status_code == 200


def test_bearer_token_required(url, images):
    import httpx

    assert httpx.post(f"{url}/v1/detect", content=images[0], timeout=60).status_code == 401
    r = httpx.post(f"{url}/v1/detect", content=images[0], timeout=60,
                   headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"] == "Unauthorized"
    assert httpx.get(f"{url}/v1/model", timeout=60).status_code == 401
    assert httpx.get(f"{url}/healthz", timeout=60).status_code == 200
    paths = httpx.get(f"{url}/openapi.json", timeout=60).json()["paths"]
    assert {"/v1/detect", "/v1/detect/batch", "/v1/model", "/healthz"} <= set(paths)


def test_model_endpoint_names_no_server_path(url, model):
    import httpx

    info = httpx.get(f"{url}/v1/model", headers=AUTH, timeout=60).json()
    assert info["model"] == model.name and str(model.parent) not in str(info)
    assert info["threshold"] == 0.5 and info["max_batch"] == 8


def test_cli_refuses_an_unset_token_variable(model, monkeypatch):
    monkeypatch.delenv("NSNET_TEST_TOKEN", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["serve", "--model", str(model), "--token-env", "NSNET_TEST_TOKEN"])
    assert e.value.code == 2


def test_parse_bytes():
    assert parse_bytes("50MB") == 50_000_000 and parse_bytes("1MiB") == 2**20
    assert parse_bytes("1000") == 1000
    for bad in ("", "-1", "12XB", "0"):
        with pytest.raises(ValueError):
            parse_bytes(bad)


def test_load_test_refuses_non_loopback_targets(model, capsys):
    from benchmarks import serve_load

    assert serve_load.main(["--model", str(model), "--url", "http://192.0.2.1:8000"]) == 2
    assert "loopback addresses only" in capsys.readouterr().err
    assert serve_load.main(["--model", str(model), "--requests", "0"]) == 2


def metric_values(text: str) -> dict[str, float]:
    """``name{labels}`` -> value of a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_metrics_count_requests_by_status_refusals_by_reason_and_batch_sizes(url, model, images):
    import hashlib

    import httpx

    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert httpx.get(f"{url}/metrics", timeout=30).status_code == 401  # behind the token too

    def scrape() -> dict[str, float]:
        r = httpx.get(f"{url}/metrics", headers=AUTH, timeout=30)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        return metric_values(r.text)

    def get(m: dict[str, float], name: str, **labels: str) -> float:
        want = ",".join(f'{k}="{v}"' for k, v in sorted({**labels, "model_sha256": sha}.items()))
        return m.get(f"{name}{{{want}}}", 0.0)

    before = scrape()
    assert post(url, images[0]).status_code == 200
    assert post(url, images[1]).status_code == 200
    assert post(url, b"not an image").status_code == 422
    assert post(url, b"\xff" * (MAX_BYTES + 1)).status_code == 413
    after = scrape()

    def delta(name: str, **labels: str) -> float:
        return get(after, name, **labels) - get(before, name, **labels)

    assert delta("nsnet_requests_total", route="/v1/detect", status="200") == 2
    assert delta("nsnet_requests_total", route="/v1/detect", status="422") == 1
    assert delta("nsnet_requests_total", route="/v1/detect", status="413") == 1
    assert delta("nsnet_inputs_refused_total", reason="ImageDecodeError") == 1
    assert delta("nsnet_inputs_refused_total", reason="PayloadTooLarge") == 1
    assert delta("nsnet_request_seconds_count", route="/v1/detect") == 4
    assert delta("nsnet_batch_size_sum") == 3  # images through the model: two good, one bad
    assert get(after, "nsnet_upload_bytes_held") == 0  # every body's bytes given back


def test_request_id_is_echoed_or_made(url, images):
    r = post(url, images[0], headers={"X-Request-ID": "job-42.7"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "job-42.7"
    made = [post(url, images[0]).headers.get("x-request-id", "") for _ in range(2)]
    assert all(made) and made[0] != made[1]


def test_stalled_bodies_time_out_and_the_upload_budget_refuses_before_reading(url, images):
    """Two uploads that declare the largest body and stall hold the whole upload budget: a third
    is refused with 503 at once, the stalled ones get 408 after the body timeout, health and a
    good request answer meanwhile, and the budget is whole again afterwards."""
    import time

    def stalled() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=60)
        s.sendall((f"POST /v1/detect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                   f"Content-Length: {MAX_BYTES}\r\n\r\nabcd").encode())
        return s

    def answer(s: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data

    first = stalled()
    second = stalled()
    time.sleep(2)  # both bodies have reserved their length
    import httpx

    third = post(url, images[0], headers={"Content-Length": str(len(images[0]))})
    assert third.status_code == 503 and third.json()["error"] == "Busy"
    assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
    start = time.monotonic()
    for s in (first, second):
        assert answer(s).split(b"\r\n", 1)[0].split(b" ")[1] == b"408"
        s.close()
    assert time.monotonic() - start < BODY_TIMEOUT_S + 30  # not held until the client gives up
    assert post(url, images[0]).status_code == 200


def test_a_cache_answers_re_uploads_without_decoding(url, model, images, reference, tmp_path):
    """`nsnet serve --cache`: the first upload of a file is scored (cached false), a re-upload is
    answered from the SQLite cache (cached true, no forward pass, the same values)."""
    import httpx
    from ray import serve

    from nsnet_sdk.serve import build_app, token_digest

    serve.run(build_app(model, max_batch=8, batch_wait_ms=5, max_bytes=MAX_BYTES,
                        token_sha256=token_digest(TOKEN), cache=str(tmp_path / "cache.sqlite")),
              name="cached", route_prefix="/cached")
    try:
        first = httpx.post(f"{url}/cached/v1/detect", content=images[0], headers=AUTH, timeout=60)
        again = httpx.post(f"{url}/cached/v1/detect", content=images[0], headers=AUTH, timeout=60)
        batch = httpx.post(f"{url}/cached/v1/detect/batch", headers=AUTH, timeout=60,
                           files=[("file", ("a.png", images[0], "image/png")), ("file", ("b.png", images[1], "image/png"))])
        stats = httpx.get(f"{url}/cached/v1/model", headers=AUTH, timeout=60).json()["stats"]
    finally:
        serve.delete("cached")
    assert first.status_code == again.status_code == batch.status_code == 200, (first.text, again.text, batch.text)
    assert first.json()["cached"] is False and again.json()["cached"] is True
    assert again.headers["x-nsnet-batch-size"] == "0"
    assert again.json()["prob_fake"] == first.json()["prob_fake"] == pytest.approx(reference[0].prob_fake, abs=1e-6)
    a, b = batch.json()
    assert (a["source"], a["cached"], b["cached"]) == ("a.png", True, False)
    assert stats["images"] == 4 and stats["batched_images"] == 2  # only the two first uploads were scored


# Loaded at start-up by every interpreter of the replica deployed below (its decode worker
# processes included): decoding bytes that end with the marker calls abort() inside the decoder,
# as a native decoder crash would (the same mechanism as tests/test_decode_pool.py).
_ABORT_MARKER = b"nsnet-test-abort"
_ABORT_HOOK = f"""
import ctypes
from nsnet_sdk.pipeline import decode as _decode

_decode_bytes = _decode._decode_bytes


def _crashing(data, max_pixels, src, swap=True):
    if bytes(data[-{len(_ABORT_MARKER)}:]) == {_ABORT_MARKER!r}:
        ctypes.CDLL(None).abort()
    return _decode_bytes(data, max_pixels, src, swap)


_decode._decode_bytes = _crashing
"""


def test_a_decoder_crash_costs_one_request_not_the_replica(url, model, images, reference, tmp_path):
    """abort() inside the decoder on one upload: that request gets one typed 422, every good
    request sent with it gets 200 and its exact score, and the replica is the same one after
    (its counters were not reset by a restart)."""
    import os

    import httpx
    from ray import serve

    from _ray_util import REPO
    from nsnet_sdk.serve import build_app, token_digest

    (tmp_path / "sitecustomize.py").write_text(_ABORT_HOOK)
    path = os.pathsep.join(p for p in (str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    serve.run(build_app(model, max_batch=8, batch_wait_ms=50, max_bytes=MAX_BYTES,
                        token_sha256=token_digest(TOKEN),
                        runtime_env={"env_vars": {"PYTHONPATH": path}}),
              name="crashy", route_prefix="/crashy")
    crash = images[5] + _ABORT_MARKER  # trailing bytes after IEND: a good PNG but for the hook
    bodies = images[:8] + [crash] + images[8:] + [crash]

    async def run():
        async with httpx.AsyncClient(headers=AUTH, timeout=120) as c:
            return await asyncio.gather(*(c.post(f"{url}/crashy/v1/detect", content=b) for b in bodies))

    try:
        answers = asyncio.run(run())
        after = httpx.post(f"{url}/crashy/v1/detect", content=images[0], headers=AUTH, timeout=60)
        stats = httpx.get(f"{url}/crashy/v1/model", headers=AUTH, timeout=60).json()["stats"]
    finally:
        serve.delete("crashy")
    for body, a in zip(bodies, answers):
        if body is crash:
            assert a.status_code == 422, a.text
            assert a.json()["error"] == "ImageDecodeError" and "decoder crashed" in a.json()["detail"]
        else:
            assert a.status_code == 200, a.text
            assert a.json()["prob_fake"] == pytest.approx(reference[images.index(body)].prob_fake, abs=1e-6)
    assert after.status_code == 200
    assert stats["requests"] == len(bodies) + 1  # one replica answered all: it never restarted


def _bilevel_png(side: int) -> bytes:
    """A 1-bit PNG of side² pixels in a few KB: cheap to send, a real decode and mosaic to score."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.indices((side, side)).sum(0) // 7 % 2 * 255).astype(np.uint8)).convert("1").save(buf, "PNG")
    return buf.getvalue()


def test_a_small_request_is_answered_before_a_large_one_finishes(url, images, reference):
    """A /v1/detect/batch of 16 large images (16 Mpx each) is being scored when a one-image
    request arrives: the small one is answered first, with its exact score."""
    import time

    import httpx

    big = _bilevel_png(4000)
    files = [("f", (f"big{i}.png", big, "image/png")) for i in range(16)]
    done: dict[str, float] = {}

    def requests_seen() -> int:
        return httpx.get(f"{url}/v1/model", headers=AUTH, timeout=60).json()["stats"]["requests"]

    async def run():
        async with httpx.AsyncClient(headers=AUTH, timeout=300) as c:
            async def large():
                r = await c.post(f"{url}/v1/detect/batch", files=files)
                done["large"] = time.monotonic()
                return r

            async def small():
                while requests_seen() == seen:  # the large request is read and queued
                    await asyncio.sleep(0.05)
                r = await c.post(f"{url}/v1/detect", content=images[4])
                done["small"] = time.monotonic()
                return r

            return await asyncio.gather(large(), small())

    seen = requests_seen()
    large, small = asyncio.run(run())
    assert large.status_code == 200 and small.status_code == 200, (large.text, small.text)
    assert [row["error"] for row in large.json()] == [None] * 16
    assert small.json()["prob_fake"] == pytest.approx(reference[4].prob_fake, abs=1e-6)
    assert done["small"] < done["large"]


def test_a_request_over_the_pixel_budget_is_refused_before_decoding(url):
    """The images of one request may declare 10 × max_pixels (1e9) in all: 11 headers of
    100 Mpx each get 413 naming the limit and the flag; 10 are read and answered per image."""
    import httpx

    over = [("f", (f"h{i}.png", png_claiming(10000, 10000), "image/png")) for i in range(11)]
    r = httpx.post(f"{url}/v1/detect/batch", files=over, headers=AUTH, timeout=60)
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "TooManyPixels" and "--request-pixels" in r.json()["detail"]
    assert "1,100,000,000" in r.json()["detail"]
    r = httpx.post(f"{url}/v1/detect/batch", files=over[:10], headers=AUTH, timeout=60)
    assert r.status_code == 200 and len(r.json()) == 10


def test_a_batch_holds_at_most_its_byte_share_of_large_bodies():
    """`batch_cost` (Serve's batch_size_fn): small images take one slot each; a body of the
    largest size takes half the slots, so a batch never carries more than two of them."""
    from nsnet_sdk.serve_limits import batch_cost

    cost = batch_cost(32, 2 * MAX_BYTES)
    assert cost([("a", b"x" * 100)] * 32) == 32
    big = ("b", b"x" * MAX_BYTES)
    assert cost([big]) == 16 and cost([big, big]) == 32 and cost([big, big, ("c", b"x")]) > 32
