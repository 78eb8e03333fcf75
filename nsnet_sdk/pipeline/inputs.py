"""What the Detector accepts as an input, how a result names it, and the checks on one input that
need no decoding (kind, channel order, size warning)."""
from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np

from ..errors import UnsupportedInputError

ACCEPTED_INPUTS = ("a path (str or os.PathLike), encoded bytes, a numpy array (H×W gray, H×W×3 "
                   "RGB, H×W×4 RGBA; channels='bgr' for OpenCV's order) or a PIL image, or a "
                   "list/iterable of those (a 4-D array is a stack)")
CHANNELS = ("rgb", "bgr")


def is_pil(x: Any) -> bool:
    return type(x).__module__.startswith("PIL.") and hasattr(x, "mode") and hasattr(x, "size")


def is_image(x: Any) -> bool:
    """One input of a kind the Detector scores: path, bytes, array or PIL image."""
    return isinstance(x, (str, os.PathLike, bytes, bytearray, memoryview, np.ndarray)) or is_pil(x)


def is_single_input(x: Any) -> bool:
    """True for one image (path, bytes, H×W[×C] array, PIL image); False for a collection of them
    (and for anything else, which `Detector.predict` then refuses).

    A 4-D array is a stack of images and counts as a collection.
    """
    if isinstance(x, np.ndarray):
        return x.ndim != 4
    return is_image(x)


def iter_inputs(x: Any) -> Iterator[Any]:
    """An iterator over a collection of inputs; `UnsupportedInputError` for what is not one."""
    if x is None or isinstance(x, (int, float, complex, dict)):  # dict: keys are not images
        raise UnsupportedInputError(f"cannot score {type(x).__name__} {x!r:.80}: expected "
                                    f"{ACCEPTED_INPUTS}")
    try:
        return iter(x)
    except TypeError:
        raise UnsupportedInputError(f"cannot score a {type(x).__name__}: expected "
                                    f"{ACCEPTED_INPUTS}") from None


def require_image(x: Any, name: str) -> None:
    """`UnsupportedInputError` naming ``name`` unless ``x`` is one image input."""
    if not is_image(x):
        raise UnsupportedInputError(f"{name}: cannot score a {type(x).__name__}: "
                                    f"expected {ACCEPTED_INPUTS}", source=name)


def source_name(x: Any, index: int) -> str:
    """How a Prediction names its input: the path as given (bytes paths decoded as `os.fsdecode`
    does, undecodable bytes kept as surrogates), else ``<kind #index>``."""
    if isinstance(x, (str, os.PathLike)):
        return os.fsdecode(x)
    if isinstance(x, (bytes, bytearray, memoryview)):
        return f"<bytes #{index}>"
    if isinstance(x, np.ndarray):
        return f"<array #{index}>"
    if is_pil(x):
        return f"<PIL #{index}>"
    return f"<{type(x).__name__} #{index}>"


def bgr_to_rgb(x: Any) -> Any:
    """An OpenCV-order (BGR / BGRA) array in RGB(A) order; anything else unchanged."""
    if isinstance(x, np.ndarray) and x.ndim == 3 and x.shape[2] in (3, 4):
        return x[..., [2, 1, 0, 3][: x.shape[2]]]
    return x


def check_channels(channels: Any) -> str:
    if channels not in CHANNELS:
        raise ValueError(f"channels must be one of {CHANNELS}, got {channels!r}")
    return channels


def size_warnings(img: np.ndarray, patch: int) -> tuple[str, ...]:
    """The warning a `Prediction` carries when the image is smaller than one patch."""
    h, w = img.shape[:2]
    if h < patch or w < patch:
        return (f"image is {w}x{h} pixels, smaller than one {patch}x{patch} patch: its few pixels "
                "are repeated to fill the model input, so the score says little",)
    return ()
