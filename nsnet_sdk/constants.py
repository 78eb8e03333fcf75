"""One home for each name and default that the runtime, training, export and the benchmarks share:
import it from here, never write the value again."""
from __future__ import annotations

RUN_CONFIG = "nsnet.json"  # a training run directory's validated config (docs/formats.md)
RUN_WEIGHTS = "nsnet.safetensors"  # the run directory's tensors, nullspace.basis included
DEFAULT_THRESHOLD = 0.5  # on prob_fake, where a run was not calibrated (card: threshold_source)
DEFAULT_BATCH_SIZE = 32  # inputs per backend call: Detector, nsnet detect / batch / calibrate
