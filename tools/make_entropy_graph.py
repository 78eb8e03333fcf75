"""Writes nsnet_sdk/pipeline/entropy.onnx: the two matrix products of the patch DFTs, run by ONNX Runtime.

    python tools/make_entropy_graph.py          # rewrite the shipped file
    python tools/make_entropy_graph.py --check  # exit 1 if the shipped file is out of date

The graph holds no weights: the DFT matrices and the shapes are inputs, so one file serves any
patch size. Only the GEMMs live here (ORT's elementwise Log and strided reductions are slower than
OpenCV's); see nsnet_sdk/pipeline/ (_band_entropies) for the algebra.
"""
from __future__ import annotations

import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

OUT = Path(__file__).resolve().parents[1] / "nsnet_sdk" / "pipeline" / "entropy.onnx"


def build() -> onnx.ModelProto:
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    n = helper.make_node
    nodes = [
        n("MatMul", ["rows", "g"], ["x"]),                                  # (nr, 2k, w): DFT down each patch column
        n("Reshape", ["x", "x_shape"], ["x5"]),                             # (nr, 2, k, nc, p)
        n("Transpose", ["x5"], ["xt"], perm=[0, 2, 3, 1, 4]),               # (nr, k, nc, 2, p)
        n("Reshape", ["xt", "row_shape"], ["xr"]),                          # (M, 2p) = [Xr | Xi]
        n("MatMul", ["xr", "cross"], ["y"]),                                # (M, 2p) = [Re | Im] along each patch row
    ]
    inputs = [
        helper.make_tensor_value_info("g", f, ["nr", "p", "w"]),
        helper.make_tensor_value_info("rows", f, ["k2", "p"]),
        helper.make_tensor_value_info("cross", f, ["p2", "p2"]),
        helper.make_tensor_value_info("x_shape", i64, [5]),
        helper.make_tensor_value_info("row_shape", i64, [2]),
    ]
    outputs = [helper.make_tensor_value_info("y", f, ["m", "p2"])]
    graph = helper.make_graph(nodes, "nsnet_patch_dft", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="nsnet-sdk")
    model.ir_version = 8  # loadable by every onnxruntime the SDK supports
    onnx.checker.check_model(model)
    return model


def main(argv: list[str]) -> int:
    data = build().SerializeToString()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_bytes() != data:
            print(f"{OUT} is out of date: run python tools/make_entropy_graph.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_bytes(data)
    print(f"wrote {OUT} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
