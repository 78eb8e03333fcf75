"""The Triton Inference Server Python-backend model that turns encoded image bytes into the
network's input, through the same per-input chain as the `Detector` (`executors.prepare_into`:
bounded checks, decode, mosaic, normalise; typed errors naming the input).

`export/to_triton.py` writes a repository whose ``nsnet_preprocess/1/model.py`` only imports
`TritonPythonModel` from here, so the container needs nothing from the checkout but the installed
package (``pip install 'nsnet-sdk[cpu]'``: docs/nvidia.md, "Triton"). ``triton_python_backend_utils``
exists only inside Triton's Python backend and is imported when the model is initialised.
"""
from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from ..errors import ImageDecodeError
from .config import MAX_PIXELS, PatchConfig
from .executors import prepare_into

BYTES_INPUT = "image_bytes"  # the ensemble's and the preprocessing model's input tensor
CONFIG_PARAMETER = "nsnet.preprocess"  # config.pbtxt parameter holding the model's PatchConfig JSON

__all__ = ["BYTES_INPUT", "CONFIG_PARAMETER", "preprocess_encoded", "TritonPythonModel"]


def preprocess_encoded(blobs: Sequence[bytes], config: PatchConfig,
                       max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded images → float32 (N, 3, size, size) network input, exactly the rows `Detector`
    makes of the same bytes.

    Raises:
        ImageDecodeError / ImageTooLargeError: image ``i`` of the request (named ``image i``)
            cannot be used; the Triton model answers that request with the message.
    """
    out = np.empty((len(blobs), 3, config.size, config.size), np.float32)
    for i, blob in enumerate(blobs):
        name = f"image {i}"
        # Only bytes: a str element would be taken for a path and opened on the server.
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise ImageDecodeError(f"{name}: expected encoded bytes, got {type(blob).__name__}", source=name)
        err, _ = prepare_into(bytes(blob), name, config, max_pixels, out[i])
        if err is not None:
            raise err
    return out


class TritonPythonModel:
    """Triton's Python-backend interface: ``initialize(args)``, ``execute(requests)``."""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils  # only inside Triton's Python backend

        self._pb = pb_utils
        cfg = json.loads(args["model_config"])
        self.config = PatchConfig.from_json(cfg["parameters"][CONFIG_PARAMETER]["string_value"])
        self.output = cfg["output"][0]["name"]

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        pb = self._pb
        responses = []
        for request in requests:  # one bad image fails its own request, never the others
            blobs = pb.get_input_tensor_by_name(request, BYTES_INPUT).as_numpy().reshape(-1)
            try:
                x = preprocess_encoded([bytes(b) for b in blobs], self.config)
            except Exception as e:
                responses.append(pb.InferenceResponse(error=pb.TritonError(str(e))))
                continue
            responses.append(pb.InferenceResponse([pb.Tensor(self.output, x)]))
        return responses
