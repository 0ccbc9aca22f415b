"""Linear8bitLt's forward against fp16/bf16 F.linear, torch._int_mm and bitsandbytes (if importable).

Run on a CUDA machine: python benchmarks/bench_linear.py [--out DIR] [--quick] [--tokens M,M,...]
Each method is timed twice: eager (what a Python loop sees, launch overhead included) and replayed
from a CUDA graph (GPU time; how decode loops should run). Ratios = 16-bit F.linear time / method
time in the same mode (higher is better); the ratio table is printed last. Writes JSON and a PNG.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import llmint8
from llmint8 import Linear8bitLt

from common import (LAYERS, TOKENS, activations_with_outliers, clean_l2_graph_median_ms, graph_median_ms,
                    layer_label, median_ms, plot_speed_ratios, save_results)

try:  # bitsandbytes is optional: absent, its columns are skipped
    import bitsandbytes as bnb
except ImportError:
    bnb = None


def int8_layer(weight: torch.Tensor, threshold: float, exact: bool) -> Linear8bitLt:
    n, k = weight.shape
    layer = Linear8bitLt(k, n, bias=False, threshold=threshold, exact_decomposition=exact,
                         device="meta", dtype=weight.dtype)
    layer.weight = llmint8.Int8Params(weight.clone(), has_fp16_weights=False)
    layer.weight.quantize_()
    return layer


def bnb_layer(weight: torch.Tensor, threshold: float):
    n, k = weight.shape
    layer = bnb.nn.Linear8bitLt(k, n, bias=False, has_fp16_weights=False, threshold=threshold)
    layer.weight = bnb.nn.Int8Params(weight.cpu().half(), requires_grad=False, has_fp16_weights=False)
    return layer.cuda()


def methods_for(x: torch.Tensor, weight: torch.Tensor) -> dict:
    layers = {
        "llmint8 t6": int8_layer(weight, 6.0, exact=False),
        "llmint8 t6 exact": int8_layer(weight, 6.0, exact=True),
        "llmint8 t0": int8_layer(weight, 0.0, exact=True),
    }
    methods = {"linear": lambda: torch.nn.functional.linear(x, weight)}
    methods.update({name: (lambda layer=layer: layer(x)) for name, layer in layers.items()})
    if x.shape[0] > 16:  # torch._int_mm needs M > 16
        a = torch.randint(-127, 128, x.shape, dtype=torch.int8, device="cuda")
        b = torch.randint(-127, 128, weight.shape, dtype=torch.int8, device="cuda").T
        methods["torch._int_mm"] = lambda: torch._int_mm(a, b)
    if bnb is not None and x.dtype == torch.float16:
        layers["bnb t6"] = bnb6 = bnb_layer(weight, 6.0)
        methods["bnb t6"] = lambda: bnb6(x)
    return methods, layers


def relative_error(out: torch.Tensor, expected: torch.Tensor) -> float:
    return ((out.double() - expected).norm() / expected.norm()).item()


def bench(k: int, n: int, m: int, dtype) -> dict:
    x = activations_with_outliers(m, k, dtype, "cuda")
    weight = (torch.randn(n, k, device="cuda") / k**0.5).to(dtype)
    methods, layers = methods_for(x, weight)
    row = {"K": k, "N": n, "M": m, "dtype": str(dtype).replace("torch.", "")}
    expected = x.double() @ weight.double().T
    with torch.no_grad():
        for name, layer in layers.items():
            row[f"{name} rel_err"] = relative_error(layer(x), expected)
        for name, fn in methods.items():
            row[f"{name} eager_ms"] = median_ms(fn)
            graphable = not name.startswith("bnb")  # bnb's threshold path synchronizes
            row[f"{name} graph_ms"] = graph_median_ms(fn) if graphable else float("nan")
        if m <= 16:  # the weight-bound rows, where do_bench's flush weighs most
            for name in ("linear", "llmint8 t6"):
                row[f"{name} clean_l2_graph_ms"] = clean_l2_graph_median_ms(methods[name])
    return row


def print_table(rows: list[dict], mode: str) -> None:
    names = list(dict.fromkeys(n for r in rows for n in [k[: -len(f" {mode}_ms")] for k in r if k.endswith(f" {mode}_ms")]))
    print(f"\n{mode}: 16-bit F.linear µs and speed ratios (F.linear time / method time)")
    print(f"{'dtype':<9}{'K->N':>13}{'M':>6}{'linear µs':>11}" + "".join(f"{n:>18}" for n in names[1:]))
    for r in rows:
        base = r[f"linear {mode}_ms"]
        cells = "".join(
            f"{base / r[f'{n} {mode}_ms']:>17.2f}x" if f"{n} {mode}_ms" in r and r[f"{n} {mode}_ms"] == r[f"{n} {mode}_ms"] else f"{'-':>18}"
            for n in names[1:])
        print(f"{r['dtype']:<9}{layer_label(r):>13}{r['M']:>6}{base * 1e3:>11.1f}{cells}")


def print_errors(rows: list[dict]) -> None:
    print("\nrelative error against float64")
    for r in rows:
        errs = "  ".join(f"{k[:-8]}: {v:.2e}" for k, v in r.items() if k.endswith(" rel_err"))
        print(f"{r['dtype']:<9}{layer_label(r):>13}{r['M']:>6}  {errs}")


def weight_bytes_fit(rows: list[dict], name: str, bytes_per_weight: int) -> tuple[float, float]:
    """Least-squares time = fixed + weight bytes / bandwidth over the layers at M = 1 (graph mode):
    (fixed µs, TB/s). The fixed part is what every call pays whatever its size (launch, and the
    write-back of the dirty lines do_bench's L2 flush leaves)."""
    points = [(r["K"] * r["N"] * bytes_per_weight / 1e6, r[f"{name} graph_ms"] * 1e3) for r in rows]
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)
    return mean_y - slope * mean_x, 1 / slope


