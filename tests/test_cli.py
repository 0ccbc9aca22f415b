"""Tests of the `llmint8` command line: `demo` on the tiny stories260K model, `layer`, and the perplexity it uses."""
import contextlib
import io
import math
import os
import re
from pathlib import Path

import pytest
import torch

from llmint8.cli import main
from llmint8.demo import shared_dir
from llmint8.perplexity import perplexity, sliding_window_nll

STORIES_DIR = shared_dir() / "models" / "stories260K"
if not STORIES_DIR.exists():
    STORIES_DIR = Path("/work/shared/models/stories260K")
needs_stories = pytest.mark.skipif(not STORIES_DIR.exists(), reason="stories260K checkpoint not available")


def summary_row(output: str, label: str) -> tuple[float, float]:
    """The 16-bit and int8 numbers of one row of the demo's summary table."""
    match = re.search(rf"^{re.escape(label)}\s+([\d,.]+)\s+([\d,.]+)", output, re.MULTILINE)
    assert match, f"no '{label}' row in:\n{output}"
    return tuple(float(value.replace(",", "")) for value in match.groups())


def generation(output: str, label: str) -> str:
    match = re.search(rf"^\[{label}\] generation: '.*' -> (.*)$", output, re.MULTILINE)
    assert match, f"no [{label}] generation line in:\n{output}"
    return match.group(1).strip("'\"")


@pytest.fixture(scope="module")
def demo_output():
    if not STORIES_DIR.exists():
        pytest.skip("stories260K checkpoint not available")
    previous = os.environ.get("LLMINT8_SHARED")
    os.environ["LLMINT8_SHARED"] = str(STORIES_DIR.parents[1])
    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            main(["demo", "--model", "stories260k", "--device", "cpu", "--tokens", "512",
                  "--max-new-tokens", "16"])
    finally:
        if previous is None:
            del os.environ["LLMINT8_SHARED"]
        else:
            os.environ["LLMINT8_SHARED"] = previous
    return stdout.getvalue()


@needs_stories
def test_demo_int8_memory_is_smaller(demo_output):
    fp32_bytes, int8_bytes = summary_row(demo_output, "memory (bytes)")
    assert 0 < int8_bytes < fp32_bytes


@needs_stories
def test_demo_int8_perplexity_is_within_5_percent(demo_output):
    fp32_ppl, int8_ppl = summary_row(demo_output, "perplexity")
    assert math.isfinite(fp32_ppl) and fp32_ppl > 1
    assert abs(int8_ppl / fp32_ppl - 1) < 0.05


@needs_stories
def test_demo_generates_text_from_both_models(demo_output):
    assert generation(demo_output, "float32").strip()
    assert generation(demo_output, "int8").strip()
    assert "CPU" in demo_output, "the CPU run says its baseline is fp32"


def test_demo_reports_a_missing_model_without_a_traceback(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LLMINT8_SHARED", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--model", "stories260k", "--device", "cpu"])
    assert exit_info.value.code == 1
    assert "stories260K not found" in capsys.readouterr().err


def test_layer_reports_errors_and_times(capsys):
    main(["layer", "--in-features", "256", "--out-features", "128", "--tokens", "8", "--repeats", "2"])
    output = capsys.readouterr().out
    assert "layer 256->128, 8 tokens" in output
    int8_error = float(re.search(r"^llmint8 threshold 6\s+(\S+)", output, re.MULTILINE).group(1))
    assert 0 < int8_error < 0.05


@needs_stories
def test_one_window_perplexity_equals_the_models_own_loss():
    from llmint8.models import load_stories260k

    model, _ = load_stories260k(STORIES_DIR)
    ids = torch.randint(0, model.config.vocab_size, (100,))
    with torch.no_grad():
        loss = model(ids[None], labels=ids[None]).loss.item()
    assert perplexity(model, ids, window=128, stride=64) == pytest.approx(math.exp(loss), rel=1e-5)


SEQUENCE = 60


@needs_stories
@pytest.mark.parametrize("window,stride,batch_size,prefix",
                         [(16, 16, 1, ()), (16, 4, 1, ()), (20, 7, 1, ()), (16, 4, 3, ()), (20, 7, 16, (1,)),
                          (16, 4, 2, (1, 5))])
def test_sliding_windows_score_each_token_once_with_its_window_context(window, stride, batch_size, prefix):
    from llmint8.models import load_stories260k

    model, _ = load_stories260k(STORIES_DIR)
    ids = torch.randint(0, model.config.vocab_size, (SEQUENCE,))
    nll, scored = sliding_window_nll(model, ids, window, stride, batch_size, prefix)
    expected_nll, expected_scored = 0.0, 0
    with torch.no_grad():
        for target in range(1, SEQUENCE):
            # Token t is new in the first window that holds it; that window scores it unless it starts at t.
            begin = next(b for b in range(0, SEQUENCE, stride) if target < b + window)
            if begin == target:
                continue
            context = torch.cat([torch.tensor(prefix, dtype=ids.dtype), ids[begin:target]])
            log_probs = model(context[None]).logits[0, -1].log_softmax(-1)
            expected_nll -= log_probs[ids[target]].item()
            expected_scored += 1
    assert scored == expected_scored
    assert nll == pytest.approx(expected_nll, rel=1e-5)


def test_perplexity_rejects_bad_windows():
    model = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="batch_size"):
        sliding_window_nll(model, torch.arange(10), window=4, stride=2, batch_size=0)
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, torch.arange(10), window=4, stride=5)
    with pytest.raises(ValueError, match="window"):
        perplexity(model, torch.arange(10), window=1, stride=1)
