"""The demo pipeline: synthesise → train → export/verify/detect/evaluate/report → where things are.

Every step runs the project's own command-line tool through its ``main(argv)`` (one Python process,
so torch is imported once), and prints the equivalent shell command first so each step can be
re-run by hand. A step that fails stops the demo with exit status 1 and names the step.

    python -m demo [--out demo_out] [--n 128] [--n-val 32] [--size 256] [--held-out GEN] [...]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from nsnet_sdk.constants import RUN_CONFIG
from training.cli_common import DEFAULT_EPOCHS
from training.synthetic import GENERATORS  # the demo's data comes from training's own generator

NOTICE = ("NOTE: this model is a DEMONSTRATION of the pipeline: a randomly initialised tiny CLIP "
          "('nsnet-tiny') trained for a few seconds on CPU on procedurally generated images. It is NOT a "
          "detector of real AI-generated images; for that, train ViT-L-14 with the 'openai' weights "
          "on a real benchmark (commands at the end).")
# Written into --out so a re-run may clear its own earlier output, and never a folder it did not make.
MARKER = ".nsnet-demo"
# What the demo writes under --out (cleared on a re-run).
OUTPUTS = ("data", "run", "onnx", "detect", "eval", "report", "demo.json")
# Held out: a process whose trace (missing high frequencies) a random-init tiny backbone cannot pass on,
# while two of the three seen ones (tconv's checkerboard, spectral's peaks) it can: the table then shows
# both a learned seen generator and what an unlearned/unseen one looks like (chance).
DEFAULT_HELD_OUT = "bilinear"


class StepFailed(Exception):
    """A pipeline step failed; ``step`` names it."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"step '{step}' failed: {reason}")
        self.step = step
        self.reason = reason


@dataclass
class Report:
    """What the demo did, written to ``<out>/demo.json`` (also on failure)."""

    out: Path
    config: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    failed: str | None = None

    def write(self) -> None:
        doc = {"notice": NOTICE, "config": self.config, "steps": self.steps, "failed": self.failed,
               "total_seconds": round(sum(s["seconds"] for s in self.steps), 2), **self.results}
        (self.out / "demo.json").write_text(json.dumps(doc, indent=2) + "\n")


def _tool(name: str) -> str:
    """How to invoke ``name`` ('python' or 'nsnet') so a printed command runs as printed: the
    interpreter running the demo (relative to the working folder when inside it, e.g.
    .venv/bin/python after `make demo`) and the nsnet script installed beside it."""
    exe = Path(sys.executable)
    path = exe if name == "python" else exe.with_name(name)
    if not path.exists():
        return name
    try:
        return shlex.quote(str(path.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(path))


def _say(text: str = "") -> None:
    print(text, flush=True)  # flushed: progress bars and tool logs go to stderr in between


def _header(title: str) -> None:
    _say()
    _say("=" * 78)
    _say(title)
    _say("=" * 78)


def _call(step: str, display: str, fn: Callable[[list[str]], Any], argv: list[str],
          stdout_to: Path | None = None) -> None:
    """Run one tool's ``main(argv)``; StepFailed on a non-zero status, SystemExit or exception."""
    _say(f"$ {display} {shlex.join(argv)}")
    try:
        with contextlib.ExitStack() as stack:
            if stdout_to is not None:
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(stdout_to, "w"))))
            rc = fn(argv)
    except SystemExit as e:  # argparse errors and `raise SystemExit("error: ...")` in the tools
        rc = e.code
    except Exception as e:
        traceback.print_exc()
        raise StepFailed(step, f"{type(e).__name__}: {e}") from e
    if rc not in (0, None):
        raise StepFailed(step, rc if isinstance(rc, str) else f"{display} exited with status {rc}")


