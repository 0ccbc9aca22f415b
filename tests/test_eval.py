"""Tests of the accuracy harness (llmint8.eval): task parsers on the real files, log-likelihood scoring recomputed by hand, perplexity, outlier statistics, lm-eval-harness as a client."""
import json
import math
import re
from pathlib import Path

import pytest
import torch

from llmint8 import Linear8bitLt
from llmint8.eval import OutlierRecorder, evaluate, load_hellaswag, load_piqa, load_winogrande
from llmint8.eval.loglik import choice_metrics, encode_pair, stderr_of_mean
from llmint8.eval.tasks import data_dir

DATA = data_dir() if data_dir().exists() else Path("/work/shared/data")
STORIES = DATA.parent / "models" / "stories260K"
needs_data = pytest.mark.skipif(not (DATA / "piqa").exists(), reason="shared evaluation data not available")
needs_stories = pytest.mark.skipif(not STORIES.exists(), reason="stories260K checkpoint not available")


@pytest.fixture(autouse=True)
def shared_folder(monkeypatch):
    monkeypatch.setenv("LLMINT8_SHARED", str(DATA.parent))


# ----------------------------------------------------------------------------------------------
# Parsers on the real files
# ----------------------------------------------------------------------------------------------


@needs_data
def test_hellaswag_has_10042_items_with_lm_eval_prompts():
    items = load_hellaswag()
    assert len(items) == 10042
    first = items[0]
    assert first.contexts[0] == "Roof shingle removal: A man is sitting on a roof. he"
    assert first.continuations[3] == " starts pulling up roofing on a roof."
    assert first.label == 3
    assert all(len(item.choices) == 4 and 0 <= item.label < 4 for item in items)
    assert not any("[" in text for item in items for text in (*item.contexts, *item.choices)
                   if re.search(r"\[.*?\]", text)), "lm-eval's preprocess removes bracketed artifacts"


@needs_data
def test_winogrande_has_1267_items_matching_lm_evals_partial_scoring():
    items = load_winogrande()
    assert len(items) == 1267
    # Rebuild lm-eval's doc_to_choice / doc_to_target from the other copy (original sentence with "_").
    pattern = re.compile(r"^Please choose the correct answer to fill in the blank to complete the given sentence: "
                         r"(.*)\n\nOption1: (.*) Option2: (.*) Answer format: option1/option2$", re.S)
    for item, doc in zip(items, json.loads((DATA / "winogrande" / "test.json").read_text()), strict=True):
        sentence, option1, option2 = pattern.match(doc["instruction"]).groups()
        blank = sentence.index("_")
        assert item.contexts == (sentence[:blank] + option1, sentence[:blank] + option2)
        assert item.continuations == (" " + sentence[blank + 1:].strip(),) * 2
        assert item.label == ["option1", "option2"].index(doc["answer"])


@needs_data
def test_piqa_has_1838_items_in_lm_eval_format():
    items = load_piqa()
    assert len(items) == 1838
    assert items[0].contexts[0] == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert items[0].continuations[0].startswith(" Provide the guinea pig")
    assert sum(item.label for item in items) == 928


def test_encode_pair_moves_trailing_spaces_and_splits_the_whole_encoding():
    encode = lambda text: [ord(c) for c in text.replace("ab", "X")]  # a merge across the boundary
    assert encode_pair(encode, "Qa ", "bc") == ([ord("Q"), ord("a")], [ord(" "), ord("b"), ord("c")])
    assert encode_pair(encode, "Qa", "bc") == ([ord("Q"), ord("a")], [ord("c")])  # lm-eval's split


def test_stderr_is_lm_evals_sample_stderr():
    hits = [1, 0, 1, 1, 0]
    assert stderr_of_mean(hits) == pytest.approx(torch.tensor(hits, dtype=torch.float64).std().item() / math.sqrt(5))


# ----------------------------------------------------------------------------------------------
# End to end on stories260K
# ----------------------------------------------------------------------------------------------


@needs_stories
@needs_data
def test_int8_threshold_6_perplexity_is_within_1_percent_of_fp32():
    report = evaluate("stories260k", tasks=["wikitext"], thresholds=[6.0], ppl_tokens=1024, window=256,
                      device="cpu", progress=False)
    fp32 = report["variants"]["16-bit"]["perplexity"]["value"]
    int8 = report["variants"]["int8-t6"]["perplexity"]["value"]
    assert report["perplexity_setup"]["tokens"] == 1024
    assert math.isfinite(fp32) and fp32 > 1
    assert abs(int8 / fp32 - 1) < 0.01


