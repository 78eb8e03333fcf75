"""One home per shared name and default (`nsnet_sdk.constants`), checked on the source; and
`artifact.model_sha256`, the hash result rows name their model by, checked against hashlib."""
from __future__ import annotations

import ast
import hashlib
from pathlib import Path

from _sdk_util import build_stand_in_onnx, contract_metadata, write_engine_pair
from nsnet_sdk import constants
from nsnet_sdk.artifact import model_sha256

ROOT = Path(__file__).resolve().parents[1]
TOPS = ("nsnet_sdk", "training", "export", "benchmarks", "demo")
HOME = ROOT / "nsnet_sdk" / "constants.py"


def _sources():
    for top in TOPS:
        for path in sorted((ROOT / top).rglob("*.py")):
            if path != HOME:
                yield path, ast.parse(path.read_text(encoding="utf-8"))


def _is(node: ast.AST | None, value) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is type(value) and node.value == value


def _defaults(fn: ast.FunctionDef | ast.AsyncFunctionDef):
    args = fn.args
    pos = args.posonlyargs + args.args
    yield from zip(pos[len(pos) - len(args.defaults):], args.defaults)
    yield from ((a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None)


def _restated(tree: ast.AST) -> list[str]:
    """Where a module writes one of the shared values itself instead of importing it."""
    found = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Constant) and node.value in (constants.RUN_CONFIG, constants.RUN_WEIGHTS):
            found.append(f"{line}: {node.value!r}")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for arg, default in _defaults(node):
                if (arg.arg == "threshold" and _is(default, constants.DEFAULT_THRESHOLD)) or \
                        (arg.arg == "batch_size" and _is(default, constants.DEFAULT_BATCH_SIZE)):
                    found.append(f"{line}: {arg.arg}={default.value}")
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr == "get" and len(node.args) == 2 and \
                    _is(node.args[1], constants.DEFAULT_THRESHOLD) and \
                    isinstance(node.args[0], ast.Constant) and "threshold" in str(node.args[0].value):
                found.append(f"{line}: .get({node.args[0].value!r}, {constants.DEFAULT_THRESHOLD})")
            if isinstance(f, ast.Attribute) and f.attr == "add_argument" and \
                    any(_is(a, "--batch-size") for a in node.args) and \
                    any(k.arg == "default" and _is(k.value, constants.DEFAULT_BATCH_SIZE) for k in node.keywords):
                found.append(f"{line}: --batch-size default={constants.DEFAULT_BATCH_SIZE}")
        elif isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if _is(k, "threshold") and _is(v, constants.DEFAULT_THRESHOLD):
                    found.append(f"{line}: {{'threshold': {constants.DEFAULT_THRESHOLD}}}")
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in (
                "DEFAULT_THRESHOLD", "DEFAULT_BATCH_SIZE", "RUN_CONFIG", "RUN_WEIGHTS") for t in node.targets):
            found.append(f"{line}: defines {ast.unparse(node.targets[0])}")
    return found


def test_each_shared_name_and_default_is_written_once():
    restated = [f"{path.relative_to(ROOT)}:{where}" for path, tree in _sources() for where in _restated(tree)]
    assert not restated, "import these from nsnet_sdk.constants:\n" + "\n".join(restated)


def test_model_sha256_lives_with_the_artifact_code_only():
    homes = [str(path.relative_to(ROOT)) for path, tree in _sources() for node in ast.walk(tree)
             if isinstance(node, ast.FunctionDef) and node.name == "model_sha256"]
    assert homes == ["nsnet_sdk/artifact.py"]


def test_model_sha256_hashes_the_file_the_model_is_loaded_from(tmp_path):
    onnx_path = build_stand_in_onnx(tmp_path / "m.onnx")
    engine = write_engine_pair(tmp_path / "m.engine", contract_metadata())
    run = tmp_path / "run"
    run.mkdir()
    (run / constants.RUN_WEIGHTS).write_bytes(b"weights of the run")
    (run / constants.RUN_CONFIG).write_text("{}")  # the config is not what a row names
    for model, data in ((onnx_path, onnx_path.read_bytes()), (engine, engine.read_bytes()),
                        (run, b"weights of the run")):
        assert model_sha256(model) == hashlib.sha256(data).hexdigest()
        assert model_sha256(str(model)) == model_sha256(model)
