"""atheris harness: arbitrary bytes → `load_image` → patch mosaic, and the same bytes through the
Pillow input path (`Image.open` → `load_image(pil)`).

Any exception other than a typed `NSNetError` is a finding, as is a hang (libFuzzer ``-timeout``)
or memory growth (``-rss_limit_mb``). Run it as described in tests/fuzz/README.md.
"""
from __future__ import annotations

import io
import os
import sys

import atheris

with atheris.instrument_imports(include=["nsnet_sdk"]):
    from nsnet_sdk.errors import NSNetError
    from nsnet_sdk.pipeline import load_image, patch_mosaic

# Small enough that every image the limits accept decodes well inside -rss_limit_mb=1024.
MAX_PIXELS = int(os.environ.get("NSNET_FUZZ_MAX_PIXELS", 4_000_000))


def one_input(data: bytes) -> None:
    if not data:
        return
    via_pil, payload = data[0] & 1, data[1:]
    try:
        if via_pil:
            from PIL import Image

            try:
                img = Image.open(io.BytesIO(payload))
            except Exception:  # Pillow refusing to open is Pillow's business, not ours
                return
            rgb = load_image(img, max_pixels=MAX_PIXELS)
        else:
            rgb = load_image(payload, max_pixels=MAX_PIXELS)
    except NSNetError:
        return
    patch_mosaic(rgb)  # preprocessing must accept every image decoding returns


def main(argv: list[str]) -> None:
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
