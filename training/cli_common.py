"""Torch-free pieces the training CLIs share: defaults, choices, help formatting and the checks
that run before torch is imported (so ``--help`` and a typo cost well under a second)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

# Defaults and choices live here (not next to the code that uses them) so building a parser
# never imports torch; losses.py, nullspace.py and corpus.py import them from here.
BANKS = ("default", "coco", "none")
LAYOUTS = ("auto", "genimage", "ufd", "flat")
DEFAULT_TEMPERATURE = 0.07
DEFAULT_ENERGY = 0.95
DEFAULT_EPOCHS = 10
# Learning rates by what trains. Only the head (the frozen linear-probe setting, any backbone):
# a small MLP on fixed features, which at 1e-3 converges within the few hundred Adam steps a small
# dataset gives (1e-4 lags there; measured in docs/training.md), and a full benchmark gives
# thousands per epoch. With --lora-rank / --train-backbone pretrained weights move too, and steps
# that large wreck them.
HEAD_LR = 1e-3
BACKBONE_LR = 1e-4

LAYOUT_HELP = (
    "folder layout of --data: 'genimage' <gen>/[<subset>/]{train,val}/{ai,nature}/...; "
    "'ufd' <gen>/[<class>/]{0_real,1_fake}/...; 'flat' real/... and fake/... directly under --data "
    "(one generator named after the folder, no validation split); 'auto' picks the first whose folders exist")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" once: not when the help text already speaks of the default, nor for
    flags whose default is None/False (their help says what leaving them out does)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False \
                or action.default == argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def default_lr(trains_backbone: bool) -> float:
    """The learning rate used when ``--lr`` is not given (see HEAD_LR / BACKBONE_LR)."""
    return BACKBONE_LR if trains_backbone else HEAD_LR


def looks_like_path(pretrained: str) -> bool:
    """True when ``--pretrained`` names a file rather than an open_clip tag (tags never contain a
    path separator or a weights suffix)."""
    return (os.sep in pretrained or "/" in pretrained or pretrained.startswith(".")
            or Path(pretrained).suffix.lower() in (".safetensors", ".pt", ".pth", ".bin", ".npz"))


def check_file(parser: argparse.ArgumentParser, flag: str, value: str | None) -> None:
    """Usage error (exit 2) when ``value`` is given and is not an existing regular file."""
    if value is not None and not Path(value).is_file():
        parser.error(f"{flag} {value}: no such file")


def check_dir(parser: argparse.ArgumentParser, flag: str, value: str | None) -> None:
    """Usage error (exit 2) when ``value`` is given and is not an existing directory."""
    if value is not None and not Path(value).is_dir():
        what = "is not a directory" if Path(value).exists() else "no such directory"
        parser.error(f"{flag} {value}: {what}")
