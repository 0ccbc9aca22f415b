"""The int8 forward has no host synchronization: torch.compile(fullgraph=True) and CUDA graphs."""
import pytest
import torch

import llmint8
from llmint8 import Linear8bitLt, ops

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def tiny_opt(device):
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(vocab_size=128, hidden_size=64, ffn_dim=256, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=64)
    torch.manual_seed(0)
    model = OPTForCausalLM(config).to(device).eval()
    # Scale a few embedding dimensions so threshold 6 really splits outlier columns.
    with torch.no_grad():
        model.model.decoder.embed_tokens.weight[:, [3, 40]] *= 60.0
    llmint8.replace_8bit_linear(model, threshold=6.0)
    return model


@pytest.mark.parametrize("rows", [4, 40])  # the int8-weight path and the decomposition
def test_compiled_layer_has_no_graph_breaks_and_matches_eager(rows):
    layer = Linear8bitLt(64, 48, threshold=6.0).cpu()
    x = torch.randn(rows, 64)
    x[:, 5] *= 30.0
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x), rtol=0, atol=0)


def test_compiled_model_forward_is_one_graph():
    model = tiny_opt("cpu")
    ids = torch.randint(0, 128, (2, 24))
    with torch.no_grad():
        eager = model(ids, use_cache=False).logits
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(ids, use_cache=False).logits, eager)


@requires_cuda
# 100: Hopper's tensor-core int8-weight kernel; 2100: the decomposition on every device.
@pytest.mark.parametrize("rows", [1, 16, 100, 2100])
def test_layer_captured_in_a_cuda_graph_replays_exactly(rows):
    layer = Linear8bitLt(256, 128, threshold=6.0).cuda().half()
    x = torch.randn(rows, 256, device="cuda", dtype=torch.half)
    x[:, 7] *= 30.0
    expected = layer(x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        layer(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = layer(x)
    x.copy_(torch.randn_like(x))
    x[:, 100] *= 30.0  # a different outlier column: the split happens on the device at replay
    graph.replay()
    torch.testing.assert_close(out, layer(x), rtol=0, atol=0)


@requires_cuda
def test_model_compiled_fullgraph_on_cuda_matches_eager():
    model = tiny_opt("cuda").half()
    ids = torch.randint(0, 128, (48, 48), device="cuda")
    with torch.no_grad():
        eager = model(ids, use_cache=False).logits
        compiled = torch.compile(model, fullgraph=True)(ids, use_cache=False).logits
        # Inductor fuses the fp16 layer norms and softmax differently from eager: compare as a whole.
        assert ((compiled.float() - eager.float()).norm() / eager.float().norm()).item() < 2e-3
        assert ops.SMALL_PRODUCT_ROWS < ids.numel()  # the decomposition ran on every device
