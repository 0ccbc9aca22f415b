"""Accuracy harness: llmint8 against 16-bit on perplexity and lm-eval-harness-style zero-shot tasks (``evaluate``)."""
from .loglik import choice_metrics, encode_pair, loglikelihoods, stderr_of_mean
from .outliers import OutlierRecorder
from .runner import DEFAULT_TASKS, Variant, evaluate, make_variants
from .tasks import TASKS, ChoiceItem, load_hellaswag, load_piqa, load_task, load_winogrande

__all__ = ["evaluate", "make_variants", "Variant", "DEFAULT_TASKS", "TASKS", "ChoiceItem", "load_task", "load_piqa",
           "load_hellaswag", "load_winogrande", "encode_pair", "loglikelihoods", "choice_metrics", "stderr_of_mean",
           "OutlierRecorder"]
