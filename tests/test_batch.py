"""`nsnet batch` on a local 2-CPU Ray: one Parquet row per input with `nsnet detect`'s values, a
killed actor costs nothing, `--resume` finishes a stopped job, inputs expand like the issue says."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from _ray_util import REPO
from _s3_util import put_objects
from _sdk_util import build_stand_in_onnx, survivors, textured, write_png
from test_sdk_inputs import png_claiming
from nsnet_sdk.batch import ROW_FIELDS, run_batch
from nsnet_sdk.batch_inputs import expand_inputs
from nsnet_sdk.cli import main
from nsnet_sdk.results import unescape_text

N_FILES = 300


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_stand_in_onnx(tmp_path_factory.mktemp("m") / "nsnet.onnx")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, set[str]]:
    """N_FILES files in nested folders: tiny pictures plus corrupt, empty and bomb files.
    Returns (root, names of the bad files)."""
    root = tmp_path_factory.mktemp("imgs")
    bad: set[str] = set()
    for i in range(N_FILES):
        sub = root / f"d{i % 3}" / ("deep" if i % 7 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        if i % 50 == 1:
            (sub / f"corrupt{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
            bad.add(str(sub / f"corrupt{i}.jpg"))
        elif i % 50 == 2:
            (sub / f"empty{i}.png").write_bytes(b"")
            bad.add(str(sub / f"empty{i}.png"))
        elif i % 50 == 3:
            (sub / f"bomb{i}.png").write_bytes(png_claiming(40000, 40000))
            bad.add(str(sub / f"bomb{i}.png"))
        else:
            write_png(sub / f"img{i}.png", textured(36 + i % 5, 40 + i % 7, seed=i))
    return root, bad


def by_key(rows: list[dict]) -> dict[str, dict]:
    keyed = {unescape_text(r["path"]): r for r in rows}
    assert len(keyed) == len(rows), "an input has more than one row"
    return keyed


def read_rows(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for f in sorted(out.glob("*.parquet")):
        rows.extend(pq.read_table(f).to_pylist())
    return rows


def detect_rows(model: Path, folder: Path, tmp: Path) -> dict[str, dict]:
    out = tmp / "detect.jsonl"
    assert main(["detect", str(folder), "-r", "--model", str(model), "--jsonl", str(out), "-q"]) == 0
    return {r["source"]: r for r in map(json.loads, out.read_text().splitlines())}


def test_every_input_one_row_with_detect_values(ray_local, model, folder, tmp_path):
    root, bad = folder
    summary = run_batch([str(root)], model, tmp_path / "out", workers=2, batch_size=16)
    rows = read_rows(tmp_path / "out")
    assert len(rows) == N_FILES == summary.scored + summary.errors
    assert set(rows[0]) == set(ROW_FIELDS)
    by_path = {r["path"]: r for r in rows}
    assert len(by_path) == N_FILES
    assert {p for p, r in by_path.items() if r["error"]} == bad
    assert summary.errors == len(bad) and len(summary.per_worker) == 2

    ref = detect_rows(model, root, tmp_path)
    assert set(ref) == set(by_path)
    for path, r in by_path.items():
        want = ref[path]
        for k in ("error", "is_fake", "warnings", "verdict", "threshold", "model_sha256"):
            assert r[k] == want[k], (path, k)
        if want["error"] is None:
            assert abs(r["prob_fake"] - want["prob_fake"]) <= 1e-6, path
            assert abs(r["logit"] - want["logit"]) <= 1e-5, path
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert {r["model_sha256"] for r in rows} == {sha}
    assert any("ImageTooLargeError" in (r["error"] or "") for r in rows)


def test_killed_actor_loses_and_duplicates_nothing(ray_local, model, folder, tmp_path):
    root, bad = folder
    killed: list[int] = []
    after_kill = []

    def kill_first_worker(rows: list[dict]) -> None:
        workers = [r["worker"] for r in rows if r.get("worker")]
        if workers and not killed:
            pid = int(workers[0].rsplit(":", 1)[1])
            os.kill(pid, signal.SIGKILL)  # the actor's process dies as in a crash or OOM kill
            killed.append(pid)
        elif killed:
            after_kill.extend(rows)

    run_batch([str(root)], model, tmp_path / "out", workers=2, batch_size=8,
              on_rows=kill_first_worker)
    assert killed and after_kill, "the kill did not happen while rows were still to come"
    rows = read_rows(tmp_path / "out")
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == N_FILES
    assert {r["path"] for r in rows if r["error"]} == bad  # nothing lost into an error row


def test_resume_finishes_a_stopped_job(ray_local, model, folder, tmp_path, capsys):
    root, _ = folder
    out = tmp_path / "out"
    first = run_batch([str(root)], model, out, workers=2, batch_size=16, limit=180)
    assert first.scored + first.errors == 180 == len(read_rows(out))

    argv = ["batch", str(root), "--model", str(model), "--out", str(out), "--workers", "2"]
    with pytest.raises(SystemExit) as e:  # results present and no --resume: a usage error
        main(argv)
    assert e.value.code == 2
    assert len(read_rows(out)) == 180

    assert main(argv + ["--resume"]) == 0
    summary = capsys.readouterr().err
    assert "180 already done" in summary and "images/s" in summary
    paths = [r["path"] for r in read_rows(out)]
    assert len(paths) == len(set(paths)) == N_FILES


def test_inputs_expand_from_globs_and_listings(folder, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, _ = folder
    every, _ = expand_inputs([str(root)])
    assert len(every) == N_FILES
    pngs, _ = expand_inputs([str(root / "**" / "*.png")])
    assert set(pngs) == {p for p in every if p.endswith(".png")}
    missing = str(tmp_path / "gone.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n{every[0]}\n\n{every[1]}\ns3://bucket/key.jpg\n{missing}\n")
    table = tmp_path / "list.parquet"
    pq.write_table(pa.table({"path": [every[2], every[0]]}), table)
    got, _ = expand_inputs([str(listing), str(table)])
    assert got == [every[0], every[1], "s3://bucket/key.jpg", missing, every[2]]  # each once


def test_missing_and_special_inputs_are_rows_not_failures(ray_local, model, folder, tmp_path):
    root, bad = folder
    good = [p for p in expand_inputs([str(root)])[0] if p not in bad][:3]
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # reading it would block forever
    odd = os.fsdecode(bytes(tmp_path) + b"/bad\xffname.png")  # not UTF-8: any name is read
    Path(odd).write_bytes(Path(good[0]).read_bytes())
    inputs = good + [str(tmp_path / "gone.png"), str(fifo), str(tmp_path), odd]
    listing = tmp_path / "inputs.txt"
    listing.write_bytes(b"\n".join(os.fsencode(p) for p in inputs))
    summary = run_batch([str(listing)], model, tmp_path / "out", workers=1, batch_size=4)
    rows = {unescape_text(r["path"]): r for r in read_rows(tmp_path / "out")}
    assert set(rows) == set(inputs) and summary.scored == 4 and summary.errors == 3
    assert all(rows[p]["error"] is None for p in good + [odd])
    assert "\\xff" in rows[odd]["path"]
    assert "not a regular file" in rows[str(fifo)]["error"]
    assert "no such file" in rows[str(tmp_path / "gone.png")]["error"]


def test_import_and_help_do_not_import_ray():
    code = ("import sys, nsnet_sdk.cli as c\n"
            "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print([m for m in ('ray', 'pyarrow', 'fastapi') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


# -- URIs, names, limits ---------------------------------------------------------------------

BUCKET = "nsnet-batch"
FILLER = 10_000  # keys that are not images: the listing spans ten pages of S3's 1,000


@pytest.fixture(scope="module")
def bucket(s3, folder) -> dict[str, bytes]:
    """``set/`` holds 10,000 tiny non-image keys and, among them, good, corrupt and bomb images;
    returns the image objects (key -> bytes)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    root, bad = folder
    files = sorted(p for p in expand_inputs([str(root)])[0])
    good = [p for p in files if p not in bad][:6]
    broken = sorted(bad)[:3]
    images = {f"set/k{i * 1499:05d}{Path(p).suffix}": Path(p).read_bytes()
              for i, p in enumerate(good + broken)}
    images["set/sub/deep.png"] = Path(good[-1]).read_bytes()
    put_objects(BUCKET, images)  # through the S3 protocol
    # The filler goes straight into the server's store: 10,000 uploads would take a minute here.
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for i in range(FILLER):
        backend.put_object(BUCKET, f"set/k{i:05d}.json", b"{}")
    return images


