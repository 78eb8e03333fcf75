"""NS-Net runtime: score images as real or AI-generated.

    from nsnet_sdk import Detector
    det = Detector("nsnet.onnx")            # .engine → TensorRT, .onnx → ONNX Runtime, run dir → PyTorch
    det.predict("photo.jpg")                # Prediction(source, prob_fake, is_fake, logit, error)
    det.predict(rgb_array)                  # numpy arrays are RGB; InputOptions(channels="bgr") for OpenCV's
    Detector("nsnet.onnx", backend="openvino", options=InputOptions(workers=0))

Importing this package loads numpy and OpenCV only; a backend's library (onnxruntime, tensorrt,
torch, openvino) is imported when a `Detector` for that kind of artifact is built.
"""
from __future__ import annotations

from . import errors
from .detector import Detector
from .errors import (BackendUnavailableError, ImageDecodeError, ImageTooLargeError, InferenceError,
                     ModelLoadError, NSNetError, PreprocessMismatchError, RandomWeightsWarning,
                     UnsupportedInputError)
from .options import BackendOptions, InputOptions
from .prediction import Prediction
from .pipeline import PatchConfig, load_image

__version__ = "0.1.0"

__all__ = [
    "Detector", "InputOptions", "BackendOptions", "Prediction", "PatchConfig", "load_image", "errors", "NSNetError", "ImageDecodeError", "ImageTooLargeError",
    "ModelLoadError", "BackendUnavailableError", "PreprocessMismatchError", "InferenceError",
    "UnsupportedInputError", "RandomWeightsWarning",
    "__version__",
]
