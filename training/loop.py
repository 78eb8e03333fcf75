"""The training loop behind ``training.train``: images (or cached features) → SupCon + λ·BCE.

Two paths:
- end to end: every step decodes, augments and preprocesses images and runs the visual tower
  (needed with LoRA, and to see augmented pixels);
- ``--cache-features``: with a frozen backbone the visual features of each un-augmented image are
  computed once and the head trains on them (an order of magnitude faster; augmentation then
  does not apply).
Each epoch appends one JSON line to ``RUN/metrics.jsonl`` and writes the checkpoint.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from nsnet_sdk.constants import DEFAULT_THRESHOLD
from nsnet_sdk.pipeline import PatchConfig
from training.data import Augment, ImageDataset, SkipLog, detect_layout, discover, loader, split_off, summary
from training.infer import autocast, probs_from_features, run_dataset, score
from training.losses import nsnet_loss
from training.metrics import detection_metrics

log = logging.getLogger(__name__)


def _augment(args) -> Augment:
    return Augment(slot_shuffle=not args.no_slot_shuffle, flip=args.flip, jpeg_prob=args.jpeg_prob,
                   jpeg_quality=tuple(args.jpeg_quality), blur_prob=args.blur_prob,
                   blur_sigma=tuple(args.blur_sigma))


def _step(model, optimizer, scaler, args, device, inputs, labels, from_features: bool) -> dict[str, float]:
    with autocast(device):
        feats = inputs if from_features else model.features(inputs)
        z = model.embed_features(feats)
        logits = model.classifier(z).squeeze(-1)
    loss, parts = nsnet_loss(z.float(), logits.float(), labels, args.temperature,
                             args.supcon_weight, args.bce_weight)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    parts["correct"] = float(((logits.detach() >= 0).long() == labels).sum())
    return parts


def fit(args, model, optimizer, scaler: torch.amp.GradScaler, meta: dict[str, Any], run: Path,
        device: torch.device, start_epoch: int, save: Callable[[int, dict], None]) -> int:
    """Train from ``start_epoch`` to ``args.epochs``, saving after each epoch. Returns 0.

    ``scaler`` is the AMP loss scaler (enabled on CUDA), kept by the caller for --resume."""
    progress = not args.quiet
    root = Path(args.data)
    gens = [g.strip() for g in args.generators.split(",")] if args.generators else None
    try:
        layout = detect_layout(root) if args.layout == "auto" else args.layout
        train = discover(root, layout, split="train", generators=gens)
        val = discover(root, layout, split="val", generators=gens) if layout == "genimage" else []
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    if not train:
        raise SystemExit(f"error: no training images under {root} (layout {layout})")
    val_split = args.val_split
    if val and val_split:
        log.info("validating on the %s layout's val folders; --val-split %g not applied", layout, val_split)
    elif val_split:
        train, val = split_off(train, val_split, args.seed)
        log.info("--val-split %g: %d training images held out to validate on", val_split, len(val))
    elif not val:
        log.warning("no validation split under %s (layout %s): metrics.jsonl gets no val_* figures; "
                    "pass --val-split 0.1 to hold out 10%% of the training images", root, layout)
    if len({s.label for s in train}) < 2:
        log.warning("training data has only one class (%s): the detector cannot learn to separate",
                    "real" if train[0].label == 0 else "fake")
    log.info("training on %d images (%s), validating on %d", len(train),
             ", ".join(sorted({s.generator for s in train})), len(val))
    cfg = PatchConfig.from_dict(meta["preprocess"])
    skips = SkipLog(train)
    val_skips = SkipLog(val)
    metrics_path = run / "metrics.jsonl"
    run.mkdir(parents=True, exist_ok=True)
    _trim_metrics(metrics_path, start_epoch)
    model.visual.eval()  # CLIP towers have no dropout/BN to train; keeps LoRA deterministic

    cache = val_cache = None
    if args.cache_features:
        t0 = time.perf_counter()
        cache = run_dataset(model.features, ImageDataset(train, cfg), args.batch_size, device, args.workers,
                            "caching features", progress, skips)
        if val:
            val_cache = run_dataset(model.features, ImageDataset(val, cfg), args.batch_size, device, args.workers,
                                    "caching val features", progress, val_skips)
        log.info("cached features of %d images in %.1fs", len(cache[0]) + (len(val_cache[0]) if val_cache else 0),
                 time.perf_counter() - t0)
        if len(cache[0]) < 2:
            raise SystemExit(f"error: fewer than 2 readable training images under {root}")
    train_ds = ImageDataset(train, cfg, augment=_augment(args), seed=args.seed)

    for epoch in range(start_epoch, args.epochs):
        t0 = time.perf_counter()
        model.head.train()
        model.classifier.train()
        sums: dict[str, float] = {}
        n_seen = 0
        # The epoch's shuffle is a function of (seed, epoch) alone, so --resume continues exactly.
        epoch_seed = args.seed * 100_003 + epoch
        if cache is not None:
            c_feats, c_labels, _ = cache
            order = torch.randperm(len(c_feats), generator=torch.Generator().manual_seed(epoch_seed))
            batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
            it = ((c_feats[b].to(device), c_labels[b].to(device)) for b in batches if len(b) >= 2)
            total = len(batches)
        else:
            train_ds.epoch = epoch
            dl = loader(train_ds, args.batch_size, shuffle=True, workers=args.workers, seed=epoch_seed)
            it = _image_batches(dl, skips, device)
            total = len(dl)
        for inputs, labels in tqdm(it, total=total, desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch",
                                   disable=not progress, leave=False):
            parts = _step(model, optimizer, scaler, args, device, inputs, labels, cache is not None)
            b = len(labels)
            n_seen += b
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + (v if k == "correct" else v * b)
        record: dict[str, Any] = {"epoch": epoch + 1, "images": n_seen}
        for k, v in sums.items():
            record["train_acc" if k == "correct" else k] = v / max(n_seen, 1)
        if val:
            if val_cache is not None:
                probs, vlabels = probs_from_features(model, val_cache[0], device), val_cache[1].numpy()
            else:
                probs, vlabels, _ = score(model, ImageDataset(val, cfg), args.batch_size, device, args.workers,
                                          progress, val_skips, desc="validating")
            m = detection_metrics(probs, vlabels, float(meta.get("threshold", DEFAULT_THRESHOLD)))
            record.update({f"val_{k}": v for k, v in m.items()})
        record["skipped"] = skips.count
        record["seconds"] = round(time.perf_counter() - t0, 3)
        with metrics_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if (epoch + 1) % args.log_every == 0 or epoch + 1 == args.epochs:
            log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                         for k, v in record.items() if k != "epoch"))
        save(epoch + 1, summary(train, skips.count))
    return 0


def _trim_metrics(path: Path, last_epoch: int) -> None:
    """Keep the log's records of epochs up to ``last_epoch`` (the checkpoint's): a fresh run does not
    append to an older run's log, and a resumed one does not repeat an epoch whose record was written
    before the run died and its checkpoint was not."""
    kept = []
    if last_epoch and path.is_file():
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["epoch"] <= last_epoch:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by the interruption
    path.write_text("".join(kept))


def _image_batches(dl, skips: SkipLog, device: torch.device):
    for images, labels, _, errors in dl:
        skips.add(errors)
        if images is None or len(labels) < 2:
            continue
        yield images.to(device, non_blocking=True), labels.to(device)