def print_bandwidth_fit(rows: list[dict]) -> None:
    """At M = 1 a layer reads its weight once, so its time is a fixed cost plus bytes / bandwidth.
    The best ratio an int8 kernel can reach with 16-bit F.linear's fixed cost and bandwidth is
    (fixed + 2 S / B) / (fixed + S / B) for S weight bytes in int8."""
    print("\nM = 1, graph mode: time = fixed + weight bytes / bandwidth, fitted over the layers")
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        ones = [r for r in rows if r["dtype"] == dtype and r["M"] == 1]
        if len(ones) < 2:
            continue
        fixed16, bandwidth16 = weight_bytes_fit(ones, "linear", 2)
        fixed8, bandwidth8 = weight_bytes_fit(ones, "llmint8 t6", 1)
        print(f"{dtype:<9} F.linear: {fixed16:.1f} µs + bytes / {bandwidth16:.2f} TB/s; "
              f"llmint8 t6: {fixed8:.1f} µs + bytes / {bandwidth8:.2f} TB/s")
        for r in ones:
            int8_us = r["K"] * r["N"] / 1e6 / bandwidth16
            bound = (fixed16 + 2 * int8_us) / (fixed16 + int8_us)
            print(f"{'':<9}{layer_label(r):>13}  at F.linear's fixed cost and bandwidth: "
                  f"{bound:.2f}x, measured {r['linear graph_ms'] / r['llmint8 t6 graph_ms']:.2f}x")


def print_clean_l2(rows: list[dict]) -> None:
    print("\nM <= 16, graph mode, L2 flushed by a read (clean lines) instead of do_bench's write: "
          "F.linear µs, llmint8 t6 µs, ratio (do_bench's ratio)")
    for r in rows:
        if "linear clean_l2_graph_ms" in r:
            base, ours = r["linear clean_l2_graph_ms"], r["llmint8 t6 clean_l2_graph_ms"]
            print(f"{r['dtype']:<9}{layer_label(r):>13}{r['M']:>6}{base * 1e3:>9.1f}{ours * 1e3:>9.1f}"
                  f"{base / ours:>8.2f}x ({r['linear graph_ms'] / r['llmint8 t6 graph_ms']:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--quick", action="store_true", help="fp16 only, M in {1, 16, 2048}")
    parser.add_argument("--tokens", type=lambda text: [int(m) for m in text.split(",")],
                        help="comma-separated M values instead of GUIDE §5's")
    args = parser.parse_args()
    torch.manual_seed(0)
    dtypes = (torch.float16,) if args.quick else (torch.float16, torch.bfloat16)
    tokens = args.tokens or ((1, 16, 2048) if args.quick else TOKENS)
    rows = [bench(k, n, m, dtype) for dtype in dtypes for k, n in LAYERS for m in tokens]
    print(f"llmint8 {llmint8.__version__} on {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"bitsandbytes {'absent' if bnb is None else bnb.__version__}")
    print("json:", save_results("bench_linear", rows, args.out))
    plot_speed_ratios(rows, args.out / "bench_linear.png",
                      lambda r: r["linear graph_ms"] / r["llmint8 t6 graph_ms"], "Linear8bitLt threshold 6 (CUDA graph)")
    print_errors(rows)
    print_table(rows, "eager")
    print_bandwidth_fit(rows)
    print_clean_l2(rows)
    print_table(rows, "graph")


if __name__ == "__main__":
    main()