class Steps:
    """The pipeline; each public method is one timed step."""

    def __init__(self, args: argparse.Namespace, report: Report) -> None:
        self.a = args
        self.r = report
        out = Path(args.out)
        self.data = out / "data"
        self.run = out / "run"
        self.onnx = out / "onnx" / "nsnet.onnx"
        self.parity = out / "onnx" / "parity.json"
        self.export_report = out / "onnx" / "export.json"
        self.jsonl = out / "detect" / f"{args.held_out}.jsonl"
        self.csv = out / "detect" / f"{args.held_out}.csv"
        self.eval = out / "eval"
        self.report = out / "report" / "report.html"
        self.seen = [g for g in GENERATORS if g != args.held_out]

    def timed(self, step: str, fn: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        try:
            fn()
        except StepFailed:
            self.r.steps.append({"name": step, "seconds": round(time.perf_counter() - t0, 2), "ok": False})
            raise
        except Exception as e:  # our own checks on a tool's output
            traceback.print_exc()
            self.r.steps.append({"name": step, "seconds": round(time.perf_counter() - t0, 2), "ok": False})
            raise StepFailed(step, f"{type(e).__name__}: {e}") from e
        dt = time.perf_counter() - t0
        self.r.steps.append({"name": step, "seconds": round(dt, 2), "ok": True})
        _say(f"-- {step}: done in {dt:.1f} s")

    # 1 ------------------------------------------------------------------------------------------
    def synthesise(self) -> None:
        from training import synthetic

        a = self.a
        _say(f"'real' images: smooth random scenes with 1/f texture and sensor noise, {a.size}x{a.size} px.")
        _say("'fake' images: real scenes passed through a generator-like process.")
        _say(f"  seen (train + val): {', '.join(self.seen)}")
        _say(f"  held out (val only, never trained on): {a.held_out}")
        common = ["--size", str(a.size)]
        _call("synthesise", f"{_tool('python')} -m training.synthetic", synthetic.main,
              [str(self.data), "--generators", ",".join(self.seen), "--n-train", str(a.n),
               "--n-val", str(a.n_val), "--seed", str(a.seed), *common])
        # The held-out generator gets no training images at all; another seed keeps its scenes
        # distinct from the seen generators' ones.
        _call("synthesise", f"{_tool('python')} -m training.synthetic", synthetic.main,
              [str(self.data), "--generators", a.held_out, "--n-train", "0", "--n-val", str(a.n_val),
               "--seed", str(a.seed + 1), *common])
        n = {g: sum(1 for p in (self.data / g).rglob("*.png")) for g in GENERATORS}
        _say("images written: " + ", ".join(f"{g} {n[g]}" for g in GENERATORS))
        self.r.results["images"] = n

    # 2 ------------------------------------------------------------------------------------------
    def train(self) -> None:
        from training.train import main as train_main

        a = self.a
        # --overwrite: the printed command, re-run by hand, replaces this run instead of being refused.
        argv = ["--data", str(self.data), "--out", str(self.run), "--overwrite", "--layout", "genimage",
                "--generators", ",".join(self.seen), "--backbone", "nsnet-tiny", "--pretrained", "none",
                "--prompt-bank", a.prompt_bank, "--cache-features", "--epochs", str(a.epochs),
                "--batch-size", str(a.batch_size), *(["--lr", str(a.lr)] if a.lr is not None else []),
                "--seed", str(a.seed), "--quiet", "--log-every", "10"]
        _call("train", f"{_tool('python')} -m training.train", train_main, argv)
        lines = (self.run / "metrics.jsonl").read_text().splitlines()
        last = json.loads(lines[-1])
        meta = json.loads((self.run / RUN_CONFIG).read_text())
        if sorted(meta["data"]["generators"]) != sorted(self.seen):
            raise StepFailed("train", f"checkpoint says it trained on {meta['data']['generators']}, "
                                      f"expected {self.seen}")
        _say(f"trained {last['epoch']} epochs on {meta['data']['n_images']} images of "
             f"{', '.join(meta['data']['generators'])}; projector rank {meta['projector']['rank']}; "
             f"last epoch: train acc {last.get('train_acc', float('nan')):.3f}, "
             f"val acc (seen generators) {last.get('val_acc', float('nan')):.3f}")
        self.r.results["train"] = {"epochs": last["epoch"], "last_epoch": last,
                                   "projector_rank": meta["projector"]["rank"]}

    # 3 ------------------------------------------------------------------------------------------
    def export(self) -> None:
        from export.to_onnx import main as onnx_main

        self.onnx.parent.mkdir(parents=True, exist_ok=True)
        _call("export", f"{_tool('python')} -m export.to_onnx", onnx_main,
              ["--ckpt", str(self.run), "--out", str(self.onnx), "--json", str(self.export_report)],
              stdout_to=Path(os.devnull))  # its one line; the demo says the same below, with the report's path
        rep = json.loads(self.export_report.read_text())
        md = rep["metadata"]
        _say(f"wrote {self.onnx} ({self.onnx.stat().st_size / 1e6:.1f} MB): projector folded into "
             f"visual.proj, precision {md['nsnet.precision']}, threshold {md['nsnet.threshold']}; "
             f"export report {self.export_report}")

    def verify(self) -> None:
        from export.verify import main as verify_main

        _call("verify", f"{_tool('python')} -m export.verify", verify_main,
              ["--ckpt", str(self.run), "--onnx", str(self.onnx), "--images", str(self.data / self.a.held_out),
               "--json", str(self.parity)])

    def detect(self) -> None:
        from nsnet_sdk.cli import main as nsnet_main

        self.jsonl.parent.mkdir(parents=True, exist_ok=True)
        target = self.data / self.a.held_out / "val"
        _call("detect", _tool("nsnet"), nsnet_main,
              ["detect", str(target), "--recursive", "--model", str(self.onnx),
               "--jsonl", str(self.jsonl), "--csv", str(self.csv), "--overwrite"])
        rows = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]
        inputs = sorted(str(p) for p in target.rglob("*.png"))
        if sorted(r["source"] for r in rows) != inputs:
            raise StepFailed("detect", f"{self.jsonl} has {len(rows)} rows for {len(inputs)} inputs")
        scored = [r for r in rows if r["error"] is None]
        correct = sum(bool(r["is_fake"]) == (Path(r["source"]).parent.name == "ai") for r in scored)
        acc = correct / len(scored) if scored else float("nan")
        n_err = len(rows) - len(scored)
        _say(f"{len(rows)} rows ({n_err} error{'' if n_err == 1 else 's'}) in {self.jsonl} and {self.csv}; "
             f"accuracy on the unseen generator '{self.a.held_out}' (ONNX Runtime): {acc:.3f}")
        self.r.results["detect"] = {"rows": len(rows), "errors": len(rows) - len(scored), "acc": acc}

    def evaluate(self) -> None:
        from training.evaluate import main as eval_main

        _call("evaluate", f"{_tool('python')} -m training.evaluate", eval_main,
              ["--ckpt", str(self.run), "--data", str(self.data), "--layout", "genimage", "--split", "val",
               "--out", str(self.eval), "--quiet"],
              stdout_to=Path(os.devnull))  # it prints the table; the demo prints it below, with its title
        metrics = json.loads((self.eval / "metrics.json").read_text())
        per = metrics["per_generator"]
        if set(per) != set(GENERATORS):
            raise StepFailed("evaluate", f"metrics.json has generators {sorted(per)}, expected {list(GENERATORS)}")
        expected = {g: g != self.a.held_out for g in GENERATORS}
        if {g: m.get("seen") for g, m in per.items()} != expected:
            raise StepFailed("evaluate", f"seen marks {[(g, m.get('seen')) for g, m in per.items()]}, "
                                         f"expected only {self.a.held_out} unseen")
        table = (self.eval / "table.md").read_text()
        _say()
        _say(table.rstrip())
        _say()
        _say(f"(held-out '{self.a.held_out}': PyTorch acc {per[self.a.held_out]['acc']:.3f} here, "
             f"ONNX Runtime acc {self.r.results['detect']['acc']:.3f} in the detect step)")
        _say("How to read it: rows near 50 % accuracy are chance. A random-init tiny backbone passes on only\n"
             "strong first-order fingerprints (tconv's checkerboard, spectral's periodic peaks); resampling\n"
             "traces (nearest, bilinear) stay at chance, seen or not. NS-Net's generalisation to unseen\n"
             "generators rests on pretrained CLIP features, which nothing here may download. The table shows\n"
             "the pipeline working end to end, not how well NS-Net detects.")
        self.r.results["evaluate"] = {g: dict(m, seen=g != self.a.held_out) for g, m in per.items()}
        self.r.results["evaluate_overall"] = metrics["overall"]

    def review_report(self) -> None:
        from nsnet_sdk.cli import main as nsnet_main

        self.report.parent.mkdir(parents=True, exist_ok=True)
        _call("report", _tool("nsnet"), nsnet_main,
              ["report", str(self.jsonl), "--out", str(self.report), "--model", str(self.onnx),
               "--top", "12", "--title", f"NS-Net demo: held-out generator '{self.a.held_out}'"])
        size = self.report.stat().st_size
        _say(f"review report of the held-out images: {self.report} ({size / 1e6:.2f} MB, self-contained)")
        self.r.results["report"] = {"path": str(self.report), "bytes": size}


