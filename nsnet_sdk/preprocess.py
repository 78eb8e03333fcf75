"""Image loading and NS-Net patch selection: the one preprocessing used by training and every backend.

The network input is a ``grid``×``grid`` mosaic of the image's own ``patch``×``patch`` patches, taken
at native resolution: the ones with the highest and the lowest spectral entropy. The exact
definition (README, "Patch selection") is implemented by :func:`patch_entropies` and
:func:`patch_mosaic`; :func:`preprocess` adds CLIP normalisation.

Speed: the per-patch 2-D DFTs are done as two matrix products over a whole band of patches (a 32-point
DFT as a dense matrix costs more flops than an FFT, but one large GEMM runs near peak while thousands
of tiny FFT calls are dominated by call overhead), inside a small ONNX Runtime graph
(``entropy.onnx``, written by ``tools/make_entropy_graph.py``) that runs on the calling thread.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from .errors import ImageDecodeError, ImageTooLargeError

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT",
    "IMAGE_SUFFIXES",
    "PatchConfig",
    "load_image",
    "image_size",
    "patch_entropies",
    "mosaic_slots",
    "patch_mosaic",
    "normalize",
    "preprocess",
    "preprocess_batch",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_PIXELS = 100_000_000


@dataclass(frozen=True)
class PatchConfig:
    """Everything that defines the network input. Stored with every model artifact."""

    patch: int = 32
    grid: int = 7
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        if self.patch < 2 or self.grid < 1:
            raise ValueError(f"PatchConfig needs patch >= 2 and grid >= 1, got {self}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"PatchConfig needs 3 means and 3 positive stds, got {self}")
        # Normalise list inputs (e.g. from JSON) to tuples so equality and hashing work.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def size(self) -> int:
        """Side of the square network input in pixels (patch × grid)."""
        return self.patch * self.grid

    @property
    def slots(self) -> int:
        return self.grid * self.grid

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PatchConfig":
        unknown = set(d) - {"patch", "grid", "mean", "std"}
        if unknown:
            raise ValueError(f"unknown preprocessing keys {sorted(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        """Canonical text form (sorted keys, compact): stored in model metadata and compared."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str) -> "PatchConfig":
        return cls.from_dict(json.loads(s))


DEFAULT = PatchConfig()

# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

_DECODABLE = "JPEG, PNG, WebP, GIF, BMP, TIFF, PNM, AVIF, JPEG 2000"
# File names treated as images when a folder is scanned (CLI, training data, benchmarks). HEIC is
# listed so such files get an error row ("not a recognised image") rather than being skipped unseen.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff",
                            ".gif", ".jp2", ".pgm", ".ppm", ".pnm", ".heic", ".avif"})


