"""Typed errors. Every message names the input or artifact it is about."""
from __future__ import annotations


class NSNetError(Exception):
    """Base class of every error nsnet_sdk raises on purpose."""

    def __init__(self, message: str, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source


class ImageDecodeError(NSNetError):
    """The input could not be read or decoded as an image."""


class ImageTooLargeError(NSNetError):
    """The image's declared size exceeds ``max_pixels``; refused before decoding."""


class UnsupportedInputError(ImageDecodeError, TypeError):
    """The input is of a kind the Detector does not score (not a path, bytes, array or PIL image,
    nor a collection of them); an `ImageDecodeError` too, so handlers of that catch it."""


class ModelLoadError(NSNetError):
    """The model artifact is missing, unreadable, of an unknown kind, or its metadata is invalid."""


class BackendUnavailableError(ModelLoadError):
    """The runtime library a backend needs (onnxruntime, tensorrt + cuda-python, torch) is missing."""


class PreprocessMismatchError(NSNetError, ValueError):
    """A preprocessing override contradicts the config recorded in the model artifact."""


class InferenceError(NSNetError):
    """The backend failed while running a batch; the model, not one input, is at fault."""


def as_input_error(e: BaseException, name: str) -> NSNetError:
    """A typed per-input error: an `NSNetError` as is; anything untyped (e.g. ``ValueError:
    embedded null byte`` from a path) becomes an `ImageDecodeError` naming the input, with the
    original as its cause."""
    if isinstance(e, NSNetError):
        return e
    err = ImageDecodeError(f"{name}: {type(e).__name__}: {e}", source=name)
    err.__cause__ = e
    return err


def nonfinite_logit_error(name: str) -> InferenceError:
    """The error of an input whose logit came back NaN or infinite (the model, not the input, is
    at fault; `Detector.predict` records it for that input, `Detector.explain` raises it)."""
    return InferenceError(f"{name}: the model returned a non-finite logit", source=name)


class RandomWeightsWarning(UserWarning):
    """The model's backbone had random weights (``pretrained`` = none): a test or demo model, not
    a detector for real use."""
