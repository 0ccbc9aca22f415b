"""End to end on an OPT-6.7B-shaped model (random weights): memory, prefill, and a decode step.

Run on a CUDA machine: python benchmarks/bench_generate.py [--out DIR] [--layers 32]
Compares fp16 with llmint8 (threshold 6). The decode step (batch 1, static KV cache) is timed
replayed from a CUDA graph, and its GPU kernel time is read from the profiler: eager Hugging Face
decoding is CPU-bound on these machines, so its wall time says little about the kernels. The
prefill is timed both eager and replayed from a CUDA graph, whose time is the GPU's alone.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from transformers import OPTConfig, OPTForCausalLM, StaticCache

import llmint8

from common import graph_median_ms, median_ms, save_results

DEVICE = "cuda"
PREFILL_TOKENS = 2048
CACHE_LEN = PREFILL_TOKENS + 64


def opt_6_7b_config(layers: int) -> OPTConfig:
    return OPTConfig(hidden_size=4096, ffn_dim=16384, num_hidden_layers=layers, num_attention_heads=32,
                     vocab_size=50272, max_position_embeddings=2048 + 64, word_embed_proj_dim=4096)


def random_fp16_model(layers: int) -> OPTForCausalLM:
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = OPTForCausalLM(opt_6_7b_config(layers)).half().eval()
    # Systematic outlier dimensions, as in real OPT models: make layer inputs cross threshold 6.
    with torch.no_grad():
        model.model.decoder.embed_tokens.weight[:, :8] *= 400.0
    return model


def kernel_ms(fn) -> float:
    """Sum of GPU kernel time of one call of fn, from the profiler."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(e.device_time_total for e in prof.key_averages()) / 1e3


