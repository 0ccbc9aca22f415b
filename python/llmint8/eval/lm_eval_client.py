"""lm-eval-harness as a real client: its HFLM wraps our (int8) model object and runs PIQA/WinoGrande from the local YAMLs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import torch
import yaml

from .tasks import data_dir

__all__ = ["TASK_YAMLS", "task_configs", "run_lm_eval", "run_lm_eval_with_loglikelihoods", "Llama2cHFTokenizer"]

TASK_DIR = Path(__file__).with_name("lm_eval_tasks")
TASK_YAMLS = {"piqa": TASK_DIR / "piqa_llmint8.yaml", "winogrande": TASK_DIR / "winogrande_llmint8.yaml"}


def _piqa_with_labels(into: Path) -> Path:
    """PIQA's valid.jsonl with each line's label from valid-labels.lst (lm-eval's json loader needs one file)."""
    folder = data_dir() / "piqa"
    target = into / "piqa-valid-with-labels.jsonl"
    labels = (folder / "valid-labels.lst").read_text().split()
    with open(folder / "valid.jsonl", encoding="utf-8") as source, open(target, "w", encoding="utf-8") as sink:
        for line, label in zip(source, labels, strict=True):
            sink.write(json.dumps({**json.loads(line), "label": int(label)}) + "\n")
    return target


def task_configs(tasks: Sequence[str], work_dir: Path) -> list[dict]:
    """The YAML task configs with ``data_files`` pointing at this machine's shared data."""
    files = {"piqa": lambda: _piqa_with_labels(work_dir),
             "winogrande": lambda: data_dir() / "winogrande" / "winogrande.jsonl"}
    configs = []
    for task in tasks:
        config = yaml.safe_load(TASK_YAMLS[task].read_text())
        config["dataset_kwargs"] = {"data_files": str(files[task]())}
        configs.append(config)
    return configs


def run_lm_eval(model: torch.nn.Module, tokenizer, tasks: Sequence[str], work_dir: Path, limit: Optional[int] = None,
                batch_size: int = 16) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from ``lm_eval.simple_evaluate`` on ``model`` (any torch causal LM, int8 included)."""
    return run_lm_eval_with_loglikelihoods(model, tokenizer, tasks, work_dir, limit, batch_size)[0]


def run_lm_eval_with_loglikelihoods(model: torch.nn.Module, tokenizer, tasks: Sequence[str], work_dir: Path,
                                    limit: Optional[int] = None, batch_size: int = 16
                                    ) -> tuple[dict[str, dict[str, float]], dict[str, list[list[float]]]]:
    """``run_lm_eval``'s metrics, and {task: per document (in dataset order), lm-eval's log-likelihood of each choice}."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    device = next(model.parameters()).device
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(device))
    results = lm_eval.simple_evaluate(model=lm, tasks=task_configs(tasks, work_dir), limit=limit,
                                      num_fewshot=0, log_samples=True, bootstrap_iters=0)
    metrics, loglikelihoods = {}, {}
    for task in tasks:
        raw = results["results"][f"{task}_llmint8"]
        metrics[task] = {key.split(",")[0]: value for key, value in raw.items()
                         if key.endswith(",none") and isinstance(value, float)}
        samples = sorted(results["samples"][f"{task}_llmint8"], key=lambda sample: sample["doc_id"])
        loglikelihoods[task] = [[float(resp[0][0]) for resp in sample["resps"]] for sample in samples]
    return metrics, loglikelihoods


_SPECIAL_TOKENS = {0: "<unk>", 1: "<s>", 2: "</s>"}  # llama2.c's fixed ids
_SPECIAL_IDS = {token: index for index, token in _SPECIAL_TOKENS.items()}


def _hf_tokenizer_base():
    from transformers import PreTrainedTokenizer

    return PreTrainedTokenizer


class Llama2cHFTokenizer(_hf_tokenizer_base()):
    """stories260K's llama2.c tokenizer as a transformers tokenizer, so lm-eval's HFLM accepts it.

    Tokens are the decimal ids themselves: encoding is Llama2cEncoder's, BOS is added like
    sentencepiece's Llama tokenizer does, and decode concatenates the pieces.
    """

    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, tokenizer_bin: Path, **kwargs):
        from ..demo import Llama2cEncoder

        self.encoder = Llama2cEncoder(Path(tokenizer_bin).read_bytes())
        super().__init__(bos_token="<s>", eos_token="</s>", unk_token="<unk>", **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.encoder.scores)

    def get_vocab(self) -> dict[str, int]:
        return {self._convert_id_to_token(i): i for i in range(self.vocab_size)}

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return [str(token) for token in self.encoder.encode(text)]

    def _convert_token_to_id(self, token: str) -> int:
        return _SPECIAL_IDS[token] if token in _SPECIAL_IDS else int(token)

    def _convert_id_to_token(self, index: int) -> str:
        return _SPECIAL_TOKENS.get(index, str(index))

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        # Special tokens decode to their text ("<s>"), as with sentencepiece's Llama tokenizer
        # (decode(..., skip_special_tokens=True) drops them before this is called). They must not
        # decode to "": HFLM.tok_encode skips adding BOS when a string starts with
        # decode(prefix_token_id), and every string starts with "", so the contexts lm-eval scores
        # would lose their BOS.
        text, pending = [], []
        for token in tokens:
            if token in _SPECIAL_IDS:
                text.append(self._pieces_text(pending))
                text.append(token)
                pending = []
            else:
                pending.append(int(token))
        text.append(self._pieces_text(pending))
        return "".join(text)

    def _pieces_text(self, ids: list[int]) -> str:
        return b"".join(self.encoder.pieces[i] for i in ids).decode("utf-8", errors="replace")

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        return [self.bos_token_id] + token_ids_0 + ([] if token_ids_1 is None else token_ids_1)
