"""`nsnet batch` on a real multi-raylet cluster started by the test (a head and a worker node, each
its own `ray start` with its own temp folder): relative inputs and model work from a directory the
raylets never saw, through a GCS address and through a Ray Client (``ray://``) connection."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from _ray_util import REPO
from _sdk_util import build_stand_in_onnx, textured, write_png

MARK = "NSNET_TEST_CLUSTER"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_marked(mark: str) -> None:
    """SIGKILL every process started with ``MARK=mark`` in its environment: this test's cluster
    only (``ray stop`` would stop every Ray on the machine)."""
    needle = f"{MARK}={mark}\0".encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read():
                    os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray", reason="needs the [ray] extra (pip install 'nsnet-sdk[ray]')")
    ray_bin = str(Path(sys.executable).with_name("ray"))
    mark = tempfile.mkdtemp(prefix="nsc-", dir="/tmp")  # short: Ray's socket paths are limited
    # Ray's token authentication, with a token made for this cluster, as a real one would be
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    # a Ray Client connection starts a server process on the head, which takes over Ray's 30 s
    # default on a loaded 2-core machine
    env = {**os.environ, MARK: mark, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "180", **auth}
    env.pop("RAY_ADDRESS", None)
    gcs, client = free_port(), free_port()

    def node_ports() -> list[str]:
        return ["--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port",
                str(free_port()), "--runtime-env-agent-port", str(free_port()),
                "--metrics-export-port", str(free_port()), "--num-cpus", "1"]

    try:
        subprocess.run([ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port",
                        str(gcs), "--ray-client-server-port", str(client), "--include-dashboard",
                        "false", "--temp-dir", f"{mark}/head", *node_ports()], env=env,
                       cwd=mark, check=True, capture_output=True, timeout=180)
        worker = subprocess.run([ray_bin, "start", "--address", f"127.0.0.1:{gcs}",
                                 "--node-ip-address", "127.0.0.1", *node_ports()], env=env,
                                cwd="/", capture_output=True, text=True, timeout=180)
        assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr[-2000:]
        yield {"gcs": f"127.0.0.1:{gcs}", "client": f"ray://127.0.0.1:{client}", "env": auth}
    finally:
        kill_marked(mark)
        shutil.rmtree(mark, ignore_errors=True)


def test_relative_paths_on_a_two_raylet_cluster_by_gcs_and_ray_client(cluster, tmp_path):
    job = tmp_path / "job"  # the driver's directory: no raylet was started here
    (job / "imgs").mkdir(parents=True)
    build_stand_in_onnx(job / "tiny.onnx")
    for i in range(40):
        write_png(job / "imgs" / f"img{i}.png", textured(36, 40, seed=i))
    (job / "imgs" / "broken.png").write_bytes(b"not a png")
    env = {**os.environ, "PYTHONPATH": str(REPO), **cluster["env"]}
    env.pop("RAY_ADDRESS", None)
    for name, address in (("gcs", cluster["gcs"]), ("client", cluster["client"])):
        proc = subprocess.run([sys.executable, "-m", "nsnet_sdk.cli", "batch", "imgs", "--model",
                               "tiny.onnx", "--out", f"out-{name}", "--address", address,
                               "--workers", "2", "--batch-size", "8"],
                              cwd=job, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (name, proc.stderr[-3000:])
        import pyarrow.parquet as pq

        rows = pq.read_table(job / f"out-{name}").to_pylist()
        assert sorted(r["path"] for r in rows) == sorted(
            [f"imgs/img{i}.png" for i in range(40)] + ["imgs/broken.png"]), name
        assert [r["path"] for r in rows if r["error"]] == ["imgs/broken.png"], name
        assert "41 inputs (ray): 40 scored, 1 error," in proc.stderr, name


def test_unreachable_address_is_refused_with_the_forms_that_work(tmp_path):
    pytest.importorskip("ray")
    model = build_stand_in_onnx(tmp_path / "tiny.onnx")
    write_png(tmp_path / "a.png", textured(36, 40))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-m", "nsnet_sdk.cli", "batch", str(tmp_path / "a.png"),
                           "--model", str(model), "--out", str(tmp_path / "out"), "--address",
                           f"127.0.0.1:{free_port()}"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    assert "cannot connect to the Ray cluster" in proc.stderr and "ray://HOST:10001" in proc.stderr
