"""Evaluate a run directory on a benchmark folder, per generator, in the paper's table form.

``python -m training.evaluate --ckpt RUN --data ROOT --out REPORT [--layout auto] [--robustness]
[--calibrate-fpr 0.05 [--calibrate-data VAL_ROOT]]``

REPORT gets ``metrics.json`` ({"overall": {...}, "per_generator": {name: {...}}} with keys acc, ap,
real_acc, fake_acc, n), ``table.md``, ``roc.png``, ``pr.png``, ``summary.json`` (threshold,
skipped files, timing) and with ``--robustness`` ``robustness.json`` plus one table per
perturbation in ``table.md``.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from nsnet_sdk.errors import ModelLoadError
from nsnet_sdk.preprocess import PatchConfig
from nsnet_sdk.model import load_checkpoint
from nsnet_sdk.model.checkpoint import update_meta
from training.data import ImageDataset, SkipLog, detect_layout, discover, downscale, gaussian_blur, jpeg
from training.infer import score
from training.metrics import detection_metrics, threshold_for_fpr
from training.train import pick_device

log = logging.getLogger("training.evaluate")

# name → rgb → rgb; the perturbations of the robustness study.
PERTURBATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "jpeg95": functools.partial(jpeg, quality=95),
    "jpeg75": functools.partial(jpeg, quality=75),
    "jpeg50": functools.partial(jpeg, quality=50),
    "blur1": functools.partial(gaussian_blur, sigma=1.0),
    "blur2": functools.partial(gaussian_blur, sigma=2.0),
    "down0.5": functools.partial(downscale, factor=0.5),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", required=True, help="run directory (nsnet.safetensors + nsnet.json)")
    p.add_argument("--data", required=True, help="benchmark root")
    p.add_argument("--out", required=True, help="report directory to write")
    p.add_argument("--layout", default="auto", choices=["auto", "genimage", "ufd", "flat"])
    p.add_argument("--split", default="val", help="GenImage split folder to evaluate (ignored by other layouts)")
    p.add_argument("--generators", default=None, help="comma-separated generator names (default: all)")
    p.add_argument("--robustness", action="store_true",
                   help="also evaluate under JPEG 95/75/50, Gaussian blur σ 1/2 and 0.5× downscaling")
    p.add_argument("--calibrate-fpr", type=float, default=None,
                   help="first set the checkpoint's threshold to give this FPR on real images of --calibrate-data")
    p.add_argument("--calibrate-data", default=None,
                   help="validation root for --calibrate-fpr (default: --data; GenImage uses its 'val' split)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is often faster on a busy shared box)")
    return p


def per_generator(probs: np.ndarray, labels: np.ndarray, gens: np.ndarray, threshold: float) -> dict:
    return {
        "overall": detection_metrics(probs, labels, threshold),
        "per_generator": {g: detection_metrics(probs[gens == g], labels[gens == g], threshold)
                          for g in sorted(set(gens.tolist()))},
    }


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def markdown_table(result: dict, title: str) -> str:
    """One row per generator, then the mean over generators (how the paper reports), then all images."""
    rows = [f"### {title}", "", "| Generator | Acc | AP | Real acc | Fake acc | N |", "|---|---:|---:|---:|---:|---:|"]
    per = result["per_generator"]
    for g, m in per.items():
        rows.append(f"| {g} | {_pct(m['acc'])} | {_pct(m['ap'])} | {_pct(m['real_acc'])} | {_pct(m['fake_acc'])} | {m['n']} |")
    means = {}
    for k in ("acc", "ap", "real_acc", "fake_acc"):
        vals = [m[k] for m in per.values() if m[k] is not None]
        means[k] = float(np.mean(vals)) if vals else None
    rows.append(f"| **mean** | {_pct(means['acc'])} | {_pct(means['ap'])} | {_pct(means['real_acc'])} | "
                f"{_pct(means['fake_acc'])} | {sum(m['n'] for m in per.values())} |")
    o = result["overall"]
    rows.append(f"| all images | {_pct(o['acc'])} | {_pct(o['ap'])} | {_pct(o['real_acc'])} | {_pct(o['fake_acc'])} | {o['n']} |")
    return "\n".join(rows) + "\n"


def plot_curves(probs: np.ndarray, labels: np.ndarray, gens: np.ndarray, out: Path) -> None:
    """roc.png and pr.png: one curve per generator with both classes, plus all images."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers / CI
    import matplotlib.pyplot as plt
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    groups = [("all", np.ones_like(labels, dtype=bool))] + [(g, gens == g) for g in sorted(set(gens.tolist()))]
    groups = [(n, m) for n, m in groups if len(set(labels[m].tolist())) == 2]
    for kind in ("roc", "pr"):
        fig, ax = plt.subplots(figsize=(5.5, 5))
        for name, mask in groups:
            y, p = labels[mask], probs[mask]
            if kind == "roc":
                fpr, tpr, _ = roc_curve(y, p)
                ax.plot(fpr, tpr, lw=2 if name == "all" else 1, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
            else:
                prec, rec, _ = precision_recall_curve(y, p)
                ax.plot(rec, prec, lw=2 if name == "all" else 1, label=name)
        if kind == "roc":
            ax.plot([0, 1], [0, 1], "k:", lw=0.8)
            ax.set(xlabel="false positive rate (real called fake)", ylabel="true positive rate", title="ROC")
        else:
            ax.set(xlabel="recall (fake)", ylabel="precision (fake)", title="Precision–recall")
        if not groups:
            ax.text(0.5, 0.5, "needs both real and fake images", ha="center")
        ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left")
        fig.tight_layout()
        fig.savefig(out / f"{kind}.png", dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("training").setLevel(logging.INFO)
    if args.calibrate_fpr is not None and not 0.0 <= args.calibrate_fpr < 1.0:
        build_parser().error("--calibrate-fpr must be in [0, 1)")
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = not args.quiet
    t_start = time.perf_counter()
    try:
        model, meta = load_checkpoint(args.ckpt, device=device)
    except (FileNotFoundError, ValueError, ModelLoadError) as exc:
        raise SystemExit(f"error: {exc}") from None
    cfg = PatchConfig.from_dict(meta["preprocess"])
    gens = [g.strip() for g in args.generators.split(",")] if args.generators else None
    try:
        layout = detect_layout(Path(args.data)) if args.layout == "auto" else args.layout
        samples = discover(args.data, layout, split=args.split if layout == "genimage" else None, generators=gens)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    if not samples:
        raise SystemExit(f"error: no images under {args.data} (layout {layout}, split {args.split})")

    threshold = float(meta.get("threshold", 0.5))
    if args.calibrate_fpr is not None:
        threshold = calibrate(model, args, cfg, device, gens)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skips = SkipLog(samples)
    probs, labels, idx = score(model, ImageDataset(samples, cfg), args.batch_size, device, args.workers, progress, skips)
    gen_names = np.array([samples[i].generator for i in idx])
    result = per_generator(probs, labels, gen_names, threshold)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    tables = [f"# NS-Net evaluation\n\ncheckpoint `{args.ckpt}` ({meta['backbone']}, {meta.get('pretrained')}), "
              f"data `{args.data}` ({layout}), threshold {threshold:.4g} on prob_fake; percentages.\n",
              markdown_table(result, "clean")]
    plot_curves(probs, labels, gen_names, out)

    robustness = {}
    if args.robustness:
        for name, fn in PERTURBATIONS.items():
            p, y, i = score(model, ImageDataset(samples, cfg, transform=fn), args.batch_size, device, args.workers,
                            progress, skips, desc=name)  # the clean pass already warned about each bad file
            robustness[name] = per_generator(p, y, np.array([samples[j].generator for j in i]), threshold)
            tables.append(markdown_table(robustness[name], name))
        (out / "robustness.json").write_text(json.dumps(robustness, indent=2) + "\n")
    (out / "table.md").write_text("\n".join(tables))
    (out / "summary.json").write_text(json.dumps({
        "checkpoint": str(args.ckpt), "data": str(args.data), "layout": layout, "split": args.split,
        "threshold": threshold, "n_images": len(samples), "skipped": skips.count,
        "skipped_files": skips.bad, "seconds": round(time.perf_counter() - t_start, 2),
    }, indent=2) + "\n")
    o = result["overall"]
    log.info("%d images (%d skipped): acc %s, AP %s -> %s", o["n"], skips.count, _pct(o["acc"]), _pct(o["ap"]), out)
    print(markdown_table(result, "clean"))
    return 0


def calibrate(model, args, cfg: PatchConfig, device: torch.device, gens) -> float:
    """Threshold giving ``--calibrate-fpr`` on the real calibration images; written to the checkpoint."""
    root = Path(args.calibrate_data or args.data)
    try:
        layout = detect_layout(root) if args.layout == "auto" else args.layout
        samples = [s for s in discover(root, layout, split="val" if layout == "genimage" else None, generators=gens)
                   if s.label == 0]
    except ValueError as exc:
        raise SystemExit(f"error: --calibrate-data: {exc}") from None
    probs, labels, _ = score(model, ImageDataset(samples, cfg), args.batch_size, device, args.workers,
                             not args.quiet, SkipLog(samples), desc="calibrating")
    try:
        threshold = threshold_for_fpr(probs, labels, args.calibrate_fpr)
    except ValueError as exc:
        raise SystemExit(f"error: {root}: {exc}") from None
    update_meta(args.ckpt, threshold=threshold,
                calibration={"fpr": args.calibrate_fpr, "data": str(root), "n_real": int(len(probs))})
    log.info("threshold %.6g gives FPR <= %.3f on %d real images of %s (written to %s)", threshold,
             args.calibrate_fpr, len(probs), root, args.ckpt)
    return threshold


if __name__ == "__main__":
    sys.exit(main())
