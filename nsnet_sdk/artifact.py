"""The ``nsnet.*`` artifact format end to end: which backend a path needs, the one writer of the
metadata map, and the one reader (ONNX file, engine sidecar, run directory) that validates every
field at load and returns a `ModelMeta` (docs/formats.md).

Pure Python: the ONNX protobuf and the safetensors header are read here byte by byte, so a
damaged or hostile file is refused with a `ModelLoadError` naming the file and the field before
onnxruntime, TensorRT, torch or safetensors ever parse it. Nothing is unpickled.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from . import containers
from .constants import DEFAULT_THRESHOLD, RUN_CONFIG, RUN_WEIGHTS
from .containers import atomic_write
from .modelcard import VerdictBand, check_card, field_error, model_card, probability
from .errors import ModelLoadError
from .pipeline import PatchConfig

TENSORRT = "tensorrt"
ONNXRUNTIME = "onnxruntime"
TORCH = "torch"

ONNX_FORMAT = "nsnet-onnx/1"
CHECKPOINT_FORMAT = "nsnet-checkpoint/1"
_FORMAT_MAJOR = {"nsnet-onnx": 1, "nsnet-checkpoint": 1}  # the major versions this reader knows
PRECISIONS = ("fp32", "fp16", "int8")

# Typed keys of the flat map; every value in it is a string (ONNX metadata_props are strings).
_JSON_KEYS = ("nsnet.preprocess", "nsnet.model_card", "nsnet.verdict_band")
_INT_KEYS = ("nsnet.projector_rank", "nsnet.trt.min_batch", "nsnet.trt.opt_batch",
             "nsnet.trt.max_batch")
_BOOL_KEYS = ("nsnet.trt.strongly_typed",)

_SUFFIX_KIND = {".engine": TENSORRT, ".plan": TENSORRT, ".onnx": ONNXRUNTIME, ".safetensors": TORCH}


def artifact_kind(path: str | Path) -> str:
    """The backend a model path needs: ``"tensorrt"``, ``"onnxruntime"`` or ``"torch"``.

    ``.engine``/``.plan`` (with a ``<name>.json`` sidecar) → TensorRT, ``.onnx`` → ONNX Runtime,
    a run directory or its ``.safetensors`` file → PyTorch. Raises `ModelLoadError` otherwise.
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model not found: {p}", source=str(p))
    if p.is_dir():
        if not (p / RUN_CONFIG).is_file():
            raise ModelLoadError(
                f"{p} is a directory without {RUN_CONFIG}; expected a run directory "
                f"({RUN_WEIGHTS} + {RUN_CONFIG}), an .onnx file or an .engine file", source=str(p))
        return TORCH
    kind = _SUFFIX_KIND.get(p.suffix.lower())
    if kind is None:
        raise ModelLoadError(
            f"unknown model type {p.suffix or '(no suffix)'!r} for {p}; expected .engine/.plan, "
            ".onnx, .safetensors or a run directory", source=str(p))
    return kind


def engine_sidecar(path: str | Path) -> Path:
    """Where an engine's metadata lives: ``nsnet.engine`` → ``nsnet.engine.json``."""
    p = Path(path)
    return p.with_name(p.name + ".json")


# -- the flat map: writer and validating parser ------------------------------------------------

def compact_json(obj: Any) -> str:
    """The canonical one-line JSON of a metadata value (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def artifact_metadata(doc: Mapping[str, Any], *, precision: str, source_sha256: str | None = None,
                      fmt: str = ONNX_FORMAT) -> dict[str, str]:
    """The flat ``nsnet.*`` string map (ONNX ``metadata_props``, engine sidecar, what every backend
    reports) of a run's validated nsnet.json ``doc``."""
    out = {
        "nsnet.format": fmt,
        "nsnet.backbone": str(doc["backbone"]),
        "nsnet.preprocess": PatchConfig.from_dict(doc["preprocess"]).to_json(),
        "nsnet.threshold": repr(float(doc.get("threshold", DEFAULT_THRESHOLD))),
        "nsnet.precision": precision,
        "nsnet.model_card": compact_json(model_card(doc, source_sha256=source_sha256)),
    }
    rank = (doc.get("projector") or {}).get("rank")
    if rank is not None:
        out["nsnet.projector_rank"] = str(int(rank))
    if source_sha256 is not None:
        out["nsnet.source_sha256"] = source_sha256
    if doc.get("verdict_band") is not None:
        out["nsnet.verdict_band"] = compact_json(VerdictBand.from_dict(doc["verdict_band"]).to_dict())
    return out


