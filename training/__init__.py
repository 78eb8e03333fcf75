"""NS-Net training: semantic null-space projector, losses, data, train/evaluate CLIs.

Importing this package imports nothing heavy, so ``python -m training.train --help`` answers
without loading torch; `training.backbone` (through `nsnet_sdk.model`) registers the small
random-init open_clip config ``nsnet-tiny`` when a model is built.
"""