def test_s3_prefix_equals_detect_on_the_downloaded_files(ray_local, model, bucket, tmp_path):
    import boto3

    local = tmp_path / "downloaded"
    client = boto3.client("s3")
    for key in bucket:  # the image objects, fetched like any user would
        dest = local / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(BUCKET, key, str(dest))
    ref = detect_rows(model, local, tmp_path)
    want = {f"s3://{BUCKET}/" + str(Path(p).relative_to(local)): r for p, r in ref.items()}

    # the Ray engine through the CLI, and the in-process one through the API
    assert main(["batch", f"s3://{BUCKET}/set/", "--model", str(model), "--out",
                 str(tmp_path / "ray"), "--ray", "-q", "--batch-size", "4"]) == 0
    run_batch([f"s3://{BUCKET}/set/"], model, tmp_path / "local", use_ray=False)
    for engine in ("ray", "local"):
        got = by_key(read_rows(tmp_path / engine))
        assert set(got) == set(want) and len(got) == len(bucket), engine
        for key, r in got.items():
            w = want[key]
            local_name = str(local / key[len(f"s3://{BUCKET}/"):])
            assert r["error"] == (w["error"] and w["error"].replace(local_name, key)), key
            assert r["is_fake"] == w["is_fake"] and r["warnings"] == w["warnings"], key
            if w["error"] is None:
                assert abs(r["prob_fake"] - w["prob_fake"]) <= 1e-6, key
    assert sum(r["error"] is not None for r in got.values()) == 3