def _check_format(fmt: Any, source: str, key: str = "nsnet.format") -> str:
    m = re.fullmatch(r"([a-z-]+)/(\d+)(?:\.\d+)?", fmt) if isinstance(fmt, str) else None
    if m is None or m.group(1) not in _FORMAT_MAJOR:
        raise field_error(source, key, f"unknown format {fmt!r}; expected one of "
                    f"{', '.join(f'{k}/{v}' for k, v in _FORMAT_MAJOR.items())}")
    if int(m.group(2)) != _FORMAT_MAJOR[m.group(1)]:
        raise field_error(source, key, f"{fmt!r} is major version {m.group(2)}; this nsnet_sdk reads "
                    f"{m.group(1)}/{_FORMAT_MAJOR[m.group(1)]} (upgrade nsnet-sdk or re-export)")
    return fmt


@dataclass(frozen=True)
class ModelMeta:
    """The artifact metadata the runtime relies on, every field validated."""

    preprocess: PatchConfig
    threshold: float
    format: str = ""
    backbone: str = ""
    precision: str = ""
    projector_rank: int | None = None
    source_sha256: str | None = None
    model_card: Mapping[str, Any] = field(default_factory=dict)
    band: VerdictBand | None = None
    raw: Mapping[str, str] = field(default_factory=dict)

    def metadata(self, *, precision: str | None = None) -> dict[str, str]:
        """The flat map this was parsed from, with ``nsnet.precision`` replaced when given (a
        derived variant of the same model)."""
        out = dict(self.raw)
        if precision is not None:
            if precision not in PRECISIONS:
                raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
            out["nsnet.precision"] = precision
        return out

    @property
    def engine_batches(self) -> tuple[int, int, int] | None:
        """An engine's optimisation profile (min, opt, max batch) from its sidecar, else None."""
        vals = [self.raw.get(f"nsnet.trt.{n}_batch") for n in ("min", "opt", "max")]
        return None if None in vals else tuple(int(v) for v in vals)  # type: ignore[return-value]

    @property
    def pretrained(self) -> str:
        """Where the backbone's weights came from (``"none"`` = random), ``""`` when unknown."""
        return str(self.model_card.get("pretrained", ""))

    @classmethod
    def parse(cls, raw: Mapping[str, str], source: str) -> "ModelMeta":
        """Validate a flat ``nsnet.*`` map; `ModelLoadError` naming ``source`` and the field."""
        for k, v in raw.items():
            if not isinstance(v, str):
                raise field_error(source, k, f"expected a string value, got {v!r}")
        if "nsnet.preprocess" not in raw:
            raise ModelLoadError(f"{source}: no nsnet.preprocess metadata; not an NS-Net model?",
                                 source=source)
        for k in ("nsnet.format", "nsnet.threshold"):
            if k not in raw:
                raise field_error(source, k, "missing")
        fmt = _check_format(raw["nsnet.format"], source)
        parsed: dict[str, Any] = {}
        for k in _JSON_KEYS:
            if k in raw:
                try:
                    parsed[k] = json.loads(raw[k])
                except ValueError as e:
                    raise field_error(source, k, f"invalid JSON ({e})") from None
        try:
            cfg = PatchConfig.from_dict(parsed["nsnet.preprocess"])
        except (ValueError, TypeError) as e:
            raise field_error(source, "nsnet.preprocess", str(e)) from None
        try:
            threshold = float(raw["nsnet.threshold"])
        except ValueError:
            raise field_error(source, "nsnet.threshold", f"not a number: {raw['nsnet.threshold']!r}") from None
        threshold = probability(threshold, source, "nsnet.threshold")
        ints = {}
        for k in _INT_KEYS:
            if k in raw:
                if not re.fullmatch(r"\d{1,9}", raw[k]):
                    raise field_error(source, k, f"expected a non-negative integer, got {raw[k]!r}")
                ints[k] = int(raw[k])
        for k in _BOOL_KEYS:
            if k in raw and raw[k] not in ("true", "false"):
                raise field_error(source, k, f"expected true or false, got {raw[k]!r}")
        trt = [ints.get(f"nsnet.trt.{n}_batch") for n in ("min", "opt", "max")]
        if any(v is not None for v in trt) and not (None not in trt and 1 <= trt[0] <= trt[1] <= trt[2]):
            raise field_error(source, "nsnet.trt.*_batch", f"need 1 <= min <= opt <= max, got {trt}")
        precision = raw.get("nsnet.precision", "fp32")
        if precision not in PRECISIONS:
            raise field_error(source, "nsnet.precision", f"expected one of {PRECISIONS}, got {precision!r}")
        sha = raw.get("nsnet.source_sha256")
        if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise field_error(source, "nsnet.source_sha256", f"expected 64 hex digits, got {sha!r}")
        card = check_card(parsed.get("nsnet.model_card", {}), source)
        band = parsed.get("nsnet.verdict_band")
        return cls(preprocess=cfg, threshold=threshold, format=fmt,
                   backbone=raw.get("nsnet.backbone", ""), precision=precision,
                   projector_rank=ints.get("nsnet.projector_rank"), source_sha256=sha,
                   model_card=card, band=None if band is None else VerdictBand.from_dict(band, source),
                   raw=dict(raw))

    def check_io(self, source: str, input_shape: tuple, logit_shape: tuple,
                 input_float32: bool = True) -> None:
        """Refuse a graph whose I/O cannot be what the SDK feeds and reads: input ``images``
        float32 [B,3,S,S] with S = the recorded patch × grid and B not fixed, ``logit`` [B].
        A dimension is an int, or a str/None/-1 when symbolic."""
        def fixed(d: Any) -> bool:
            return isinstance(d, int) and d >= 0

        s = self.preprocess.size
        if not input_float32:
            raise field_error(source, "input images", "expected float32 (FP16 models keep float32 I/O)")
        if len(input_shape) != 4:
            raise field_error(source, "input images", f"expected rank 4 [B,3,{s},{s}], got {list(input_shape)}")
        if fixed(input_shape[0]):
            raise field_error(source, "input images", f"batch dimension fixed at {input_shape[0]}; the SDK "
                        "sends batches of any size (export with a dynamic batch axis)")
        for got, want, what in zip(input_shape[1:], (3, s, s), ("channels", "height", "width")):
            if fixed(got) and got != want:
                raise field_error(source, "input images", f"{what} {got} != {want} (nsnet.preprocess "
                            f"patch {self.preprocess.patch} × grid {self.preprocess.grid})")
        if len(logit_shape) != 1 or fixed(logit_shape[0]):
            raise field_error(source, "output logit", f"expected shape [B], got {list(logit_shape)}")


