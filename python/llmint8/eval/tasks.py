"""Zero-shot multiple-choice tasks (PIQA, HellaSwag, WinoGrande) read from the shared data folder, in lm-eval-harness's prompt formats."""
from __future__ import annotations

import bz2
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..demo import shared_dir

__all__ = ["ChoiceItem", "TASKS", "data_dir", "load_task", "load_piqa", "load_hellaswag", "load_winogrande",
           "hellaswag_preprocess"]

# lm-eval-harness joins context and continuation with one space (its default target_delimiter).
TARGET_DELIMITER = " "


@dataclass(frozen=True)
class ChoiceItem:
    """One question: each choice i is scored as log P(continuations[i] | contexts[i]).

    ``choices`` are the answer strings whose lengths normalize acc_norm (lm-eval's
    ``doc_to_choice``, without the delimiter).
    """

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    choices: tuple[str, ...]
    label: int


def data_dir() -> Path:
    """The shared evaluation data: $LLMINT8_SHARED/data, else <repo>/../shared/data."""
    return shared_dir() / "data"


def _shared_context(context: str, choices: list[str], label: int) -> ChoiceItem:
    # The usual case: one prompt, each answer scored as its continuation.
    return ChoiceItem(
        contexts=tuple(context for _ in choices),
        continuations=tuple(TARGET_DELIMITER + choice for choice in choices),
        choices=tuple(choices),
        label=label,
    )


def load_piqa(folder: Optional[Path] = None) -> list[ChoiceItem]:
    """PIQA validation (1,838): lm-eval's ``"Question: {goal}\\nAnswer:"`` with ``" " + sol``."""
    folder = folder or data_dir() / "piqa"
    labels = (folder / "valid-labels.lst").read_text().split()
    items = []
    with open(folder / "valid.jsonl", encoding="utf-8") as lines:
        for line, label in zip(lines, labels, strict=True):
            doc = json.loads(line)
            items.append(_shared_context(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], int(label)))
    return items


def hellaswag_preprocess(text: str) -> str:
    """lm-eval-harness's HellaSwag ``preprocess``: drop WikiHow bracket artifacts and double spaces."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def load_hellaswag(path: Optional[Path] = None) -> list[ChoiceItem]:
    """HellaSwag validation (10,042) from llama.cpp's 6-lines-per-item text: query, then " " + each ending.

    The text keeps the dataset's full ``ctx``; lm-eval builds ``ctx_a + " " + ctx_b.capitalize()``,
    so the case of ctx_b's letters can differ from lm-eval's prompt (the split is not in the file).
    """
    path = path or data_dir() / "hellaswag" / "hellaswag_val_full.txt.bz2"
    lines = bz2.decompress(Path(path).read_bytes()).decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise ValueError(f"{path}: {len(lines)} lines is not a multiple of 6 (query, label, 4 endings)")
    items = []
    for start in range(0, len(lines), 6):
        query, label, *endings = lines[start:start + 6]
        items.append(_shared_context(hellaswag_preprocess(query), [hellaswag_preprocess(e) for e in endings],
                                     int(label)))
    return items


def load_winogrande(path: Optional[Path] = None) -> list[ChoiceItem]:
    """WinoGrande dev (1,267), lm-eval's partial scoring: the option goes into the context, the rest is scored.

    llm-foundry's ``context_options`` are lm-eval's ``sentence[:blank] + option`` and its
    ``continuation`` is ``sentence[blank + 1:].strip()``; lm-eval scores ``" " + continuation``.
    """
    path = path or data_dir() / "winogrande" / "winogrande.jsonl"
    items = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            doc = json.loads(line)
            contexts = tuple(doc["context_options"])
            continuation = TARGET_DELIMITER + doc["continuation"]
            items.append(ChoiceItem(contexts, tuple(continuation for _ in contexts), contexts, int(doc["gold"])))
    return items


@dataclass(frozen=True)
class TaskSpec:
    load: Callable[[], list[ChoiceItem]]
    metrics: tuple[str, ...]  # the metrics lm-eval-harness reports for the task


TASKS: dict[str, TaskSpec] = {
    "piqa": TaskSpec(load_piqa, ("acc", "acc_norm")),
    "hellaswag": TaskSpec(load_hellaswag, ("acc", "acc_norm")),
    # One shared continuation: length normalization cannot change the answer, so lm-eval reports acc only.
    "winogrande": TaskSpec(load_winogrande, ("acc",)),
}


def load_task(name: str, limit: Optional[int] = None) -> list[ChoiceItem]:
    """The first ``limit`` items (all when None) of task ``name``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    items = TASKS[name].load()
    return items if limit is None else items[:limit]
