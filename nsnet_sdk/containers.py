"""Byte-level readers of the two model containers, in pure Python and bounded: the ONNX protobuf
(metadata and graph I/O, without touching the weights) and the safetensors header; and the two
file helpers every artifact writer uses (atomic replacement, SHA-256).

Hostile input ends in a `ModelLoadError` naming the file, never in a huge allocation or an
exception from a native parser; `nsnet_sdk.artifact` interprets what these return.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .errors import ModelLoadError

ONNX_FLOAT = 1  # TensorProto.FLOAT
SAFETENSORS_HEADER_CAP = 100 << 20  # the safetensors library's own limit on the JSON header
SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
                      "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` next to ``path`` and rename over it: a process killed mid-save never
    leaves a torn artifact behind."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.chmod(tmp, 0o644)  # safetensors creates files owner-only; artifacts are meant to be shared
    os.replace(tmp, path)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (the ``source_sha256`` of an artifact)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- ONNX (protobuf) ---------------------------------------------------------------------------

def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf, start: int, end: int) -> Iterator[tuple[int, int, Any, int]]:
    """(field number, wire type, value, start of the field) of one message; a length-delimited
    value is its (lo, hi) byte range."""
    pos = start
    while pos < end:
        at = pos
        tag, pos = _varint(buf, pos, end)
        num, wire = tag >> 3, tag & 7
        if num == 0:
            raise ValueError("field number 0")
        if wire == 0:
            val, pos = _varint(buf, pos, end)
        elif wire == 1:
            val, pos = None, pos + 8
        elif wire == 5:
            val, pos = None, pos + 4
        elif wire == 2:
            n, pos = _varint(buf, pos, end)
            val, pos = (pos, pos + n), pos + n
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > end:
            raise ValueError("truncated message")
        yield num, wire, val, at


def _sub(buf, rng: tuple[int, int], want: int) -> list[tuple[int, int]]:
    return [v for n, w, v, _ in _fields(buf, *rng) if n == want and w == 2]


def _text(buf, rng: tuple[int, int]) -> str:
    return bytes(buf[rng[0]:rng[1]]).decode("utf-8")


def _value_info(buf, rng: tuple[int, int]) -> tuple[str, int | None, tuple]:
    """(name, element type, shape) of a ValueInfoProto; a symbolic dimension is its name or None."""
    name = "".join(_text(buf, v) for v in _sub(buf, rng, 1))
    elem, dims = None, []
    for ttype in _sub(buf, rng, 2):               # TypeProto.type
        for tensor in _sub(buf, ttype, 1):        # .tensor_type
            for n, w, v, _ in _fields(buf, *tensor):
                if n == 1 and w == 0:
                    elem = v
            for shape in _sub(buf, tensor, 2):    # .shape
                for dim in _sub(buf, shape, 1):   # .dim
                    d: Any = None
                    for n, w, v, _ in _fields(buf, *dim):
                        d = v if (n == 1 and w == 0) else _text(buf, v) if (n == 2 and w == 2) else d
                    dims.append(d)
    return name, elem, tuple(dims)


def onnx_summary(path: str | Path) -> tuple[dict[str, str], dict[str, tuple[int | None, tuple]]]:
    """(``metadata_props``, {input/output name: (element type, shape)}) of an ONNX file.

    Walks the top-level ModelProto (field 14 = metadata_props, 7 = graph) and the graph's inputs
    (11) and outputs (12), skipping every other field (the weights) by its length.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if f.seek(0, 2) == 0:
                raise ValueError("empty file")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                meta: dict[str, str] = {}
                io: dict[str, tuple[int | None, tuple]] = {}
                graph = None
                for num, wire, val, _ in _fields(buf, 0, len(buf)):
                    if num == 14 and wire == 2:
                        kv = {n: _text(buf, v) for n, w, v, _ in _fields(buf, *val) if w == 2 and n in (1, 2)}
                        meta[kv.get(1, "")] = kv.get(2, "")
                    elif num == 7 and wire == 2:
                        graph = val
                if graph is None:
                    raise ValueError("no graph")
                for n, w, v, _ in _fields(buf, *graph):
                    if n in (11, 12) and w == 2:
                        name, elem, shape = _value_info(buf, v)
                        io.setdefault(name, (elem, shape))
                return meta, io
    except (OSError, ValueError, IndexError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: not a readable ONNX model ({e})", source=str(path)) from e


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len_field(num: int, payload: bytes) -> bytes:
    return _encode_varint(num << 3 | 2) + _encode_varint(len(payload)) + payload


def onnx_rewrite_metadata(src: str | Path, dst: str | Path, metadata: Mapping[str, str]) -> None:
    """Copy ``src`` to ``dst`` with its ``metadata_props`` replaced by ``metadata``: every other
    top-level field is copied byte for byte (protobuf fields may come in any order)."""
    with open(src, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf, \
            open(dst, "wb") as out:
        fields = [(num, at) for num, _, _, at in _fields(buf, 0, len(buf))]
        ends = [at for _, at in fields[1:]] + [len(buf)]
        for (num, at), end in zip(fields, ends):
            if num == 14:
                continue
            for i in range(at, end, 1 << 24):  # 16 MiB slices: a 1 GiB graph is never copied whole
                out.write(buf[i:min(end, i + (1 << 24))])
        for k, v in metadata.items():
            out.write(_len_field(14, _len_field(1, k.encode()) + _len_field(2, v.encode())))


# -- safetensors -------------------------------------------------------------------------------

def safetensors_header(path: str | Path) -> dict[str, Any]:
    """The validated header of a safetensors file: {name: {"dtype", "shape", "data_offsets"}}.

    8-byte little-endian header length (bounded by the file and `SAFETENSORS_HEADER_CAP`), a JSON
    object, known dtypes, non-negative shapes, and byte ranges that match the shapes and tile the
    data area exactly. A pickle renamed ``.safetensors`` fails the first check.
    """
    path = Path(path)
    src = str(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelLoadError(f"{path}: not a safetensors file ({size} bytes, no header)", source=src)
            n = int.from_bytes(head, "little")
            if n > min(size - 8, SAFETENSORS_HEADER_CAP):
                raise ModelLoadError(f"{path}: not a safetensors file (header length {n} exceeds the "
                                     f"file's {size} bytes or the {SAFETENSORS_HEADER_CAP}-byte cap; "
                                     "a pickle or truncated file?)", source=src)
            header = json.loads(f.read(n).decode("utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: weights file not found", source=src) from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: unreadable safetensors header ({e})", source=src) from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path}: safetensors header is not a JSON object", source=src)
    header.pop("__metadata__", None)
    data_len = size - 8 - n
    spans = []
    for name, t in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(t, dict) or set(t) != {"dtype", "shape", "data_offsets"}:
            raise ModelLoadError(f"{where}: malformed header entry {t!r}", source=src)
        if t["dtype"] not in SAFETENSORS_DTYPES:
            raise ModelLoadError(f"{where}: unknown dtype {t['dtype']!r}", source=src)
        shape, offs = t["shape"], t["data_offsets"]
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise ModelLoadError(f"{where}: invalid shape {shape!r}", source=src)
        if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int for o in offs)
                and 0 <= offs[0] <= offs[1] <= data_len):
            raise ModelLoadError(f"{where}: data_offsets {offs!r} outside the {data_len}-byte data "
                                 "area (truncated file?)", source=src)
        count = 1
        for d in shape:
            count *= d
        if offs[1] - offs[0] != count * SAFETENSORS_DTYPES[t["dtype"]]:
            raise ModelLoadError(f"{where}: {offs[1] - offs[0]} bytes for shape {shape} "
                                 f"{t['dtype']}", source=src)
        spans.append(tuple(offs))
    end = 0
    for lo, hi in sorted(spans):
        if lo != end:
            raise ModelLoadError(f"{path}: tensor data overlaps or leaves a gap at byte {lo}", source=src)
        end = hi
    if end != data_len:
        raise ModelLoadError(f"{path}: {data_len - end} bytes after the last tensor", source=src)
    return header


def check_tensors(path: str | Path, header: Mapping[str, Any],
                  expected: Mapping[str, tuple[str, tuple[int, ...]]]) -> None:
    """Refuse a safetensors file whose tensors differ from ``expected`` ({name: (dtype, shape)}):
    missing, extra, wrong shape or wrong dtype."""
    src = str(path)
    missing = sorted(set(expected) - set(header))
    extra = sorted(set(header) - set(expected))
    if missing or extra:
        raise ModelLoadError(f"{path}: tensors do not match the architecture in nsnet.json: "
                             f"missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
                             f"extra {extra[:5]}{'…' if len(extra) > 5 else ''}", source=src)
    for name, (dtype, shape) in expected.items():
        got = header[name]
        if got["dtype"] != dtype or tuple(got["shape"]) != tuple(shape):
            raise ModelLoadError(f"{path}: tensor {name!r} is {got['dtype']} {got['shape']}, "
                                 f"expected {dtype} {list(shape)}", source=src)
