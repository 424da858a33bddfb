"""Head-type scores (attnscope.analyses.detectors): the block-sparse grouped computation against the dense reference
on random q/k, the engine's scores against TransformerLens's patterns applied to independently captured
probabilities on the tiny models of every family, and the repeated-copy rule of attnscope.stats."""

import itertools

import numpy as np
import pytest
import torch

import attnscope
from attnscope import engine, kernels
from attnscope.analyses import detectors
from attnscope.capture import LayerCapture, run_with_capture
from attnscope.studies import maps as study
from tests.unit import tiny_models
from tests.unit.tiny_models import VOCAB, WINDOW, build

# ---- the block-sparse grouped computation against the dense reference, on random q/k ----------------------------

LENGTHS = (1, 2, 63, 113, 500)
RULES = {  # name -> LayerCapture keywords beyond q/k/v/scale (mask: built per case)
    "causal": dict(causal=True),
    "window7": dict(causal=True, window=7),
    "window1": dict(causal=True, window=1),
    "softcap": dict(causal=True, softcap=1.5),
    "sinks": dict(causal=True, sinks=True),
    "bidirectional": dict(causal=False),
    "head-mask": dict(causal=True, mask="head"),
    "shared-mask": dict(causal=True, mask="shared"),
}
TEXTS = ("vocab5", "one-token", "no-repeats")
HEADS = {"gqa3": (6, 2), "mha": (4, 4)}


def _text(kind: str, n: int, generator: torch.Generator) -> torch.Tensor:
    if kind == "vocab5":
        return torch.randint(0, 5, (n,), generator=generator)
    if kind == "one-token":
        return torch.full((n,), 7)
    return torch.randperm(10 * n, generator=generator)[:n]  # every token once


def _layer(n: int, heads: tuple[int, int], rule: dict, generator: torch.Generator) -> LayerCapture:
    """Random q/k/v (1, H, n, 8) with logits large enough that rows are far from uniform, and the rule's mask."""
    n_heads, n_kv = heads
    q, k, v = (torch.randn(1, h, n, 8, generator=generator) * 2 for h in (n_heads, n_kv, n_kv))
    rule = dict(rule)
    mask_kind, mask = rule.pop("mask", None), None
    if mask_kind is not None:  # a padding-like mask on top of the causal rule, per head or shared by the heads
        mask = torch.rand(1, n_heads if mask_kind == "head" else 1, n, n, generator=generator) > 0.3
        mask &= torch.ones(n, n, dtype=torch.bool).tril()
    sinks = torch.randn(n_heads, generator=generator) if rule.pop("sinks", False) else None
    return LayerCapture(q=q, k=k, v=v, scale=8**-0.5, mask=mask, sinks=sinks, **rule)


CASES = [(n, rule, text, heads) for n, rule, text, heads in itertools.product(LENGTHS, RULES, TEXTS, HEADS)
         if heads == "gqa3" or rule in ("causal", "window7")]


