"""Evaluate a run directory on a benchmark folder, per generator, in the paper's table form.

``python -m training.evaluate --ckpt RUN --data ROOT --out REPORT [--layout auto] [--robustness]
[--calibrate-fpr 0.05 --calibration REAL_DIR [--write-threshold]]``, or, on reviewed production
data, ``python -m training.evaluate --labels labels.jsonl [--model MODEL] [--out REPORT]``.

REPORT gets ``metrics.json`` ({"overall": {...}, "per_generator": {name: {...}}} with keys acc, ap,
real_acc, fake_acc, n, seen), ``table.md`` (generators in the checkpoint's training data marked
"(seen)", the others "(unseen)"), ``roc.png``, ``pr.png``, ``summary.json`` (threshold, skipped
files, timing), with ``--robustness`` ``robustness.json`` plus one table per perturbation in
``table.md``, and with ``--calibrate-fpr`` ``calibration.json``. The checkpoint is never changed
unless ``--write-threshold`` asks for it.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from nsnet_sdk.constants import DEFAULT_THRESHOLD, RUN_CONFIG
from training.cli_common import LAYOUT_HELP, LAYOUTS, HelpFormatter, check_dir

if TYPE_CHECKING:
    import torch

    from nsnet_sdk.pipeline import PatchConfig

log = logging.getLogger("training.evaluate")


@dataclass(frozen=True)
class _Perturbation:
    """rgb → rgb: training.data's function ``name`` with ``kw`` bound; imported on first call (it needs
    torch) and picklable for DataLoader workers."""

    name: str
    kw: tuple[tuple[str, float], ...]

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        from training import data

        return getattr(data, self.name)(rgb, **dict(self.kw))


# name → rgb → rgb; the perturbations of the robustness study.
PERTURBATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "jpeg95": _Perturbation("jpeg", (("quality", 95),)),
    "jpeg75": _Perturbation("jpeg", (("quality", 75),)),
    "jpeg50": _Perturbation("jpeg", (("quality", 50),)),
    "blur1": _Perturbation("gaussian_blur", (("sigma", 1.0),)),
    "blur2": _Perturbation("gaussian_blur", (("sigma", 2.0),)),
    "down0.5": _Perturbation("downscale", (("factor", 0.5),)),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--ckpt", help="run directory (nsnet.safetensors + nsnet.json)")
    p.add_argument("--data", help="benchmark root")
    p.add_argument("--out", help="report directory to write (optional with --labels)")
    r = p.add_argument_group("reviewed production data (no scoring, no torch)")
    r.add_argument("--labels", nargs="+", metavar="JSONL",
                   help="labels.jsonl exported from nsnet report: ACC/AP/FPR of the scores the labelled rows "
                        "carry, at the operating point of --model (its threshold and band) or of --threshold")
    r.add_argument("--model", metavar="MODEL", help="with --labels: the .onnx/.engine/run directory that scored "
                   "the rows (its sha256 must match the labels')")
    r.add_argument("--threshold", type=float, default=None, help="with --labels and no --model: the threshold (0.5)")
    p.add_argument("--layout", default="auto", choices=LAYOUTS, help=LAYOUT_HELP)
    p.add_argument("--split", default="val", help="GenImage split folder to evaluate (ignored by other layouts)")
    p.add_argument("--generators", default=None, help="comma-separated generator names (default: all)")
    p.add_argument("--robustness", action="store_true",
                   help="also evaluate under JPEG 95/75/50, Gaussian blur σ 1/2 and 0.5× downscaling")
    c = p.add_argument_group("threshold calibration")
    c.add_argument("--calibrate-fpr", type=float, default=None, metavar="F",
                   help="score this report at the threshold that gives false-positive rate <= F on the real "
                        "images of --calibration (written to calibration.json; the checkpoint is unchanged "
                        "unless --write-threshold)")
    c.add_argument("--calibration", "--calibrate-data", dest="calibration", default=None, metavar="DIR",
                   help="real images to calibrate on, kept apart from --data: a dataset root (its real "
                        "images; GenImage: the val split) or any folder of real images")
    c.add_argument("--calibrate-on-eval-data", action="store_true",
                   help="calibrate on --data itself (the scored images set their own threshold: the "
                        "reported false-positive rate is then optimistic)")
    c.add_argument("--write-threshold", action="store_true",
                   help="also store the calibrated threshold in --ckpt's nsnet.json and its model card "
                        "(models exported earlier keep theirs: `nsnet info MODEL --set-threshold T --out NEW` "
                        "re-stamps one)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when available")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is often faster on a busy shared box)")
    return p


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors that need no torch: paths, and a calibration that would leak into the scores."""
    if args.labels:
        if args.ckpt or args.data or args.calibrate_fpr is not None or args.robustness:
            parser.error("--labels evaluates the labelled rows' own scores: no --ckpt, --data, --calibrate-fpr "
                         "or --robustness")
        if args.model and args.threshold is not None:
            parser.error("give --model or --threshold, not both")
        return
    if args.model or args.threshold is not None:
        parser.error("--model and --threshold go with --labels")
    if not (args.ckpt and args.data and args.out):
        parser.error("--ckpt, --data and --out are required (or --labels labels.jsonl)")
    ckpt = Path(args.ckpt)
    if not (ckpt / RUN_CONFIG).is_file():
        parser.error(f"--ckpt {ckpt}: not a run directory (no {RUN_CONFIG})")
    check_dir(parser, "--data", args.data)
    if args.calibrate_fpr is None:
        if args.calibration or args.write_threshold or args.calibrate_on_eval_data:
            parser.error("--calibration / --write-threshold / --calibrate-on-eval-data need --calibrate-fpr F")
        return
    if not 0.0 <= args.calibrate_fpr < 1.0:
        parser.error("--calibrate-fpr must be in [0, 1)")
    if args.calibration is None and not args.calibrate_on_eval_data:
        parser.error("--calibrate-fpr needs --calibration DIR (real images that are not in --data), or "
                     "--calibrate-on-eval-data to calibrate on the evaluated images themselves")
    if args.calibration is not None:
        check_dir(parser, "--calibration", args.calibration)
        cal, data = Path(args.calibration).resolve(), Path(args.data).resolve()
        if (cal == data or cal.is_relative_to(data) or data.is_relative_to(cal)) and not args.calibrate_on_eval_data:
            parser.error(f"--calibration {args.calibration} overlaps --data {args.data}: the threshold would be "
                         "chosen on the images it is scored on; use a separate folder, or say "
                         "--calibrate-on-eval-data")


