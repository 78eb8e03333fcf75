"""`nsnet serve` as operators run it: the CLI process, its start-up, and SIGTERM, which lets the
requests in flight (an upload still arriving included) finish before it exits 0."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
from _ray_util import REPO
from _sdk_util import build_stand_in_onnx, textured, write_png

from nsnet_sdk import Detector, InputOptions


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _held_upload_bytes(base: str) -> float:
    import httpx

    for line in httpx.get(f"{base}/metrics", timeout=30).text.splitlines():
        if line.startswith("nsnet_upload_bytes_held{"):
            return float(line.rpartition(" ")[2])
    return 0.0


def _dashboards(ray_tmp: str) -> list[str]:
    """Command lines of Ray dashboard processes of the Ray whose temp folder is ``ray_tmp`` (with
    ``include_dashboard=False`` Ray still starts a minimal head, without its frontend)."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        if "dashboard/dashboard.py" in line and ray_tmp in line and "--disable-frontend" not in line:
            found.append(line)
    return found


def test_sigterm_lets_an_upload_in_flight_finish_then_exits_0(tmp_path):
    """Half a body is sent, SIGTERM arrives, a new request is refused, the rest of the body
    follows: that request gets 200 with its exact score, and `nsnet serve` exits 0."""
    pytest.importorskip("ray", reason="needs the [ray] extra (pip install 'nsnet-sdk[ray]')")
    import httpx

    model = build_stand_in_onnx(tmp_path / "m.onnx")
    body = write_png(tmp_path / "a.png", textured(120, 90, 3)).read_bytes()
    with Detector(model, options=InputOptions(workers=0)) as det:
        want = det.predict(body).prob_fake
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    ray_tmp = tempfile.mkdtemp(prefix="nscli-", dir="/tmp")  # short: Ray's socket paths are limited
    env = {**os.environ, "RAY_TMPDIR": ray_tmp,
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from nsnet_sdk.cli import main; sys.exit(main())",
                             "serve", "--model", str(model),
                             "--port", str(port), "--graceful-seconds", "60"],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        # the CLI's own Ray runs without Ray's dashboard (with it, the CLI served ~20% fewer
        # requests/s than the same app started from a script, and started slower)
        assert _dashboards(ray_tmp) == [], "nsnet serve started Ray's dashboard"
        s = socket.create_connection(("127.0.0.1", port), timeout=120)
        half = len(body) // 2
        s.sendall((f"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                   "Connection: close\r\n\r\n").encode() + body[:half])
        while _held_upload_bytes(base) < len(body):  # the replica is reading this body
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while True:  # new requests are answered until the drain begins, then refused
            late = httpx.post(f"{base}/v1/detect", content=body, timeout=60)
            if late.status_code != 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert late.status_code in (404, 503), late.text  # refused: no new work while draining
        s.sendall(body[half:])
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        s.close()
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), answer[:2000] or "connection closed without an answer"
        import json

        assert json.loads(payload)["prob_fake"] == pytest.approx(want, abs=1e-6)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out = proc.stdout.read()
        print(out[-3000:])
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)
