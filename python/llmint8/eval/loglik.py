"""Batched log-likelihood of continuations given contexts (lm-eval-harness's ``loglikelihood``), and the accuracy metrics built on it."""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .tasks import ChoiceItem

__all__ = ["encode_pair", "loglikelihoods", "encode_items", "group_by_item", "choice_metrics", "stderr_of_mean"]

Encode = Callable[[str], list[int]]


def encode_pair(encode: Encode, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) split the way lm-eval-harness does for causal models.

    Trailing spaces of the context move to the continuation; the whole string is encoded once and
    the continuation is whatever follows the context's own encoding, so merges across the boundary
    match what the model would see in running text.
    """
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = encode(context + continuation)
    context_ids = encode(context)
    return context_ids, whole[len(context_ids):]


@torch.no_grad()
def loglikelihoods(
    model: torch.nn.Module,
    pairs: Sequence[tuple[list[int], list[int]]],
    batch_size: int,
    max_length: Optional[int] = None,
    pad_id: int = 0,
    token_mask_sink=None,
    progress: Optional[Callable[[int], None]] = None,
) -> list[float]:
    """Sum of log P(continuation tokens | context) for each (context ids, continuation ids) pair, in order.

    Requests are sorted by length (longest first, so a too-large batch fails at once) and cut into
    batches, left-padded so every continuation ends at the last position: the model then only
    computes logits for the last ``max continuation`` positions (``logits_to_keep``), which keeps
    the vocabulary-sized output small for large-vocabulary models. Position ids restart at each
    row's first real token, so padding does not move the tokens. ``token_mask_sink``, if given,
    gets each batch's [B, L] real-token mask before the forward (the outlier recorder uses it).
    """
    device = next(model.parameters()).device
    inputs = [_model_input(context, continuation, max_length) for context, continuation in pairs]
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i][0]))
    results = [0.0] * len(inputs)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        scores = _score_batch(model, [inputs[i] for i in batch], device, pad_id, token_mask_sink)
        for index, score in zip(batch, scores.tolist()):
            results[index] = score
        if progress is not None:
            progress(len(batch))
    return results


def _model_input(context: list[int], continuation: list[int], max_length: Optional[int]) -> tuple[list[int], list[int]]:
    """(input ids, target ids): the model reads all but the last token, and predicts the continuation."""
    if not continuation:
        raise ValueError("a continuation must have at least one token")
    whole = context + continuation
    if not context:
        raise ValueError("a context must have at least one token (prepend BOS for an empty prompt)")
    tokens = whole[:-1]
    if max_length is not None and len(tokens) > max_length:
        tokens = tokens[-max_length:]  # lm-eval truncates on the left too
    return tokens, continuation


def _score_batch(model, batch, device, pad_id, token_mask_sink) -> torch.Tensor:
    longest = max(len(tokens) for tokens, _ in batch)
    keep = max(len(targets) for _, targets in batch)
    input_ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), longest), dtype=torch.long)
    targets = torch.zeros((len(batch), keep), dtype=torch.long)
    target_mask = torch.zeros((len(batch), keep), dtype=torch.bool)
    for row, (tokens, continuation) in enumerate(batch):
        input_ids[row, longest - len(tokens):] = torch.tensor(tokens)
        attention[row, longest - len(tokens):] = 1
        targets[row, keep - len(continuation):] = torch.tensor(continuation)
        target_mask[row, keep - len(continuation):] = True
    input_ids, attention = input_ids.to(device), attention.to(device)
    targets, target_mask = targets.to(device), target_mask.to(device)
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    if token_mask_sink is not None:
        token_mask_sink(attention.bool())
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                   logits_to_keep=keep).logits[:, -keep:].float()
    token_logprobs = logits.gather(-1, targets[..., None])[..., 0] - logits.logsumexp(-1)
    return (token_logprobs * target_mask).sum(-1).double().cpu()


def encode_items(encode: Encode, items: Sequence[ChoiceItem]) -> list[tuple[list[int], list[int]]]:
    """Every choice of every item as a (context ids, continuation ids) pair, item by item."""
    return [encode_pair(encode, context, continuation)
            for item in items for context, continuation in zip(item.contexts, item.continuations)]


def group_by_item(items: Sequence[ChoiceItem], flat: Sequence[float]) -> list[list[float]]:
    """``loglikelihoods`` of ``encode_items``' pairs regrouped as one list of choice scores per item."""
    scores, offset = [], 0
    for item in items:
        scores.append(list(flat[offset:offset + len(item.contexts)]))
        offset += len(item.contexts)
    return scores


def choice_metrics(items: Sequence[ChoiceItem], scores: Sequence[Sequence[float]]) -> dict[str, dict[str, float]]:
    """lm-eval's acc (argmax of log-likelihood), acc_norm (divided by the choice's length in characters)
    and acc_bytes (in UTF-8 bytes), each with its standard error. Ties go to the first choice (np.argmax)."""
    correct = {"acc": [], "acc_norm": [], "acc_bytes": []}
    for item, lls in zip(items, scores, strict=True):
        lls = np.asarray(lls, dtype=np.float64)
        chars = np.array([len(choice) for choice in item.choices], dtype=np.float64)
        utf8 = np.array([len(choice.encode("utf-8")) for choice in item.choices], dtype=np.float64)
        correct["acc"].append(int(np.argmax(lls)) == item.label)
        correct["acc_norm"].append(int(np.argmax(lls / chars)) == item.label)
        correct["acc_bytes"].append(int(np.argmax(lls / utf8)) == item.label)
    return {name: {"value": float(np.mean(hits)), "stderr": stderr_of_mean(hits), "n": len(hits)}
            for name, hits in correct.items()}


def stderr_of_mean(hits: Sequence[bool]) -> float:
    """sqrt(p (1 - p) / (n - 1)): lm-eval-harness's standard error of a mean of 0/1 outcomes."""
    n = len(hits)
    if n < 2:
        return float("nan")
    p = float(np.mean(hits))
    return math.sqrt(p * (1 - p) / (n - 1))
