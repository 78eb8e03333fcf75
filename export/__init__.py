"""Export a run directory: fold the projector into CLIP, ONNX FP32/FP16/INT8, TensorRT, parity (docs/export.md)."""
