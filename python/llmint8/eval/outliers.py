"""Which input columns of each int8 layer crossed the outlier threshold during a run, recorded with forward pre-hooks."""
from __future__ import annotations

from typing import Optional

import torch

from ..nn import Linear8bitLt

__all__ = ["OutlierRecorder"]


class _LayerCounts:
    """Device-side tallies for one layer: no host synchronization until ``summary``."""

    def __init__(self, in_features: int, capacity: int, device: torch.device):
        self.column_calls = torch.zeros(in_features, dtype=torch.int64, device=device)
        self.calls = 0
        self.most_in_one_call = torch.zeros((), dtype=torch.int64, device=device)
        self.capacity = capacity


class OutlierRecorder:
    """Counts, per ``Linear8bitLt`` with a threshold > 0, the calls in which each input column had
    any ``|x| >= threshold`` (the layer's own outlier rule), over real tokens only.

    Use as a context manager around the evaluation; ``token_mask`` ([B, L] bool, or None for
    all rows) is set by the caller before each padded batch so padding rows are not counted.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.token_mask: Optional[torch.Tensor] = None
        self.layers: dict[str, _LayerCounts] = {}
        self._thresholds: dict[str, float] = {}
        self._handles = []

    def set_token_mask(self, mask: Optional[torch.Tensor]) -> None:
        self.token_mask = mask

    def __enter__(self) -> "OutlierRecorder":
        for name, module in self.model.named_modules():
            if isinstance(module, Linear8bitLt) and module.threshold > 0:
                device = module.weight.device
                self.layers[name] = _LayerCounts(module.in_features, module.outlier_capacity, device)
                self._thresholds[name] = module.threshold
                self._handles.append(module.register_forward_pre_hook(self._hook_for(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.token_mask = None

    def _hook_for(self, name: str):
        counts, threshold = self.layers[name], self._thresholds[name]

        def record(module, args):
            crossed = self._crossed_columns(args[0], threshold)
            counts.column_calls += crossed
            counts.most_in_one_call = torch.maximum(counts.most_in_one_call, crossed.sum())
            counts.calls += 1

        return record

    def _crossed_columns(self, x: torch.Tensor, threshold: float) -> torch.Tensor:
        crossed = x.abs() >= threshold
        mask = self.token_mask
        if mask is not None and tuple(mask.shape) == tuple(x.shape[:-1]):
            # Masking, not x[mask]: boolean indexing would wait for the GPU in every layer.
            crossed = crossed & mask[..., None]
        return crossed.reshape(-1, x.shape[-1]).any(0)

    def summary(self, top: int = 10) -> dict[str, dict]:
        """Per layer: calls, distinct outlier columns, the most in one call (vs capacity), top columns by frequency."""
        report = {}
        for name, counts in self.layers.items():
            column_calls = counts.column_calls.cpu()
            seen = int((column_calls > 0).sum())
            frequent = column_calls.argsort(descending=True, stable=True)[:min(top, seen)]
            report[name] = {
                "threshold": self._thresholds[name],
                "calls": counts.calls,
                "in_features": column_calls.numel(),
                "outlier_columns": seen,
                "most_in_one_call": int(counts.most_in_one_call),
                "capacity": counts.capacity,
                "top_columns": [{"column": int(c), "fraction_of_calls": int(column_calls[c]) / max(counts.calls, 1)}
                                for c in frequent],
            }
        return report
