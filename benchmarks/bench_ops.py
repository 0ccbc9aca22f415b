"""Times each llmint8 op and the composed (unfused) LLM.int8 layer against fp16/bf16 F.linear.

Run on a CUDA machine: python benchmarks/bench_ops.py [--out benchmarks/results]
Prints a table per dtype (ratios = 16-bit F.linear time / llmint8 time), writes JSON and a PNG.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import llmint8
from llmint8 import ops

from common import LAYERS, TOKENS, activations_with_outliers, layer_label, median_ms, plot_speed_ratios, save_results

THRESHOLD = 6.0


def bench_layer(k: int, n: int, m: int, dtype) -> dict:
    x = activations_with_outliers(m, k, dtype, "cuda")
    weight = (torch.randn(n, k, device="cuda") / k**0.5).to(dtype)
    w_int8, w_absmax = ops.quantize_colwise(weight)
    cols, _, _ = ops.outlier_split(x, THRESHOLD)
    x_int8, x_absmax = ops.quantize_rowwise(x, cols)
    acc = ops.int8_matmul(x_int8, w_int8)
    return {
        "K": k, "N": n, "M": m, "dtype": str(dtype).replace("torch.", ""),
        "linear_ms": median_ms(lambda: torch.nn.functional.linear(x, weight)),
        "outlier_split_ms": median_ms(lambda: ops.outlier_split(x, THRESHOLD)),
        "quantize_rowwise_ms": median_ms(lambda: ops.quantize_rowwise(x, cols)),
        "quantize_colwise_ms": median_ms(lambda: ops.quantize_colwise(weight)),
        "int8_matmul_ms": median_ms(lambda: ops.int8_matmul(x_int8, w_int8)),
        "dequant_outer_ms": median_ms(lambda: ops.dequant_outer(acc, x_absmax, w_absmax, None, dtype)),
        "composed_t6_ms": median_ms(
            lambda: ops.int8_linear_composed(x, w_int8, w_absmax, None, THRESHOLD)),
        "composed_t0_ms": median_ms(
            lambda: ops.int8_linear_composed(x, w_int8, w_absmax, None, 0.0, capacity=0)),
    }


def print_table(rows: list[dict]) -> None:
    header = (f"{'dtype':<9}{'K->N':>13}{'M':>6}{'linear us':>11}{'split':>8}{'qrow':>8}"
              f"{'qcol':>9}{'i8mm':>9}{'dequant':>9}{'int8 t6':>9}{'ratio':>7}{'int8 t0':>9}{'ratio':>7}")
    print("times in microseconds; ratio = 16-bit F.linear time / llmint8 time (higher is better)")
    print(header)
    for r in rows:
        us = {key: r[key] * 1e3 for key in r if key.endswith("_ms")}
        print(f"{r['dtype']:<9}{layer_label(r):>13}{r['M']:>6}"
              f"{us['linear_ms']:>11.1f}{us['outlier_split_ms']:>8.1f}{us['quantize_rowwise_ms']:>8.1f}"
              f"{us['quantize_colwise_ms']:>9.1f}{us['int8_matmul_ms']:>9.1f}{us['dequant_outer_ms']:>9.1f}"
              f"{us['composed_t6_ms']:>9.1f}{r['linear_ms'] / r['composed_t6_ms']:>6.2f}x"
              f"{us['composed_t0_ms']:>9.1f}{r['linear_ms'] / r['composed_t0_ms']:>6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = [bench_layer(k, n, m, dtype)
            for dtype in (torch.float16, torch.bfloat16) for k, n in LAYERS for m in TOKENS]
    print(f"llmint8 {llmint8.__version__} on {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("json:", save_results("bench_ops", rows, args.out))
    plot_speed_ratios(rows, args.out / "bench_ops.png", lambda r: r["linear_ms"] / r["composed_t6_ms"],
                      "composed LLM.int8 (threshold 6)")
    print_table(rows)


if __name__ == "__main__":
    main()
