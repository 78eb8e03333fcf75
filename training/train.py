"""Train NS-Net: ``python -m training.train --data ROOT --out RUN_DIR [...]``.

Builds the semantic basis from the text corpus, attaches the head to the (frozen, optionally
LoRA-adapted) visual tower, trains with SupCon + λ·BCE and writes a checkpoint every epoch.
``--epochs 0`` writes the initial checkpoint without reading a single image.

Arguments, paths and an existing run in ``--out`` are checked before torch is imported, so
``--help`` and a typo answer at once.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nsnet_sdk.constants import DEFAULT_THRESHOLD, RUN_CONFIG, RUN_WEIGHTS
from training.cli_common import (BANKS, DEFAULT_ENERGY, DEFAULT_EPOCHS, DEFAULT_TEMPERATURE, HEAD_LR, BACKBONE_LR,
                                 LAYOUT_HELP, LAYOUTS, HelpFormatter, check_dir, check_file, default_lr,
                                 looks_like_path)

if TYPE_CHECKING:
    import torch

    from nsnet_sdk.model import NSNet

log = logging.getLogger("training.train")

METRICS = "metrics.jsonl"
TRAIN_STATE = "train_state.safetensors"
TRAIN_STATE_JSON = "train_state.json"
RUN_FILES = (RUN_CONFIG, RUN_WEIGHTS, METRICS, TRAIN_STATE, TRAIN_STATE_JSON)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.splitlines()[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--data", required=True, help="dataset root (not read, and may be absent, with --epochs 0)")
    p.add_argument("--out", required=True,
                   help="run directory to write; one that already holds a run is refused unless --resume or --overwrite")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last completed epoch")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--layout", default="auto", choices=LAYOUTS, help=LAYOUT_HELP)
    p.add_argument("--val-split", type=float, default=0.0, metavar="F",
                   help="hold out this fraction of the training images (per generator and class, fixed by --seed) "
                        "to validate on each epoch, for data without a validation split (flat, ufd); "
                        "GenImage's val folders are used when present (default: 0, no hold-out)")
    p.add_argument("--generators", default=None,
                   help="comma-separated generator names to train on (default: all found)")
    p.add_argument("--backbone", default="ViT-L-14", help="open_clip model name (nsnet-tiny: tiny random-init, tests)")
    p.add_argument("--pretrained", default="openai",
                   help="backbone weights: an open_clip tag (taken from the Hugging Face cache, downloaded only "
                        "on a connected machine), a local weights file (safetensors or open_clip checkpoint; "
                        "`python -m training.weights fetch` makes one), or 'none' for random weights")
    g = p.add_argument_group("semantic corpus / projector")
    g.add_argument("--prompt-bank", default="default", choices=BANKS,
                   help="built-in prompts: ImageNet+COCO names (default), COCO only (cheap), or none")
    g.add_argument("--templates", type=int, default=None, help="use only the first N prompt templates (default: all)")
    g.add_argument("--captions", default=None, help="captions file (.txt / .csv / .json) added to the corpus")
    g.add_argument("--energy", type=float, default=DEFAULT_ENERGY, help="energy kept by the semantic basis")
    g.add_argument("--rank", type=int, default=None, help="fixed basis rank k (overrides --energy)")
    g.add_argument("--text-batch-size", type=int, default=256, help="prompts encoded per batch")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="passes over the training images")
    g.add_argument("--batch-size", type=int, default=64, help="images per step (>= 2: SupCon needs pairs)")
    g.add_argument("--lr", type=float, default=None,
                   help=f"AdamW learning rate (default: {HEAD_LR:g} when only the head trains, frozen backbone "
                        f"of any size: the MLP head on fixed features converges at that rate within the few "
                        f"hundred steps a small dataset gives, where 1e-4 lags (docs/training.md); "
                        f"{BACKBONE_LR:g} with --lora-rank or --train-backbone, whose pretrained weights "
                        f"larger steps would wreck)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    g.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="SupCon temperature τ")
    g.add_argument("--supcon-weight", type=float, default=1.0, help="weight of the SupCon term")
    g.add_argument("--bce-weight", type=float, default=1.0, help="λ on the BCE term")
    g.add_argument("--lora-rank", type=int, default=0, help="LoRA rank on the visual blocks (0 = frozen)")
    g.add_argument("--lora-alpha", type=float, default=None, help="LoRA scale numerator (default: the rank)")
    g.add_argument("--train-backbone", action="store_true",
                   help="fine-tune the whole visual tower (small backbones such as nsnet-tiny)")
    g.add_argument("--cache-features", action="store_true",
                   help="frozen backbone: compute each image's features once, train the head on them")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: CUDA when available, else CPU")
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    g.add_argument("--seed", type=int, default=0, help="seeds shuffling, augmentation, initialisation and --val-split")
    g = p.add_argument_group("augmentation (training images only)")
    g.add_argument("--no-slot-shuffle", action="store_true", help="keep mosaic slots in entropy order")
    g.add_argument("--flip", type=float, default=0.5, help="horizontal flip probability")
    g.add_argument("--jpeg-prob", type=float, default=0.0, help="JPEG re-compression probability")
    g.add_argument("--jpeg-quality", type=int, nargs=2, default=[30, 100], metavar=("LO", "HI"),
                   help="JPEG quality range drawn from")
    g.add_argument("--blur-prob", type=float, default=0.0, help="Gaussian blur probability")
    g.add_argument("--blur-sigma", type=float, nargs=2, default=[0.0, 3.0], metavar=("LO", "HI"),
                   help="Gaussian blur σ range drawn from")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--log-every", type=int, default=1, metavar="N",
                   help="log metrics every N epochs (and the last); metrics.jsonl always has every epoch")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is often faster on a busy shared box)")
    return p


def _existing_run(run: Path) -> dict[str, Any] | None:
    """The nsnet.json of a run already in ``run`` ({} when only other run files are there), or None."""
    if not any((run / name).exists() for name in RUN_FILES):
        return None
    try:
        doc = json.loads((run / RUN_CONFIG).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every usage error that needs no torch: flag values, their combinations, paths, --out."""
    if args.epochs < 0 or args.batch_size < 2:
        parser.error("--epochs must be >= 0 and --batch-size >= 2 (SupCon needs pairs)")
    if args.log_every < 1:
        parser.error("--log-every must be >= 1")
    if not args.temperature > 0:  # SupCon divides by it: 0 or less gives a NaN loss, silently
        parser.error("--temperature must be > 0")
    if args.lr is not None and not args.lr > 0:
        parser.error("--lr must be > 0")
    if args.lora_rank < 0:
        parser.error("--lora-rank must be >= 0")
    if not 0 <= args.val_split < 1:
        parser.error("--val-split must be in [0, 1)")
    if not 1 <= args.jpeg_quality[0] <= args.jpeg_quality[1] <= 100:
        parser.error("--jpeg-quality needs 1 <= LO <= HI <= 100")
    if not 0 <= args.blur_sigma[0] <= args.blur_sigma[1]:
        parser.error("--blur-sigma needs 0 <= LO <= HI")
    if args.cache_features and (args.lora_rank or args.train_backbone):
        parser.error("--cache-features needs a frozen backbone; drop --lora-rank / --train-backbone")
    if args.lora_rank and args.train_backbone:
        parser.error("--lora-rank and --train-backbone are alternatives; pick one")
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite are alternatives; pick one")
    if args.epochs > 0:
        check_dir(parser, "--data", args.data)
    check_file(parser, "--captions", args.captions)
    if looks_like_path(args.pretrained) and not Path(args.pretrained).is_file():
        parser.error(f"--pretrained {args.pretrained}: no such weights file")
    run = Path(args.out)
    if run.exists() and not run.is_dir():
        parser.error(f"--out {run} exists and is not a directory")
    meta = _existing_run(run)
    if meta is not None and not (args.resume or args.overwrite):
        done = meta.get("training", {}).get("epochs") if isinstance(meta.get("training"), dict) else None
        what = f"a run trained for {done} epoch(s)" if done is not None else "a run"
        parser.error(f"--out {run} already holds {what}; pass --resume to continue it, --overwrite to "
                     "replace it, or choose another --out")
    if args.resume and meta:
        trained = meta.get("training", {}).get("lora_rank", 0) if isinstance(meta.get("training"), dict) else 0
        if int(trained or 0) != args.lora_rank:
            parser.error(f"--resume: {run} was trained with --lora-rank {trained}, this command asks for "
                         f"--lora-rank {args.lora_rank}; resume with --lora-rank {trained}, or start a new run "
                         "(another --out, or --overwrite)")


