"""Tests of llmint8.hf: Int8Config, from_pretrained/save_pretrained with OPT and BLOOM, PEFT LoRA."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, BloomConfig, BloomForCausalLM, OPTConfig, OPTForCausalLM

import llmint8.hf  # noqa: F401  (registers quant_method "llmint8")
from llmint8.hf import Int8Config
from llmint8.nn import Linear8bitLt, replace_8bit_linear

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
PROMPT = torch.tensor([[2, 7, 11, 19, 23, 5]])
# Inputs are built on the CPU and moved to each model's device: from_pretrained with an Int8Config
# and no device_map places the model on the current CUDA device when there is one (like
# bitsandbytes), so these tests run unchanged on CPU-only and CUDA machines. Results that compare
# two models are brought back to the CPU.


def tiny_opt():
    config = OPTConfig(vocab_size=96, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=64, word_embed_proj_dim=32)
    return OPTForCausalLM(config).eval()


def tiny_bloom():
    config = BloomConfig(vocab_size=96, hidden_size=32, n_layer=2, n_head=4)
    return BloomForCausalLM(config).eval()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=[tiny_opt, tiny_bloom], ids=["opt", "bloom"])
def saved_fp32_model(request, tmp_path):
    model = request.param()
    model.save_pretrained(tmp_path / "fp32")
    return model, tmp_path / "fp32"


def load_int8(path, **kwargs):
    return AutoModelForCausalLM.from_pretrained(path, quantization_config=Int8Config(), dtype=torch.float32,
                                                **kwargs).eval()


def greedy(model, new_tokens=8):
    prompt = PROMPT.to(model.device)
    return model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False).cpu()


@torch.no_grad()
def logits(model):
    return model(PROMPT.to(model.device)).logits.cpu()


def test_config_validates_and_round_trips():
    with pytest.raises(ValueError, match="threshold"):
        Int8Config(threshold=-1)
    with pytest.raises(TypeError, match="modules_to_not_convert"):
        Int8Config(modules_to_not_convert="lm_head")
    config = Int8Config(threshold=4.0, modules_to_not_convert=["fc2"], outlier_capacity=8)
    restored = Int8Config.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored.to_dict() == config.to_dict() == {
        "quant_method": "llmint8", "threshold": 4.0, "modules_to_not_convert": ["fc2"], "outlier_capacity": 8}


def test_uncapped_outlier_capacity_round_trips_and_reaches_every_layer(saved_fp32_model):
    config = Int8Config(outlier_capacity=None)
    assert Int8Config.from_dict(json.loads(json.dumps(config.to_dict()))).outlier_capacity is None
    _, path = saved_fp32_model
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=config, dtype=torch.float32).eval()
    layers = [m for m in model.modules() if isinstance(m, Linear8bitLt)]
    assert layers and all(layer.outlier_capacity == layer.in_features for layer in layers)


def test_from_pretrained_quantizes_and_save_reload_is_identical(saved_fp32_model, tmp_path):
    fp32_model, path = saved_fp32_model
    model = load_int8(path)
    int8_layers = [m for m in model.modules() if isinstance(m, Linear8bitLt)]
    assert int8_layers and all(layer.weight.holds_int8 for layer in int8_layers)
    assert not isinstance(model.get_output_embeddings(), Linear8bitLt)
    expected = logits(fp32_model)
    assert ((logits(model) - expected).norm() / expected.norm()) < 5e-2
    tokens = greedy(model)

    model.save_pretrained(tmp_path / "int8")
    config = json.loads((tmp_path / "int8" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "llmint8"
    saved = load_file(tmp_path / "int8" / "model.safetensors")
    int8_keys = [key for key, value in saved.items() if value.dtype == torch.int8]
    assert int8_keys and all(key.removesuffix("weight") + "SCB" in saved for key in int8_keys)

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "int8").eval()
    assert isinstance(reloaded.hf_quantizer.quantization_config, Int8Config)
    # weight + SCB + weight_format of each layer deserialize together (not reported as unexpected
    # keys leaving an int8 weight without its scales), with the scales on the weight's device.
    reloaded_layers = [m for m in reloaded.modules() if isinstance(m, Linear8bitLt)]
    assert len(reloaded_layers) == len(int8_layers)
    for layer in reloaded_layers:
        assert layer.weight.holds_int8 and layer.weight.SCB.dtype == torch.float32
        assert layer.weight.device == layer.weight.SCB.device == reloaded.device
    assert torch.equal(logits(reloaded), logits(model))
    assert torch.equal(greedy(reloaded), tokens)


def test_modules_to_not_convert_is_honoured(tmp_path):
    tiny_opt().save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=Int8Config(modules_to_not_convert=["fc2"]))
    assert type(model.model.decoder.layers[0].fc2) is torch.nn.Linear
    assert isinstance(model.model.decoder.layers[0].fc1, Linear8bitLt)


def test_converted_model_generates_like_from_pretrained(tmp_path):
    model = tiny_opt()
    model.save_pretrained(tmp_path)
    replace_8bit_linear(model)
    loaded = load_int8(tmp_path)
    # Same int8 weights, compared on the same device (and so through the same kernels).
    model.to(loaded.device)
    assert torch.equal(greedy(model), greedy(loaded))


def saved_int8_opt(tmp_path):
    load_int8(_saved_fp32(tmp_path)).save_pretrained(tmp_path / "int8")
    return tmp_path / "int8"


def _saved_fp32(tmp_path):
    tiny_opt().save_pretrained(tmp_path / "fp32")
    return tmp_path / "fp32"


def test_checkpoint_missing_scb_fails_naming_the_key(tmp_path, caplog):
    path = saved_int8_opt(tmp_path)
    state = load_file(path / "model.safetensors")
    del state["model.decoder.layers.0.fc1.SCB"]
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match="conversion"):
        AutoModelForCausalLM.from_pretrained(path)
    # transformers logs the op's ValueError in its load report before raising.
    assert "'model.decoder.layers.0.fc1.SCB' is missing" in caplog.text


def test_truncated_checkpoint_fails_and_leaves_a_loaded_model_unchanged(tmp_path):
    path = saved_int8_opt(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(path)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    # A truncated copy: the loaded model's tensors may be memory-mapped from the original file.
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    file = broken / "model.safetensors"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(Exception, match="(?i)incomplete|truncat|invalid|metadata|deserializ"):
        AutoModelForCausalLM.from_pretrained(broken)
    with pytest.raises(Exception, match="(?i)incomplete|truncat|invalid|metadata|deserializ"):
        model.load_state_dict(load_file(file))
    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_disk_offload_is_refused(tmp_path):
    with pytest.raises(ValueError, match="disk"):
        AutoModelForCausalLM.from_pretrained(_saved_fp32(tmp_path), quantization_config=Int8Config(),
                                             device_map={"": "disk"}, offload_folder=str(tmp_path / "off"))


def test_peft_lora_trains_on_an_int8_model(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = load_int8(_saved_fp32(tmp_path))
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc1"],
                                            lora_dropout=0.0))
    int8_before = {name: p.clone() for name, p in lora.named_parameters() if p.dtype == torch.int8}
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    batch = torch.randint(0, 96, (4, 12)).to(lora.device)
    losses = []
    lora.train()
    for _ in range(8):
        loss = lora(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    assert all(torch.equal(p, int8_before[name]) for name, p in lora.named_parameters() if p.dtype == torch.int8)


@requires_cuda
def test_from_pretrained_on_cuda_loads_int8_on_the_device(tmp_path):
    path = _saved_fp32(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=Int8Config(), dtype=torch.float16,
                                                 device_map={"": 0})
    layer = model.model.decoder.layers[0].fc1
    assert layer.weight.device.type == "cuda" and layer.weight.SCB.device.type == "cuda"
    assert layer.weight.dtype == torch.int8 and layer.weight.SCB.dtype == torch.float32
    out = model.generate(PROMPT.cuda(), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, PROMPT.shape[1] + 4)
