"""Placement of int8 models over several devices (GitHub issue 7).

On the CPU, with meta models: transformers' and accelerate's device-map sizing count an int8
layer by its int8 bytes plus its fp32 SCB, so more decoder layers fit per GPU than in 16-bit;
offload to the CPU next to GPUs is refused with a clear message; ``device_map="auto"`` on a
CPU-only budget loads the whole model on the CPU. On a machine with >= 2 GPUs: a model split over
two GPUs gives exactly the single-GPU logits and tokens (from_pretrained and dispatch_model).
"""
import pytest
import torch
from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
from accelerate.utils import compute_module_sizes as accelerate_module_sizes
from transformers import AutoModelForCausalLM, OPTConfig, OPTForCausalLM
from transformers.integrations.accelerate import compute_module_sizes as hf_module_sizes
from transformers.integrations.accelerate import infer_auto_device_map as hf_infer_auto_device_map

import llmint8.hf  # noqa: F401  (registers quant_method "llmint8")
from llmint8.hf import Int8Config, Int8HfQuantizer
from llmint8.nn import (Linear8bitLt, decoder_layers_per_device, int8_module_sizes, int8_special_dtypes,
                        model_memory_bytes, replace_8bit_linear)

requires_2_gpus = pytest.mark.skipif(
    torch.cuda.device_count() < 2,
    reason=f"needs >= 2 CUDA devices to split a model (found {torch.cuda.device_count()})",
)
LAYERS = 12


def opt_config(hidden=256, ffn=1024, layers=LAYERS, vocab=1000):
    return OPTConfig(vocab_size=vocab, hidden_size=hidden, ffn_dim=ffn, num_hidden_layers=layers,
                     num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=hidden)


def meta_opt(dtype=torch.float16, **kwargs):
    with init_empty_weights():
        return OPTForCausalLM(opt_config(**kwargs)).to(dtype)


def meta_int8_opt():
    """A meta OPT converted as from_pretrained converts it, and its quantizer."""
    model = meta_opt()
    quantizer = Int8HfQuantizer(Int8Config())
    quantizer.preprocess_model(model, device_map="auto")
    return model, quantizer


def int8_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, Linear8bitLt)}


def test_transformers_sizes_int8_layers_by_int8_bytes_plus_scb():
    model, quantizer = meta_int8_opt()
    layers = int8_layers(model)
    assert len(layers) == 6 * LAYERS and all(m.weight.device.type == "meta" for m in layers.values())
    sizes, _ = hf_module_sizes(model, quantizer, only_modules=False)
    for name, module in layers.items():
        expected = module.out_features * module.in_features + 4 * module.out_features
        assert sizes[f"{name}.weight"] == pytest.approx(expected, abs=1e-3)
        assert sizes[f"{name}.bias"] == 2 * module.out_features  # the bias stays 16-bit
    ours = int8_module_sizes(model)
    fp16_sizes, _ = hf_module_sizes(meta_opt(), None)
    for key in ("", "model.decoder.layers.0"):
        assert sizes[key] == pytest.approx(ours[key], abs=1e-2)
    # Linear weights are nearly all of a decoder layer: int8 + SCB is a bit over half of fp16.
    assert 0.5 < sizes["model.decoder.layers.0"] / fp16_sizes["model.decoder.layers.0"] < 0.52


def test_int8_module_sizes_on_meta_equal_the_bytes_of_the_real_int8_model():
    torch.manual_seed(0)
    meta = meta_opt(torch.float32, layers=2)
    replace_8bit_linear(meta)
    real = OPTForCausalLM(opt_config(layers=2)).eval()
    replace_8bit_linear(real)  # quantized on the CPU at once
    meta_sizes, real_sizes = int8_module_sizes(meta), int8_module_sizes(real)
    assert meta_sizes == real_sizes
    # Tied lm_head is counted once, as in model_memory_bytes (parameters are deduplicated).
    assert real_sizes[""] == model_memory_bytes(real)
    fc1 = real.model.decoder.layers[0].fc1
    assert real_sizes["model.decoder.layers.0.fc1.weight"] == fc1.weight.numel()
    assert real_sizes["model.decoder.layers.0.fc1.SCB"] == fc1.weight.SCB.numel() * 4
    # accelerate itself sees the real int8 weight as int8 but not SCB (not a parameter or buffer).
    accelerate_sizes = accelerate_module_sizes(real)
    scb = sum(v for k, v in real_sizes.items() if k.startswith("model.decoder.layers.0.") and k.endswith(".SCB"))
    assert accelerate_sizes["model.decoder.layers.0"] == real_sizes["model.decoder.layers.0"] - scb