def real_use(out: Path) -> str:
    """Step 4's text: the artifacts of this run and the commands for real use."""
    py, nsnet = _tool("python"), _tool("nsnet")
    return f"""\
Artifacts of this run (under {out}/):
  data/                      synthetic dataset, GenImage layout <generator>/{{train,val}}/{{ai,nature}}
  run/                       checkpoint: nsnet.safetensors + nsnet.json, metrics.jsonl per epoch
  onnx/nsnet.onnx            ONNX FP32 model (projector folded in); onnx/export.json, onnx/parity.json
  detect/*.jsonl, *.csv      `nsnet detect` rows for the held-out generator's images
  eval/                      metrics.json, table.md (generators marked seen/unseen), roc.png, pr.png
  report/report.html         review report of the held-out images (`nsnet report`; open in a browser)
  demo.json                  this run's steps, timings and figures

Real use (a GPU, the OpenAI CLIP weights via open_clip, real benchmark folders; run from this folder):
  # offline machine: on a connected one run `{py} -m training.weights fetch --model ViT-L-14 --tag openai
  # --out weights/`, copy weights/ over and pass --pretrained weights/<the file it wrote> below
  # train on GenImage (<generator>/{{train,val}}/{{ai,nature}}), e.g. its SD v1.4 subset
  {py} -m training.train --data /data/GenImage/stable_diffusion_v_1_4 --out runs/vitl14 \\
      --backbone ViT-L-14 --pretrained openai --cache-features
  # per-generator tables: GenImage (val splits), AIGIBench and UniversalFakeDetect
  # (<generator>/[<class>/]{{0_real,1_fake}}), with the robustness tables
  {py} -m training.evaluate --ckpt runs/vitl14 --data /data/GenImage --out reports/genimage
  {py} -m training.evaluate --ckpt runs/vitl14 --data /data/AIGIBench --out reports/aigibench --robustness
  {py} -m training.evaluate --ckpt runs/vitl14 --data /data/UniversalFakeDetect/test --layout ufd \\
      --out reports/ufd --robustness
  # threshold for a 1 % false-positive rate on your own real photos, stored in the checkpoint
  {py} -m training.evaluate --ckpt runs/vitl14 --data /data/GenImage --out reports/calibrated \\
      --calibrate-fpr 0.01 --calibration /data/my_real_photos --write-threshold
  # deploy: ONNX (FP32 and FP16), parity against PyTorch, TensorRT FP16 engine
  {py} -m export.to_onnx --ckpt runs/vitl14 --out nsnet.onnx
  {py} -m export.to_onnx --ckpt runs/vitl14 --out nsnet.fp16.onnx --fp16
  {py} -m export.verify --ckpt runs/vitl14 --onnx nsnet.onnx --onnx-fp16 nsnet.fp16.onnx --synthetic 256
  {py} -m export.to_trt --onnx nsnet.onnx --out nsnet.engine --fp16 --opt-batch 32 --max-batch 128 \\
      --timing-cache nsnet.timing_cache
  {nsnet} detect photos/ --recursive --model nsnet.engine --csv results.csv
"""


