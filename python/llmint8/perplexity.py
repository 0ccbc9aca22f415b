"""Perplexity of a causal language model over fixed windows moved by a stride (Hugging Face's sliding-window method)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["perplexity", "sliding_window_nll"]


def perplexity(model: torch.nn.Module, input_ids: torch.Tensor, window: int, stride: int) -> float:
    """``exp`` of the mean token negative log-likelihood of ``input_ids`` (1D, or [1, n]).

    Windows of ``window`` tokens start every ``stride`` tokens; each window scores only the tokens
    no earlier window scored, so every token after the first is counted once, with up to
    ``window - stride`` tokens of context carried over from before the window.
    """
    nll_sum, scored = sliding_window_nll(model, input_ids, window, stride)
    return math.exp(nll_sum / scored)


@torch.no_grad()
def sliding_window_nll(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    window: int,
    stride: int,
    batch_size: int = 1,
    prefix: Sequence[int] = (),
) -> tuple[float, int]:
    """(sum of token NLLs in nats, number of tokens scored) for ``perplexity``'s windows.

    ``batch_size`` windows of equal length go through the model together; the scores are the
    same as one window at a time for a model whose rows do not interact (LLM.int8 is not quite
    one: it picks outlier columns over the whole batch). ``prefix`` tokens (e.g. BOS) go before
    every window as context only: models like Gemma are far off without BOS at position 0.
    """
    ids = _as_token_row(input_ids)
    _check_window(window, stride, ids.numel())
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = ids.to(_device_of(model))
    prefix_ids = torch.tensor(list(prefix), dtype=ids.dtype, device=ids.device)
    total = ids.new_zeros((), dtype=torch.float64)
    plan = _window_plan(ids.numel(), window, stride)
    for batch in _batches_of_equal_length(plan, batch_size):
        logits = model(torch.stack([torch.cat([prefix_ids, ids[begin:end]]) for begin, end, _ in batch])).logits
        for row, (begin, end, first_target) in enumerate(batch):
            # logits[row, len(prefix) + i] predicts token begin + i + 1.
            first, last = first_target - begin - 1 + len(prefix_ids), end - begin - 1 + len(prefix_ids)
            predicting = logits[row, first:last].float()
            total += F.cross_entropy(predicting, ids[first_target:end], reduction="sum")
    # Counted from the plan rather than accumulated, so the loop never reads the device.
    return total.item(), sum(end - first_target for _, end, first_target in plan)


def _window_plan(length: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored token) per window; every token after the first is scored once."""
    plan, scored_until = [], 1  # the first token has no context, so it is never scored
    for begin in range(0, length, stride):
        end = min(begin + window, length)
        # A window cannot score its own first token; with stride == window that token is skipped.
        plan.append((begin, end, max(scored_until, begin + 1)))
        scored_until = end
        if end == length:
            break
    return plan


def _batches_of_equal_length(plan: list[tuple[int, int, int]], batch_size: int):
    batch: list[tuple[int, int, int]] = []
    for entry in plan:
        if batch and (len(batch) == batch_size or entry[1] - entry[0] != batch[0][1] - batch[0][0]):
            yield batch
            batch = []
        batch.append(entry)
    if batch:
        yield batch


def _as_token_row(input_ids: torch.Tensor) -> torch.Tensor:
    if input_ids.dim() == 2 and input_ids.shape[0] == 1:
        return input_ids[0]
    if input_ids.dim() != 1:
        raise ValueError(f"input_ids must be 1D or [1, n], got shape {list(input_ids.shape)}")
    return input_ids


def _check_window(window: int, stride: int, length: int) -> None:
    if window < 2:
        raise ValueError(f"window must be >= 2 tokens, got {window}")
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be between 1 and window ({window}), got {stride}")
    if length < 2:
        raise ValueError(f"perplexity needs at least 2 tokens, got {length}")


def _device_of(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