def fake_budget(model_16bit):
    """Two fake GPUs of 3.5 fp16 decoder layers each, and a large CPU."""
    layer = hf_module_sizes(model_16bit, None)[0]["model.decoder.layers.0"]
    return {0: int(3.5 * layer), 1: int(3.5 * layer), "cpu": 100 * layer}


def test_auto_device_map_fits_more_int8_layers_per_gpu_than_fp16():
    model, quantizer = meta_int8_opt()
    fp16 = meta_opt()
    budget = fake_budget(fp16)
    no_split = fp16._no_split_modules
    fp16_counts = decoder_layers_per_device(hf_infer_auto_device_map(fp16, max_memory=budget, no_split_module_classes=no_split))
    int8_map = hf_infer_auto_device_map(model, max_memory=budget, no_split_module_classes=no_split,
                                        hf_quantizer=quantizer)
    int8_counts = decoder_layers_per_device(int8_map)
    assert int8_counts[0] > fp16_counts[0] and int8_counts[1] > fp16_counts[1], (int8_counts, fp16_counts)
    assert int8_counts.get("cpu", 0) < fp16_counts["cpu"]
    # The 10% headroom that from_pretrained takes off each GPU (not the CPU).
    assert quantizer.adjust_max_memory(budget) == {0: budget[0] * 0.9, 1: budget[1] * 0.9, "cpu": budget["cpu"]}


def test_accelerate_device_map_of_a_converted_meta_model_with_special_dtypes():
    # The replace_8bit_linear + accelerate.dispatch_model route: accelerate's own infer_auto_device_map.
    fp16 = meta_opt()
    budget = fake_budget(fp16)
    no_split = fp16._no_split_modules
    fp16_counts = decoder_layers_per_device(infer_auto_device_map(fp16, max_memory=budget, no_split_module_classes=no_split))
    model = meta_opt()
    replace_8bit_linear(model)
    special = int8_special_dtypes(model)
    assert set(special) == {f"{name}.weight" for name in int8_layers(model)}
    plain = decoder_layers_per_device(infer_auto_device_map(model, max_memory=budget, no_split_module_classes=no_split))
    assert plain == fp16_counts  # meta placeholders are 16-bit: without special_dtypes, no gain
    counts = decoder_layers_per_device(infer_auto_device_map(model, max_memory=budget, no_split_module_classes=no_split,
                                                     special_dtypes=special))
    assert counts[0] > fp16_counts[0] and counts[1] > fp16_counts[1], (counts, fp16_counts)


@pytest.fixture
def saved_opt(tmp_path):
    torch.manual_seed(0)
    OPTForCausalLM(opt_config(layers=2)).save_pretrained(tmp_path)
    return tmp_path


def test_device_map_auto_on_a_cpu_budget_loads_int8_on_the_cpu(saved_opt):
    # Without a GPU, "auto" places everything on the CPU; on a GPU machine the same CPU-only budget.
    budget = {} if not torch.cuda.is_available() else {"max_memory": {"cpu": "8GiB"}}
    model = AutoModelForCausalLM.from_pretrained(saved_opt, quantization_config=Int8Config(), device_map="auto",
                                                 **budget).eval()
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    layers = int8_layers(model)
    assert layers and all(m.weight.holds_int8 and m.weight.device.type == "cpu" for m in layers.values())
    reference = AutoModelForCausalLM.from_pretrained(saved_opt, quantization_config=Int8Config(),
                                                     device_map={"": "cpu"}).eval()
    prompt = torch.tensor([[2, 7, 11, 19, 23, 5]])
    with torch.no_grad():
        assert torch.equal(model(prompt).logits, reference(prompt).logits)


