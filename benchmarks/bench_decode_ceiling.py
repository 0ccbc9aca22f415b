"""The decode step's ceiling with one kernel per linear layer (benchmarks/NOTES.md v15).

Run on a CUDA machine with Triton: python benchmarks/bench_decode_ceiling.py [--out DIR] [--layers 32]
Every int8 layer of bench_generate.py's OPT-6.7B-shaped decode step is stood in for by the fastest
of a few Triton kernels that only stream the same weight bytes (evict-first loads, an XOR, no
math), and those calls are timed in a row from a CUDA graph, as bench_generate.py times the linear
layers. The step made of fp16's other kernels plus that chain is the fastest any kernel reading each
int8 weight once, one launch per layer, could make it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

import llmint8

from bench_generate import (decode_step_fn, fp16_and_int8_models, linear_layers_graph_ms, parse_arguments,
                            recorded_linear_calls)
from common import graph_median_ms, save_results

# (words per load, loads per program, warps): 24 shapes of the read-only kernel, the fastest kept per layer.
READER_CONFIGS = [(block, loads, warps) for block in (1024, 2048, 4096) for loads in (1, 2, 4, 8) for warps in (4, 8)]


@triton.jit
def read_kernel(words, out, n_words, BLOCK: tl.constexpr, LOADS: tl.constexpr):
    program = tl.program_id(0)
    folded = tl.zeros([BLOCK], dtype=tl.int32)
    for i in tl.static_range(LOADS):
        offsets = (program * LOADS + i) * BLOCK + tl.arange(0, BLOCK)
        folded ^= tl.load(words + offsets, mask=offsets < n_words, other=0, eviction_policy="evict_first")
    # One store per program keeps the loads from being optimized away.
    tl.store(out + program, tl.xor_sum(folded, axis=0))


def reader(words: torch.Tensor, config):
    """A call that reads every int32 word of `words` once with the read-only kernel."""
    block, loads, warps = config
    grid = triton.cdiv(words.numel(), block * loads)
    out = torch.empty(grid, dtype=torch.int32, device=words.device)

    def read():
        read_kernel[(grid,)](words, out, words.numel(), BLOCK=block, LOADS=loads, num_warps=warps)

    return read


def fastest_reader(words: torch.Tensor):
    """(graph ms, config) of the fastest read-only kernel over `words`."""
    return min((graph_median_ms(reader(words, config)), config) for config in READER_CONFIGS)


def weight_words(module) -> torch.Tensor:
    return module.weight.data.view(torch.int32).view(-1)


def main() -> None:
    args = parse_arguments(__doc__)
    fp16, int8, prompt, token = fp16_and_int8_models(args.layers)

    def fresh_step(model):  # the static cache moves on one slot per call (bench_generate.py)
        return decode_step_fn(model, model.config, prompt, token)

    fp16_step_ms = graph_median_ms(fresh_step(fp16))
    fp16_linear_ms = linear_layers_graph_ms(fp16, fresh_step(fp16))
    del fp16
    int8_step_ms = graph_median_ms(fresh_step(int8))
    int8_linear_ms = linear_layers_graph_ms(int8, fresh_step(int8))
    calls = recorded_linear_calls(int8, fresh_step(int8))

    rows, configs = [], {}
    for module, x in calls:
        shape = tuple(module.weight.shape)
        if not isinstance(module, llmint8.Linear8bitLt) or shape in configs:
            continue
        read_ms, configs[shape] = fastest_reader(weight_words(module))
        with torch.no_grad():
            layer_ms = graph_median_ms(lambda: module(x))
        rows.append({"K": shape[1], "N": shape[0], "M": x.numel() // shape[1], "layer_graph_ms": layer_ms,
                     "read_only_graph_ms": read_ms, "read_only_config": configs[shape],
                     "read_only_tb_s": module.weight.numel() / read_ms / 1e9})
    # lm_head stays an fp16 F.linear in the int8 model too.
    stand_ins = [reader(weight_words(module), configs[tuple(module.weight.shape)])
                 if isinstance(module, llmint8.Linear8bitLt) else (lambda module=module, x=x: module(x))
                 for module, x in calls]

    def read_only_layers():
        with torch.no_grad():
            for call in stand_ins:
                call()

    read_chain_ms = graph_median_ms(read_only_layers)
    fp16_rest_ms = fp16_step_ms - fp16_linear_ms
    ceiling_ms = fp16_rest_ms + read_chain_ms
    summary = {"fp16_step_graph_ms": fp16_step_ms, "fp16_linear_graph_ms": fp16_linear_ms,
               "int8_step_graph_ms": int8_step_ms, "int8_linear_graph_ms": int8_linear_ms,
               "int8_read_only_graph_ms": read_chain_ms, "ceiling_step_ms": ceiling_ms}
    print("json:", save_results("bench_decode_ceiling", rows + [summary], args.out))

    print(f"\nOPT-6.7B-shaped ({args.layers} layers), decode step at batch 1, on {torch.cuda.get_device_name()}")
    print(f"{'layer':>12}{'int8 layer us':>15}{'read only us':>14}{'read only TB/s':>16}")
    for r in rows:
        print(f"{r['K']:>6}->{r['N']:<5}{r['layer_graph_ms'] * 1e3:>15.1f}{r['read_only_graph_ms'] * 1e3:>14.1f}"
              f"{r['read_only_tb_s']:>16.2f}")
    print(f"\nstep, CUDA graph: fp16 {fp16_step_ms:.3f} ms, int8 {int8_step_ms:.3f} ms "
          f"({fp16_step_ms / int8_step_ms:.2f}x)")
    print(f"linear layers in a row: fp16 {fp16_linear_ms:.3f} ms, int8 {int8_linear_ms:.3f} ms, "
          f"int8 layers as read-only kernels {read_chain_ms:.3f} ms")
    print(f"ceiling: fp16's rest of the step {fp16_rest_ms:.3f} ms + read-only layers {read_chain_ms:.3f} ms = "
          f"{ceiling_ms:.3f} ms, {fp16_step_ms / ceiling_ms:.2f}x fp16")


if __name__ == "__main__":
    main()
