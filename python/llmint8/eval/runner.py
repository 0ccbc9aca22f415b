"""``evaluate``: one model in 16-bit and as llmint8 at several thresholds, scored on perplexity and zero-shot tasks in one run."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..demo import baseline_dtype, default_device, first_tokens
from ..nn import replace_8bit_linear
from ..perplexity import sliding_window_nll
from .loglik import choice_metrics, encode_items, group_by_item, loglikelihoods
from .models import load_eval_model
from .outliers import OutlierRecorder
from .tasks import TASKS, data_dir, load_task

__all__ = ["Variant", "DEFAULT_TASKS", "PERPLEXITY_TASK", "evaluate", "make_variants"]

PERPLEXITY_TASK = "wikitext"
DEFAULT_TASKS = (PERPLEXITY_TASK, "piqa", "hellaswag", "winogrande")
BASELINE = "16-bit"


@dataclass(frozen=True)
class Variant:
    """How the evaluated copy of the model is built: 16-bit as loaded, or converted with these settings."""

    name: str
    threshold: Optional[float] = None  # None: the 16-bit model itself
    exact_decomposition: bool = True

    @property
    def is_int8(self) -> bool:
        return self.threshold is not None


def make_variants(thresholds: Sequence[float], include_fast: bool = False) -> list[Variant]:
    """16-bit, then int8 with the exact LLM.int8 decomposition per threshold (``int8-t6``), and with
    ``include_fast`` the module's default configuration at the largest threshold (``int8-t6-fast``)."""
    variants = [Variant(BASELINE)] + [Variant(f"int8-t{t:g}", float(t)) for t in thresholds]
    if include_fast and thresholds:
        top = max(thresholds)
        variants.append(Variant(f"int8-t{top:g}-fast", float(top), exact_decomposition=False))
    return variants


@dataclass
class _Inputs:
    """Everything tokenized once and shared by all variants."""

    perplexity_ids: Optional[torch.Tensor]
    perplexity_prefix: list[int]  # what the tokenizer puts before any text (BOS), given to every window
    text_source: str
    items: dict
    pairs: dict


