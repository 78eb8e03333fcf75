"""Writes nsnet_sdk/entropy.onnx: the patch-entropy kernel run by ONNX Runtime.

    python tools/make_entropy_graph.py          # rewrite the shipped file
    python tools/make_entropy_graph.py --check  # exit 1 if the shipped file is out of date

The graph holds no weights: the DFT matrices and the shapes are inputs, so one file serves any
patch size. See nsnet_sdk/preprocess.py (_band_entropies) for the algebra.
"""
from __future__ import annotations

import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

OUT = Path(__file__).resolve().parents[1] / "nsnet_sdk" / "entropy.onnx"


def build() -> onnx.ModelProto:
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    n = helper.make_node
    nodes = [
        # gray (nr·p, w) → per-patch sums and mean removal (a flat patch becomes exactly zero)
        n("Reshape", ["gray", "patch_shape"], ["g4"]),                      # (nr, p, nc, p)
        n("ReduceSum", ["g4", "axes13"], ["dc4"], keepdims=1),
        n("Mul", ["dc4", "inv_area"], ["mean4"]),
        n("Sub", ["g4", "mean4"], ["g0"]),
        n("Reshape", ["g0", "band_shape"], ["g"]),                          # (nr, p, w)
        n("MatMul", ["rows", "g"], ["x"]),                                  # (nr, 2k, w)
        n("Reshape", ["x", "x_shape"], ["x5"]),                             # (nr, 2, k, nc, p)
        n("Transpose", ["x5"], ["xt"], perm=[0, 2, 3, 1, 4]),               # (nr, k, nc, 2, p)
        n("Reshape", ["xt", "row_shape"], ["xr"]),                          # (M, 2p) = [Xr | Xi]
        n("MatMul", ["xr", "cross"], ["y"]),                                # (M, 2p) = [Re | Im]
        n("Split", ["y", "halves"], ["re", "im"], axis=1),
        n("Mul", ["re", "re"], ["re2"]),
        n("Mul", ["im", "im"], ["im2"]),
        n("Add", ["re2", "im2"], ["a2"]),
        n("Sqrt", ["a2"], ["a"]),
        n("Max", ["a", "tiny"], ["a_safe"]),
        n("Log", ["a_safe"], ["loga"]),
        n("Mul", ["a", "loga"], ["alog"]),
        n("ReduceSum", ["a", "axis1"], ["a_sum"], keepdims=0),              # (M,)
        n("ReduceSum", ["alog", "axis1"], ["alog_sum"], keepdims=0),
        n("Gather", ["a", "zero"], ["a_v0"], axis=1),                       # (M,) the v = 0 column
        n("Squeeze", ["dc4", "axes13"], ["dc"]),                            # (nr, nc)
    ]
    inputs = [
        helper.make_tensor_value_info("gray", f, ["h", "w"]),
        helper.make_tensor_value_info("rows", f, ["k2", "p"]),
        helper.make_tensor_value_info("cross", f, ["p2", "p2"]),
        helper.make_tensor_value_info("patch_shape", i64, [4]),
        helper.make_tensor_value_info("band_shape", i64, [3]),
        helper.make_tensor_value_info("x_shape", i64, [5]),
        helper.make_tensor_value_info("row_shape", i64, [2]),
        helper.make_tensor_value_info("halves", i64, [2]),
        helper.make_tensor_value_info("inv_area", f, []),
    ]
    consts = [
        helper.make_tensor("axes13", i64, [2], [1, 3]),
        helper.make_tensor("axis1", i64, [1], [1]),
        helper.make_tensor("zero", i64, [], [0]),
        helper.make_tensor("tiny", f, [], [1e-30]),
    ]
    outputs = [
        helper.make_tensor_value_info("dc", f, ["nr", "nc"]),
        helper.make_tensor_value_info("a_sum", f, ["m"]),
        helper.make_tensor_value_info("alog_sum", f, ["m"]),
        helper.make_tensor_value_info("a_v0", f, ["m"]),
    ]
    graph = helper.make_graph(nodes, "nsnet_patch_entropy", inputs, outputs, initializer=consts)
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
