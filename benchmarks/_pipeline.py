"""Stage timings of one input pipeline (``cpu`` or ``gpu``) on one model: decode, select, model,
end-to-end against model-only, and the CPU cores one accelerator needs at the measured CPU cost.

Used by ``python -m benchmarks.throughput --pipeline`` and ``benchmarks/gpu_check.py``. The model stage
runs the backend on ready batches (a device tensor for the GPU pipeline, as the Detector hands it).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str, iters: int, warmup: int = 1) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds of this process) of one ``fn()`` call."""
    for _ in range(warmup):
        fn()
    _sync(device)
    wall, cpu = [], []
    for _ in range(iters):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return float(np.median(wall)), float(np.median(cpu))


def measure_pipeline(det, files: list[str], batch_size: int, iters: int = 5) -> dict[str, Any]:
    """One row: per-image seconds of each stage (wall and host CPU) for ``det``'s pipeline at this
    batch size, model-only and end-to-end images/s, and cores needed to feed the model."""
    from nsnet_sdk.pipeline import load_image, preprocess

    batch_files = list(np.resize(np.array(files, dtype=object), batch_size))
    gpu = det._gpu
    device = gpu.device if gpu is not None else "cpu"
    cfg = det.config
    if gpu is None:
        rgbs = [load_image(f) for f in batch_files]
        buf = np.empty((batch_size, 3, cfg.size, cfg.size), np.float32)
        decode = lambda: [load_image(f) for f in batch_files]  # noqa: E731
        select = lambda: [preprocess(x, cfg, out=buf[i]) for i, x in enumerate(rgbs)]  # noqa: E731
        batch = buf
    else:
        from nsnet_sdk.pipeline.nvdecode import decode_batch
        from nsnet_sdk.pipeline.torch_patches import preprocess_batch

        def decode():
            return [t for t, _ in decode_batch(batch_files, [str(f) for f in batch_files], device=device,
                                               decoder=gpu.decoder, max_pixels=gpu.max_pixels)]

        images = decode()
        select = lambda: preprocess_batch(images, cfg)  # noqa: E731
        batch = select()
        if gpu.to_host:
            batch = batch.cpu().numpy()
    dec_w, dec_c = _timed(decode, device, iters)
    sel_w, sel_c = _timed(select, device, iters)
    mod_w, mod_c = _timed(lambda: det.backend.run(batch), device, iters, warmup=2)
    n_e2e = max(2 * batch_size, 8)
    e2e_files = list(np.resize(np.array(files, dtype=object), n_e2e))
    e2e_w, e2e_c = _timed(lambda: det.predict(e2e_files, batch_size=batch_size), device, max(1, iters // 2))
    model_ips = batch_size / mod_w
    host_s_per_image = (dec_c + sel_c) / batch_size  # host CPU the input pipeline spends per image
    return {
        "pipeline": "cpu" if gpu is None else "gpu", "device": device, "backend": det.backend.name,
        "precision": det.backend.metadata.get("nsnet.precision", ""),
        "backend_device": det.backend.device, "batch_size": batch_size,
        "decode_ms_per_image": 1e3 * dec_w / batch_size, "select_ms_per_image": 1e3 * sel_w / batch_size,
        "model_ms_per_image": 1e3 * mod_w / batch_size,
        "host_cpu_ms_per_image": 1e3 * host_s_per_image,
        "model_only_images_per_s": model_ips, "end_to_end_images_per_s": n_e2e / e2e_w,
        "end_to_end_fraction": (n_e2e / e2e_w) / model_ips,
        # One core does 1/host_s images/s, so keeping the model busy needs model_ips · host_s cores.
        "cores_needed": model_ips * host_s_per_image,
    }


def pipeline_stages(pipelines: list[str], model, files: list[str], device: str,
                    batch_sizes: list[int], iters: int) -> list[dict]:
    """``throughput.py --pipeline`` rows: ``model`` per input pipeline and batch size, printed as
    a table on stderr."""
    import sys

    from nsnet_sdk import BackendOptions, Detector, InputOptions

    rows = []
    for pipeline in pipelines:
        with Detector(model, backend=BackendOptions(device=device),
                      options=InputOptions(pipeline=pipeline)) as det:
            rows += [measure_pipeline(det, files, bs, iters) for bs in batch_sizes]
    if rows:
        print(markdown_table(rows), file=sys.stderr)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (skipped rows show their reason)."""
    head = ("| backend | precision | pipeline | batch | decode ms/img | select ms/img | model ms/img | "
            "model-only img/s | end-to-end img/s | e2e / model | cores needed |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for r in rows:
        if r.get("skipped"):
            lines.append(f"| {r['backend']} | {r.get('precision', '')} | {r.get('pipeline', '')} | | "
                         f"skipped: {r['skipped']} | | | | | | |")
            continue
        lines.append(f"| {r['backend']} | {r.get('precision', '')} | {r['pipeline']} | {r['batch_size']} | "
                     f"{r['decode_ms_per_image']:.2f} | {r['select_ms_per_image']:.2f} | "
                     f"{r['model_ms_per_image']:.2f} | {r['model_only_images_per_s']:.1f} | "
                     f"{r['end_to_end_images_per_s']:.1f} | {r['end_to_end_fraction']:.2f} | "
                     f"{r['cores_needed']:.1f} |")
    return head + "\n".join(lines) + "\n"
