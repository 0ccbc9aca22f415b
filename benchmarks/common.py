"""Timing and input helpers shared by the llmint8 benchmarks (GUIDE §5 method)."""
from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

LAYERS = [(1024, 4096), (4096, 16384), (14336, 4096), (12288, 49152)]
TOKENS = [1, 16, 128, 512, 2048, 8192]
OUTLIER_COLUMNS = 8
OUTLIER_SCALE = 20.0


def median_ms(fn) -> float:
    """Median CUDA-event time of fn in milliseconds, after warm-up (triton's do_bench when present)."""
    try:
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median")
    except ImportError:
        return _median_ms_with_events(fn)


def _median_ms_with_events(fn, repeats: int = 50, before_each=lambda: None) -> float:
    """Median CUDA-event time of fn; before_each runs untimed ahead of every call."""
    for _ in range(5):
        before_each()
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        before_each()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def activations_with_outliers(tokens: int, features: int, dtype, device) -> torch.Tensor:
    """Gaussian activations with OUTLIER_COLUMNS random columns scaled by OUTLIER_SCALE."""
    x = torch.randn(tokens, features, device=device)
    x[:, torch.randperm(features, device=device)[:OUTLIER_COLUMNS]] *= OUTLIER_SCALE
    return x.to(dtype)


def save_results(name: str, rows: list[dict], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "python": platform.python_version()}
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return path


def captured(fn) -> torch.cuda.CUDAGraph:
    """fn captured in a CUDA graph, after warm-up outside it (plan caches and allocator pools)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def graph_median_ms(fn) -> float:
    """Median time of fn replayed from a captured CUDA graph: GPU time without launch overhead."""
    return median_ms(captured(fn).replay)


def clean_l2_graph_median_ms(fn, repeats: int = 200) -> float:
    """graph_median_ms with L2 flushed by reading 256 MB instead of do_bench's writing it. do_bench
    leaves L2 full of dirty lines, whose write-back lands inside the timed call and costs a
    weight-streaming kernel ~10 µs on an H100; a read flush leaves clean lines, as a decode step's
    earlier weight reads do."""
    buffer = torch.ones(256 * 2**20 // 4, dtype=torch.int32, device="cuda")
    total = torch.empty((), dtype=torch.int64, device="cuda")
    return _median_ms_with_events(captured(fn).replay, repeats,
                                  before_each=lambda: torch.sum(buffer, dim=0, out=total))


def layer_label(row: dict) -> str:
    """A result row's layer as K->N."""
    return f"{row['K']}->{row['N']}"


def plot_speed_ratios(rows: list[dict], path: Path, ratio, title: str) -> None:
    """One panel per 16-bit dtype: ratio(row) against tokens M, a line per layer shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, dtype in zip(axes, ["float16", "bfloat16"]):
        for k, n in LAYERS:
            sel = [r for r in rows if r["dtype"] == dtype and (r["K"], r["N"]) == (k, n)]
            if sel:
                ax.plot([r["M"] for r in sel], [ratio(r) for r in sel], marker="o", label=f"{k}->{n}")
        ax.axhline(1.0, color="gray", linestyle="--")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{title} vs {dtype} F.linear")
        ax.set_xlabel("tokens M")
    axes[0].set_ylabel("speed ratio (higher is better)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
