"""The layout rules of DESIGN.md, checked on the source: arrows point down only, no import cycle,
no module over the size limit, and `import nsnet_sdk` stays free of the heavy optional libraries."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"nsnet_sdk": 0, "training": 1, "export": 2, "benchmarks": 3, "demo": 3}
MAX_LINES = 400  # "~400": a module stays small


def _modules() -> dict[str, Path]:
    mods = {}
    for top in LAYERS:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names of project modules imported by ``path`` anywhere in it, lazy imports inside
    functions included (relative imports resolved; ``if TYPE_CHECKING:`` blocks left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                 and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in type_only:  # annotations only: never imported at run time
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] in LAYERS}


def test_imports_point_down_only():
    upward = []
    for name, path in _modules().items():
        layer = LAYERS[name.split(".")[0]]
        for target in _imports(name, path):
            if LAYERS[target.split(".")[0]] > layer:
                upward.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not upward, "\n".join(upward)


def test_no_import_cycle_between_modules():
    mods = _modules()
    graph = {n: {t for t in _imports(n, p) if t in mods and t != n}
             for n, p in mods.items()}
    # A package importing its own submodules (re-exports) is not a cycle between files.
    for n in graph:
        graph[n] = {t for t in graph[n] if not t.startswith(n + ".")}
    cycles, state = [], {}

    def visit(n, stack):
        state[n] = 1
        for t in graph[n]:
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [n])
    assert not cycles, "\n".join(cycles)


def test_no_module_over_the_size_limit():
    big = [f"{p.relative_to(ROOT)}: {n} lines" for p in _modules().values()
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert not big, "\n".join(big)


def test_no_sys_path_manipulation():
    bad = [str(p.relative_to(ROOT)) for p in _modules().values()
           if "sys.path.insert" in (t := p.read_text(encoding="utf-8")) or "sys.path.append" in t]
    assert not bad, bad


@pytest.mark.parametrize("heavy", ["torch", "tensorrt", "ray", "c2pa", "matplotlib", "onnx"])
def test_import_nsnet_sdk_stays_light(heavy):
    code = f"import nsnet_sdk, nsnet_sdk.cli, sys; print({heavy!r} in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


# -- one input pipeline ---------------------------------------------------------------------------
# Every module of the runtime that opens a file, and what it opens. Input images are opened in one
# place only: the pipeline's bounded reader (a FIFO refused unopened, a byte limit), so a new
# `open()` of an input path anywhere else fails here instead of bypassing those guards.
FILE_OPENERS = {
    "nsnet_sdk/pipeline/read.py": "input images (the bounded reader)",
    "nsnet_sdk/containers.py": "model artifacts (bounded header readers, atomic writes)",
    "nsnet_sdk/artifact.py": "model artifacts and their sidecars",
    "nsnet_sdk/model/checkpoint.py": "run directories (nsnet.json)",
    "nsnet_sdk/backends/tensorrt.py": "the TensorRT engine file",
    "nsnet_sdk/results.py": "result files (JSON Lines / CSV)",
    "nsnet_sdk/batch_inputs.py": "listing files of inputs",
    "nsnet_sdk/quiet.py": "the pipe that carries native stderr to logging",
    "nsnet_sdk/cli/__init__.py": "os.devnull when stdout's reader went away",
    "nsnet_sdk/cli/explain.py": "explanations.jsonl, the index it writes",
    "nsnet_sdk/report.py": "the page template (thumbnails come through the pipeline)",
    "nsnet_sdk/report_rows.py": "result files (JSON Lines / CSV / Parquet) a report is built from",
    "nsnet_sdk/labels.py": "labels.jsonl files exported by the report",
    "nsnet_sdk/restamp.py": "model artifacts and their sidecars, re-stamped",
    "nsnet_sdk/batch_ray.py": "the model copy an actor receives, /proc/PID/environ of Ray's processes",
    "nsnet_sdk/cpuinfo.py": "/proc/cpuinfo",
    "nsnet_sdk/backends/openvino.py": "the measured engine table (package data)",
    "nsnet_sdk/pipeline/patches.py": "the kernel-choice cache",
}
# Modules that open one named kind of file and nothing else: the only calls they may make.
FILE_OPENING_CALLS = {"nsnet_sdk/provenance.py": {"Path(anchors).read_text"}}  # trust-anchor PEM
INPUT_OPENERS = [m for m, why in FILE_OPENERS.items() if why.startswith("input images")]
DECODER_CALLS = {"imdecode", "imdecodeWithMetadata", "imread", "imreadmulti"}


def _calls(path: Path) -> list[tuple[str, str]]:
    """(owner, attribute) of every call in ``path``: ``open(x)`` → ("", "open"), ``os.open`` →
    ("os", "open"), ``p.read_bytes()`` → ("p", "read_bytes")."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                out.append(("", f.id))
            elif isinstance(f, ast.Attribute):
                out.append((ast.unparse(f.value), f.attr))
    return out


