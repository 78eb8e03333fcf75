"""Shared fixtures helpers for the training tests (tiny, random-weight, no network)."""
from __future__ import annotations

from pathlib import Path

from training.train import main as train_main

# Cheap corpus: 80 COCO prompts, one template; a fixed rank so the projector is never trivial.
CHEAP_CORPUS = ["--prompt-bank", "coco", "--templates", "1"]


def tiny_run(out: Path, *extra: str, data: Path | None = None, epochs: int | None = 0) -> Path:
    """Train (or with epochs=0 just initialise) nsnet-tiny into ``out`` in-process; ``epochs=None``
    leaves --epochs at its default."""
    argv = ["--data", str(data or out / "no-data"), "--out", str(out), "--backbone", "nsnet-tiny",
            "--pretrained", "none", *([] if epochs is None else ["--epochs", str(epochs)]), "--quiet",
            *CHEAP_CORPUS, *extra]
    assert train_main(argv) == 0
    return out