def seen_generators(meta: dict) -> set[str] | None:
    """Generators of the checkpoint's training data (nsnet.json ``data.generators``); None when the
    checkpoint never saw images (--epochs 0) or does not say."""
    data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    gens = data.get("generators") or []
    return {str(g) for g in gens} if data.get("n_images") and gens else None


def per_generator(probs: np.ndarray, labels: np.ndarray, gens: np.ndarray, threshold: float,
                  seen: set[str] | None = None) -> dict:
    from training.metrics import detection_metrics

    return {
        "overall": detection_metrics(probs, labels, threshold),
        "per_generator": {g: dict(detection_metrics(probs[gens == g], labels[gens == g], threshold),
                                  seen=None if seen is None else g in seen)
                          for g in sorted(set(gens.tolist()))},
    }


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def markdown_table(result: dict, title: str) -> str:
    """One row per generator ("(seen)" / "(unseen)": in the checkpoint's training data or not), then the
    mean over generators (how the paper reports), then all images."""
    rows = [f"### {title}", "", "| Generator | Acc | AP | Real acc | Fake acc | N |", "|---|---:|---:|---:|---:|---:|"]
    per = result["per_generator"]
    for g, m in per.items():
        mark = {True: " (seen)", False: " (unseen)"}.get(m.get("seen"), "")
        rows.append(f"| {g}{mark} | {_pct(m['acc'])} | {_pct(m['ap'])} | {_pct(m['real_acc'])} | {_pct(m['fake_acc'])} | {m['n']} |")
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
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)  # before torch
    if args.labels:
        return evaluate_labels(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("training").setLevel(logging.INFO)

    import torch

    from nsnet_sdk.errors import ModelLoadError
    from nsnet_sdk.model import load_checkpoint
    from nsnet_sdk.pipeline import PatchConfig
    from training.data import ImageDataset, SkipLog, detect_layout, discover
    from training.infer import score
    from training.train import pick_device

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

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threshold = float(meta.get("threshold", DEFAULT_THRESHOLD))
    calibration = None
    if args.calibrate_fpr is not None:
        calibration = calibrate(model, args, cfg, device, gens, previous=threshold)
        threshold = calibration["threshold"]
        (out / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n")

    seen = seen_generators(meta)
    skips = SkipLog(samples)
    probs, labels, idx = score(model, ImageDataset(samples, cfg), args.batch_size, device, args.workers, progress, skips)
    gen_names = np.array([samples[i].generator for i in idx])
    result = per_generator(probs, labels, gen_names, threshold, seen)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    card = meta.get("model_card") if isinstance(meta.get("model_card"), dict) else {}
    how = (f"calibrated here for FPR <= {args.calibrate_fpr} on {calibration['data']}" if calibration
           else f"the checkpoint's ({card.get('threshold_source') or 'as stored in nsnet.json'})")
    seen_note = (f"(seen) = in the checkpoint's training data ({', '.join(sorted(seen))}); (unseen) = not."
                 if seen else "The checkpoint records no training data, so no generator is marked seen.")
    tables = [f"# NS-Net evaluation\n\ncheckpoint `{args.ckpt}` ({meta['backbone']}, {meta.get('pretrained')}), "
              f"data `{args.data}` ({layout}), threshold {threshold:.4g} on prob_fake, {how}; percentages. "
              f"{seen_note}\n",
              markdown_table(result, "clean")]
    plot_curves(probs, labels, gen_names, out)

    robustness = {}
    if args.robustness:
        for name, fn in PERTURBATIONS.items():
            p, y, i = score(model, ImageDataset(samples, cfg, transform=fn), args.batch_size, device, args.workers,
                            progress, skips, desc=name)  # the clean pass already warned about each bad file
            robustness[name] = per_generator(p, y, np.array([samples[j].generator for j in i]), threshold, seen)
            tables.append(markdown_table(robustness[name], name))
        (out / "robustness.json").write_text(json.dumps(robustness, indent=2) + "\n")
    (out / "table.md").write_text("\n".join(tables))
    (out / "summary.json").write_text(json.dumps({
        "checkpoint": str(args.ckpt), "data": str(args.data), "layout": layout, "split": args.split,
        "threshold": threshold, "threshold_calibrated": calibration is not None,
        "seen_generators": sorted(seen) if seen else None, "n_images": len(samples), "skipped": skips.count,
        "skipped_files": skips.bad, "seconds": round(time.perf_counter() - t_start, 2),
    }, indent=2) + "\n")
    o = result["overall"]
    log.info("%d images (%d skipped): acc %s, AP %s -> %s", o["n"], skips.count, _pct(o["acc"]), _pct(o["ap"]), out)
    print(markdown_table(result, "clean"))
    return 0


def _real_images(root: Path, layout: str, gens) -> list:
    """The real images of a calibration folder: its real class when it has a dataset layout (GenImage:
    the val split), else every image under it."""
    from training.data import REAL, Sample, image_files, detect_layout, discover

    if layout == "auto":
        try:
            layout = detect_layout(root)
        except ValueError:  # no layout: a plain folder of one's own real images
            return [Sample(p, REAL, root.name) for p in image_files(root)]
    return [s for s in discover(root, layout, split="val" if layout == "genimage" else None, generators=gens)
            if s.label == REAL]


def calibrate(model, args, cfg: PatchConfig, device: torch.device, gens, previous: float) -> dict:
    """The threshold giving ``--calibrate-fpr`` on the real calibration images, with what it was
    computed on and the files skipped; stored in the checkpoint only with ``--write-threshold``."""
    from nsnet_sdk.model.checkpoint import update_meta
    from training.data import ImageDataset, SkipLog
    from training.infer import score
    from training.metrics import threshold_for_fpr

    root = Path(args.calibration or args.data)
    try:
        samples = _real_images(root, args.layout, gens)
    except ValueError as exc:
        raise SystemExit(f"error: --calibration: {exc}") from None
    skips = SkipLog(samples)
    probs, labels, _ = score(model, ImageDataset(samples, cfg, skip_low_information=True), args.batch_size, device, args.workers,
                             not args.quiet, skips, desc="calibrating")
    try:
        threshold = threshold_for_fpr(probs, labels, args.calibrate_fpr)
    except ValueError as exc:
        raise SystemExit(f"error: {root}: {exc}") from None
    doc = {"fpr": args.calibrate_fpr, "threshold": threshold, "previous_threshold": previous, "data": str(root),
           "n_real": int(len(probs)), "skipped": skips.count, "skipped_files": skips.bad,
           "left_out_low_information": skips.left_out,
           "on_eval_data": args.calibration is None or bool(args.calibrate_on_eval_data),
           "written_to": None}
    log.info("threshold %.6g gives FPR <= %.3f on %d real images of %s (%d skipped%s)", threshold,
             args.calibrate_fpr, len(probs), root, skips.count,
             ": listed in calibration.json" if skips.count else "")
    if args.write_threshold:
        # update_meta also rewrites the model card: its threshold_source then names this calibration
        update_meta(args.ckpt, threshold=threshold,
                    calibration={k: doc[k] for k in ("fpr", "data", "n_real", "skipped", "previous_threshold")})
        doc["written_to"] = str(Path(args.ckpt) / RUN_CONFIG)
        log.info("wrote threshold %.6g to %s (was %.6g); models exported earlier keep their own: re-stamp them "
                 "(`nsnet info MODEL --set-threshold %.6g --out NEW`) or export again", threshold,
                 doc["written_to"], previous, threshold)
    else:
        log.info("%s unchanged (threshold %.6g); --write-threshold stores the new one", args.ckpt, previous)
    return doc


def evaluate_labels(args: argparse.Namespace) -> int:
    """ACC/AP/FPR at the operating point on reviewed rows: their own prob_fake against the
    reviewer's label ('skip' left out), with 95 % Clopper–Pearson intervals for the error rates."""
    from nsnet_sdk.artifact import read_model_meta
    from nsnet_sdk.calibrate import clopper_pearson
    from nsnet_sdk.errors import NSNetError
    from nsnet_sdk.labels import LabelFileError, check_model, model_identities, read_labels, split_scores
    from training.metrics import detection_metrics

    try:
        labels = read_labels(args.labels)
        band, threshold = None, 0.5 if args.threshold is None else args.threshold
        if args.model:
            check_model(labels, model_identities(args.model))
            meta = read_model_meta(args.model)
            band, threshold = meta.band, meta.threshold
    except (LabelFileError, NSNetError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    real, fake, left = split_scores(labels)
    if not real and not fake:
        raise SystemExit("error: no labelled rows with a score (all skipped?)")
    probs = np.asarray(real + fake, np.float64)
    y = np.asarray([0] * len(real) + [1] * len(fake))
    m = detection_metrics(probs, y, threshold)
    rates = {"fpr": (int(np.sum(probs[y == 0] >= threshold)), len(real)),
             "fnr": (int(np.sum(probs[y == 1] < threshold)), len(fake))}
    if band is not None:  # the band's own error rates: real read ai-generated, fake read real
        rates |= {"band_fpr": (int(np.sum(probs[y == 0] >= band.t_fake)), len(real)),
                  "band_fnr": (int(np.sum(probs[y == 1] < band.t_real)), len(fake)),
                  "uncertain": (int(np.sum((probs >= band.t_real) & (probs < band.t_fake))), len(probs))}
    doc = {"labels": [str(p) for p in args.labels], "model": args.model, "threshold": threshold,
           "band": band.to_dict() if band is not None else None, **m, "left_out": left,
           **{k: {"rate": k_ / n if n else None, "ci95": list(clopper_pearson(k_, n)) if n else None, "n": n}
              for k, (k_, n) in rates.items()}}
    text = json.dumps(doc, indent=2)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "labels_metrics.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
