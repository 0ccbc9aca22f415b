"""Tests of llmint8.nn: Int8Params, Linear8bitLt, state dicts, replace_8bit_linear, model_memory_bytes."""
import copy
import io
import pickle

import pytest
import torch
from torch import nn

import llmint8  # noqa: F401  (registers the ops)
from llmint8 import ops
from llmint8.nn import (
    Int8Params,
    Linear8bitLt,
    model_memory_bytes,
    replace_8bit_linear,
)

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def inputs_with_outliers(shape, dtype, outlier_cols=(3, 17), scale=20.0):
    """Random inputs whose ``outlier_cols`` exceed threshold 6, like LLM activations' systematic outliers."""
    x = torch.randn(shape)
    x[..., list(outlier_cols)] *= scale
    return x.to(dtype)


def quantized_layer(in_features=64, out_features=48, bias=True, **kwargs):
    return Linear8bitLt(in_features, out_features, bias=bias, **kwargs).cpu()  # .cpu() quantizes


def assert_same_int8(a: Int8Params, b: Int8Params):
    assert a.holds_int8 and b.holds_int8
    assert a.dtype == b.dtype == torch.int8 and a.SCB.dtype == b.SCB.dtype == torch.float32
    assert torch.equal(a.data.cpu(), b.data.cpu()) and torch.equal(a.SCB.cpu(), b.SCB.cpu())


def relative_error(actual, expected):
    return ((actual.double() - expected).norm() / expected.norm()).item()


# ---------------------------------------------------------------- Int8Params


def test_int8params_keeps_float_weight_until_put_on_a_device():
    weight = torch.randn(8, 16)
    param = Int8Params(weight)
    assert not param.holds_int8 and param.CB is None and param.dtype == torch.float32
    assert not param.to(torch.float16).holds_int8, "a dtype-only .to() must not quantize"
    assert not param.to("meta").holds_int8
    moved = param.to("cpu")
    expected_cb, expected_scb = ops.quantize_colwise(weight)
    assert moved.holds_int8 and not moved.requires_grad
    assert torch.equal(moved.CB, expected_cb) and torch.equal(moved.SCB, expected_scb)
    assert not param.holds_int8, ".to() returns a new parameter and leaves the original alone"


def test_quantize_is_explicit_and_idempotent():
    param = Int8Params(torch.randn(8, 16), requires_grad=True)
    assert param.quantize_() is param and param.holds_int8 and not param.requires_grad
    cb = param.data
    param.quantize_()
    assert param.data is cb or torch.equal(param.data, cb)


def test_has_fp16_weights_params_never_quantize_on_move():
    param = Int8Params(torch.randn(8, 16), has_fp16_weights=True)
    assert param.requires_grad and not param.cpu().holds_int8
    with pytest.raises(ValueError, match="has_fp16_weights"):
        param.quantize_()


@pytest.mark.parametrize(
    "round_trip",
    [
        copy.deepcopy,
        lambda p: pickle.loads(pickle.dumps(p)),
        lambda p: torch.load(_saved(p), weights_only=False),
        lambda p: p.to("cpu"),
        lambda p: p.to(torch.float16),
        lambda p: p.cpu(),
    ],
    ids=["deepcopy", "pickle", "torch.save", "to_cpu", "to_dtype", "cpu"],
)
def test_int8params_round_trips_keep_cb_and_scb(round_trip):
    param = Int8Params(torch.randn(8, 16)).quantize_()
    copied = round_trip(param)
    assert isinstance(copied, Int8Params)
    assert_same_int8(copied, param)
    assert not copied.requires_grad