# -- readers -----------------------------------------------------------------------------------

def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of an ONNX file, read from the protobuf without loading weights."""
    return containers.onnx_summary(path)[0]


def read_sidecar(path: str | Path) -> dict[str, str]:
    """An engine's sidecar ``<engine>.json`` as the flat string map (typed JSON values checked:
    batch sizes are integers, flags booleans, JSON fields strings or objects)."""
    side = engine_sidecar(path)
    src = str(side)
    try:
        raw = json.loads(side.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: metadata sidecar {side.name} not found next to the engine",
                             source=str(path)) from None
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{side}: unreadable engine sidecar: {e}", source=str(path)) from e
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{side}: engine sidecar is not a JSON object", source=str(path))
    out: dict[str, str] = {}
    for k, v in raw.items():
        if k in _INT_KEYS and k.startswith("nsnet.trt."):
            if isinstance(v, bool) or not isinstance(v, int):
                raise field_error(src, k, f"expected an integer, got {v!r}")
            out[k] = str(v)
        elif k in _BOOL_KEYS:
            if not isinstance(v, bool):
                raise field_error(src, k, f"expected true or false, got {v!r}")
            out[k] = "true" if v else "false"
        elif k in _JSON_KEYS and isinstance(v, dict):
            out[k] = compact_json(v)
        elif isinstance(v, str):
            out[k] = v
        else:
            raise field_error(src, k, f"expected a string, got {v!r}")
    return out


def sidecar_document(onnx_meta: Mapping[str, str], *, precision: str, min_batch: int,
                     opt_batch: int, max_batch: int, strongly_typed: bool) -> dict[str, Any]:
    """The engine sidecar: the ONNX file's metadata with the engine's precision and profile."""
    side: dict[str, Any] = dict(onnx_meta)
    side.update({"nsnet.precision": precision, "nsnet.trt.min_batch": int(min_batch),
                 "nsnet.trt.opt_batch": int(opt_batch), "nsnet.trt.max_batch": int(max_batch),
                 "nsnet.trt.strongly_typed": bool(strongly_typed)})
    return side


def write_sidecar(engine_path: str | Path, side: Mapping[str, Any]) -> Path:
    """Write ``side`` as the engine's sidecar, atomically."""
    path = engine_sidecar(engine_path)
    atomic_write(path, lambda p: p.write_text(json.dumps(side, indent=2, sort_keys=True) + "\n"))
    return path