@needs_stories
@needs_data
def test_piqa_subset_matches_an_independent_recomputation(tmp_path):
    from llmint8.demo import Llama2cEncoder
    from llmint8.models import load_stories260k

    report = evaluate("stories260k", tasks=["piqa"], thresholds=[6.0], limit=20, device="cpu", batch_size=7,
                      progress=False, out_dir=str(tmp_path))
    assert {p.name for p in tmp_path.iterdir()} == {"report.json", "report.md", "report.png"}
    model, _ = load_stories260k(STORIES)
    encoder = Llama2cEncoder((STORIES / "tok512.bin").read_bytes())
    docs = [json.loads(line) for line in (DATA / "piqa" / "valid.jsonl").read_text().splitlines()[:20]]
    labels = [int(x) for x in (DATA / "piqa" / "valid-labels.lst").read_text().split()[:20]]
    hits, norm_hits = [], []
    expected_lls = []
    with torch.no_grad():
        for doc, label in zip(docs, labels):
            context = f"Question: {doc['goal']}\nAnswer:"
            lls = []
            for solution in (doc["sol1"], doc["sol2"]):
                # One unpadded forward over BOS + context + continuation; sum the continuation's log-probs.
                whole = [1] + encoder.encode(context + " " + solution)
                start = 1 + len(encoder.encode(context))
                log_probs = model(torch.tensor([whole])).logits[0].log_softmax(-1)
                lls.append(sum(log_probs[i - 1, whole[i]].item() for i in range(start, len(whole))))
            expected_lls.append(lls)
            hits.append(max(range(2), key=lambda i: (lls[i], -i)) == label)
            lengths = [len(doc["sol1"]), len(doc["sol2"])]
            norm_hits.append(max(range(2), key=lambda i: (lls[i] / lengths[i], -i)) == label)
    fp32 = report["variants"]["16-bit"]["tasks"]["piqa"]
    assert fp32["loglikelihoods"] == [pytest.approx(lls, abs=1e-3) for lls in expected_lls]
    assert fp32["acc"]["value"] == pytest.approx(sum(hits) / 20)
    assert fp32["acc_norm"]["value"] == pytest.approx(sum(norm_hits) / 20)
    assert fp32["acc"]["stderr"] == pytest.approx(stderr_of_mean(hits))
    int8 = report["variants"]["int8-t6"]["tasks"]["piqa"]
    assert int8["loglikelihoods"] == [pytest.approx(lls, abs=0.05 * max(1, abs(lls[0]))) for lls in expected_lls]
    assert "outliers" in report["variants"]["int8-t6"]


# ----------------------------------------------------------------------------------------------
# Outlier statistics
# ----------------------------------------------------------------------------------------------


def test_outlier_recorder_counts_known_outlier_columns_on_real_rows_only():
    layer = Linear8bitLt(16, 8, threshold=6.0)
    layer.weight.quantize_()
    model = torch.nn.Sequential(layer)
    x = torch.randn(2, 3, 16).clamp(-2, 2)
    x[0, 1, 5] = 7.0       # an outlier in column 5 (real token)
    x[1, 0, 9] = -6.0      # |x| >= threshold is inclusive: column 9
    x[1, 2, 12] = 50.0     # column 12 only in a padding row
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[1, 2] = False
    with OutlierRecorder(model) as recorder:
        recorder.set_token_mask(mask)
        model(x)
        recorder.set_token_mask(None)
        model(x[:, :2])      # second call: only column 5 and 9 again, no mask
        model(torch.zeros(1, 16))
    stats = recorder.summary()["0"]
    assert stats["calls"] == 3
    assert stats["outlier_columns"] == 2
    assert stats["most_in_one_call"] == 2
    assert [c["column"] for c in stats["top_columns"]] == [5, 9]
    assert stats["top_columns"][0]["fraction_of_calls"] == pytest.approx(2 / 3)
    assert not layer._forward_pre_hooks, "hooks are removed on exit"


def test_choice_metrics_break_ties_to_the_first_choice_like_numpy_argmax():
    from llmint8.eval import ChoiceItem

    item = ChoiceItem(("c", "c"), (" ab", " abcd"), ("ab", "abcd"), label=1)
    metrics = choice_metrics([item, item], [[-2.0, -2.0], [-2.0, -2.0]])
    assert metrics["acc"]["value"] == 0.0       # tie: first choice
    assert metrics["acc_norm"]["value"] == 1.0  # -2/4 > -2/2


# ----------------------------------------------------------------------------------------------
# lm-eval-harness as a client
# ----------------------------------------------------------------------------------------------


