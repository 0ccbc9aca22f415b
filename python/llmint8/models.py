"""Loader for Karpathy's stories260K llama2.c checkpoint as a Hugging Face LlamaForCausalLM, with its decoder."""
from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch

__all__ = ["load_stories260k", "load_llama2c_tokenizer_decoder"]

BOS_ID = 1
EOS_ID = 2
_HEADER_FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
_BYTE_PIECE = re.compile(rb"^<0x([0-9A-Fa-f]{2})>$")


def load_stories260k(path_dir: Union[str, Path]):
    """``(LlamaForCausalLM in fp32, eval mode, decode)`` from ``stories260K.bin`` and ``tok512.bin`` in ``path_dir``.

    ``decode(token_ids) -> str`` turns generated ids back into text.
    """
    path_dir = Path(path_dir)
    model = _load_llama2c_checkpoint(path_dir / "stories260K.bin")
    return model, load_llama2c_tokenizer_decoder(path_dir / "tok512.bin")


def _load_llama2c_checkpoint(path: Path):
    from transformers import LlamaConfig, LlamaForCausalLM

    raw = path.read_bytes()
    header = dict(zip(_HEADER_FIELDS, struct.unpack("<7i", raw[:28])))
    if header["vocab_size"] <= 0:
        raise ValueError(f"{path}: an untied classifier (negative vocab_size) is not supported")
    floats = np.frombuffer(raw, dtype="<f4", offset=28)
    tensors = _read_llama2c_tensors(floats, header)
    config = LlamaConfig(
        vocab_size=header["vocab_size"],
        hidden_size=header["dim"],
        intermediate_size=header["hidden_dim"],
        num_hidden_layers=header["n_layers"],
        num_attention_heads=header["n_heads"],
        num_key_value_heads=header["n_kv_heads"],
        max_position_embeddings=header["seq_len"],
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(config)
    # lm_head.weight is absent on purpose: it is tied to the token embedding.
    result = model.load_state_dict(_to_hf_state_dict(tensors, header), strict=False)
    missing = set(result.missing_keys) - {"lm_head.weight"}
    if missing or result.unexpected_keys:
        raise ValueError(f"{path}: checkpoint does not match LlamaForCausalLM: missing {sorted(missing)}, "
                         f"unexpected {sorted(result.unexpected_keys)}")
    model.tie_weights()
    return model.float().eval()


def _read_llama2c_tensors(floats: np.ndarray, header: dict) -> dict[str, torch.Tensor]:
    """The checkpoint's arrays, in file order, as fp32 tensors (the trailing RoPE table is skipped)."""
    dim, hidden, layers, vocab = header["dim"], header["hidden_dim"], header["n_layers"], header["vocab_size"]
    kv_dim = dim * header["n_kv_heads"] // header["n_heads"]
    shapes = {
        "tok_embeddings": (vocab, dim),
        "attention_norm": (layers, dim),
        "wq": (layers, dim, dim),
        "wk": (layers, kv_dim, dim),
        "wv": (layers, kv_dim, dim),
        "wo": (layers, dim, dim),
        "ffn_norm": (layers, dim),
        "w1": (layers, hidden, dim),
        "w2": (layers, dim, hidden),
        "w3": (layers, hidden, dim),
        "norm": (dim,),
    }
    tensors, offset = {}, 0
    for name, shape in shapes.items():
        count = int(np.prod(shape))
        if offset + count > floats.size:
            raise ValueError(f"checkpoint is truncated: '{name}' {list(shape)} runs past the end of the file")
        tensors[name] = torch.from_numpy(floats[offset:offset + count].copy()).reshape(shape)
        offset += count
    return tensors


def _rotary_rows_to_hf(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Per head, row ``2*j + k`` (llama2.c interleaved rotary pairs) moves to ``k*(hd/2) + j`` (HF half split)."""
    rows, cols = weight.shape
    head_dim = rows // n_heads
    return weight.reshape(n_heads, head_dim // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _to_hf_state_dict(tensors: dict[str, torch.Tensor], header: dict) -> dict[str, torch.Tensor]:
    state = {"model.embed_tokens.weight": tensors["tok_embeddings"], "model.norm.weight": tensors["norm"]}
    for i in range(header["n_layers"]):
        layer = f"model.layers.{i}."
        state.update({
            layer + "input_layernorm.weight": tensors["attention_norm"][i],
            layer + "post_attention_layernorm.weight": tensors["ffn_norm"][i],
            layer + "self_attn.q_proj.weight": _rotary_rows_to_hf(tensors["wq"][i], header["n_heads"]),
            layer + "self_attn.k_proj.weight": _rotary_rows_to_hf(tensors["wk"][i], header["n_kv_heads"]),
            layer + "self_attn.v_proj.weight": tensors["wv"][i],
            layer + "self_attn.o_proj.weight": tensors["wo"][i],
            layer + "mlp.gate_proj.weight": tensors["w1"][i],
            layer + "mlp.down_proj.weight": tensors["w2"][i],
            layer + "mlp.up_proj.weight": tensors["w3"][i],
        })
    return state


def load_llama2c_tokenizer_decoder(path: Union[str, Path]) -> Callable[[Sequence[int]], str]:
    """``decode(token_ids) -> str`` for a llama2.c ``tokenizer.bin`` (e.g. tok512.bin).

    Pieces are concatenated, ``<0xNN>`` pieces as the raw byte NN; BOS/EOS print nothing, and the
    leading space of the piece right after BOS is dropped (sentencepiece's convention).
    """
    pieces = _read_llama2c_pieces(Path(path).read_bytes())

    def decode(token_ids: Sequence[int]) -> str:
        out = bytearray()
        previous = None
        for token in (int(t) for t in token_ids):
            if not 0 <= token < len(pieces):
                raise ValueError(f"token id {token} is outside the vocabulary [0, {len(pieces)})")
            if token not in (BOS_ID, EOS_ID):
                piece = pieces[token]
                out += piece[1:] if previous == BOS_ID and piece.startswith(b" ") else piece
            previous = token
        return out.decode("utf-8", errors="replace")

    return decode


def _read_llama2c_pieces(raw: bytes) -> list[bytes]:
    offset = 4  # int32 max_token_length, not needed to decode
    pieces = []
    while offset < len(raw):
        (length,) = struct.unpack_from("<i", raw, offset + 4)  # after the float32 score
        piece = raw[offset + 8:offset + 8 + length]
        if len(piece) != length:
            raise ValueError(f"tokenizer file is truncated in piece {len(pieces)}")
        byte = _BYTE_PIECE.match(piece)
        pieces.append(bytes([int(byte.group(1), 16)]) if byte else piece)
        offset += 8 + length
    return pieces