def _name(src: Any, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    return f"<{type(src).__name__}>"


def image_size(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) read from an encoded image's header, or None if unrecognised.

    Only the header is parsed, so a decompression bomb can be refused before any pixel buffer is
    allocated. Formats without a parser here are not decoded at all (see :func:`load_image`).
    """
    try:
        return _sniff(memoryview(data))
    except (struct.error, IndexError, ValueError):
        return None


def _sniff(b: memoryview) -> tuple[str, int, int] | None:
    head = bytes(b[:32])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        w, h = struct.unpack(">II", b[16:24])
        return "png", w, h
    if head.startswith(b"\xff\xd8"):
        return _sniff_jpeg(b)
    if head[:6] in (b"GIF87a", b"GIF89a"):
        w, h = struct.unpack("<HH", b[6:10])
        return "gif", w, h
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _sniff_webp(b)
    if head[:2] == b"BM":
        w, h = struct.unpack("<ii", b[18:26])
        return "bmp", abs(w), abs(h)
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return _sniff_tiff(b)
    if head[:1] == b"P" and head[1:2] in b"123456":
        return _sniff_pnm(bytes(b[:1024]))
    if head[4:8] == b"ftyp" and (b"avif" in head[8:32] or b"avis" in head[8:32]):
        return _sniff_avif(bytes(b[: 1 << 20]))
    if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n"):
        i = bytes(b[: 1 << 16]).find(b"ihdr")
        if i < 0:
            return None
        h, w = struct.unpack(">II", b[i + 4 : i + 12])
        return "jpeg2000", w, h
    if head[:4] == b"\xff\x4f\xff\x51":  # raw JPEG 2000 codestream: SIZ marker first
        xsiz, ysiz, xo, yo = struct.unpack(">IIII", b[8:24])
        return "jpeg2000", xsiz - xo, ysiz - yo
    return None


def _sniff_avif(head: bytes) -> tuple[str, int, int] | None:
    # Every image item carries an 'ispe' (image spatial extents) property in the leading meta box;
    # the largest one (a grid's full canvas, not its tiles or thumbnail) is what the decoder allocates.
    sizes, i = [], head.find(b"ispe")
    while i >= 0:
        sizes.append(struct.unpack(">II", head[i + 8 : i + 16]))
        i = head.find(b"ispe", i + 4)
    if not sizes:
        return None
    w, h = max(sizes, key=lambda wh: wh[0] * wh[1])
    return "avif", w, h


def _sniff_jpeg(b: memoryview) -> tuple[str, int, int] | None:
    i, n = 2, len(b)
    while i + 4 <= n:
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):  # standalone markers carry no length
            i += 2
            continue
        (length,) = struct.unpack(">H", b[i + 2 : i + 4])
        # SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", b[i + 5 : i + 9])
            return "jpeg", w, h
        if marker == 0xDA:  # start of scan before any frame header
            return None
        i += 2 + length
    return None


def _sniff_webp(b: memoryview) -> tuple[str, int, int] | None:
    chunk = bytes(b[12:16])
    if chunk == b"VP8X":
        w = int.from_bytes(b[24:27], "little") + 1
        h = int.from_bytes(b[27:30], "little") + 1
        return "webp", w, h
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", b[26:30])
        return "webp", w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(b[21:25], "little")
        return "webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _sniff_tiff(b: memoryview) -> tuple[str, int, int] | None:
    e = "<" if bytes(b[:2]) == b"II" else ">"
    (ifd,) = struct.unpack(e + "I", b[4:8])
    (count,) = struct.unpack(e + "H", b[ifd : ifd + 2])
    dims: dict[int, int] = {}
    for k in range(count):
        tag, typ, _, value = struct.unpack(e + "HHI4s", b[ifd + 2 + 12 * k : ifd + 14 + 12 * k])
        if tag in (256, 257):
            dims[tag] = struct.unpack(e + ("H" if typ == 3 else "I"), value[: 2 if typ == 3 else 4])[0]
    if 256 in dims and 257 in dims:
        return "tiff", dims[256], dims[257]
    return None


def _sniff_pnm(head: bytes) -> tuple[str, int, int] | None:
    tokens: list[bytes] = []
    for line in head[2:].splitlines():
        tokens += line.split(b"#", 1)[0].split()
        if len(tokens) >= 2:
            return "pnm", int(tokens[0]), int(tokens[1])
    return None


def _to_uint8_rgb(arr: np.ndarray, src: str, bgr: bool) -> np.ndarray:
    """Any decoded/array image → contiguous RGB uint8 HxWx3."""
    if arr.dtype == np.uint16:
        # Rounded 16→8-bit scale: 65535 → 255, 257·k → k.
        arr = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif arr.dtype in (np.float32, np.float64):
        arr = np.clip(np.nan_to_num(arr) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ImageDecodeError(f"{src}: unsupported pixel type {arr.dtype} (need uint8 or uint16)", src)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ImageDecodeError(f"{src}: unsupported array shape {arr.shape} (need HxW, HxWx3 or HxWx4)", src)
    if bgr:
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(arr[:, :, :3])


def _check_pixels(w: int, h: int, max_pixels: int, src: str) -> None:
    if w * h > max_pixels:
        raise ImageTooLargeError(
            f"{src}: image is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
            "(raise max_pixels to accept it)",
            src,
        )
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"{src}: image header declares an empty size {w}x{h}", src)


def _decode_bytes(data: bytes, max_pixels: int, src: str) -> np.ndarray:
    if len(data) == 0:
        raise ImageDecodeError(f"{src}: empty input (0 bytes)", src)
    info = image_size(data)
    if info is None:
        raise ImageDecodeError(f"{src}: not a recognised image (supported: {_DECODABLE})", src)
    fmt, w, h = info
    _check_pixels(w, h, max_pixels, src)
    # IMREAD_COLOR applies EXIF orientation, expands gray, drops alpha and converts CMYK;
    # ANYDEPTH keeps 16-bit samples so they are scaled, not truncated.
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error as e:
        raise ImageDecodeError(f"{src}: cannot decode {fmt}: {str(e).strip().splitlines()[-1]}", src) from None
    if arr is None or arr.size == 0:
        raise ImageDecodeError(f"{src}: cannot decode {fmt} data (truncated or corrupt)", src)
    _check_pixels(arr.shape[1], arr.shape[0], max_pixels, src)
    return _to_uint8_rgb(arr, src, bgr=True)


def _from_pil(img: Any, max_pixels: int, src: str) -> np.ndarray:
    from PIL import ImageOps  # only reached when the caller already has Pillow

    _check_pixels(img.width, img.height, max_pixels, src)
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        img = ImageOps.exif_transpose(img)
        if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            arr = np.asarray(img)
            if arr.dtype != np.uint16:  # mode "I" is int32 holding 16-bit data
                arr = np.clip(arr, 0, 65535).astype(np.uint16)
            return _to_uint8_rgb(arr, src, bgr=False)
        return _to_uint8_rgb(np.asarray(img.convert("RGB")), src, bgr=False)
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageDecodeError(f"{src}: cannot decode PIL image: {e}", src) from None


def load_image(src: Any, max_pixels: int = MAX_PIXELS, *, name: str | None = None) -> np.ndarray:
    """Load any supported input as an RGB uint8 H×W×3 array.

    ``src`` may be a path (str / os.PathLike), encoded bytes, a numpy array (H×W, H×W×3 RGB or
    H×W×4 RGBA; uint8 or uint16) or a PIL image. EXIF orientation is applied, grayscale expanded,
    alpha dropped, 16-bit scaled to 8-bit, CMYK converted; for animated or multi-page files the
    first frame is used. Encoded images larger than ``max_pixels`` are refused from their header,
    before decoding. ``name`` labels the input in error messages.

    Raises:
        ImageDecodeError: the input cannot be read or is not a supported image.
        ImageTooLargeError: the image has more than ``max_pixels`` pixels.
    """
    label = _name(src, name)
    if isinstance(src, np.ndarray):
        if src.ndim >= 2:
            _check_pixels(src.shape[1], src.shape[0], max_pixels, label)
        return _to_uint8_rgb(src, label, bgr=False)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return _decode_bytes(bytes(src), max_pixels, label)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        try:
            # A compressed file can't exceed raw 16-bit RGB at the pixel limit by much; refusing
            # larger files keeps a huge non-image from being read into memory.
            if path.stat().st_size > 6 * max_pixels + (64 << 20):
                raise ImageTooLargeError(f"{label}: file is {path.stat().st_size:,} bytes, too large", label)
            data = path.read_bytes()
        except IsADirectoryError:
            raise ImageDecodeError(f"{label}: is a directory, not an image file", label) from None
        except FileNotFoundError:
            raise ImageDecodeError(f"{label}: no such file", label) from None
        except OSError as e:
            raise ImageDecodeError(f"{label}: cannot read: {e.strerror or e}", label) from None
        except ValueError as e:  # a NUL byte or an unencodable name: the OS never saw the path
            raise ImageDecodeError(f"{label}: cannot read: {e}", label) from e
        return _decode_bytes(data, max_pixels, label)
    if type(src).__module__.startswith("PIL.") and hasattr(src, "convert"):
        return _from_pil(src, max_pixels, label)
    raise ImageDecodeError(f"{label}: unsupported input type {type(src).__name__}", label)


# --------------------------------------------------------------------------------------------------
# Patch selection
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _dft_mats(p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real matrices for p×p real 2-D DFTs done as two matrix products, and half-spectrum weights.

    rows:  (2k, p) = [cos; −sin], k = p//2+1: real DFT down each patch column (u = 0..p/2 only; the
           other half of the spectrum is the Hermitian mirror, counted twice through ``weights``).
    cross: (2p, 2p) with [Xr | Xi] @ cross = [Re | Im] of the complex DFT along each patch row.
    """
    k = p // 2 + 1
    n = np.arange(p)
    ang_r = 2 * np.pi * np.outer(np.arange(k), n) / p
    rows = np.concatenate([np.cos(ang_r), -np.sin(ang_r)], 0).astype(np.float32)
    ang = 2 * np.pi * np.outer(n, n) / p
    c, s = np.cos(ang), np.sin(ang)
    cross = np.block([[c, -s], [s, c]]).astype(np.float32)  # (Xr + iXi)(C − iS)
    weights = np.full(k, 2.0)
    weights[0] = 1.0
    if p % 2 == 0:
        weights[-1] = 1.0  # the Nyquist row is its own mirror
    return rows, cross, weights


def _pad(rgb: np.ndarray, p: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    if h >= p and w >= p:
        return rgb
    # BORDER_REFLECT (= numpy "symmetric") repeats the reflection when the pad exceeds the image.
    return cv2.copyMakeBorder(rgb, 0, max(0, p - h), 0, max(0, p - w), cv2.BORDER_REFLECT)


def _check_rgb(rgb: np.ndarray) -> None:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise TypeError(
            f"expected an RGB uint8 HxWx3 array, got {getattr(rgb, 'dtype', type(rgb))} "
            f"{getattr(rgb, 'shape', '')}; use load_image() for other inputs"
        )
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"empty image of shape {rgb.shape}")


def _entropies(padded: np.ndarray, p: int) -> np.ndarray:
    nr, nc = padded.shape[0] // p, padded.shape[1] // p
    # Bands of ~512 patches bound the kernel's intermediates (large images otherwise go memory-bound)
    # while keeping the per-call overhead small.
    band = max(1, 512 // nc)
    return np.concatenate([_band_entropies(padded[r * p : (r + band) * p, : nc * p], p) for r in range(0, nr, band)])


_SESSIONS: dict[int, Any] = {}


def _entropy_session() -> Any:
    """The patch-DFT matrix products (nsnet_sdk/entropy.onnx) in ONNX Runtime, one session per process.

    Why ONNX Runtime and not numpy's matmul: numpy's OpenBLAS starts its own threads for these
    GEMMs, and called from several decode workers at once (under any other load) that runs ~20×
    slower than single-threaded. An ORT session with one intra-op thread runs the same GEMMs at
    full single-core speed on the calling thread, and Run() is thread-safe.
    """
    pid = os.getpid()  # a session must not be shared across fork()
    if pid not in _SESSIONS:
        import onnxruntime as ort

        from .backends.ort_options import session_options_for

        so = session_options_for("fp32", "CPUExecutionProvider", intra_op_threads=1, inter_op_threads=1)
        path = Path(__file__).with_name("entropy.onnx")
        _SESSIONS[pid] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return _SESSIONS[pid]


def _band_entropies(rgb: np.ndarray, p: int) -> np.ndarray:
    nr, nc = rgb.shape[0] // p, rgb.shape[1] // p
    w = nc * p
    rows, cross, weights = _dft_mats(p)
    k = p // 2 + 1
    # R+G+B instead of their mean: the entropy of A/ΣA does not change when A is scaled.
    g = cv2.transform(np.ascontiguousarray(rgb[: nr * p]).astype(np.float32), np.ones((1, 3), np.float32))
    g = g.reshape(nr, p, w)
    dc = g.sum(1).reshape(nr, nc, p).sum(-1)  # patch sums: exact, integers below 2**24
    # Removing each patch's mean makes a flat patch exactly zero, so its non-DC spectrum is exactly
    # zero (as with an FFT) instead of rounding noise that would break the ties the definition needs.
    g -= np.repeat(dc * np.float32(1.0 / (p * p)), p, axis=1)[:, None, :]
    (y,) = _entropy_session().run(None, {
        "g": g, "rows": rows, "cross": cross,
        "x_shape": np.array([nr, 2, k, nc, p], np.int64), "row_shape": np.array([nr * k * nc, 2 * p], np.int64),
    })  # y: rows (r, u, c) of [Re | Im], the DFT of every patch at frequencies u = 0..p/2, all v
    a = cv2.magnitude(y[:, :p], y[:, p:])
    a.reshape(nr, k, nc, p)[:, 0, :, 0] = 0.0  # DC (rounding noise after mean removal): exact below
    alog = cv2.multiply(a, cv2.log(cv2.max(a, 1e-30)))
    s_ac = np.einsum("rkn,k->rn", cv2.reduce(a, 1, cv2.REDUCE_SUM).reshape(nr, k, nc).astype(np.float64), weights)
    l_ac = np.einsum("rkn,k->rn", cv2.reduce(alog, 1, cv2.REDUCE_SUM).reshape(nr, k, nc).astype(np.float64), weights)
    dc = np.abs(dc.astype(np.float64))
    s = dc + s_ac
    with np.errstate(divide="ignore", invalid="ignore"):
        # −Σ q log q with q = A/S  ==  log S − (Σ A log A)/S; only DC non-zero → exactly 0.
        ent = np.log(s) - (np.where(dc > 0, dc * np.log(dc), 0.0) + l_ac) / s
    return np.where(s_ac > 0, ent, 0.0)


def patch_entropies(rgb: np.ndarray, cfg: PatchConfig = DEFAULT) -> np.ndarray:
    """Spectral entropy of every grid patch: float64 array of shape (H//patch, W//patch) after padding.

    A patch's score is the Shannon entropy of its normalised 2-D DFT magnitude (DC included) of the
    mean of R, G and B; an all-zero spectrum scores 0.
    """
    _check_rgb(rgb)
    return _entropies(_pad(rgb, cfg.patch), cfg.patch)


def mosaic_slots(entropies: np.ndarray, slots: int) -> np.ndarray:
    """Raster indices of the patches placed in the mosaic slots, in slot order.

    Patches are ordered by entropy descending, ties by raster index ascending. With at least
    ``slots`` patches: the top ``ceil(slots/2)`` in that order, then the last ``floor(slots/2)`` of
    that order reversed (lowest entropy first). With fewer: that order repeated cyclically.
    """
    e = np.asarray(entropies, dtype=np.float64).ravel()
    order = np.argsort(-e, kind="stable")
    if e.size >= slots:
        high = (slots + 1) // 2
        return np.concatenate([order[:high], order[::-1][: slots - high]])
    return np.resize(order, slots)


def patch_mosaic(
    rgb: np.ndarray, cfg: PatchConfig = DEFAULT, rng: np.random.Generator | None = None
) -> np.ndarray:
    """The uint8 (size, size, 3) mosaic of selected patches, copied pixel for pixel.

    Slot i sits at mosaic row ``i // grid``, column ``i % grid``. Given ``rng``, the slots are
    randomly permuted (a training augmentation; inference passes no rng and is deterministic).
    """
    _check_rgb(rgb)
    p, gsz = cfg.patch, cfg.grid
    padded = _pad(rgb, p)
    ent = _entropies(padded, p)
    nr, nc = ent.shape
    idx = mosaic_slots(ent, cfg.slots)
    if rng is not None:
        idx = rng.permutation(idx)
    tiles = padded[: nr * p, : nc * p].reshape(nr, p, nc, p, 3)[idx // nc, :, idx % nc]  # (slots, p, p, 3)
    return np.ascontiguousarray(tiles.reshape(gsz, gsz, p, p, 3).transpose(0, 2, 1, 3, 4)).reshape(
        cfg.size, cfg.size, 3
    )


@lru_cache(maxsize=8)
def _affine(cfg: PatchConfig) -> tuple[np.ndarray, np.ndarray]:
    std = np.asarray(cfg.std, np.float64)
    return (1.0 / (255.0 * std)).astype(np.float32), (-np.asarray(cfg.mean) / std).astype(np.float32)


def normalize(mosaic: np.ndarray, cfg: PatchConfig = DEFAULT, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 HWC mosaic → float32 CHW ``(x/255 − mean)/std``, written into ``out`` when given."""
    if out is None:
        out = np.empty((3, *mosaic.shape[:2]), np.float32)
    scale, shift = _affine(cfg)
    for c, plane in enumerate(cv2.split(mosaic)):
        np.multiply(plane, scale[c], out=out[c], dtype=np.float32)
        out[c] += shift[c]
    return out


def preprocess(rgb: np.ndarray, cfg: PatchConfig = DEFAULT) -> np.ndarray:
    """RGB uint8 H×W×3 → the network input: float32 (3, size, size)."""
    return normalize(patch_mosaic(rgb, cfg), cfg)


def preprocess_batch(
    items: Sequence[Any] | Iterable[Any], cfg: PatchConfig = DEFAULT, out: np.ndarray | None = None
) -> np.ndarray:
    """Preprocess several images into one float32 (B, 3, size, size) array.

    Items are RGB uint8 arrays or anything :func:`load_image` accepts. When ``out`` is given it must
    have room for every item; the filled leading slice ``out[:B]`` is returned.
    """
    items = list(items)
    if out is None:
        out = np.empty((len(items), 3, cfg.size, cfg.size), np.float32)
    elif out.shape[0] < len(items) or out.shape[1:] != (3, cfg.size, cfg.size) or out.dtype != np.float32:
        raise ValueError(f"out has shape {out.shape} {out.dtype}, need ({len(items)}, 3, {cfg.size}, {cfg.size}) float32")
    for i, item in enumerate(items):
        rgb = item if _is_rgb8(item) else load_image(item)
        normalize(patch_mosaic(rgb, cfg), cfg, out=out[i])
    return out[: len(items)]


def _is_rgb8(x: Any) -> bool:
    return isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 3 and x.shape[2] == 3