@pytest.mark.parametrize("use_ray", [True, False], ids=["ray", "in-process"])
def test_each_listed_uri_is_one_row_and_a_failing_one_does_not_stop_the_job(
        ray_local, model, bucket, folder, tmp_path, use_ray):
    root, bad = folder
    good_local = [p for p in expand_inputs([str(root)])[0] if p not in bad][:2]
    sub = root / "d1"
    sub_files = expand_inputs([str(sub)])[0]
    s3_good = f"s3://{BUCKET}/" + next(k for k in bucket if k.endswith(".png"))
    listed = [s3_good, f"s3://{BUCKET}/set/missing.png", "s3://nsnet-no-such-bucket/a.png",
              good_local[0], "file://" + good_local[1], f"file://{sub}/"]
    listing = tmp_path / "inputs.txt"
    listing.write_text("\n".join(listed) + "\n")
    summary = run_batch([str(listing)], model, tmp_path / "out", use_ray=use_ray, batch_size=4)
    rows = by_key(read_rows(tmp_path / "out"))
    want_keys = set(listed[:-1]) | {f"file://{p}" for p in sub_files}
    assert set(rows) == want_keys  # keyed as listed: no scheme-less twin, no false error row
    assert summary.scored + summary.errors == len(want_keys) == summary.inputs
    assert "no such object" in rows[listed[1]]["error"] and listed[1] in rows[listed[1]]["error"]
    assert rows[listed[2]]["error"].startswith("ImageDecodeError: " + listed[2])
    for key in (s3_good, good_local[0], "file://" + good_local[1]):
        assert rows[key]["error"] is None, key
    for p in sub_files:
        assert (rows[f"file://{p}"]["error"] is None) == (p not in bad), p


@pytest.mark.parametrize("use_ray", [True, False], ids=["ray", "in-process"])
def test_any_name_keeps_its_row_and_the_byte_limit_holds_before_reading(
        ray_local, model, folder, tmp_path, use_ray):
    from nsnet_sdk.pipeline import MAX_PIXELS
    from nsnet_sdk.pipeline.read import file_byte_limit

    root, bad = folder
    good = [p for p in expand_inputs([str(root)])[0] if p not in bad]
    src = tmp_path / "in"
    src.mkdir()
    picture = Path(good[0]).read_bytes()
    (src / "new\nline.png").write_bytes(picture)
    (src / "tab\tand space .png").write_bytes(Path(good[1]).read_bytes())
    # a real picture followed by a sparse hole: one byte over detect's limit, nothing on disk
    with open(src / "huge.png", "wb") as f:
        f.write(picture)
        f.truncate(file_byte_limit(MAX_PIXELS) + 1)
    ref = {unescape_text(k): r for k, r in detect_rows(model, src, tmp_path).items()}
    run_batch([str(src)], model, tmp_path / "out", use_ray=use_ray, batch_size=4)
    rows = by_key(read_rows(tmp_path / "out"))
    assert set(rows) == set(ref) and len(rows) == 3
    assert "ImageTooLargeError" in rows[str(src / "huge.png")]["error"]
    for key, r in rows.items():
        assert r["error"] == ref[key]["error"], key
        assert r["prob_fake"] == pytest.approx(ref[key]["prob_fake"], abs=1e-6), key


_KILLED_DRIVER = """
import os, signal, sys
from nsnet_sdk.batch import run_batch
taken = 0
def on_rows(rows):
    global taken
    taken += len(rows)
    if taken >= int(sys.argv[4]):
        print(taken, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
run_batch([sys.argv[1]], sys.argv[2], sys.argv[3], batch_size=8, use_ray=False, on_rows=on_rows)
"""


def test_killed_driver_loses_no_finished_row(model, folder, tmp_path):
    root, bad = folder
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", _KILLED_DRIVER, str(root), str(model), str(out),
                           "150"], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    taken = int(proc.stdout.split()[-1])
    resumed = run_batch([str(root)], model, out, resume=True, use_ray=False)
    assert resumed.skipped >= taken  # every row handed out before the kill was kept
    rows = by_key(read_rows(out))
    assert len(rows) == N_FILES and {p for p, r in rows.items() if r["error"]} == bad


