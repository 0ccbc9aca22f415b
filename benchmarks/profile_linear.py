"""Per-kernel GPU time of one Linear8bitLt forward (threshold 6), from the profiler.

Run on a CUDA machine: python benchmarks/profile_linear.py [--cases KxNxM,...] [--threshold T] [--dtype D]
Shows where a layer's time goes (outlier split, quantization, int8 GEMM, epilogue) next to
F.linear, for the shapes where the fused path misses its targets.
"""
from __future__ import annotations

import argparse

import torch

from llmint8 import Linear8bitLt

from common import activations_with_outliers

CASES = [(4096, 16384, 1), (4096, 16384, 16), (4096, 16384, 2048), (4096, 16384, 8192), (14336, 4096, 2048)]


def kernel_times(fn) -> list[tuple[str, float]]:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    return sorted(((e.key[:70], e.device_time_total / 10) for e in events), key=lambda item: -item[1])


def parse_case(text: str) -> tuple[int, int, int]:
    k, n, m = (int(v) for v in text.split("x"))
    return k, n, m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=lambda s: [parse_case(c) for c in s.split(",")], default=CASES,
                        help="comma-separated KxNxM (in_features x out_features x rows)")
    parser.add_argument("--threshold", type=float, default=6.0)
    parser.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    args = parser.parse_args()
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    for k, n, m in args.cases:
        x = activations_with_outliers(m, k, dtype, "cuda")
        weight = (torch.randn(n, k, device="cuda") / k**0.5).to(dtype)
        layer = Linear8bitLt(k, n, bias=False, threshold=args.threshold).to(dtype)
        layer.load_state_dict({"weight": weight})
        layer = layer.cuda()
        with torch.no_grad():
            for name, fn in [("F.linear", lambda: torch.nn.functional.linear(x, weight)),
                             (f"Linear8bitLt t{args.threshold:g}", lambda: layer(x))]:
                times = kernel_times(fn)
                print(f"\n{k}->{n}, M={m}, {name}: {sum(t for _, t in times):.1f} us of kernels")
                for key, us in times:
                    print(f"  {us:9.1f} us  {key}")


if __name__ == "__main__":
    main()
