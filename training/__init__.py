"""NS-Net training: semantic null-space projector, model, losses, data, train/evaluate CLIs.

Importing this package registers the small random-init open_clip config ``nsnet-tiny`` (shipped as
package data in ``training/model_configs``) so tests and the demo never need downloaded weights.
"""
from __future__ import annotations

from pathlib import Path

import open_clip

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"

if "nsnet-tiny" not in open_clip.list_models():
    # open_clip scans directories it is given for <name>.json architecture configs.
    open_clip.add_model_config(str(MODEL_CONFIG_DIR))
