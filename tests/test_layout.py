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
MAX_LINES = 425  # "~400": a module stays small; a little slack for docstrings


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
