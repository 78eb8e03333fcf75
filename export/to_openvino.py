"""INT8 for OpenVINO: NNCF post-training quantisation of the FP32 ONNX export, checked on held-out inputs.

    python export/to_openvino.py --onnx nsnet.onnx --calibration CALIB_DIR --out nsnet.int8-ov.onnx
                                 [--holdout HOLDOUT_DIR | --synthetic N] [--subset-size 300]

The calibration images (a folder the user names, searched recursively) go through
`nsnet_sdk.pipeline` with the model's own PatchConfig, exactly what the Detector feeds the network.
The output is an ONNX file with QuantizeLinear/DequantizeLinear pairs (NNCF's ONNX backend,
``model_type=TRANSFORMER``) and the source's ``nsnet.*`` metadata with ``nsnet.precision = int8``:
`nsnet_sdk.backends.openvino` reads it directly (``Detector(path, backend="openvino")``).

Parity: the quantised file runs through the shipped OpenVINO backend against the FP32 file run
through the same backend (FP32), on held-out inputs: ``--holdout`` images (a folder sharing no file
with the calibration set; refused otherwise) or ``--synthetic N`` seeded synthetic images (default
32). The bound is `nsnet_sdk.backends.openvino.PARITY_BOUNDS["int8"]` (docs/openvino.md).

Exit codes: 0 written and within bound; 1 written but past the bound (the file is kept, the report
says so); 2 usage error (missing files, empty calibration folder, calibration = holdout).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from export.parity import Parity, backend_logits, compare

DEFAULT_SUBSET = 300  # NNCF's own default number of calibration samples


class UsageError(Exception):
    """A problem with the arguments (exit 2)."""


def calibration_images(root: Path, cfg) -> Iterator[np.ndarray]:
    """(1,3,S,S) preprocessed images of ``root``, one at a time (NNCF's sample unit)."""
    from export.verify import image_dir_batches

    for batch in image_dir_batches(root, cfg, batch=1):
        yield batch


def _file_digests(root: Path) -> set[str]:
    from nsnet_sdk.containers import sha256_file
    from nsnet_sdk.pipeline import iter_image_paths

    files, _ = iter_image_paths([str(root)], recursive=True)
    return {sha256_file(f) for f in files}


def check_held_out(calibration: Path, holdout: Path) -> None:
    """`UsageError` when the held-out folder is the calibration folder, lies inside it (or it
    inside the held-out one), or shares any image with it (by content)."""
    c, h = calibration.resolve(), holdout.resolve()
    if c == h or c in h.parents or h in c.parents:
        raise UsageError(f"--holdout {holdout} overlaps --calibration {calibration}: parity must be "
                         "measured on images the quantiser never saw")
    shared = _file_digests(c) & _file_digests(h)
    if shared:
        raise UsageError(f"--holdout {holdout} shares {len(shared)} image(s) with --calibration "
                         f"{calibration}: parity must be measured on images the quantiser never saw")


def quantize(src: Path, dst: Path, calibration: Path, *, subset_size: int = DEFAULT_SUBSET) -> Path:
    """NNCF INT8 of FP32 ``src`` calibrated on the images under ``calibration``; written to ``dst``
    with the source's metadata (``nsnet.precision = int8``). Returns ``dst``."""
    import nncf
    import onnx

    from export.to_onnx import _set_metadata, save_onnx
    from nsnet_sdk.artifact import read_model_meta

    meta = read_model_meta(src)
    if meta.precision != "fp32":
        raise UsageError(f"--onnx {src}: quantise the FP32 export (nsnet.precision = {meta.precision!r})")
    samples = list(calibration_images(calibration, meta.preprocess))
    if not samples:
        raise UsageError(f"--calibration {calibration}: no readable image")
    model = onnx.load(str(src))
    quantized = nncf.quantize(model, nncf.Dataset(samples, lambda x: {"images": x}),
                              model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=min(subset_size, len(samples)))
    _set_metadata(quantized, meta.metadata(precision="int8"))
    save_onnx(quantized, dst)
    onnx.checker.check_model(str(dst))
    return dst


def held_out_parity(fp32: Path, int8: Path, batches: Iterator[np.ndarray], threads: int | None = None) -> Parity:
    """`Parity` of the INT8 file against the FP32 file, both through the OpenVINO backend."""
    from nsnet_sdk.artifact import read_model_meta
    from nsnet_sdk.backends import load_backend

    ref_b = load_backend("openvino", fp32, precision="fp32", intra_op_threads=threads)
    q_b = load_backend("openvino", int8, intra_op_threads=threads)
    try:
        ref, got = [], []
        for b in batches:
            ref.append(backend_logits(ref_b, [b]))
            got.append(backend_logits(q_b, [b]))
    finally:
        ref_b.close()
        q_b.close()
    return compare("int8", np.concatenate(ref), np.concatenate(got), read_model_meta(fp32).threshold)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python export/to_openvino.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", required=True, type=Path, help="the FP32 ONNX export")
    p.add_argument("--calibration", required=True, type=Path, help="folder of calibration images")
    p.add_argument("--out", required=True, type=Path, help="INT8 ONNX file to write")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--holdout", type=Path, help="folder of held-out images for the parity check")
    src.add_argument("--synthetic", type=int, metavar="N", help="N seeded synthetic images (default 32)")
    p.add_argument("--subset-size", type=int, default=DEFAULT_SUBSET, help="calibration samples used")
    p.add_argument("--threads", type=int, help="OpenVINO threads for the parity check")
    p.add_argument("--json", type=Path, help="also write the parity report here")
    args = p.parse_args(argv)
    from nsnet_sdk.backends.openvino import within_bound
    from nsnet_sdk.errors import ModelLoadError

    try:
        if not args.onnx.is_file():
            raise UsageError(f"--onnx {args.onnx}: file not found")
        if not args.calibration.is_dir():
            raise UsageError(f"--calibration {args.calibration}: not a directory")
        if args.holdout is not None:
            if not args.holdout.is_dir():
                raise UsageError(f"--holdout {args.holdout}: not a directory")
            check_held_out(args.calibration, args.holdout)
        if args.synthetic is not None and args.synthetic < 1:
            raise UsageError("--synthetic needs N >= 1")
        quantize(args.onnx, args.out, args.calibration, subset_size=args.subset_size)
    except (UsageError, ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from export.verify import image_dir_batches, synthetic_batches
    from nsnet_sdk.artifact import read_model_meta

    cfg = read_model_meta(args.onnx).preprocess
    batches = (image_dir_batches(args.holdout, cfg) if args.holdout else
               synthetic_batches(args.synthetic or 32, cfg, seed=1))
    parity = held_out_parity(args.onnx, args.out, batches, args.threads)
    ok = within_bound("int8", parity.__dict__)
    print(f"wrote {args.out}\nheld-out parity vs FP32 (OpenVINO): {parity}  {'ok' if ok else 'PAST BOUND'}")
    if args.json:
        args.json.write_text(json.dumps(dict(parity.__dict__, passes=ok), indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
