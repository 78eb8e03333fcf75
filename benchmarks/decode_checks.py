"""What the structural checks in front of the decoders cost on ordinary files, against the decode
itself (``cv2.imdecode``) in the same run.

    python benchmarks/decode_checks.py [--repeat 15]

Rows: JPEG (baseline, progressive) and PNG (a noisy photo-like image whose IDAT stream is inflated
once by the check, and a flat one whose is not), each with the best-of-``repeat`` time of
`read_header` (+ its deferred check) and of ``cv2.imdecode``, and their ratio.
"""
from __future__ import annotations

import argparse
import io
import time
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from nsnet_sdk.cpuinfo import cpu_model
from nsnet_sdk.pipeline.sniff import read_header

cv2.setNumThreads(1)


def _best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:768, 0:1024]
    photo = np.clip(np.stack([xx // 4, yy // 3, (xx + yy) // 7], -1) + rng.normal(0, 12, (768, 1024, 3)),
                    0, 255).astype(np.uint8)
    flat = np.full((768, 1024, 3), 90, np.uint8)
    flat[::7] = 20

    def pil(fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(photo).save(buf, fmt, **kw)
        return buf.getvalue()

    return {"JPEG 1024x768 q90": pil("JPEG", quality=90),
            "progressive JPEG 1024x768 q90": pil("JPEG", quality=90, progressive=True),
            "PNG 1024x768 photo-like": cv2.imencode(".png", photo)[1].tobytes(),
            "PNG 1024x768 flat": cv2.imencode(".png", flat)[1].tobytes()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    print(f"{cpu_model()}, OpenCV {cv2.__version__}, one thread")
    for name, data in _files().items():
        buf = np.frombuffer(data, np.uint8)

        def check() -> None:
            hdr = read_header(data)
            if hdr.verify:
                hdr.verify()

        c = _best(check, args.repeat)
        d = _best(lambda: cv2.imdecode(buf, cv2.IMREAD_COLOR), args.repeat)
        print(f"{name:32s} {len(data) // 1024:6d} KB  check {c * 1e3:7.2f} ms  decode {d * 1e3:7.2f} ms"
              f"  check/decode {c / d:6.1%}")


if __name__ == "__main__":
    main()
