"""Detection metrics in the paper's form: accuracy at the threshold, AP, per-class accuracy."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score

from nsnet_sdk.constants import DEFAULT_THRESHOLD

KEYS = ("acc", "ap", "real_acc", "fake_acc", "n")


def detection_metrics(prob_fake: np.ndarray, labels: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict:
    """{"acc", "ap", "real_acc", "fake_acc", "n"}; a value that is undefined for the data (AP with
    one class only, the accuracy of an absent class) is None."""
    p = np.asarray(prob_fake, np.float64)
    y = np.asarray(labels).astype(int)
    n = int(y.size)
    pred = p >= threshold
    real, fake = y == 0, y == 1
    return {
        "acc": float(np.mean(pred == fake)) if n else None,
        "ap": float(average_precision_score(y, p)) if real.any() and fake.any() else None,
        "real_acc": float(np.mean(~pred[real])) if real.any() else None,
        "fake_acc": float(np.mean(pred[fake])) if fake.any() else None,
        "n": n,
    }


def threshold_for_fpr(prob_fake: np.ndarray, labels: np.ndarray, fpr: float) -> float:
    """The lowest threshold whose false-positive rate on the real images is at most ``fpr``
    (fake ⇔ prob ≥ threshold), so that the detector flags as many fakes as that budget allows."""
    p = np.asarray(prob_fake, np.float64)
    y = np.asarray(labels).astype(int)
    real = np.sort(p[y == 0])
    if real.size == 0:
        raise ValueError("--calibrate-fpr needs real images in the calibration data")
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"FPR must be in [0, 1), got {fpr}")
    allowed = int(np.floor(fpr * real.size))  # reals that may score at or above the threshold
    # Just above the (allowed+1)-th highest real score: at most `allowed` reals reach it.
    kth = real[real.size - allowed - 1]
    return float(np.nextafter(kth, np.inf))
