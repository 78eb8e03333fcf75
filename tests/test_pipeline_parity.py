"""Every executor of the input pipeline gives every input the same outcome: the same typed error
and message, the same warnings, the same network input. Run on one shared corpus of hostile and
ordinary files through the real executors: inline, threads, processes, and the GPU batch executor
on the CPU device, decoding with nvImageCodec's own CPU-only backend (its real API, no stand-in)."""
from __future__ import annotations

import numpy as np
import pytest

from _pipeline_corpus import build_inputs
from nsnet_sdk.pipeline import DEFAULT, MAX_PIXELS
from nsnet_sdk.pipeline.executors import make_decoder
from nsnet_sdk.pipeline.inputs import source_name

torch = pytest.importorskip("torch")
from nsnet_sdk.pipeline.gpu import GpuPipeline  # noqa: E402
from nsnet_sdk.pipeline.nvdecode import gpu_shape, nvimgcodec_available  # noqa: E402

CPU_EXECUTORS = {"inline": ("threads", 0), "threads": ("threads", 2), "processes": ("processes", 2)}


def _names(inputs: dict) -> list[str]:
    # Result names as the Detector gives them: paths as given, other kinds by position.
    return [source_name(x, i) for i, x in enumerate(inputs.values())]


def _cpu_outcomes(inputs: dict, mode: str, workers: int, bgr: bool = False) -> list[tuple]:
    items, names = list(inputs.values()), _names(inputs)
    dec = make_decoder(mode, workers, DEFAULT, MAX_PIXELS, len(items), 1)
    try:
        handles = dec.submit_batch(items, names, 0, bgr)
        outcomes = [dec.result(h, n) for h, n in zip(handles, names)]
        rows = dec.buffer(0).copy()
    finally:
        dec.close()
    return [(err, notes, None if err else rows[i]) for i, (err, notes) in enumerate(outcomes)]


def _gpu_outcomes(inputs: dict, bgr: bool = False) -> tuple[list[tuple], GpuPipeline]:
    items, names = list(inputs.values()), _names(inputs)
    pipe = GpuPipeline("cpu", DEFAULT, to_host=True)
    batch, errors, notes = pipe.prepare(items, names, bgr)
    rows = iter(batch if batch is not None else [])
    return [(e, n, None if e else next(rows)) for e, n in zip(errors, notes)], pipe


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    inputs = build_inputs(tmp_path_factory.mktemp("corpus"))
    got = {name: _cpu_outcomes(inputs, mode, w) for name, (mode, w) in CPU_EXECUTORS.items()}
    got["gpu"], pipe = _gpu_outcomes(inputs)
    return list(inputs), got, pipe


def _same(a: tuple, b: tuple, key: str, exact: bool) -> str | None:
    (ea, na, ta), (eb, nb, tb) = a, b
    if type(ea) is not type(eb) or str(ea) != str(eb):
        return f"{key}: error {type(ea).__name__}: {ea} != {type(eb).__name__}: {eb}"
    if tuple(na) != tuple(nb):
        return f"{key}: warnings {na} != {nb}"
    if ta is not None:
        d = float(np.abs(ta - tb).max())
        if d > (0.0 if exact else 1e-6):
            return f"{key}: tensors differ by {d}"
    return None


@pytest.mark.parametrize("executor", ["threads", "processes", "gpu"])
def test_every_input_has_the_inline_outcome_on_every_executor(outcomes, executor):
    keys, got, _ = outcomes
    # Bit-equal between the CPU executors; the GPU executor's torch selection computes entropies
    # in float64 and normalises in float32 like the CPU: within 1e-6.
    diffs = [d for k, a, b in zip(keys, got["inline"], got[executor])
             if (d := _same(a, b, k, exact=executor != "gpu"))]
    assert not diffs, "\n".join(diffs)