def pick_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def initial_model(args, device: torch.device) -> tuple[NSNet, dict[str, Any]]:
    """Backbone + semantic basis from the text corpus + fresh head; and the run's base metadata."""
    from nsnet_sdk.model import NSNet
    from nsnet_sdk.pipeline import DEFAULT
    from training.backbone import load_clip
    from training.corpus import encode_texts, prompt_bank, read_captions
    from training.nullspace import semantic_basis
    from training.weights import locate

    # Resolved first: a tag whose weights are not on an offline machine fails here, in seconds.
    weights = locate(args.backbone, args.pretrained)
    clip, tokenizer, quick_gelu = load_clip(args.backbone, args.pretrained, device, found=weights)
    texts = prompt_bank(args.prompt_bank, args.templates)
    n_captions = 0
    if args.captions:
        captions = read_captions(args.captions)
        n_captions = len(captions)
        texts += captions
    t0 = time.perf_counter()
    feats = encode_texts(clip, tokenizer, texts, args.text_batch_size, device, progress=not args.quiet)
    text_s = time.perf_counter() - t0
    basis, info = semantic_basis(feats, rank=args.rank, energy=args.energy)
    log.info("corpus: %d prompts + %d captions encoded in %.1fs; projector rank %d (energy %.3f, "
             "||T·P||/||T|| %.3f)", len(texts) - n_captions, n_captions, text_s, info.rank, info.energy,
             info.residual_ratio)
    visual = clip.visual
    del clip  # the text tower is not needed (nor saved) past this point
    model = NSNet(visual, basis.to(device)).to(device)
    meta = {
        "backbone": args.backbone,
        "pretrained": args.pretrained,
        "pretrained_source": weights.to_dict(),
        "quick_gelu": quick_gelu,
        "preprocess": DEFAULT.to_dict(),
        "projector": dict(info.to_dict(), requested_energy=args.energy, requested_rank=args.rank,
                          prompt_bank=args.prompt_bank, templates=args.templates,
                          captions=str(args.captions) if args.captions else None),
        "threshold": DEFAULT_THRESHOLD,
    }
    return model, meta