def test_cpu_offload_next_to_gpus_is_refused(saved_opt):
    # device_map="auto" with layers that do not fit the GPUs: transformers passes the inferred map
    # to validate_environment (here inferred from fake GPUs: accelerate drops absent devices).
    model, quantizer = meta_int8_opt()
    inferred = hf_infer_auto_device_map(model, max_memory=fake_budget(meta_opt()), hf_quantizer=quantizer,
                                        no_split_module_classes=model._no_split_modules)
    assert "cpu" in inferred.values()
    with pytest.raises(ValueError, match=r"on the CPU next to GPU modules \(model\.decoder\.layers\.\d+"):
        quantizer.validate_environment(device_map=inferred)
    quantizer.validate_environment(device_map={"": "cpu"})  # all on the CPU: int8 CPU kernels, no offload
    quantizer.validate_environment(device_map={"model": 0, "lm_head": 1})
    with pytest.raises(ValueError, match="disk"):
        quantizer.validate_environment(device_map={"model": 0, "lm_head": "disk"})
    if torch.cuda.is_available():
        # Room on GPU 0 for about one of the two decoder layers (after the quantizer's 10% margin).
        layer = hf_module_sizes(meta_opt(layers=2), None)[0]["model.decoder.layers.0"]
        with pytest.raises(ValueError, match="on the CPU next to GPU modules"):
            AutoModelForCausalLM.from_pretrained(saved_opt, quantization_config=Int8Config(), device_map="auto",
                                                 max_memory={0: int(1.6 * layer), "cpu": "8GiB"})
    # An explicit map: checked before anything is loaded.
    device_map = {"model.decoder.embed_tokens": 0, "model.decoder.embed_positions": 0,
                  "model.decoder.final_layer_norm": 0, "model.decoder.layers.0": 0,
                  "model.decoder.layers.1": "cpu", "lm_head": 0}
    with pytest.raises(ValueError, match="1 module\\(s\\) on the CPU next to GPU modules \\(model.decoder.layers.1\\)"):
        AutoModelForCausalLM.from_pretrained(saved_opt, quantization_config=Int8Config(), device_map=device_map)


# ----------------------------------------------------------------------------------------------
# >= 2 GPUs
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def saved_fp16_opt(tmp_path):
    torch.manual_seed(0)
    OPTForCausalLM(opt_config(hidden=512, ffn=2048, layers=8)).to(torch.float16).save_pretrained(tmp_path)
    return tmp_path


def outputs(model, prompts):
    with torch.no_grad():
        logits = model(prompts.to(model.device)).logits.cpu()
    tokens = model.generate(prompts.to(model.device), max_new_tokens=8, min_new_tokens=8, do_sample=False).cpu()
    return logits, tokens


@requires_2_gpus
def test_from_pretrained_split_over_two_gpus_equals_one_gpu(saved_fp16_opt):
    load = dict(quantization_config=Int8Config(), dtype=torch.float16)
    single = AutoModelForCausalLM.from_pretrained(saved_fp16_opt, device_map={"": 0}, **load).eval()
    int8_bytes = int8_module_sizes(single)[""]
    split = AutoModelForCausalLM.from_pretrained(saved_fp16_opt, device_map="auto",
                                                 max_memory={0: int(0.6 * int8_bytes), 1: 4 * int8_bytes},
                                                 **load).eval()
    assert set(split.hf_device_map.values()) == {0, 1}, split.hf_device_map
    for layer in int8_layers(split).values():
        assert layer.weight.holds_int8 and layer.weight.SCB.device == layer.weight.device
    prompts = torch.randint(4, 1000, (3, 10))
    single_logits, single_tokens = outputs(single, prompts)
    split_logits, split_tokens = outputs(split, prompts)
    assert torch.equal(split_logits, single_logits)
    assert torch.equal(split_tokens, single_tokens)


@requires_2_gpus
def test_dispatch_model_split_over_two_gpus_equals_one_gpu(saved_fp16_opt):
    def converted():
        model = OPTForCausalLM.from_pretrained(saved_fp16_opt, dtype=torch.float16).eval()
        replace_8bit_linear(model)  # quantized on the CPU (bit-identical to CUDA's quantization)
        return model

    single = converted().to(0)
    model = converted()
    sizes = int8_module_sizes(model)
    device_map = infer_auto_device_map(model, max_memory={0: int(0.6 * sizes[""]), 1: 4 * sizes[""]},
                                       no_split_module_classes=model._no_split_modules,
                                       special_dtypes=int8_special_dtypes(model))
    assert set(device_map.values()) == {0, 1}, device_map
    split = dispatch_model(model, device_map=device_map)
    for layer in int8_layers(split).values():
        assert layer.weight.device.type == "cuda" and layer.weight.SCB.device == layer.weight.device
    prompts = torch.randint(4, 1000, (3, 10))
    single_logits, single_tokens = outputs(single, prompts)
    split_logits, split_tokens = outputs(split, prompts)
    assert torch.equal(split_logits, single_logits)
    assert torch.equal(split_tokens, single_tokens)