def test_exactly_one_module_opens_input_paths():
    assert INPUT_OPENERS == ["nsnet_sdk/pipeline/read.py"]
    opening = {"open", "read_bytes", "read_text", "fdopen", "mmap"}
    found = {}
    for name, path in _modules().items():
        rel = str(path.relative_to(ROOT))
        if not rel.startswith("nsnet_sdk/"):
            continue
        hits = [f"{o}.{a}" if o else a for o, a in _calls(path)
                if a in opening and o not in ("json", "Image")]  # Image.open: a decoder, below
        hits = [h for h in hits if h not in FILE_OPENING_CALLS.get(rel, ())]
        if hits:
            found[rel] = hits
    unexpected = {m: h for m, h in found.items() if m not in FILE_OPENERS}
    assert not unexpected, f"modules that open files but are not in FILE_OPENERS: {unexpected}"


def test_only_the_pipeline_package_calls_a_decoder():
    bad = []
    for name, path in _modules().items():
        rel = str(path.relative_to(ROOT))
        # benchmarks/ may call a decoder directly: a bare decode is the baseline it measures against.
        if rel.startswith(("nsnet_sdk/pipeline/", "benchmarks/", "demo/")):
            continue
        text = path.read_text(encoding="utf-8")
        calls = _calls(path)
        hits = [f"{o}.{a}" for o, a in calls if (o == "cv2" and a in DECODER_CALLS) or (o == "Image" and a == "open")]
        if "nvimgcodec" in text:
            hits.append("nvimgcodec")
        if hits:
            bad.append(f"{rel}: {sorted(set(hits))}")
    assert not bad, "\n".join(bad)


def test_only_the_cli_package_builds_argparse_parsers():
    # training/, export/ and benchmarks/ entry points keep their own parsers; in the runtime only
    # nsnet_sdk/cli/ holds argparse code, so feature modules stay usable as a library.
    bad = [str(p.relative_to(ROOT)) for n, p in _modules().items()
           if n.startswith("nsnet_sdk.") and not n.startswith("nsnet_sdk.cli")
           and "argparse" in p.read_text(encoding="utf-8")]
    assert not bad, bad


# Entry points run as commands (`python export/to_trt.py …` and `python -m export.to_trt …`): the
# public modules of export/ and benchmarks/ with a `__main__` block. Left out: private helpers
# (`_measure.py`, `_variants.py`) and export/ort_run.py, children started by other entry points with
# a spec file or pipe rather than options.
ENTRY_POINTS = sorted(
    f"{p.parent.name}.{p.stem}" for top in ("export", "benchmarks") for p in (ROOT / top).glob("*.py")
    if not p.stem.startswith("_") and p.stem != "ort_run"
    and 'if __name__ == "__main__":' in p.read_text(encoding="utf-8"))


def _installed_image(dest: Path) -> Path:
    """What installing the checkout puts on sys.path: the packages pyproject.toml's
    ``[tool.setuptools.packages.find]`` selects, found the way setuptools finds them (linked, not copied)."""
    import tomllib

    from setuptools import find_packages

    include = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "packages"]["find"]["include"]
    dest.mkdir()
    for top in {p.split(".")[0] for p in find_packages(where=str(ROOT), include=include)}:
        (dest / top).symlink_to(ROOT / top, target_is_directory=True)
    return dest


def test_every_entry_point_answers_help_as_a_script_and_as_a_module(tmp_path):
    """Both forms the docs and the model card use, from another folder, with only the installed
    packages importable (no PYTHONPATH pointing at the checkout): the same options either way."""
    from concurrent.futures import ThreadPoolExecutor

    assert {"export.to_trt", "export.to_onnx", "benchmarks.throughput"} <= set(ENTRY_POINTS)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(_installed_image(tmp_path / "site"))

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *argv, "--help"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=180)

    forms = {(ep, form): argv for ep in ENTRY_POINTS for form, argv in
             (("script", [str(ROOT / (ep.replace(".", "/") + ".py"))]), ("module", ["-m", ep]))}
    with ThreadPoolExecutor(4) as pool:
        done = dict(zip(forms, pool.map(run, forms.values())))
    failed = [f"{ep} ({form}): {r.stderr.strip().splitlines()[-1:]}" for (ep, form), r in done.items()
              if r.returncode != 0 or not r.stdout.startswith("usage:")]
    assert not failed, "\n".join(failed)
    for ep in ENTRY_POINTS:
        options = [{ln.split()[0] for ln in done[ep, form].stdout.splitlines() if ln.startswith("  -")}
                   for form in ("script", "module")]
        assert options[0] == options[1] and options[0], ep