@pytest.mark.parametrize("n,rule,text,heads", CASES, ids=[f"T{n}-{rule}-{text}-{h}" for n, rule, text, h in CASES])
def test_grouped_scores_equal_the_dense_reference(n, rule, text, heads):
    generator = torch.Generator().manual_seed(n)
    layer = _layer(n, HEADS[heads], RULES[rule], generator)
    ids = _text(text, n, generator)
    lse = kernels.attention_stats(layer.q, layer.k, scale=layer.scale, backend="torch", **layer.rule()).lse
    for first_row in (0, n // 2):
        found = detectors.grouped_scores(layer, lse, ids, first_row=first_row)
        for name in detectors.GROUPED:
            expected, rows = detectors.reference_scores(layer, ids, name, first_row=first_row)
            np.testing.assert_allclose(found[name][0].numpy(), expected.numpy(), rtol=1e-4, atol=1e-6,
                                       err_msg=f"{name} from row {first_row}")
            np.testing.assert_array_equal(found[name][1].numpy(), rows.numpy(), err_msg=f"{name} rows")
    if text == "no-repeats":
        assert all(torch.isnan(found[name][0]).all() for name in detectors.GROUPED)
    if text == "one-token" and "mask" not in rule:  # every row but the first has targets (window 1: only itself)
        whole = detectors.grouped_scores(layer, lse, ids)
        assert (whole[detectors.INDUCTION][1] == n - 1).all()
        assert (whole[detectors.DUPLICATE_TOKEN][1] == (0 if rule == "window1" else n - 1)).all()
        if rule == "window1" and n > 1:  # a row that sees only itself puts all its weight on its induction target
            np.testing.assert_allclose(whole[detectors.INDUCTION][0].numpy(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("row_chunk", [1, 3, 7, 64])
@pytest.mark.parametrize("rule", ["causal", "window7", "head-mask"])
def test_grouped_scores_do_not_depend_on_how_runs_of_copies_are_cut(row_chunk, rule):
    """Runs of one token cut into items of every size against the reference: items padded to their bucket, key
    prefixes of long runs, bands that end inside an item."""
    generator = torch.Generator().manual_seed(3)
    layer = _layer(113, HEADS["gqa3"], RULES[rule], generator)
    ids = torch.randint(0, 6, (113,), generator=generator)
    lse = kernels.attention_stats(layer.q, layer.k, scale=layer.scale, backend="torch", **layer.rule()).lse
    found = detectors.grouped_scores(layer, lse, ids, planner=detectors.Planner(ids, row_chunk=row_chunk))
    for name in detectors.GROUPED:
        expected, counted = detectors.reference_scores(layer, ids, name)
        np.testing.assert_allclose(found[name][0].numpy(), expected.numpy(), rtol=1e-4, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(found[name][1].numpy(), counted.numpy())


def test_grouped_scores_refuse_ids_of_another_length():
    layer = _layer(10, HEADS["gqa3"], RULES["causal"], torch.Generator().manual_seed(0))
    lse = kernels.attention_stats(layer.q, layer.k, scale=layer.scale, backend="torch", **layer.rule()).lse
    with pytest.raises(ValueError, match=r"one token id per key position, shape \(10,\)"):
        detectors.grouped_scores(layer, lse, torch.arange(9))


# ---- the engine's scores against TransformerLens's patterns on captured probabilities --------------------------------
# The patterns exactly as transformer_lens/head_detector.py builds them, on tokens (1, n).


def tl_previous_token_pattern(tokens: torch.Tensor) -> torch.Tensor:
    detection_pattern = torch.zeros(tokens.shape[-1], tokens.shape[-1])
    detection_pattern[1:, :-1] = torch.eye(tokens.shape[-1] - 1)
    return torch.tril(detection_pattern)


def tl_duplicate_token_pattern(tokens: torch.Tensor) -> torch.Tensor:
    token_pattern = tokens.repeat(tokens.shape[-1], 1).numpy()
    eq_mask = np.equal(token_pattern, token_pattern.T).astype(int)
    np.fill_diagonal(eq_mask, 0)
    return torch.tril(torch.as_tensor(eq_mask).float())


def tl_induction_pattern(tokens: torch.Tensor) -> torch.Tensor:
    duplicate_pattern = tl_duplicate_token_pattern(tokens)
    shifted_tensor = torch.roll(duplicate_pattern, shifts=1, dims=1)
    zeros_column = torch.zeros(duplicate_pattern.shape[0], 1)
    return torch.tril(torch.cat((zeros_column, shifted_tensor[:, 1:]), dim=1))


TL_PATTERNS = {"previous_token": tl_previous_token_pattern, "duplicate_token": tl_duplicate_token_pattern,
               "induction": tl_induction_pattern}
FAMILIES = ["llama", "gpt2", "bert", "qwen2", "gemma2", "gemma3", "mistral", "gpt_oss"]


def _pattern_means(probs: torch.Tensor, visible: torch.Tensor, pattern: torch.Tensor, first_row: int = 0):
    """Per head: the mean over rows (from first_row) with a visible pattern cell of the row's weight on the pattern;
    the rows counted; TL's "mul" score sum(A P) / sum(A) over the same rows."""
    probs, pattern = probs[:, first_row:].double(), pattern[first_row:].double()
    targets = (pattern > 0) & visible[:, first_row:]  # (H, t, S)
    used = targets.any(-1)
    weights = (probs * pattern).sum(-1)
    counts = used.sum(-1)
    mean = torch.where(counts > 0, (weights * used).sum(-1) / counts.clamp(min=1), float("nan"))
    return mean.numpy(), counts.numpy(), ((probs * pattern).sum((-1, -2)) / probs.sum((-1, -2))).numpy()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("text", ["repeats", "no-repeats"])
def test_engine_scores_equal_transformer_lens_patterns_on_captured_probabilities(family, text):
    """Windows of 8 keys hide some targets of 40-token texts (the Mistral, Gemma and gpt-oss local layers); BERT's
    scores are the backward half of its attention; learned sinks take their share of every row."""
    generator = torch.Generator().manual_seed(1)
    n = 40
    ids = (torch.randint(2, 12, (1, n), generator=generator) if text == "repeats" else
           torch.randperm(VOCAB - 2, generator=generator)[:n][None] + 2)
    model = build(family)
    collector = detectors.Collector(ids[0])
    engine.run(model, ids, on_layer=collector)
    scores, rows = collector.scores(), collector.rows()
    capture = run_with_capture(model, ids)
    for index in sorted(capture.layers):
        layer = capture.layer(index)
        probs, visible = layer.probs()[0], layer.visible()[0].expand(layer.n_heads, n, n)
        for name, build_pattern in TL_PATTERNS.items():
            mean, counts, tl_mul = _pattern_means(probs, visible, build_pattern(ids))
            np.testing.assert_allclose(scores[name][index], mean, rtol=1e-4, atol=1e-6,
                                       err_msg=f"{family} layer {index} {name}")
            assert rows[name][index] == counts.max(), f"{family} layer {index} {name}"
            # the docstring's relation to TL's score: ours x (rows with a visible target) / sum(A)
            np.testing.assert_allclose(np.nan_to_num(scores[name][index]) * counts / probs.double().sum((-1, -2))
                                       .numpy(), tl_mul, rtol=1e-4, atol=1e-6, err_msg=f"{family} {index} {name} TL")
    if text == "no-repeats":
        assert np.isnan(scores["duplicate_token"]).all() and np.isnan(scores["induction"]).all()
    windows = {i: capture.layer(i).window for i in sorted(capture.layers)}
    local = [rows["duplicate_token"][i] for i, window in windows.items() if window is not None]
    whole = [rows["duplicate_token"][i] for i, window in windows.items() if window is None]
    if text == "repeats" and local and whole:  # a window of 8 keys hides earlier copies further back
        assert set(windows.values()) == {None, WINDOW} and max(local) < min(whole)


# ---- the repeated-copy rule in attnscope.stats --------------------------------------------------------------------


def test_repeated_copy_drops_leading_special_tokens_and_keeps_within_the_limit():
    assert detectors.repeated_copy([1, 5, 6, 7], limit=100, special={1}) == ((1, 5, 6, 7, 5, 6, 7), 4)
    assert detectors.repeated_copy([1, 5, 6, 7], limit=5, special={1}) == ((1, 5, 6, 5, 6), 3)
    assert detectors.repeated_copy([5, 6, 7], limit=100) == ((5, 6, 7, 5, 6, 7), 3)
    assert detectors.repeated_copy([5, 6, 7, 8, 9], limit=6) == ((5, 6, 7, 5, 6, 7), 3)


@pytest.fixture(scope="module")
def llama():
    return tiny_models.handle("llama")


def test_text_without_repeats_measures_induction_on_a_repeated_copy(llama):
    ids = list(range(3, 33))  # 30 distinct tokens: no row has an induction target
    result = attnscope.stats(llama, ids)
    assert result.induction_copy == 30
    assert result.induction_measured_on == "a repeated copy of its first 30 tokens"
    assert result.detector_rows["induction"] == (30,) * 3  # every row of the second copy follows its first copy
    assert np.isnan(result.duplicate_token).all()  # duplicate stays on the text: nothing repeats
    # the copy measured independently: its capture's probabilities under TL's induction pattern, second copy only
    copy = torch.tensor([ids + ids])
    capture = run_with_capture(llama.module, copy)
    pattern = tl_induction_pattern(copy)
    for index in sorted(capture.layers):
        probs = capture.layer(index).probs()[0]
        visible = capture.layer(index).visible()[0].expand_as(probs)
        mean, counts, _ = _pattern_means(probs, visible, pattern, first_row=30)
        np.testing.assert_allclose(result.induction[index], mean, rtol=1e-4, atol=1e-6)
        assert (counts == 30).all()
    assert "a repeated copy of its first 30 tokens" in result.findings()[-1].text()


def test_text_with_many_repeats_measures_induction_on_itself(llama):
    ids = [5, 6, 7, 8, 9, 10] * 5
    result = attnscope.stats(llama, ids)
    assert result.induction_copy == 0
    assert result.detector_rows["induction"] == (24,) * 3  # rows 6..29 follow an earlier copy of their token
    assert result.induction_measured_on == "the text's own repeats, 24 rows"
    collector = detectors.Collector(ids)
    engine.run(llama.module, torch.tensor([ids]), on_layer=collector)
    np.testing.assert_array_equal(result.induction, collector.scores()["induction"])


def test_few_repeats_below_the_minimum_take_the_copy(llama):
    ids = list(range(3, 23)) + [3, 4]  # 2 rows with an induction target, fewer than MIN_INDUCTION_ROWS
    assert detectors.MIN_INDUCTION_ROWS > 2
    result = attnscope.stats(llama, ids)
    assert result.induction_copy == 22 and result.detector_rows["duplicate_token"] == (2,) * 3
    duplicate = next(f for f in result.findings() if f.topic == "Duplicate-token heads")
    assert duplicate.measured.startswith("Too few tokens to name heads")  # a mean over 2 tokens names no head


def test_detectors_leave_the_five_statistics_unchanged(llama):
    ids = [5, 6, 7, 8, 9, 10] * 5
    result = attnscope.stats(llama, ids)
    plain = engine.run(llama.module, torch.tensor([ids]))
    for name in study.STATISTICS:
        np.testing.assert_array_equal(getattr(result, name), plain.stacked(name).numpy(), err_msg=name)


def test_results_saved_before_the_detectors_still_open(llama, tmp_path):
    result = attnscope.stats(llama, [5, 6, 7, 8, 9, 10] * 5)
    old = study.StatsResult(meta=result.meta, tokens=result.tokens,
                            **{name: getattr(result, name) for name in study.STATISTICS})
    again = attnscope.open(old.save(tmp_path / "old.json"))
    assert again.induction is None and again.induction_measured_on == ""
    assert not set(study.DETECTORS) & set(again.to_frame().columns)
    assert [f.topic for f in again.findings()] == [f.topic for f in old.findings()]
    new = attnscope.open(result.save(tmp_path / "new.parquet"))
    for name in study.DETECTORS:
        np.testing.assert_array_equal(getattr(new, name), getattr(result, name))
        assert f"{name}-per-head" in new.figures()
        assert name in new.to_frame().columns
    assert new.detector_rows == result.detector_rows and new.induction_measured_on == result.induction_measured_on
    assert {"Previous-token heads", "Duplicate-token heads", "Induction heads"} <= {f.topic for f in new.findings()}