def recorded_linear_calls(model, step) -> list:
    """(module, a copy of its input) for every nn.Linear call of one step, in call order."""
    calls = []
    hooks = [m.register_forward_hook(lambda module, args, output: calls.append((module, args[0].clone())))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        step()
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def linear_layers_graph_ms(model, step) -> float:
    """CUDA-graph time of the step's linear layers alone (lm_head included), each called on the
    input it saw in one step: the only part of the step that int8 changes. Back to back, each
    small-batch int8 kernel starts in the previous one's tail (programmatic dependent launch),
    which inside the step happens only where two int8 layers are adjacent (OPT: k_proj, v_proj),
    so the int8 sum here is below the layers' share of the step."""
    calls = recorded_linear_calls(model, step)

    def linear_layers():
        with torch.no_grad():
            for module, x in calls:
                module(x)

    return graph_median_ms(linear_layers)


def decode_step_fn(model, config, prompt: torch.Tensor, token: torch.Tensor):
    """A batch-1 decode step over a static KV cache holding a 2048-token prefill.

    The step gets a ready 4D attention mask and explicit positions, so Hugging Face builds no mask
    from data on the host and the whole step can be captured in a CUDA graph. Transformers' static
    cache moves on one slot per call, replays included, and has CACHE_LEN - PREFILL_TOKENS slots
    left: each measurement takes a fresh step. The mask keeps every call attending to the same
    PREFILL_TOKENS + 1 positions.
    """
    cache = StaticCache(config=config, max_cache_len=CACHE_LEN)
    with torch.no_grad():
        model(prompt, past_key_values=cache, use_cache=True,
              cache_position=torch.arange(PREFILL_TOKENS, device=DEVICE))
    position = torch.tensor([PREFILL_TOKENS], device=DEVICE)
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(1, 1, 1, CACHE_LEN, device=DEVICE, dtype=torch.float16 if dtype == torch.int8 else dtype)
    mask[..., PREFILL_TOKENS + 1:] = torch.finfo(mask.dtype).min

    def step():
        with torch.no_grad():
            return model(token, attention_mask=mask, position_ids=position[None], past_key_values=cache,
                         use_cache=True, cache_position=position).logits

    return step


def measure(name: str, model, config, prompt: torch.Tensor, token: torch.Tensor) -> dict:
    def prefill():
        with torch.no_grad():
            return model(prompt, use_cache=False).logits

    def fresh_step():
        return decode_step_fn(model, config, prompt, token)

    row = {"method": name, "memory_bytes": llmint8.model_memory_bytes(model),
           "prefill_ms": median_ms(prefill), "prefill_kernel_ms": kernel_ms(prefill),
           "decode_kernel_ms": kernel_ms(fresh_step()), "decode_eager_ms": median_ms(fresh_step())}
    try:
        row["decode_graph_ms"] = graph_median_ms(fresh_step())
        row["decode_linear_graph_ms"] = linear_layers_graph_ms(model, fresh_step())
        # The eager prefill's wall time includes the host's enqueueing, which on a slow host is
        # longer than the GPU's work (benchmarks/NOTES.md v13): replayed, it is the GPU's alone.
        row["prefill_graph_ms"] = graph_median_ms(prefill)
    except Exception as error:  # report, don't hide: which part of the step refused capture
        row["decode_graph_ms"] = row["decode_linear_graph_ms"] = row["prefill_graph_ms"] = float("nan")
        row["graph_error"] = f"{type(error).__name__}: {error}"[:300]
    return row


def print_linear_share(fp16: dict, int8: dict) -> None:
    """The graph-captured decode step split into its linear layers and the rest (attention over
    the cache, norms, embeddings: the same kernels in both models), and the step ratio that linear
    layers twice as fast as fp16's (half the weight bytes) would give: the most int8 weights can do."""
    rest = fp16["decode_graph_ms"] - fp16["decode_linear_graph_ms"]
    print(f"decode step, CUDA graph: linear layers alone fp16 {fp16['decode_linear_graph_ms']:.3f} ms, int8 "
          f"{int8['decode_linear_graph_ms']:.3f} ms "
          f"({fp16['decode_linear_graph_ms'] / int8['decode_linear_graph_ms']:.2f}x); the rest of the step "
          f"{rest:.3f} ms (fp16) / {int8['decode_graph_ms'] - int8['decode_linear_graph_ms']:.3f} ms (int8); "
          f"with linear layers at 2x the step would be {fp16['decode_graph_ms'] / (rest + fp16['decode_linear_graph_ms'] / 2):.2f}x")


def parse_arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--layers", type=int, default=32)
    return parser.parse_args()


def fp16_and_int8_models(layers: int):
    """The fp16 model, its int8 copy (threshold 6), a prompt and a next token.

    The inputs are drawn before anything is captured: the CUDA generator cannot be used afterwards
    if a capture fails midway.
    """
    fp16 = random_fp16_model(layers)
    int8 = copy.deepcopy(fp16)
    llmint8.replace_8bit_linear(int8, threshold=6.0)
    prompt = torch.randint(0, fp16.config.vocab_size, (1, PREFILL_TOKENS), device=DEVICE)
    token = torch.randint(0, fp16.config.vocab_size, (1, 1), device=DEVICE)
    return fp16, int8, prompt, token


def main() -> None:
    args = parse_arguments(__doc__)
    fp16, int8, prompt, token = fp16_and_int8_models(args.layers)
    config = fp16.config
    rows = [measure("fp16", fp16, config, prompt, token), measure("llmint8 t6", int8, config, prompt, token)]
    del fp16
    print("json:", save_results("bench_generate", rows, args.out))
    base = rows[0]
    print(f"\nOPT-6.7B-shaped ({args.layers} layers, random weights) on {torch.cuda.get_device_name()}")
    print(f"{'method':<12}{'memory GiB':>11}{'prefill 2048 ms':>16}{'prefill graph ms':>17}{'prefill kernels ms':>19}"
          f"{'decode graph ms':>16}{'decode kernels ms':>18}{'decode eager ms':>16}")
    for r in rows:
        print(f"{r['method']:<12}{r['memory_bytes'] / 2**30:>11.2f}{r['prefill_ms']:>16.2f}{r['prefill_graph_ms']:>17.2f}"
              f"{r['prefill_kernel_ms']:>19.2f}{r['decode_graph_ms']:>16.3f}{r['decode_kernel_ms']:>18.3f}"
              f"{r['decode_eager_ms']:>16.2f}")
    int8_row = rows[1]
    print(f"\nint8 vs fp16: memory {int8_row['memory_bytes'] / base['memory_bytes']:.3f}x, "
          f"prefill {base['prefill_ms'] / int8_row['prefill_ms']:.2f}x faster "
          f"(graph {base['prefill_graph_ms'] / int8_row['prefill_graph_ms']:.2f}x, "
          f"kernels {base['prefill_kernel_ms'] / int8_row['prefill_kernel_ms']:.2f}x), "
          f"graph decode step {base['decode_graph_ms'] / int8_row['decode_graph_ms']:.2f}x, "
          f"decode kernels {base['decode_kernel_ms'] / int8_row['decode_kernel_ms']:.2f}x")
    print_linear_share(base, int8_row)
    for r in rows:
        if "graph_error" in r:
            print(f"{r['method']}: CUDA graph capture failed: {r['graph_error']}")


if __name__ == "__main__":
    main()