def test_small_job_runs_without_ray(model, folder, tmp_path):
    root, _ = folder
    code = ("import sys\nfrom nsnet_sdk.cli import main\n"
            f"rc = main(['batch', {str(root)!r}, '--model', {str(model)!r}, '--out', "
            f"{str(tmp_path / 'out')!r}, '-q'])\n"
            "print(rc, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert out.stdout.split()[-2:] == ["0", "False"], out.stderr[-2000:]
    assert len(by_key(read_rows(tmp_path / "out"))) == N_FILES


_KILLED_RAY_DRIVER = """
import os, signal, sys
import psutil
from nsnet_sdk.batch import run_batch
def on_rows(rows):
    # the Ray this job started: every process below the driver
    print(" ".join(str(p.pid) for p in psutil.Process().children(recursive=True)), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
run_batch([sys.argv[1]], sys.argv[2], sys.argv[3], batch_size=8, use_ray=True, on_rows=on_rows,
          ray_init={"num_cpus": 1, "object_store_memory": 100 * 2**20})
"""


def test_killed_driver_takes_its_local_ray_with_it(model, folder, tmp_path):
    pytest.importorskip("psutil")  # installed with Ray
    root, _ = folder
    proc = subprocess.run([sys.executable, "-c", _KILLED_RAY_DRIVER, str(root), str(model),
                           str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) >= 3, proc.stdout  # GCS, raylet, a worker at least

    left = survivors(pids, within_s=60)
    assert not left, left


def test_max_pixels_flag_holds_in_batch_as_in_detect(model, tmp_path):
    """`--max-pixels` (issue: the error says "raise max_pixels" and no flag could): a lower limit
    refuses a picture that the default scores, in `nsnet batch` exactly as in `nsnet detect`."""
    src = tmp_path / "in"
    src.mkdir()
    write_png(src / "a.png", textured(60, 80, 3))  # 4,800 pixels
    ref = detect_rows(model, src, tmp_path)
    assert main(["batch", str(src), "--model", str(model), "--out", str(tmp_path / "ok"), "-q"]) == 0
    assert main(["batch", str(src), "--model", str(model), "--out", str(tmp_path / "low"), "-q",
                 "--max-pixels", "4000"]) == 0
    ok, low = read_rows(tmp_path / "ok"), read_rows(tmp_path / "low")
    assert ok[0]["error"] is None and ok[0]["prob_fake"] == pytest.approx(
        next(iter(ref.values()))["prob_fake"], abs=1e-6)
    assert "ImageTooLargeError" in low[0]["error"] and "4,800 pixels" in low[0]["error"]


def test_a_normal_ray_run_prints_only_its_own_lines(ray_local, model, tmp_path):
    """Ray's notices (token authentication, connecting) and its native log lines (``core_worker
    ... E``) stay off the terminal of a run that went well; --verbose shows them. (The job joins the
    running test cluster: starting one more Ray would only add seconds.)"""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        write_png(src / f"{i}.png", textured(48, 48, i))
    address = ray_local.get_runtime_context().gcs_address
    r = subprocess.run([sys.executable, "-m", "nsnet_sdk.cli", "batch", str(src), "--model", str(model),
                        "--out", str(tmp_path / "out"), "--ray", "--workers", "1", "--address", address],
                       capture_output=True, text=True, cwd=REPO, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if ln.strip() and "img/s" not in ln
             and "s/img" not in ln and not ln.lstrip().startswith(("0%", "100%"))]
    foreign = [ln for ln in lines if not ln.startswith(("nsnet:", "  worker "))]
    assert not foreign, foreign
    assert any(ln.startswith("nsnet: 3 inputs (ray): 3 scored") for ln in lines), lines


def test_identical_files_in_a_batch_job_are_decoded_once(model, tmp_path, monkeypatch):
    """Every input keeps its row, named as listed; a repeat of a file scored earlier in the job
    takes its values without being decoded again (a spy counts the real decoder's calls)."""
    import shutil

    from nsnet_sdk.pipeline import executors

    src = tmp_path / "in"
    src.mkdir()
    write_png(src / "a.png", textured(64, 80, 1))
    write_png(src / "b.png", textured(70, 50, 2))
    for i in range(3):
        shutil.copy(src / "a.png", src / f"a{i}.png")
    calls = []
    real = executors.decode_image
    monkeypatch.setattr(executors, "decode_image", lambda *a, **k: calls.append(1) or real(*a, **k))
    # decoded in threads, where the spy sees the calls
    run_batch([str(src)], model, tmp_path / "out", use_ray=False, batch_size=2, decode="threads")
    rows = by_key(read_rows(tmp_path / "out"))
    assert sorted(Path(k).name for k in rows) == ["a.png", "a0.png", "a1.png", "a2.png", "b.png"]
    assert len(calls) == 2
    a = rows[str(src / "a.png")]
    for i in range(3):
        r = rows[str(src / f"a{i}.png")]
        assert r["error"] is None and r["logit"] == a["logit"]