@needs_stories
@needs_data
def test_lm_eval_harness_scores_our_int8_model_like_our_harness(tmp_path):
    pytest.importorskip("lm_eval", reason="lm-eval-harness is not installed (pip install lm-eval)")
    import copy

    from llmint8 import replace_8bit_linear
    from llmint8.demo import Llama2cEncoder
    from llmint8.eval.lm_eval_client import Llama2cHFTokenizer, run_lm_eval_with_loglikelihoods
    from llmint8.eval.loglik import encode_items, group_by_item, loglikelihoods
    from llmint8.models import load_stories260k

    model, _ = load_stories260k(STORIES)
    int8_model = copy.deepcopy(model)
    replace_8bit_linear(int8_model, threshold=6.0, exact_decomposition=True)
    tokenizer = Llama2cHFTokenizer(STORIES / "tok512.bin")
    # int8 one request per forward: LLM.int8 picks outlier columns per batch, and lm-eval batches
    # (right-padded, its own order) differently from us, so only unbatched int8 scores are comparable.
    theirs, their_int8_lls = run_lm_eval_with_loglikelihoods(int8_model, tokenizer, ["piqa", "winogrande"], tmp_path,
                                                             limit=10, batch_size=1)
    ours = evaluate("stories260k", tasks=["piqa", "winogrande"], thresholds=[6.0], limit=10, device="cpu",
                    progress=False)
    assert all(0 <= value <= 1 for metrics in theirs.values() for value in metrics.values())
    assert set(theirs) == {"piqa", "winogrande"} and "acc_norm" in theirs["piqa"]
    fp32_theirs, their_lls = run_lm_eval_with_loglikelihoods(model, tokenizer, ["piqa", "winogrande"], tmp_path,
                                                             limit=10, batch_size=8)

    # Per choice, lm-eval's log-likelihoods are ours (same model, same BOS + context + continuation ids).
    encoder = Llama2cEncoder((STORIES / "tok512.bin").read_bytes())
    encode = lambda text: [1] + encoder.encode(text)  # noqa: E731
    for task, load in (("piqa", load_piqa), ("winogrande", load_winogrande)):
        items = load()[:10]
        pairs = encode_items(encode, items)
        assert [tokenizer.bos_token_id] == pairs[0][0][:1]
        our_lls = group_by_item(items, loglikelihoods(model, pairs, batch_size=8, max_length=512))
        assert len(their_lls[task]) == len(our_lls) == 10
        for theirs_item, ours_item in zip(their_lls[task], our_lls):
            assert theirs_item == pytest.approx(ours_item, abs=1e-3), task
        our_int8_lls = group_by_item(items, loglikelihoods(int8_model, pairs, batch_size=1, max_length=512))
        for theirs_item, ours_item in zip(their_int8_lls[task], our_int8_lls):
            assert theirs_item == pytest.approx(ours_item, abs=1e-3), task

    for task, metrics in fp32_theirs.items():
        assert metrics["acc"] == pytest.approx(ours["variants"]["16-bit"]["tasks"][task]["acc"]["value"]), task
    assert fp32_theirs["piqa"]["acc_norm"] == pytest.approx(ours["variants"]["16-bit"]["tasks"]["piqa"]["acc_norm"]["value"])
    for task, metrics in theirs.items():  # ours batched: within one item of 10
        assert abs(metrics["acc"] - ours["variants"]["int8-t6"]["tasks"][task]["acc"]["value"]) <= 0.1 + 1e-9, task


def test_llama2c_hf_tokenizer_decodes_bos_as_text_so_lm_eval_keeps_it():
    # HFLM.tok_encode adds no BOS to a string that starts with decode(prefix_token_id); were that
    # "" (special tokens dropped on decode), every lm-eval context would lose its BOS.
    if not (STORIES / "tok512.bin").exists():
        pytest.skip("stories260K tokenizer not available")
    from llmint8.eval.lm_eval_client import Llama2cHFTokenizer

    tokenizer = Llama2cHFTokenizer(STORIES / "tok512.bin")
    assert tokenizer.decode(tokenizer.bos_token_id) == "<s>"
    ids = tokenizer.encode("Question: why?")
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == " Question: why?"
    assert tokenizer.decode(ids).startswith("<s>")


@needs_stories
@needs_data
def test_baseline_dtype_and_attention_backend_are_choosable():
    report = evaluate("stories260k", tasks=["piqa"], thresholds=[6.0], limit=3, device="cpu", progress=False,
                      dtype=torch.bfloat16, attn_implementation="eager")
    assert report["baseline_dtype"] == "bfloat16" and report["attn_implementation"] == "eager"
    assert 0 <= report["variants"]["int8-t6"]["tasks"]["piqa"]["acc"]["value"] <= 1
