"""Regenerate docs/report.png: the review report of a demo run's validation images, scored by the
demo model after `nsnet calibrate` on them, plus files that declare their origin (a C2PA-signed
JPEG, a PNG with Stable Diffusion web UI parameters, a JPEG with an IPTC digital source type) and
one broken file; rendered by headless Chromium.

    make demo && python tools/report_screenshot.py demo_out [--out docs/report.png]

Needs chromium, c2pa-python, cryptography and Pillow (the dev extra).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from _provenance_util import (AI_URI, jpeg_with_app1, make_chain, png_chunk, png_with,  # noqa: E402
                              sign_jpeg, xmp_packet)

from nsnet_sdk.cli import main as nsnet  # noqa: E402


def declared_files(src: Path, dst: Path, tmp: Path) -> None:
    """Three copies of ``src`` that declare AI involvement in their metadata, and a broken file."""
    import cv2

    rgb = cv2.imread(str(src))
    jpg = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
    png = cv2.imencode(".png", rgb)[1].tobytes()
    chain, key, _ = make_chain(tmp, "Example Newsroom")
    (dst / "c2pa_signed.jpg").write_bytes(sign_jpeg(jpg, chain, key))
    (dst / "sd_webui.png").write_bytes(png_with(png_chunk(
        b"tEXt", b"parameters\x00a lighthouse at dusk\nSteps: 30, Sampler: DPM++ 2M"), base=png))
    (dst / "iptc_xmp.jpg").write_bytes(jpeg_with_app1(b"http://ns.adobe.com/xap/1.0/\x00" + xmp_packet(AI_URI), base=jpg))
    (dst / "truncated.jpg").write_bytes(jpg[: len(jpg) // 50])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo_out", type=Path, help="folder `make demo` / `python -m demo` wrote")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "report.png")
    ap.add_argument("--keep", type=Path, help="also keep the HTML report here")
    args = ap.parse_args(argv)
    demo = args.demo_out
    model = demo / "onnx" / "nsnet.onnx"
    cfg = json.loads((demo / "demo.json").read_text())["config"]
    gens = sorted(p.name for p in (demo / "data").iterdir() if p.is_dir())
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        ap.error("chromium is not installed")
    with tempfile.TemporaryDirectory(prefix="nsnet-shot-") as tmp:
        tmp = Path(tmp)
        cal = tmp / "nsnet.cal.onnx"
        rc = nsnet(["calibrate", "-m", str(model), "--real", *[str(demo / "data" / g / "val" / "nature") for g in gens],
                    "--fake", *[str(demo / "data" / g / "val" / "ai") for g in gens],
                    "--fpr", "0.1", "--fnr", "0.1", "--out", str(cal)])
        if rc:
            return rc
        uploads = tmp / "uploads"
        for g in gens:
            shutil.copytree(demo / "data" / g / "val", uploads / g)
        (uploads / "declared").mkdir()
        declared_files(next((uploads / cfg["held_out"] / "ai").glob("*.png")), uploads / "declared", tmp)
        results = tmp / "results.jsonl"
        if nsnet(["detect", str(uploads), "-r", "-m", str(cal), "--provenance", "-q", "--json", str(results)]):
            return 1
        html = tmp / "report.html"
        if nsnet(["report", str(results), "--out", str(html), "-m", str(cal), "--top", "10",
                  "--title", "NS-Net review report (demo model, calibrated band)"]):
            return 1
        profile = tmp / "chromium"
        profile.mkdir()
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1280,2000",
                        f"--screenshot={args.out.resolve()}", html.as_uri()],
                       check=True, capture_output=True, timeout=120, env=dict(os.environ, TMPDIR=str(profile)))
        if args.keep:
            shutil.copyfile(html, args.keep)
    from PIL import Image  # 256 colours: a quarter of the size, no visible loss on a flat page

    Image.open(args.out).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
        args.out, optimize=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
