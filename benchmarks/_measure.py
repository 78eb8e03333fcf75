"""Child process of benchmarks/throughput.py: measures ONE configuration and writes its rows.

    python benchmarks/_measure.py SPEC.json

Each (backend, precision) runs in its own process so that its peak RSS is its own (the kernel's
VmHWM, reset before every measured stage through /proc/self/clear_refs) and so that a native crash
in a runtime is reported by the parent as a failed configuration instead of ending the run.

SPEC keys: ``kind`` ("model" | "preprocess"), ``label`` (backend name written in the rows),
``precision``, ``model`` (artifact path for `nsnet_sdk.Detector`), ``device`` ("cpu" | "cuda"),
``providers`` (ONNX Runtime providers or null), ``threads``, ``batch_sizes``, ``workers``,
``e2e_batch_size``, ``files``, ``iters``, ``warmup``, ``parity_inputs`` (.npy or null),
``autocast_fp16``, ``cuda_graphs``, ``out`` (JSON written here; logits next to it as .npy).
"""
from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROW_KEYS = ("backend", "precision", "stage", "batch_size", "workers", "images_per_s", "p50_ms",
            "p99_ms", "peak_rss_mb")


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM (Linux ≥ 4.0: writing 5 to clear_refs); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size since the last reset: VmHWM, else ru_maxrss (whole-process peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0


def row(spec: dict, stage: str, batch_size: int, workers: int, images: int, seconds: float,
        latencies_s: list[float]) -> dict[str, Any]:
    """One result row (exactly `ROW_KEYS`); latencies are per batch (per image for preprocess)."""
    lat = np.asarray(latencies_s, dtype=np.float64) * 1e3
    return {
        "backend": spec["label"], "precision": spec["precision"], "stage": stage,
        "batch_size": int(batch_size), "workers": int(workers),
        "images_per_s": images / seconds if seconds > 0 else float("nan"),
        "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def device_used_mb() -> float | None:
    """Memory in use on the current CUDA device (MiB), from the CUDA runtime's cudaMemGetInfo;
    None without cuda-python or a device. Through the runtime, not nvidia-smi: nvidia-smi's
    per-process list does not show processes of another PID namespace (containers)."""
    try:
        from nsnet_sdk.backends.tensorrt import import_cudart

        cudart = import_cudart()
    except ImportError:
        return None
    err, free, total = cudart.cudaMemGetInfo()
    return (int(total) - int(free)) / 2**20 if int(err) == 0 else None


class _Cuda:
    """CUDA bookkeeping of one child: synchronisation and peak memory of the PyTorch rows (torch's
    allocator), and for every runtime the device memory it holds beyond what was in use before the
    model was loaded (cudaMemGetInfo: ORT's arena and TensorRT's buffers are not visible to torch;
    arenas do not shrink, so the figure after the timed calls is their peak). No-ops on CPU.

    torch is imported only for the PyTorch backend: creating a torch CUDA context inside an ORT or
    TensorRT child would add its own memory to that child's figure.
    """

    def __init__(self, device: str, use_torch: bool) -> None:
        self.on = device == "cuda"
        self.torch = None
        if self.on and use_torch:
            import torch
            if torch.cuda.is_available():
                self.torch = torch
        self.baseline_mb = device_used_mb() if self.on else None  # creates the CUDA context first

    def sync(self) -> None:
        if self.torch is not None:
            self.torch.cuda.synchronize()

    def reset(self) -> None:
        if self.torch is not None:
            self.torch.cuda.reset_peak_memory_stats()

    def process_used_mb(self) -> float | None:
        """Device memory taken since this child started (MiB, CUDA context excluded); None off CUDA."""
        if not self.on or self.baseline_mb is None:
            return None
        used = device_used_mb()
        return None if used is None else round(used - self.baseline_mb, 1)

    def torch_peak_mb(self) -> float | None:
        return None if self.torch is None else self.torch.cuda.max_memory_allocated() / 2**20


def time_calls(fn: Callable[[], object], iters: int, warmup: int, cuda: _Cuda) -> tuple[list[float], float]:
    """(wall seconds per call, process CPU seconds over all timed calls)."""
    for _ in range(warmup):
        fn()
    cuda.sync()
    lat = []
    cpu0 = time.process_time()
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        cuda.sync()
        lat.append(time.perf_counter() - t)
    return lat, time.process_time() - cpu0


def cpu_entry(r: dict, cpu_s: float, images: int) -> dict[str, Any]:
    """CPU seconds of the whole process (all threads) per image for row ``r``. On a shared machine
    the wall-clock rate moves with other people's load; the CPU cost of an image much less."""
    keys = ("backend", "precision", "stage", "batch_size", "workers")
    return dict({k: r[k] for k in keys}, cpu_ms_per_image=1e3 * cpu_s / max(1, images))


def _autocast_fp16(backend) -> None:
    """Make the PyTorch backend run under FP16 autocast on CUDA (the PyTorch FP16 baseline)."""
    import torch

    run = backend.run

    def run_fp16(images: np.ndarray) -> np.ndarray:
        with torch.autocast("cuda", dtype=torch.float16):
            return run(images)

    backend.run = run_fp16


def _cuda_graph_runner(backend, batch: np.ndarray, autocast: bool) -> Callable[[], np.ndarray]:
    """One captured CUDA graph of the PyTorch model at this batch shape: copy in, replay, copy out."""
    import torch

    model = backend.model
    static_in = torch.empty(batch.shape, dtype=torch.float32, device="cuda")
    host = torch.from_numpy(np.ascontiguousarray(batch)).pin_memory()
    static_in.copy_(host)
    ctx = (lambda: torch.autocast("cuda", dtype=torch.float16)) if autocast else torch.no_grad
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(3):  # warm-up on a side stream, as graph capture requires
            with ctx():
                model(static_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        with ctx():
            static_out = model(static_in)

    def run() -> np.ndarray:
        static_in.copy_(host, non_blocking=True)
        graph.replay()
        return static_out.float().cpu().numpy()

    return run


def sample_mosaics(files: list[str], cfg, k: int = 8) -> np.ndarray:
    """(≤k,3,S,S): the first ``k`` readable files preprocessed, the model stage's input material."""
    from nsnet_sdk.errors import NSNetError
    from nsnet_sdk.pipeline import load_image, preprocess

    base = []
    for f in files:
        if len(base) >= k:
            break
        try:
            base.append(preprocess(load_image(f), cfg))
        except NSNetError:
            continue  # an unreadable file is the end-to-end stage's business, not the model's
    if not base:
        raise RuntimeError("no readable image among the input files")
    return np.stack(base)


def model_inputs(base: np.ndarray, n: int) -> np.ndarray:
    """(n,3,S,S) network inputs: the first ``min(n, len(base))`` mosaics repeated to fill the batch.
    Throughput does not depend on the values; real mosaics keep the inputs representative."""
    return np.ascontiguousarray(np.resize(base[:n], (n, *base.shape[1:])))


def measure_model(spec: dict) -> dict[str, Any]:
    from nsnet_sdk import BackendOptions, Detector, InputOptions

    cuda = _Cuda(spec["device"], use_torch=spec["backend"] == "torch")
    threads = int(spec["threads"])
    kwargs: dict[str, Any] = {"intra_op_threads": threads}
    if spec.get("providers"):
        kwargs["providers"] = spec["providers"]
    if spec["backend"] == "torch":
        kwargs["device"] = spec["device"]
    if spec["backend"] == "openvino":  # same Detector (pipeline, predict_iter), OpenVINO inside
        kwargs = {"engine": "openvino", "precision": spec["precision"], "intra_op_threads": threads}
    det = Detector(spec["model"], backend=BackendOptions(**kwargs), options=InputOptions(workers=0))
    if spec["backend"] == "torch":
        import torch

        torch.set_num_threads(threads)  # also done by the backend; explicit: same count everywhere
        if spec.get("autocast_fp16"):
            _autocast_fp16(det.backend)
    out: dict[str, Any] = {"rows": [], "extra_rows": [], "device_memory": [], "cpu_time": [],
                           "input_errors": [], "device": det.backend.device}

    if spec.get("parity_inputs"):
        x = np.load(spec["parity_inputs"])
        bs = max(spec["batch_sizes"])
        logits = np.concatenate([det.backend.run(x[i:i + bs]) for i in range(0, len(x), bs)])
        np.save(Path(spec["out"]).with_suffix(".logits.npy"), logits.astype(np.float64))

    base = sample_mosaics(spec["files"], det.config)  # decoded once, for every batch size
    for bs in spec["batch_sizes"]:
        batch = model_inputs(base, bs)
        fn = lambda: det.backend.run(batch)  # noqa: E731
        fn()  # first call outside the reset: allocator/arena growth belongs to the model load
        reset_peak_rss()
        cuda.reset()
        lat, cpu_s = time_calls(fn, spec["iters"], spec["warmup"], cuda)
        out["rows"].append(row(spec, "model", bs, 0, bs * len(lat), sum(lat), lat))
        out["cpu_time"].append(cpu_entry(out["rows"][-1], cpu_s, bs * len(lat)))
        if hasattr(det.backend, "kernels"):
            out["kernels"] = det.backend.kernels()
        if cuda.on:
            out["device_memory"].append({"backend": spec["label"], "precision": spec["precision"],
                                         "batch_size": bs, "process_gpu_mb": cuda.process_used_mb(),
                                         "torch_peak_allocated_mb": cuda.torch_peak_mb()})
        if spec.get("cuda_graphs"):
            graph_fn = _cuda_graph_runner(det.backend, batch, bool(spec.get("autocast_fp16")))
            lat, _ = time_calls(graph_fn, spec["iters"], spec["warmup"], cuda)
            r = row(spec, "model", bs, 0, bs * len(lat), sum(lat), lat)
            out["extra_rows"].append(dict(r, variant="cuda_graphs"))

    files = spec["files"]
    bs = int(spec["e2e_batch_size"])
    for w in spec["workers"] if spec.get("e2e", True) else []:
        reset_peak_rss()
        stamps, errors = [], []
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for i, pred in enumerate(det.predict_iter(files, batch_size=bs, workers=w), 1):
            if pred.error is not None:
                errors.append(pred.error)
            if i % bs == 0 or i == len(files):
                stamps.append(time.perf_counter())
        cuda.sync()
        total = time.perf_counter() - t0
        cpu_s = time.process_time() - cpu0
        if len(errors) == len(files):
            raise RuntimeError(f"end-to-end: every input failed, e.g. {errors[0]}")
        # Failed inputs are results too (one per input); the report lists them.
        out["input_errors"] = sorted(set(out["input_errors"]) | set(errors))
        gaps = np.diff([t0, *stamps]).tolist()  # time per batch of results as the caller sees them
        out["rows"].append(row(spec, "end_to_end", bs, w, len(files), total, gaps))
        out["cpu_time"].append(cpu_entry(out["rows"][-1], cpu_s, len(files)))
    det.close()
    return out


def measure_preprocess(spec: dict) -> dict[str, Any]:
    """Decode + patch mosaic + normalise from files, ``workers`` threads; per-image latencies."""
    from nsnet_sdk.errors import NSNetError
    from nsnet_sdk.pipeline import PatchConfig, load_image, preprocess

    cfg = PatchConfig.from_dict(spec["preprocess"])
    files = spec["files"]
    buf = np.empty((len(files), 3, cfg.size, cfg.size), np.float32)

    def one(i: int) -> float:
        t = time.perf_counter()
        try:
            preprocess(load_image(files[i]), cfg, out=buf[i])
        except NSNetError:
            pass  # a refused file costs what it costs; the end-to-end stage reports it
        return time.perf_counter() - t

    one(0)  # lazily built DFT matrices, decoder initialisation
    rows, cpu = [], []
    for w in spec["workers"]:
        w_eff = max(1, int(w))  # 0 = on the calling thread, the same work as one worker
        reset_peak_rss()
        with ThreadPoolExecutor(w_eff) as pool:
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            lat = list(pool.map(one, range(len(files))))
            total = time.perf_counter() - t0
            cpu_s = time.process_time() - cpu0
        rows.append(row(spec, "preprocess", 1, w, len(files), total, lat))
        cpu.append(cpu_entry(rows[-1], cpu_s, len(files)))
    return {"rows": rows, "extra_rows": [], "device_memory": [], "cpu_time": cpu, "input_errors": []}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    result = measure_preprocess(spec) if spec["kind"] == "preprocess" else measure_model(spec)
    Path(spec["out"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