def evaluate(
    model: str = "stories260k",
    tasks: Sequence[str] = DEFAULT_TASKS,
    thresholds: Sequence[float] = (0.0, 6.0),
    limit: Optional[int] = None,
    device: Optional[str] = None,
    batch_size: Optional[int] = None,
    text: Optional[str] = None,
    ppl_tokens: Optional[int] = None,
    window: Optional[int] = None,
    stride: Optional[int] = None,
    include_fast: bool = False,
    ppl_batch_size: Optional[int] = None,
    outlier_capacity: Optional[int] = None,
    dtype: Optional[torch.dtype] = None,
    attn_implementation: Optional[str] = None,
    top_columns: int = 10,
    progress: bool = True,
    out_dir: Optional[str] = None,
) -> dict:
    """Scores ``model`` in 16-bit and as int8 at each threshold; returns the report (and writes it to
    ``out_dir`` as JSON, markdown and PNG when given).

    ``limit``: first N items of each multiple-choice task. ``ppl_tokens``: first N tokens of the
    text (all when None). The 16-bit baseline is bf16 on a GPU and fp32 on the CPU.
    ``ppl_batch_size``: perplexity windows per forward (8 on a GPU, 1 on the CPU when None).
    ``outlier_capacity``: the int8 layers' outlier capacity; None (default) splits out every
    outlier column, which is LLM.int8 as specified (no column over capacity stays in int8).
    ``dtype``: the 16-bit baseline's dtype (default above); ``attn_implementation``: a transformers
    attention backend ("eager", "sdpa") for models that need a particular one.
    """
    unknown = [t for t in tasks if t != PERPLEXITY_TASK and t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {[PERPLEXITY_TASK, *TASKS]}")
    device = device or default_device()
    dtype = dtype or baseline_dtype(device)
    on_gpu = torch.device(device).type == "cuda"
    batch_size = batch_size or (64 if on_gpu else 16)
    ppl_batch_size = ppl_batch_size or (8 if on_gpu else 1)
    start = time.perf_counter()
    lm = load_eval_model(model, dtype)
    if attn_implementation:
        lm.model.set_attn_implementation(attn_implementation)
    lm.model.to(device)
    load_s = time.perf_counter() - start
    inputs = _prepare_inputs(lm, tasks, limit, text, ppl_tokens)
    window = min(window or 1024, lm.max_length - len(inputs.perplexity_prefix))
    stride = stride or max(1, window // 2)
    report = {
        "model": lm.name,
        "model_arg": model,
        "device": str(device),
        "baseline_dtype": str(dtype).replace("torch.", ""),
        "attn_implementation": getattr(lm.model.config, "_attn_implementation", None),
        "torch": torch.__version__,
        "batch_size": batch_size,
        "ppl_batch_size": ppl_batch_size,
        "outlier_capacity": "all" if outlier_capacity is None else outlier_capacity,
        "limit": limit,
        "load_s": load_s,
        "perplexity_setup": None if inputs.perplexity_ids is None else {
            "text": inputs.text_source, "tokens": inputs.perplexity_ids.numel(), "window": window, "stride": stride,
            "prefix": inputs.perplexity_prefix},
        "tasks": {name: {"items": len(items), "requests": len(inputs.pairs[name])} for name, items in inputs.items.items()},
        "variants": {},
    }
    for variant in make_variants(thresholds, include_fast):
        report["variants"][variant.name] = _evaluate_variant(
            lm, variant, inputs, batch_size, ppl_batch_size, outlier_capacity, window, stride, top_columns, progress)
    if out_dir is not None:
        from .report import write_outputs

        write_outputs(report, Path(out_dir))
    return report


def _prepare_inputs(lm, tasks, limit, text, ppl_tokens) -> _Inputs:
    perplexity_ids, text_source = None, ""
    prefix = lm.encode("")
    if PERPLEXITY_TASK in tasks:
        path = Path(text) if text else data_dir() / "wikitext-2" / "test.txt"
        content = path.read_text(encoding="utf-8")
        ids = first_tokens(lm.encode, content, ppl_tokens + len(prefix)) if ppl_tokens else lm.encode(content)
        if ids[:len(prefix)] == prefix:
            ids = ids[len(prefix):]
        perplexity_ids, text_source = torch.tensor(ids), str(path)
    items = {name: load_task(name, limit) for name in tasks if name != PERPLEXITY_TASK}
    pairs = {name: encode_items(lm.encode, task_items) for name, task_items in items.items()}
    return _Inputs(perplexity_ids, prefix, text_source, items, pairs)


def _evaluate_variant(lm, variant: Variant, inputs: _Inputs, batch_size, ppl_batch_size, outlier_capacity, window,
                      stride, top_columns, progress) -> dict:
    start = time.perf_counter()
    model = _build_variant(lm.model, variant, outlier_capacity)
    result = {"threshold": variant.threshold, "exact_decomposition": variant.exact_decomposition if variant.is_int8
              else None, "convert_s": time.perf_counter() - start, "seconds": {}, "tasks": {}}
    with OutlierRecorder(model) as recorder:
        if inputs.perplexity_ids is not None:
            start = time.perf_counter()
            nll, scored = sliding_window_nll(model, inputs.perplexity_ids, window, stride, ppl_batch_size,
                                             inputs.perplexity_prefix)
            result["perplexity"] = {"value": float(torch.tensor(nll / scored).exp()), "nll_sum": nll, "tokens": scored}
            result["seconds"][PERPLEXITY_TASK] = _elapsed(start, lm.model)
        for name, items in inputs.items.items():
            start = time.perf_counter()
            with _progress_bar(progress, len(inputs.pairs[name]), f"{variant.name} {name}") as bar:
                flat = loglikelihoods(model, inputs.pairs[name], batch_size, lm.max_length, lm.pad_id,
                                      recorder.set_token_mask, bar.update if bar else None)
            recorder.set_token_mask(None)
            scores = group_by_item(items, flat)
            metrics = choice_metrics(items, scores)
            result["tasks"][name] = {metric: metrics[metric] for metric in (*TASKS[name].metrics, "acc_bytes")}
            result["tasks"][name]["loglikelihoods"] = scores
            result["seconds"][name] = _elapsed(start, lm.model)
        result["outliers"] = recorder.summary(top_columns)
    if model is not lm.model:
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return result


def _build_variant(model: torch.nn.Module, variant: Variant, outlier_capacity: Optional[int]) -> torch.nn.Module:
    if not variant.is_int8:
        return model
    converted = copy.deepcopy(model)
    replace_8bit_linear(converted, threshold=variant.threshold, outlier_capacity=outlier_capacity,
                        exact_decomposition=variant.exact_decomposition)
    return converted


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _progress_bar(enabled: bool, total: int, description: str):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="req", leave=False)


def _elapsed(start: float, model: torch.nn.Module) -> float:
    if next(model.parameters()).device.type == "cuda":
        torch.cuda.synchronize()  # GPU work is asynchronous; time it to completion
    return time.perf_counter() - start
