"""int8 across two GPUs with accelerate (GitHub issue 7): equality, memory per GPU, generate speed.

    python3 scripts/multigpu_check.py            # needs >= 2 CUDA GPUs and a CUDA build of llmint8

Builds a random OPT (hidden 2048, 24 layers, ffn 8192; about 1.3B parameters), saves it in fp16 to
a temporary directory, and loads it three ways:
  (a) int8 on GPU 0 alone              device_map={"": 0}
  (b) int8 split over GPUs 0 and 1     device_map="auto", max_memory too small for one GPU
  (c) fp16 split over GPUs 0 and 1     the same, budgets scaled to the fp16 size
It checks that (b)'s logits and greedy tokens equal (a)'s exactly (same kernels, deterministic),
prints the bytes each placement holds on each GPU (torch.cuda.memory_allocated), the tokens/s of
greedy generate (64 new tokens, batch 1 and 8), and a final table. Exit status 1 if (b) != (a).
With fewer than 2 GPUs it prints why it skips and exits 0.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time

import torch

GiB = 1024**3
MiB = 1024**2


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--ffn", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--gpu-share", type=float, default=0.75,
                        help="max_memory of each GPU as a fraction of the model's own size (< 1 forces the split)")
    return parser.parse_args()


def gpu_bytes():
    return [torch.cuda.memory_allocated(d) for d in range(2)]


def free_all():
    gc.collect()
    torch.cuda.empty_cache()
    for d in range(2):
        torch.cuda.synchronize(d)


def build_checkpoint(args, path):
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(vocab_size=args.vocab, hidden_size=args.hidden, ffn_dim=args.ffn,
                       num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                       max_position_embeddings=2048, word_embed_proj_dim=args.hidden)
    torch.manual_seed(0)
    with torch.device("cuda:0"):  # random init on the GPU: seconds instead of a minute on the CPU
        model = OPTForCausalLM(config).to(torch.float16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(path)
    del model
    free_all()
    return config, params


def model_sizes(config):
    """(int8 bytes, fp16 bytes) of the model, from meta models (nothing allocated)."""
    from accelerate import init_empty_weights
    from transformers import OPTForCausalLM

    from llmint8.nn import int8_module_sizes, model_memory_bytes, replace_8bit_linear

    with init_empty_weights():
        fp16 = OPTForCausalLM(config).to(torch.float16)
        int8 = OPTForCausalLM(config).to(torch.float16)
    fp16.tie_weights()
    replace_8bit_linear(int8)  # lm_head stays 16-bit, as from_pretrained does
    return int8_module_sizes(int8)[""], model_memory_bytes(fp16)


def load(path, device_map, int8, max_memory=None):
    from transformers import AutoModelForCausalLM

    from llmint8.hf import Int8Config

    kwargs = {"quantization_config": Int8Config()} if int8 else {}
    before = gpu_bytes()
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float16, device_map=device_map,
                                                 max_memory=max_memory, **kwargs).eval()
    free_all()
    seconds = time.perf_counter() - start
    held = [after - b for after, b in zip(gpu_bytes(), before)]
    placement = getattr(model, "hf_device_map", device_map)
    return model, held, seconds, placement


@torch.no_grad()
def logits_and_tokens(model, prompts, new_tokens):
    logits = model(prompts.to(model.device)).logits.float().cpu()
    tokens = model.generate(prompts.to(model.device), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                            do_sample=False, pad_token_id=1).cpu()
    return logits, tokens


@torch.no_grad()
def tokens_per_second(model, prompts, new_tokens, repeats=2):
    prompts = prompts.to(model.device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=1)
    model.generate(prompts, **kwargs)  # warm-up: cuBLASLt plans, allocator
    best = float("inf")
    for _ in range(repeats):
        for d in range(2):
            torch.cuda.synchronize(d)
        start = time.perf_counter()
        model.generate(prompts, **kwargs)
        for d in range(2):
            torch.cuda.synchronize(d)
        best = min(best, time.perf_counter() - start)
    return prompts.shape[0] * new_tokens / best


def main() -> int:
    args = parse_args()
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        print(f"SKIP: multigpu_check needs at least 2 CUDA GPUs to split a model, found {count} "
              f"(torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}). Nothing was run.")
        return 0

    import llmint8
    import transformers

    if not torch.ops.llmint8.int8_matmul.default.has_kernel_for_dispatch_key("CUDA"):
        print("SKIP: this llmint8 build has no CUDA kernels; build it on the GPU machine first "
              "(e.g. bash scripts/gpu_check.sh, or pip install --no-build-isolation . with a CUDA torch).")
        return 0

    names = [torch.cuda.get_device_name(d) for d in range(2)]
    print(f"GPUs: {names}; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"llmint8 {llmint8.__version__}")
    rows, failures = [], []
    with tempfile.TemporaryDirectory() as path:
        start = time.perf_counter()
        config, params = build_checkpoint(args, path)
        int8_bytes, fp16_bytes = model_sizes(config)
        print(f"OPT hidden {args.hidden}, {args.layers} layers, ffn {args.ffn}, vocab {args.vocab}: "
              f"{params / 1e9:.2f}B parameters; {fp16_bytes / GiB:.2f} GiB in fp16, {int8_bytes / GiB:.2f} GiB "
              f"in int8 (+SCB; lm_head fp16); saved in {time.perf_counter() - start:.0f} s")
        int8_budget = {d: int(args.gpu_share * int8_bytes) for d in range(2)}
        fp16_budget = {d: int(args.gpu_share * fp16_bytes) for d in range(2)}
        torch.manual_seed(1)
        prompts = {b: torch.randint(4, args.vocab, (b, args.prompt_len)) for b in args.batches}
        reference = {}
        placements = [
            ("(a) int8, GPU 0", {"": 0}, True, None),
            ("(b) int8, 2 GPUs", "auto", True, int8_budget),
            ("(c) fp16, 2 GPUs", "auto", False, fp16_budget),
        ]
        for label, device_map, int8, budget in placements:
            model, held, seconds, placement = load(path, device_map, int8, budget)
            spread = llmint8.nn.decoder_layers_per_device(placement) if isinstance(placement, dict) else {}
            budget_text = "" if budget is None else f", max_memory {[f'{v / GiB:.2f} GiB' for v in budget.values()]}"
            print(f"\n{label}: loaded in {seconds:.1f} s{budget_text}; decoder layers per device {spread}; "
                  f"held GPU0 {held[0] / MiB:.0f} MiB, GPU1 {held[1] / MiB:.0f} MiB")
            if budget is not None and set(placement.values()) != {0, 1}:
                failures.append(f"{label}: expected a split over GPUs 0 and 1, got {sorted(set(map(str, placement.values())))}")
            outputs = {b: logits_and_tokens(model, p, args.new_tokens) for b, p in prompts.items()}
            if label.startswith("(a)"):
                reference = outputs
            else:
                for b, (logits, tokens) in outputs.items():
                    ref_logits, ref_tokens = reference[b]
                    if int8:
                        same = torch.equal(logits, ref_logits) and torch.equal(tokens, ref_tokens)
                        print(f"  batch {b}: logits and {args.new_tokens} greedy tokens equal to (a): {same}")
                        if not same:
                            diff = (logits - ref_logits).abs().max().item()
                            failures.append(f"{label} batch {b}: differs from (a), max |logit diff| {diff:.3g}, "
                                            f"tokens equal {torch.equal(tokens, ref_tokens)}")
                    else:
                        rel = ((logits - ref_logits).norm() / logits.norm()).item()
                        print(f"  batch {b}: relative logit difference int8 (a) vs fp16: {rel:.4f}")
            speeds = {}
            for b, p in prompts.items():
                speeds[b] = tokens_per_second(model, p, args.new_tokens)
                print(f"  generate batch {b}, {args.new_tokens} new tokens: {speeds[b]:.1f} tokens/s")
            rows.append((label, held, speeds))
            del model
            free_all()

    print(f"\n{'placement':<20}{'GPU0 MiB':>10}{'GPU1 MiB':>10}{'total MiB':>11}"
          + "".join(f"{f'tok/s b{b}':>12}" for b in args.batches))
    for label, held, speeds in rows:
        print(f"{label:<20}{held[0] / MiB:>10.0f}{held[1] / MiB:>10.0f}{sum(held) / MiB:>11.0f}"
              + "".join(f"{speeds[b]:>12.1f}" for b in args.batches))
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        return 1
    print("\nOK: int8 split over 2 GPUs gives exactly the single-GPU logits and tokens.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
