"""The throughput benchmark's report: ratios against PyTorch FP32, end-to-end fractions, the
printed table and the plot (the measuring is benchmarks/throughput.py's)."""
from __future__ import annotations

import sys
from pathlib import Path


def ratios(results: list[dict]) -> dict[tuple, float]:
    """images/s of each model row over PyTorch FP32 at the same batch size (same run)."""
    base = {r["batch_size"]: r["images_per_s"] for r in results
            if r["stage"] == "model" and r["backend"] == "torch" and r["precision"] == "fp32"}
    return {(r["backend"], r["precision"], r["batch_size"]): r["images_per_s"] / base[r["batch_size"]]
            for r in results if r["stage"] == "model" and r["batch_size"] in base}


def e2e_fraction(results: list[dict]) -> list[dict]:
    """Best end-to-end rate over the worker counts as a fraction of model-only at that batch size."""
    out = []
    model = {(r["backend"], r["precision"], r["batch_size"]): r["images_per_s"]
             for r in results if r["stage"] == "model"}
    best: dict[tuple, dict] = {}
    for r in results:
        if r["stage"] == "end_to_end":
            k = (r["backend"], r["precision"], r["batch_size"])
            if k not in best or r["images_per_s"] > best[k]["images_per_s"]:
                best[k] = r
    for k, r in best.items():
        if k in model:
            out.append({"backend": k[0], "precision": k[1], "batch_size": k[2], "workers": r["workers"],
                        "end_to_end_images_per_s": r["images_per_s"], "model_images_per_s": model[k],
                        "fraction": r["images_per_s"] / model[k]})
    return out


def print_report(report: dict, out=None) -> None:
    """The human-readable table (and parity, fused operators, end-to-end fractions) on ``out``."""
    out = out or sys.stdout
    rel = ratios(report["results"])
    print(f"\nthreads: {report['threads']} (torch.set_num_threads = ORT intra_op_num_threads), "
          f"device: {report['device']}, inputs: {report['inputs']}", file=out)
    hdr = (f"{'backend':<12} {'prec':<5} {'stage':<11} {'batch':>5} {'work':>4} {'images/s':>10} "
           f"{'p50 ms':>9} {'p99 ms':>9} {'RSS MB':>8} {'vs torch':>8} {'CPU ms/img':>10}")
    print(hdr, file=out)
    print("-" * len(hdr), file=out)
    rows = report["results"] + [dict(r, backend=r["backend"] + "*") for r in report["reference_results"]]
    keys = ("backend", "precision", "stage", "batch_size", "workers")
    cpu = {tuple(c[k] for k in keys) + (c.get("variant"),): c["cpu_ms_per_image"] for c in report.get("cpu_time", [])}
    for r in rows:
        c = cpu.get((r["backend"].rstrip("*"), *(r[k] for k in keys[1:]), r.get("variant")))
        x = rel.get((r["backend"].rstrip("*"), r["precision"], r["batch_size"])) \
            if r["stage"] == "model" and not r["backend"].endswith("*") else None
        if r["backend"].endswith("*") and r["stage"] == "model":
            base = [b for b in report["results"] if b["stage"] == "model" and b["backend"] == "torch"
                    and b["precision"] == "fp32" and b["batch_size"] == r["batch_size"]]
            x = r["images_per_s"] / base[0]["images_per_s"] if base else None
        print(f"{r['backend']:<12} {r['precision']:<5} {r['stage']:<11} {r['batch_size']:>5} {r['workers']:>4} "
              f"{r['images_per_s']:>10.2f} {r['p50_ms']:>9.2f} {r['p99_ms']:>9.2f} {r['peak_rss_mb']:>8.0f} "
              f"{'' if x is None else f'{x:.2f}x':>8} {'' if c is None else f'{c:.1f}':>10}", file=out)
    if report["reference_results"]:
        print("* reference_results: " + "; ".join(sorted({r.get("variant", "") for r in report["reference_results"]})),
              file=out)
    if report["parity"]:
        print("\nparity (same inputs, against " + report["parity"][0]["reference"] + ")", file=out)
        for p in report["parity"]:
            print(f"  {p['config']:<26} max|Δlogit| {p['max_abs_logit']:.3g}  max|Δprob| {p['max_abs_prob']:.3g}  "
                  f"agreement {100 * p['agreement']:.1f}%  corr {p['logit_corr']:.5f}  (n={p['n']})", file=out)
    if report["models"]:
        print("\noperators per graph (fusions fired when Attention/SkipLayerNormalization appear):", file=out)
        for m in report["models"]:
            print(f"  {m['variant']:<10} {m['precision']:<5} {m['ops']}", file=out)
    for f in report["end_to_end_vs_model"]:
        print(f"end-to-end {f['backend']} {f['precision']} batch {f['batch_size']}: {100 * f['fraction']:.0f}% "
              f"of model-only ({f['workers']} worker{'' if f['workers'] == 1 else 's'})", file=out)
    if report.get("input_errors"):
        n = len(report["input_errors"])
        print(f"{n} input{' was' if n == 1 else 's were'} not scored, e.g. {report['input_errors'][0]}", file=out)
    for f in report.get("not_on_gpu", []):
        print(f"NOT ON GPU {f['config']}: planned for CUDA, the backend ran on {f['ran_on']}; "
              "its rows are not CUDA figures", file=out)
    for fail in report["failed"]:
        print(f"FAILED {fail['config']}: {fail['error']}", file=out)
    for s in report["not_run"]:
        print(f"not run: {s}", file=out)


def plot(report: dict, path: Path) -> None:
    """images/s against batch size (model stage), one line per backend × precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list] = {}
    for r in report["results"]:
        if r["stage"] == "model":
            name = f"{r['backend']} {r['precision']}" + (" (optimized)" if (r["backend"], r["precision"]) == ("onnxruntime", "fp32") else "")
            series.setdefault(name, []).append((r["batch_size"], r["images_per_s"]))
    for r in report["reference_results"]:
        if r["stage"] == "model":
            series.setdefault(f"{r['backend']} {r['precision']} ({r.get('variant')})", []).append(
                (r["batch_size"], r["images_per_s"]))
    for name, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("images/s (model only)")
    ax.set_title(f"{report['backbone']}: {report['device']}, threads={report['threads']}, {report['date'][:10]}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- main ---------------------------------------------------------------------------------------
