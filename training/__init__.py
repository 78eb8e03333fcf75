"""NS-Net training: semantic null-space projector, losses, data, train/evaluate CLIs.

Importing this package registers the small random-init open_clip config ``nsnet-tiny`` (through
`nsnet_sdk.model`) so tests and the demo never need downloaded weights.
"""
from __future__ import annotations

import nsnet_sdk.model  # noqa: F401  (registers nsnet-tiny with open_clip)
