"""The NS-Net torch module and its run-directory checkpoint (torch-only; never imported by
``import nsnet_sdk``).

Importing this package registers the small random-init open_clip config ``nsnet-tiny`` (package
data in ``model_configs/``), so tests and the demo never need downloaded weights.
"""
from __future__ import annotations

from pathlib import Path

import open_clip

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"

if "nsnet-tiny" not in open_clip.list_models():
    # open_clip scans directories it is given for <name>.json architecture configs.
    open_clip.add_model_config(str(MODEL_CONFIG_DIR))

from .checkpoint import read_meta, save_checkpoint  # noqa: E402
from .network import (HEAD_DIM, HEAD_HIDDEN, NSNet, NullSpace, build_visual_empty,  # noqa: E402
                      load_checkpoint, project)

__all__ = ["NSNet", "NullSpace", "project", "build_visual_empty", "HEAD_HIDDEN", "HEAD_DIM",
           "save_checkpoint", "load_checkpoint", "read_meta", "MODEL_CONFIG_DIR"]