def _prepare_out(out: Path) -> None:
    """Create ``out``; clear what an earlier demo wrote there; refuse a non-empty folder not ours."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ValueError(f"--out {out} is a non-empty folder the demo did not create; choose another")
    for name in OUTPUTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `python -m demo`; its outputs here are replaced on a re-run\n")


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--n", type=_positive, default=128, help="train images per class per seen generator")
    p.add_argument("--n-val", type=_positive, default=32, help="val images per class per generator")
    p.add_argument("--size", type=int, default=256, help="side of the synthetic images in pixels (>= 64)")
    p.add_argument("--held-out", default=DEFAULT_HELD_OUT, choices=GENERATORS,
                   help="generator left out of training entirely")
    p.add_argument("--epochs", type=_positive, default=DEFAULT_EPOCHS, help="training epochs")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: training.train's default for a frozen backbone)")
    p.add_argument("--prompt-bank", default="default", choices=("default", "coco"),
                   help="semantic corpus for the projector (coco: 80 prompts, faster)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; 0 on success, 1 when a step failed (named on stderr), 2 on usage errors."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.size < 64:
        parser.error("--size must be >= 64")
    if args.batch_size < 2:
        parser.error("--batch-size must be >= 2")
    out = Path(args.out)
    try:
        _prepare_out(out)
    except (ValueError, OSError) as e:
        parser.error(str(e))
    report = Report(out, {k: v for k, v in vars(args).items()})
    steps = Steps(args, report)
    t0 = time.perf_counter()
    _say(NOTICE)
    try:
        _header(f"[1/4] Synthesise data: {len(GENERATORS)} generator-like processes, '{args.held_out}' held out entirely")
        steps.timed("synthesise", steps.synthesise)
        _header(f"[2/4] Train NS-Net (nsnet-tiny, random init, CPU) on the seen generators")
        steps.timed("train", steps.train)
        _header("[3/4] Export ONNX, verify parity, score the held-out images, evaluate per generator, report")
        steps.timed("export", steps.export)
        steps.timed("verify", steps.verify)
        steps.timed("detect", steps.detect)
        steps.timed("evaluate", steps.evaluate)
        steps.timed("report", steps.review_report)
    except StepFailed as e:
        report.failed = e.step
        report.write()
        print(f"demo: {e}", file=sys.stderr)
        return 1
    report.write()
    _header("[4/4] Where everything is, and real use")
    _say(real_use(out))
    _say("timings: " + ", ".join(f"{s['name']} {s['seconds']:.1f} s" for s in report.steps)
         + f"; total {time.perf_counter() - t0:.1f} s")
    _say()
    _say(NOTICE)
    _say(f"review report: {steps.report}")
    return 0