def _saved(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


def test_int8params_rejects_inconsistent_arguments():
    with pytest.raises(ValueError, match="SCB"):
        Int8Params(torch.zeros(4, 4, dtype=torch.int8))
    with pytest.raises(ValueError, match="shape"):
        Int8Params(torch.zeros(4, 4, dtype=torch.int8), SCB=torch.ones(3))
    with pytest.raises(ValueError, match="float32"):
        Int8Params(torch.zeros(4, 4, dtype=torch.int8), SCB=torch.ones(4, dtype=torch.float16))


def test_moving_a_quantized_module_never_requantizes(monkeypatch):
    layer = quantized_layer()
    before = copy.deepcopy(layer.weight)

    def fail(*args):
        raise AssertionError("quantize_colwise called while moving an int8 weight")

    monkeypatch.setattr(ops, "quantize_colwise", fail)
    layer.cpu().to("cpu").half().to(torch.bfloat16).float()
    assert_same_int8(layer.weight, before)
    assert layer.bias.dtype == torch.float32


@requires_cuda
def test_cpu_cuda_round_trip_moves_cb_and_scb():
    layer = quantized_layer()
    before = copy.deepcopy(layer.weight)
    layer.cuda()
    assert layer.weight.device.type == "cuda" and layer.weight.SCB.device.type == "cuda"
    assert_same_int8(layer.weight, before)
    layer.cpu()
    assert_same_int8(layer.weight, before)


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("leading_shape", [(7,), (2, 5), (40,), (3, 9)], ids=["2d", "3d", "2d-large", "3d-large"])
@pytest.mark.parametrize("exact_decomposition", [False, True])
def test_linear_matches_float64_reference(dtype, leading_shape, exact_decomposition):
    weight, bias = torch.randn(48, 64) * 0.1, torch.randn(48)
    layer = Linear8bitLt(64, 48, threshold=6.0, exact_decomposition=exact_decomposition)
    layer.load_state_dict({"weight": weight.to(dtype), "bias": bias.to(dtype)})
    layer = layer.to(dtype)
    x = inputs_with_outliers((*leading_shape, 64), dtype)
    out = layer(x)
    assert out.dtype == dtype and out.shape == (*leading_shape, 48)
    expected = x.double() @ weight.to(dtype).double().T + bias.to(dtype).double()
    assert relative_error(out, expected) < 2e-2


def test_outliers_are_what_keep_the_error_small():
    weight = torch.randn(48, 64) * 0.1
    x = inputs_with_outliers((16, 64), torch.float32)
    expected = x.double() @ weight.double().T
    errors = {}
    for threshold in (0.0, 6.0):
        layer = Linear8bitLt(64, 48, bias=False, threshold=threshold, exact_decomposition=True)
        layer.load_state_dict({"weight": weight})
        errors[threshold] = relative_error(layer(x), expected)
    assert errors[6.0] < errors[0.0] / 2, errors


@pytest.mark.parametrize("rows", [9, ops.SMALL_BATCH_ROWS + 1])
def test_linear_uses_the_decomposition_when_asked_or_above_the_small_batch_rows(rows):
    layer = quantized_layer()
    x = inputs_with_outliers((rows, 64), torch.float32)
    expected = ops.int8_linear(x, layer.weight.data, layer.weight.SCB, layer.bias, 6.0)
    layer.exact_decomposition = rows <= ops.SMALL_BATCH_ROWS
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_linear_small_batches_use_the_int8_weight_path():
    layer = quantized_layer()
    x = inputs_with_outliers((ops.SMALL_BATCH_ROWS, 64), torch.float32)
    expected = ops.int8_weight_linear(x, layer.weight.data, layer.weight.SCB, layer.bias)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_empty_batch(dtype):
    layer = quantized_layer().to(dtype)
    assert layer(torch.empty(0, 64, dtype=dtype)).shape == (0, 48)
    assert layer(torch.empty(2, 0, 64, dtype=dtype)).shape == (2, 0, 48)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_forward_never_mutates_bias(dtype):
    layer = quantized_layer().to(dtype)
    bias_before = layer.bias.detach().clone()
    layer(inputs_with_outliers((4, 64), dtype))
    layer(inputs_with_outliers((4, 64), torch.float32))
    assert layer.bias.dtype == dtype and torch.equal(layer.bias, bias_before)


def test_forward_rejects_bad_inputs():
    layer = quantized_layer()
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        layer(torch.ones(2, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match="in_features=64"):
        layer(torch.ones(2, 63))


def test_constructor_validates_threshold_and_capacity():
    with pytest.raises(ValueError, match="threshold"):
        Linear8bitLt(4, 4, threshold=-1)
    with pytest.raises(ValueError, match="outlier_capacity"):
        Linear8bitLt(4, 4, outlier_capacity=-2)


def test_capacity_none_splits_out_every_outlier_column():
    # 40 of 64 columns are outliers: capacity 8 leaves 32 of them in int8, None keeps all in 16-bit.
    x = inputs_with_outliers((6, 64), torch.float32, outlier_cols=range(40))
    uncapped = quantized_layer(outlier_capacity=None, exact_decomposition=True)
    capped = quantized_layer(outlier_capacity=8, exact_decomposition=True)
    capped.load_state_dict(uncapped.state_dict())
    assert uncapped.outlier_capacity == 64
    weight = ops.dequantize_int8_weight(uncapped.weight, uncapped.weight.SCB, torch.float64)
    expected = x.double() @ weight.T + uncapped.bias.double()
    with torch.no_grad():
        composed = ops.int8_linear_composed(x, uncapped.weight, uncapped.weight.SCB, uncapped.bias, 6.0, 64)
        assert torch.equal(uncapped(x), composed)
        assert relative_error(uncapped(x), expected) < relative_error(capped(x), expected)


def test_inference_and_autograd_forwards_agree():
    layer = quantized_layer(exact_decomposition=True)
    x = inputs_with_outliers((3, 5, 64), torch.float32)
    with torch.no_grad():
        inference = layer(x)
    x.requires_grad_(True)
    tracked = layer(x)
    assert tracked.grad_fn is not None and torch.equal(inference, tracked)


@requires_cuda
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cuda_forward_matches_cpu_without_host_sync(dtype):
    layer = quantized_layer().to(dtype)
    x = inputs_with_outliers((5, 64), dtype)
    expected = layer(x)
    layer.cuda()
    x_cuda = x.cuda()
    layer(x_cuda)  # warm-up: first calls may allocate workspaces
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = layer(x_cuda)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(out.cpu(), expected, rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------- backward


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_input_gradient_goes_through_the_dequantized_weight(dtype):
    layer = quantized_layer().to(dtype)
    x = inputs_with_outliers((2, 3, 64), dtype).requires_grad_(True)
    grad_out = torch.randn(2, 3, 48).to(dtype)
    layer(x).backward(grad_out)
    dequantized = ops.dequantize_int8_weight(layer.weight.data, layer.weight.SCB, torch.float64)
    expected = grad_out.double() @ dequantized
    assert x.grad.dtype == dtype
    assert relative_error(x.grad, expected) < 1e-2
    assert layer.weight.grad is None


def test_has_fp16_weights_trains_its_master_weight():
    torch.manual_seed(1)
    target = nn.Linear(32, 8)
    layer = Linear8bitLt(32, 8, has_fp16_weights=True)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(64, 32)
    losses = []
    for _ in range(30):
        loss = (layer(x) - target(x).detach()).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert not layer.weight.holds_int8 and layer.weight.dtype == torch.float32
    assert losses[-1] < 0.5 * losses[0], losses


def test_has_fp16_weights_weight_gradient_matches_float():
    layer = Linear8bitLt(32, 8, has_fp16_weights=True, threshold=0.0)
    x = torch.randn(5, 32)
    grad_out = torch.randn(5, 8)
    layer(x).backward(grad_out)
    torch.testing.assert_close(layer.weight.grad, grad_out.T @ x)
    torch.testing.assert_close(layer.bias.grad, grad_out.sum(0))


# ---------------------------------------------------------------- state dict


def test_state_dict_uses_the_bitsandbytes_keys():
    state = quantized_layer().state_dict()
    assert set(state) == {"weight", "bias", "SCB", "weight_format"}
    assert state["weight"].dtype == torch.int8 and state["SCB"].dtype == torch.float32
    assert state["weight_format"].dtype == torch.uint8 and state["weight_format"].item() == 0


def bitsandbytes_state_dict(out_features=48, in_features=64):
    """A state dict as bitsandbytes' Linear8bitLt saves it (row-major int8, weight_format 0)."""
    weight_int8, scb = ops.quantize_colwise(torch.randn(out_features, in_features))
    return {
        "weight": weight_int8,
        "SCB": scb,
        "weight_format": torch.tensor(0, dtype=torch.uint8),
        "bias": torch.randn(out_features),
    }


def test_bitsandbytes_state_dict_loads_on_a_fresh_cpu_module():
    state = bitsandbytes_state_dict()
    layer = Linear8bitLt(64, 48)  # float, on CPU, never moved: no .cuda() needed
    layer.load_state_dict(state)
    assert layer.weight.holds_int8
    assert torch.equal(layer.weight.data, state["weight"]) and torch.equal(layer.weight.SCB, state["SCB"])
    x = torch.randn(3, 64)
    expected = ops.int8_weight_linear(x, state["weight"], state["SCB"], state["bias"])
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip_between_modules():
    source = quantized_layer()
    target = quantized_layer()
    target.load_state_dict(source.state_dict())
    assert_same_int8(target.weight, source.weight)


def test_float_checkpoint_is_quantized_on_load():
    weight = torch.randn(48, 64)
    layer = quantized_layer()
    layer.load_state_dict({"weight": weight.half(), "bias": torch.zeros(48)})
    expected_cb, expected_scb = ops.quantize_colwise(weight.half())
    assert torch.equal(layer.weight.data, expected_cb) and torch.equal(layer.weight.SCB, expected_scb)


def test_has_fp16_weights_state_dict_stays_float():
    layer = Linear8bitLt(64, 48, has_fp16_weights=True)
    assert set(layer.state_dict()) == {"weight", "bias"}
    weight = torch.randn(48, 64)
    layer.load_state_dict({"weight": weight, "bias": torch.zeros(48)})
    assert torch.equal(layer.weight, weight) and layer.weight.requires_grad


def _corrupt(state, key, value):
    state = dict(state)
    if value is None:
        del state[key]
    else:
        state[key] = value
    return state


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("SCB", None, "'SCB' is missing"),
        ("weight", torch.zeros(48, 63, dtype=torch.int8), r"'weight' must have shape \[48, 64\]"),
        ("SCB", torch.ones(47), r"'SCB' must have shape \[48\]"),
        ("SCB", torch.ones(48, dtype=torch.float16), "'SCB' must be float32"),
        ("weight", torch.zeros(48, 64, dtype=torch.int16), "'weight' must be int8"),
        ("weight_format", torch.tensor(2, dtype=torch.uint8), "'weight_format' is 2"),
        ("bias", torch.ones(47), r"'bias' must be a floating tensor of shape \[48\]"),
    ],
)
def test_bad_checkpoints_raise_and_leave_the_module_unchanged(key, value, message):
    layer = quantized_layer()
    before = {name: tensor.clone() for name, tensor in layer.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        layer.load_state_dict(_corrupt(bitsandbytes_state_dict(), key, value))
    after = layer.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_float_checkpoint_of_wrong_shape_raises():
    layer = quantized_layer()
    with pytest.raises(ValueError, match=r"'weight' must have shape \[48, 64\]"):
        layer.load_state_dict({"weight": torch.randn(64, 48), "bias": torch.zeros(48)})


# ---------------------------------------------------------------- replace_8bit_linear


class TinyLM(nn.Module):
    """Embedding, two blocks and an output Linear tied to the embedding under a non-default name."""

    def __init__(self, vocab=32, dim=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
                                    for _ in range(2))
        self.lm_head = nn.Linear(dim, dim)
        self.decoder_out = nn.Linear(dim, vocab, bias=False)
        self.decoder_out.weight = self.embed.weight

    def forward(self, ids):
        h = self.embed(ids)
        for block in self.blocks:
            h = h + block(h)
        return self.decoder_out(self.lm_head(h))


EXPECTED_CONVERTED = ["blocks.0.0", "blocks.0.2", "blocks.1.0", "blocks.1.2"]


def modules_snapshot(model):
    return {name: module for name, module in model.named_modules()}


def test_replace_converts_and_quantizes_a_loaded_model():
    model = TinyLM()
    ids = torch.randint(0, 32, (2, 5))
    expected = model(ids)
    converted = replace_8bit_linear(model)
    assert converted == EXPECTED_CONVERTED
    for name in converted:
        layer = model.get_submodule(name)
        assert isinstance(layer, Linear8bitLt) and layer.weight.holds_int8
    assert type(model.lm_head) is nn.Linear, "lm_head is skipped by default"
    assert type(model.decoder_out) is nn.Linear, "a Linear tied to an embedding is skipped"
    assert model.decoder_out.weight is model.embed.weight
    assert relative_error(model(ids), expected.double()) < 3e-2


def test_replace_keeps_bias_parameters():
    model = TinyLM()
    bias = model.blocks[0][0].bias
    replace_8bit_linear(model)
    assert model.blocks[0][0].bias is bias


def test_replace_on_meta_allocates_nothing():
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = TinyLM()
    # init_empty_weights re-creates every registered Parameter, which unties decoder_out; tie
    # again afterwards, as transformers' tie_weights does.
    model.decoder_out.weight = model.embed.weight
    converted = replace_8bit_linear(model, modules_to_not_convert=["lm_head", "blocks.1"])
    assert converted == ["blocks.0.0", "blocks.0.2"]
    assert all(p.device.type == "meta" for p in model.parameters())
    layer = model.blocks[0][0]
    assert isinstance(layer, Linear8bitLt) and not layer.weight.holds_int8
    # A 16-bit checkpoint then quantizes on arrival, on the checkpoint's device.
    layer.load_state_dict({"weight": torch.randn(32, 16), "bias": torch.zeros(32)}, assign=True)
    assert layer.weight.holds_int8 and layer.weight.device.type == "cpu"


def test_replace_twice_raises_and_leaves_the_model_unchanged():
    model = TinyLM()
    replace_8bit_linear(model)
    before = modules_snapshot(model)
    with pytest.raises(ValueError, match="already converted"):
        replace_8bit_linear(model)
    assert modules_snapshot(model) == before


def test_replace_without_linear_raises():
    model = nn.Sequential(nn.Embedding(4, 4), nn.ReLU())
    with pytest.raises(ValueError, match="no nn.Linear"):
        replace_8bit_linear(model)
    only_skipped = nn.ModuleDict({"lm_head": nn.Linear(4, 4)})
    with pytest.raises(ValueError, match="no nn.Linear"):
        replace_8bit_linear(only_skipped)


def test_replace_rejects_unsupported_dtypes_before_changing_anything():
    model = TinyLM()
    model.blocks[1][2].double()
    before = modules_snapshot(model)
    with pytest.raises(TypeError, match=r"'blocks.1.2.weight' must be float16, bfloat16 or float32"):
        replace_8bit_linear(model)
    assert modules_snapshot(model) == before


def test_replace_failure_mid_swap_restores_every_module(monkeypatch):
    model = TinyLM()
    before = modules_snapshot(model)
    calls = []
    original = Int8Params.quantize_

    def fail_on_third(self):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated out of memory")
        return original(self)

    monkeypatch.setattr(Int8Params, "quantize_", fail_on_third)
    with pytest.raises(RuntimeError, match="simulated"):
        replace_8bit_linear(model)
    assert modules_snapshot(model) == before
    assert not any(isinstance(m, Linear8bitLt) for m in model.modules())


def test_replace_validates_threshold():
    with pytest.raises(ValueError, match="threshold"):
        replace_8bit_linear(TinyLM(), threshold=float("nan"))


def test_model_memory_bytes_counts_scb():
    layer = quantized_layer(64, 48)
    assert model_memory_bytes(layer) == 48 * 64 + 48 * 4 + 48 * 4  # CB + SCB + fp32 bias


# ---------------------------------------------------------------- OPT-350m dimensions


def opt_350m_config():
    from transformers import OPTConfig

    # facebook/opt-350m: the real dimensions (OPTConfig's defaults are the 125m ones).
    return OPTConfig(hidden_size=1024, ffn_dim=4096, num_hidden_layers=24, num_attention_heads=16,
                     vocab_size=50272, word_embed_proj_dim=512, max_position_embeddings=2048)


def test_opt_350m_converts_on_meta():
    from accelerate import init_empty_weights
    from transformers import OPTForCausalLM

    with init_empty_weights():
        model = OPTForCausalLM(opt_350m_config())
    converted = replace_8bit_linear(model)
    # 6 Linear per layer, plus project_in/project_out (512 <-> 1024); lm_head stays.
    assert len(converted) == 24 * 6 + 2
    assert all(p.device.type == "meta" for p in model.parameters())


def test_opt_350m_int8_memory_is_at_most_55_percent_of_fp16():
    from transformers import OPTForCausalLM

    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)  # allocate in fp16 directly (~0.7 GB)
    try:
        model = OPTForCausalLM(opt_350m_config())
    finally:
        torch.set_default_dtype(default_dtype)
    fp16_bytes = model_memory_bytes(model)
    replace_8bit_linear(model)
    ratio = model_memory_bytes(model) / fp16_bytes
    # Embeddings (50272 x 512) and lm_head stay fp16, so the ratio sits above 0.5.
    assert ratio <= 0.55, f"int8 model takes {ratio:.3f} of its fp16 size"


# The bar for numerics: on the same inputs, an error against float64 no worse than
# bitsandbytes'. Runs where bitsandbytes imports and a GPU is present (its int8 path is CUDA-only);
# its absence skips. The exact decomposition is the same arithmetic, so it may differ from
# bitsandbytes' only by rounding (2%); the default path at <= 16 rows rounds only the weight.
@requires_cuda
@pytest.mark.parametrize("rows", [1, 16, 300])
@pytest.mark.parametrize("exact", [False, True])
def test_error_against_float64_is_no_worse_than_bitsandbytes(rows, exact):
    bnb = pytest.importorskip("bitsandbytes")
    in_features, out_features = 1024, 512
    x = inputs_with_outliers((rows, in_features), torch.float16, outlier_cols=range(0, in_features, 128)).cuda()
    weight = (torch.randn(out_features, in_features) / 32).half()
    ours = Linear8bitLt(in_features, out_features, bias=False, threshold=6.0, exact_decomposition=exact)
    ours.load_state_dict({"weight": weight})
    ours = ours.half().cuda()
    theirs = bnb.nn.Linear8bitLt(in_features, out_features, bias=False, has_fp16_weights=False, threshold=6.0)
    theirs.weight = bnb.nn.Int8Params(weight.clone(), requires_grad=False, has_fp16_weights=False)
    theirs = theirs.cuda()
    expected = x.double() @ weight.cuda().double().T

    def rel_error(out):
        return ((out.double() - expected).norm() / expected.norm()).item()

    with torch.no_grad():
        ours_error, theirs_error = rel_error(ours(x)), rel_error(theirs(x))
    slack = 1.02 if exact or rows > ops.SMALL_BATCH_ROWS else 1.0
    assert ours_error <= theirs_error * slack, (ours_error, theirs_error)