def training_summary(args, epochs_done: int) -> dict[str, Any]:
    return {
        "epochs": epochs_done,
        "epochs_requested": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "temperature": args.temperature,
        "supcon_weight": args.supcon_weight,
        "bce_weight": args.bce_weight,
        "lora_rank": args.lora_rank,
        "train_backbone": bool(args.train_backbone),
        "cache_features": bool(args.cache_features),
        "seed": args.seed,
        "layout": args.layout,
        "val_split": args.val_split,
        "generators": args.generators,
        "augment": {"slot_shuffle": not args.no_slot_shuffle, "flip": args.flip, "jpeg_prob": args.jpeg_prob,
                    "jpeg_quality": list(args.jpeg_quality), "blur_prob": args.blur_prob,
                    "blur_sigma": list(args.blur_sigma)},
    }


def trainable_parameters(model: NSNet) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def save_train_state(run: Path, model: NSNet, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                     epoch: int) -> None:
    """Optimizer moments, LoRA adapters (unmerged), the AMP loss scale and the RNG for --resume, as
    safetensors + JSON (each file replaced atomically)."""
    import torch
    from safetensors.torch import save_file

    from nsnet_sdk.containers import atomic_write
    from training.lora import lora_state_dict

    tensors: dict[str, torch.Tensor] = {f"lora/{k}": v for k, v in lora_state_dict(model).items()}
    opt = optimizer.state_dict()
    for idx, st in opt["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"opt/{idx}/{name}"] = value
    scalars = {str(idx): {n: v for n, v in st.items() if not torch.is_tensor(v)} for idx, st in opt["state"].items()}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    doc = {"epoch": epoch, "param_groups": opt["param_groups"], "scalars": scalars,
           "scaler": scaler.state_dict(), "rng": {"torch": torch.get_rng_state().tolist()}}
    atomic_write(run / TRAIN_STATE, lambda p: save_file(tensors, str(p)))
    atomic_write(run / TRAIN_STATE_JSON, lambda p: p.write_text(json.dumps(doc)))


def load_train_state(run: Path, model: NSNet, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    from training.lora import unmerge_lora

    doc = json.loads((run / TRAIN_STATE_JSON).read_text())
    tensors = load_file(str(run / TRAIN_STATE))
    adapters = {k[len("lora/"):]: v for k, v in tensors.items() if k.startswith("lora/")}
    if adapters:
        unmerge_lora(model, adapters)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, sc in doc.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(sc)
    optimizer.load_state_dict({"state": state, "param_groups": doc["param_groups"]})
    if doc.get("scaler"):  # {} when saved by a CPU run (a disabled scaler); a CPU scaler ignores it
        scaler.load_state_dict(doc["scaler"])
    torch.set_rng_state(torch.tensor(doc["rng"]["torch"], dtype=torch.uint8))
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)  # before torch: a typo costs a fraction of a second
    if args.lr is None:
        args.lr = default_lr(bool(args.lora_rank or args.train_backbone))
    # open_clip logs every construction step at INFO on the root logger; keep ours only.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("training").setLevel(logging.INFO)

    import torch

    from nsnet_sdk.errors import ModelLoadError
    from nsnet_sdk.model import load_checkpoint, save_checkpoint
    from training.lora import add_lora
    from training.weights import WeightsUnavailable

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    run = Path(args.out)
    seed_everything(args.seed)

    start_epoch = 0
    resume_state = run / TRAIN_STATE_JSON
    try:  # bad inputs (backbone name, weights, --rank, --templates, captions file, run dir) end as one line
        if args.resume and (run / RUN_CONFIG).is_file():
            model, meta = load_checkpoint(run, device=device)
            meta = {k: v for k, v in meta.items() if k not in ("format", "embed_dim", "head")}
            start_epoch = int(meta.get("training", {}).get("epochs", 0))
            log.info("resuming %s after epoch %d", run, start_epoch)
        else:
            if args.resume:
                log.warning("--resume: no checkpoint in %s yet, starting fresh", run)
            model, meta = initial_model(args, device)
    except (ValueError, FileNotFoundError, ModelLoadError, WeightsUnavailable) as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.overwrite:  # only now, once the new run is built: a typo above leaves the old run whole
        old = [run / name for name in RUN_FILES if (run / name).exists()]
        for path in old:
            path.unlink()
        if old:
            log.info("--overwrite: removed the earlier run's files from %s", run)
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    model.classifier.requires_grad_(True)
    if args.lora_rank:
        add_lora(model.visual, args.lora_rank, args.lora_alpha)
    elif args.train_backbone:
        model.visual.requires_grad_(True)

    meta["training"] = training_summary(args, start_epoch)
    meta.setdefault("data", {"n_images": 0, "skipped": 0, "generators": []})
    if args.epochs == 0 or start_epoch >= args.epochs:
        save_checkpoint(model, run, meta)
        log.info("wrote %s (no training: --epochs %d)", run, args.epochs)
        return 0

    from training.loop import fit  # data + loop need images; --epochs 0 never imports them

    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=args.lr, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")  # AMP on CUDA only
    if start_epoch and resume_state.is_file():
        load_train_state(run, model, optimizer, scaler)
    return fit(args, model, optimizer, scaler, meta, run, device, start_epoch,
               save=lambda ep, data_summary: _save_epoch(args, run, model, optimizer, scaler, meta, ep,
                                                         data_summary))


def _save_epoch(args, run: Path, model: NSNet, optimizer, scaler, meta: dict[str, Any], epoch: int,
                data_summary: dict[str, Any]) -> None:
    from nsnet_sdk.model import save_checkpoint

    meta["training"] = training_summary(args, epoch)
    meta["data"] = data_summary
    save_checkpoint(model, run, meta)
    save_train_state(run, model, optimizer, scaler, epoch)


if __name__ == "__main__":
    sys.exit(main())