def test_arrays_in_opencv_order_have_the_inline_outcome_on_every_executor(tmp_path):
    """channels="bgr": arrays are read in OpenCV's order (BGR, BGRA) by every executor alike; files
    and PIL images are decoded to RGB whatever it says."""
    inputs = {k: v for k, v in build_inputs(tmp_path / "c").items()
              if k.startswith(("array:", "pil:")) or k in ("bytes:jpeg", "bytes:png-rgba", "path:png")}
    inline = _cpu_outcomes(inputs, "threads", 0, bgr=True)
    plain = _cpu_outcomes(inputs, "threads", 0, bgr=False)
    assert any(a[2] is not None and not np.array_equal(a[2], b[2]) for a, b in zip(inline, plain))
    for name, (mode, w) in list(CPU_EXECUTORS.items())[1:] + [("gpu", (None, None))]:
        got = _gpu_outcomes(inputs, bgr=True)[0] if name == "gpu" else _cpu_outcomes(inputs, mode, w, bgr=True)
        diffs = [d for k, a, b in zip(inputs, inline, got) if (d := _same(a, b, k, exact=name != "gpu"))]
        assert not diffs, (name, diffs)


def test_the_corpus_exercises_scores_errors_and_warnings(outcomes):
    keys, got, _ = outcomes
    inline = dict(zip(keys, got["inline"]))
    scored = [k for k, (e, _, _) in inline.items() if e is None]
    refused = {k: e for k, (e, _, _) in inline.items() if e is not None}
    hostile = ("jpeg-11000x9000-in-702-bytes", "png-deflate-bomb", "jpeg-ends-early-with-eoi",
               "jpeg-3000-scans", "png-idat-says-4gb", "png-header-only-30000x30000", "apng-12k-frames",
               "apng-unknown-chunk-crashes-opencv", "avif-grid-16384-behind-1024-ispe", "jpeg2000-65535-tiles",
               "jpeg-arithmetic-8-bytes", "tiff-strip-150-scan-jpeg")
    for k in hostile:
        assert f"path:{k}" in refused and f"bytes:{k}" in refused, k
    assert len(scored) == len(keys) - len(refused) >= 40
    assert "FIFO" in str(refused["path:fifo"])
    assert any(n.startswith("truncated") for n in inline["path:png-no-iend"][1])
    assert any("smaller than one" in n for n in inline["bytes:png-small"][1])
    assert "float" in str(refused["array:float32"])


@pytest.mark.skipif(not nvimgcodec_available()[0], reason=nvimgcodec_available()[1] or "ok")
def test_nvimagecodec_really_decodes_part_of_the_corpus(outcomes, tmp_path):
    """The GPU executor above ran nvImageCodec itself (CPU-only backend) on the files it may take,
    and those files then matched the CPU decoders exactly."""
    from _pipeline_corpus import encoded_corpus
    from nsnet_sdk.pipeline.decode import inspect_bytes

    _, _, pipe = outcomes
    assert pipe.decoder is not None and not pipe.decoder.on_gpu
    taken, decoded = [], []
    for name, data in encoded_corpus().items():
        try:
            hdr = inspect_bytes(data, MAX_PIXELS, name)
        except Exception:
            continue
        if gpu_shape(data, hdr) is not None:
            taken.append(name)
            (t,) = pipe.decoder.decode([data])
            if t is not None:  # where it fails (e.g. PNG without IEND) the CPU decoder decides
                decoded.append(name)
    assert {"jpeg", "jpeg-444", "jpeg-grey", "jpeg-progressive", "jpeg-exif-rot90", "jpeg-exif-mirror",
            "png", "png-grey", "png-palette"} <= set(decoded)
    # Transparency, XMP orientation, CMYK, 16-bit, formats other than JPEG/PNG stay on the CPU path.
    assert not {"png-rgba", "png-grey-alpha", "png-palette-trns", "jpeg-xmp-rot90", "jpeg-cmyk",
                "png-16bit", "webp", "tiff-orientation-6", "jpeg-exif-twice", "jpeg-exif-bad-directory",
                "png-exif-rot90", "png-raw-profile-exif-rot90"} & set(taken)