def check_run_json(doc: Any, source: str) -> dict[str, Any]:
    """Validate an nsnet.json document (types and ranges of every field the loader uses)."""
    if not isinstance(doc, dict):
        raise ModelLoadError(f"{source}: top level is a JSON {type(doc).__name__}, expected an object",
                             source=source)
    _check_format(doc.get("format"), source, "format")
    if not isinstance(doc.get("backbone"), str) or not doc["backbone"]:
        raise field_error(source, "backbone", f"expected an open_clip model name, got {doc.get('backbone')!r}")
    for k, types in (("pretrained", (str,)), ("quick_gelu", (bool,)), ("projector", (dict,)),
                     ("head", (dict,)), ("training", (dict,)), ("data", (dict,)),
                     ("calibration", (dict,)), ("preprocess", (dict,))):
        if k in doc and not isinstance(doc[k], types):
            raise field_error(source, k, f"expected {types[0].__name__}, got {doc[k]!r}")
    try:
        PatchConfig.from_dict(doc.get("preprocess"))
    except (ValueError, TypeError) as e:
        raise field_error(source, "preprocess", str(e)) from None
    for k in ("hidden", "dim"):
        v = doc.get("head", {}).get(k, 1)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1 << 16:
            raise field_error(source, f"head.{k}", f"expected an integer in [1, 65536], got {v!r}")
    rank = doc.get("projector", {}).get("rank", 0)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise field_error(source, "projector.rank", f"expected an integer >= 0, got {rank!r}")
    if "threshold" not in doc:
        raise field_error(source, "threshold", "missing")
    probability(doc["threshold"], source, "threshold")
    if "model_card" in doc:
        check_card(doc["model_card"], source)
    if doc.get("verdict_band") is not None:
        VerdictBand.from_dict(doc["verdict_band"], source)
    return doc


def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    """A run directory's validated nsnet.json."""
    path = Path(run_dir) / RUN_CONFIG
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelLoadError(f"not a run directory (no {RUN_CONFIG}): {run_dir}", source=str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: unreadable: {e}", source=str(path)) from None
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ModelLoadError(f"{path}: invalid JSON ({e})", source=str(path)) from None
    return check_run_json(doc, str(path))


def write_run_json(run_dir: str | Path, doc: Mapping[str, Any]) -> None:
    """Write nsnet.json atomically, after validating it as a reader would."""
    path = Path(run_dir) / RUN_CONFIG
    check_run_json(dict(doc), str(path))
    atomic_write(path, lambda p: p.write_text(json.dumps(doc, indent=2) + "\n"))


def read_model_meta(path: str | Path, kind: str | None = None) -> ModelMeta:
    """The one reader: validated `ModelMeta` of an ONNX file, an engine (its sidecar) or a run
    directory (nsnet.json, and the safetensors header checked for structure). Cheap: no weights
    are loaded and no runtime library is imported."""
    p = Path(path)
    kind = kind or artifact_kind(p)
    if kind == ONNXRUNTIME:
        raw, io = containers.onnx_summary(p)
        meta = ModelMeta.parse(raw, str(p))
        if "images" not in io or "logit" not in io:
            raise field_error(str(p), "graph", f"expected input 'images' and output 'logit', found {sorted(io)}")
        meta.check_io(str(p), io["images"][1], io["logit"][1], io["images"][0] == containers.ONNX_FLOAT)
        return meta
    if kind == TENSORRT:
        if p.stat().st_size == 0:
            raise ModelLoadError(f"{p}: empty engine file", source=str(p))
        return ModelMeta.parse(read_sidecar(p), str(p))
    run = p if p.is_dir() else p.parent
    doc = read_run_json(run)
    containers.safetensors_header(run / RUN_WEIGHTS)
    return ModelMeta.parse(artifact_metadata(doc, precision="fp32", fmt=doc["format"]), str(run))



def model_sha256(model: str | Path) -> str:
    """sha256 (hex) of the file a model is loaded from: the ``.onnx`` / ``.engine`` file itself,
    or a run directory's weights file; what result rows name their model by."""
    p = Path(model)
    return containers.sha256_file(p / RUN_WEIGHTS if p.is_dir() else p)
