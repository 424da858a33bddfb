"""attnscope.studies.taylor on tiny random models: the study's run equals the per-layer analysis, its numbers equal
fp64 references from the definitions, units are cacheable, and results save, reopen and explain themselves."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from transformers import AttentionInterface

from attnscope.analyses import taylor as analysis
from attnscope.capture import run_with_capture
from attnscope.kernels import DENOMINATORS
from attnscope.kernels.taylor import naive
from attnscope.studies import taylor as study
from attnscope.studies.base import Source, open_result
from tests.references import taylor_errors
from tests.unit.tiny_models import VOCAB, build, handle

IDS = torch.randint(0, VOCAB, (1, 24), generator=torch.Generator().manual_seed(1))[0].tolist()


class _RecordingSource(Source):
    """The library's Source, keeping every unit call (what the dashboard's st.cache_data would be keyed by)."""

    def __init__(self, model):
        super().__init__(model)
        self.calls = []

    def unit(self, fn, *args):
        self.calls.append((fn, args))
        return super().unit(fn, *args)


def _arrays(sweep: analysis.ModelSweep) -> dict[str, np.ndarray]:
    """Every array of a sweep by name ("error.l2" for the per-denominator errors)."""
    arrays = {f"error.{key}": values for key, values in sweep.error.items()}
    return {**arrays, **{field.name: getattr(sweep, field.name) for field in dataclasses.fields(sweep)
                         if field.name != "error"}}


@pytest.fixture(scope="module")
def llama():
    return handle("llama")


@pytest.fixture(scope="module")
def result(llama):
    return study.run(Source(llama), IDS, taylor_layer=1, taylor_head=2, taylor_order=3, losses=("l2",))


def test_run_equals_the_per_layer_sweep_the_page_ran(llama):
    """Identical arrays: the page used to stack sweep_layer(capture.layer(i).prefix(n)) layer by layer itself."""
    capture = run_with_capture(llama.module, torch.tensor([IDS]))
    for settings, clamp in ((dict(max_order=10), None), (dict(max_order=3, clamp="both"), (-5.0, 5.0)),
                            (dict(max_order=4, clamp="upper", clamp_value=2.5), 2.5)):
        for n_tokens in (24, 9):
            got = study.run(Source(llama), IDS, n_tokens=n_tokens, **settings).sweep
            expected = analysis.ModelSweep.stack([
                analysis.sweep_layer(capture.layer(i).prefix(n_tokens), max_order=settings["max_order"], clamp=clamp)
                for i in range(capture.n_layers)])
            got_arrays = _arrays(got)
            for name, values in _arrays(expected).items():
                assert values.shape == got_arrays[name].shape, name
                assert np.array_equal(values, got_arrays[name], equal_nan=True), name


def _reference_loss(attention) -> float:
    """Mean next-token loss (nats) of the tiny llama on IDS with `attention(q, k, v, scale)` -> (B, Hq, T, Dv) in
    every layer, registered as the model's attention implementation (q (B, Hq, T, D), k/v before the grouped-query
    repeat); logits to loss in fp64."""
    name = f"attnscope-test-reference-{id(attention)}"

    def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        return attention(query, key, value, scaling).to(query.dtype).transpose(1, 2).contiguous(), None

    AttentionInterface.register(name, forward)
    with torch.no_grad():
        logits = build("llama", attn_implementation=name)(input_ids=torch.tensor([IDS])).logits
    logprobs = torch.log_softmax(logits[0, :-1].double(), dim=-1)
    return float(-logprobs.gather(-1, torch.tensor(IDS[1:])[:, None]).mean())


def test_numbers_equal_fp64_references(llama, result):
    """Every kind of number the study reports, against the fp64 references of kernels/taylor/naive.py on the
    captured q/k/v, a loss computed with those references as the model's attention, or a count from the
    definitions."""
    capture = run_with_capture(llama.module, torch.tensor([IDS]))
    n_layers, n_heads, n_tokens = capture.n_layers, capture.layer(0).n_heads, len(IDS)
    for layer_index, head in ((1, 2), (0, 0), (2, 5)):
        for name, errors in taylor_errors(capture.layer(layer_index), head, 10).items():
            for order, expected in enumerate(errors):
                got = result.sweep.error[name][layer_index, head, order]
                assert got == pytest.approx(expected, rel=1e-6), (layer_index, head, name, order)
    assert result.sweep.logit_hist.sum() == n_layers * n_heads * n_tokens * (n_tokens + 1) // 2  # causal cells

    layer = capture.layer(1)  # the probe: layer 1, head 2, the last query, order 3, sum of P_3 as denominator
    logits = (layer.k[0, layer.kv_head(2)].double() @ layer.q[0, 2, -1].double()).numpy() * layer.scale
    assert result.row.query == n_tokens - 1 and result.row.order == 3
    expected = sum(logits**n / math.factorial(n) for n in range(4)).sum()
    assert result.row.weights.denominator == pytest.approx(expected, rel=1e-12)
    head_dim, value_dim = layer.q.shape[-1], layer.v.shape[-1]
    assert result.recurrent.state_entries == [head_dim**n * value_dim for n in range(3)]
    assert result.recurrent.n_tokens == n_tokens

    # fp32 forward passes against fp64 attention agree to ~1e-9 here; orders 1 and 2 differ by 1.5e-6 (in this tiny
    # model's small logits, orders 2 and 3 only by 2e-9: the sweep's errors above tell those apart).
    references = result.losses.references
    with torch.no_grad():
        logits = build("llama", attn_implementation="eager")(input_ids=torch.tensor([IDS])).logits
    model_loss = float(-torch.log_softmax(logits[0, :-1].double(), -1).gather(-1, torch.tensor(IDS[1:])[:, None])
                       .mean())
    assert references["the model as trained"] == pytest.approx(model_loss, rel=1e-7)
    exact = _reference_loss(lambda q, k, v, scale: naive.softmax_attention(q, k, v, scale=scale))
    assert references["exact softmax (written out)"] == pytest.approx(exact, rel=1e-7)
    linear = _reference_loss(lambda q, k, v, scale: naive.linear_attention(q, k, v, feature_map=naive.elu_plus_one,
                                                                           scale=scale))
    assert references["linear attention, elu(x)+1"] == pytest.approx(linear, rel=1e-7)
    assert result.losses.denominators == ("l2",) and result.losses.orders[:3] == (1, 2, 3)
    for column, order in enumerate((1, 2, 3)):
        taylor_loss = _reference_loss(lambda q, k, v, scale: naive.taylor_attention(q, k, v, order=order,
                                                                                    denominator="l2", scale=scale))
        assert result.losses.taylor[0, column] == pytest.approx(taylor_loss, rel=1e-7), order


def test_units_are_module_functions_with_hashable_arguments(llama):
    """What AppSource needs to route a unit through st.cache_data: a name to import and arguments to key on."""
    source = _RecordingSource(llama)
    study.run(source, IDS, max_order=2, losses=("taylor",))
    names = [fn.__name__ for fn, _ in source.calls]
    assert names == ["layer_sweep"] * 3 + ["query_weights", "recurrent"] + ["loss"] * (3 + 2)
    for fn, args in source.calls:
        assert getattr(study, fn.__name__) is fn
        hash(args)


def test_progress_reaches_one_and_never_goes_back(llama):
    seen = []
    study.run(Source(llama), IDS, max_order=2, losses=("l2",), progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert seen[0][1] == "Orders 0–2 for every head: layer 1/3"
    assert seen[-1][1] == "Forward pass 5/5: Taylor n=2"


def test_findings_cover_every_section_with_the_numbers_shown(result):
    sections = {section: result.findings(section) for section in study.SECTIONS}
    assert all(sections.values()) and sum(map(len, sections.values())) == len(result.findings())
    needed = analysis.order_needed(result.sweep.error["softmax"], result.tolerance)
    reached = int((needed >= 0).sum())
    assert f"exact softmax (Σ eˢ): {reached} of 18 heads" in sections["needed"][0].measured
    row_note, health = sections["weights"]
    assert row_note.paper is None and row_note.measured.startswith(
        f"Denominator of this row: {result.row.weights.denominator:.4g}. Negative weights in this row: 0 of 24.")
    assert "on the first 24 tokens of layer 1, head 2: max difference" in sections["rnn"][0].measured
    model_loss = result.losses.references["the model as trained"]
    assert f"the model as trained {model_loss:.3f}" in sections["loss"][0].measured
    assert sections["loss"][-1].measured.startswith("Zero-shot: the model was trained with softmax")
    assert all("arXiv 2507.23632" in f.paper for f in result.findings() if f.paper and "exp only near 0" not in f.paper)
    with pytest.raises(ValueError, match="Unknown section"):
        result.findings("nowhere")


def test_figures_and_tables(result):
    charts = result.figures()
    assert list(charts) == ["error-vs-order", "softmax-output-row-norms", "order-needed", "logit-histogram",
                            "term-sizes", "one-query-weights", "denominator-health", "zero-shot-loss"]
    assert charts["error-vs-order"].layout.title.text.startswith("Error vs order, all heads (median")
    assert "Layer 1, head 2, query 23: weights at order 3" in charts["one-query-weights"].layout.title.text
    one_head = result.figures(scope="head", layer=2, head=5)
    assert one_head["error-vs-order"].layout.title.text == "Error vs order, layer 2, head 5"
    np.testing.assert_array_equal(one_head["error-vs-order"].data[0].y, result.sweep.error["taylor"][2, 5])
    with pytest.raises(ValueError, match="Unknown scope"):
        result.figures(scope="everything")
    heads = result.heads_frame()
    assert len(heads) == 18 and heads["min logit"].is_monotonic_increasing
    assert list(result.recurrent_frame()["order n"]) == [0, 1, 2]
    losses = result.loss_frame()
    assert list(losses["attention"])[:4] == ["the model as trained", "exact softmax (written out)",
                                             "linear attention, elu(x)+1", "Taylor n=1"]
    frame = result.to_frame()
    assert len(frame) == 3 * 6 * 11 * len(DENOMINATORS)
    row = frame.query("layer == 1 and head == 2 and order == 3 and denominator == 'l2'")
    assert row["error"].item() == result.sweep.error["l2"][1, 2, 3]
    assert result.summary() == "24 tokens · 3 layers × 6 heads · orders 0–10 · no clamp · fp64 on CPU"


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_save_and_open_round_trip(result, tmp_path, suffix):
    reopened = open_result(result.save(tmp_path / f"taylor{suffix}"))
    assert isinstance(reopened, study.TaylorResult)
    after = _arrays(reopened.sweep)
    for name, values in _arrays(result.sweep).items():
        assert values.dtype == after[name].dtype and np.array_equal(values, after[name], equal_nan=True), name
    np.testing.assert_array_equal(reopened.losses.taylor, result.losses.taylor)
    assert reopened.losses.references == result.losses.references and reopened.recurrent == result.recurrent
    assert reopened.findings() == result.findings() and reopened.tokens == result.tokens
    assert reopened.figures()["order-needed"].to_json() == result.figures()["order-needed"].to_json()
    assert reopened.to_frame().equals(result.to_frame())


def test_clamped_result_round_trips_its_clamp(llama, tmp_path):
    clamped = study.run(Source(llama), IDS, max_order=2, clamp="both", clamp_value=1.5)
    assert clamped.clamp == (-1.5, 1.5) and "logits clamped to [-1.5, 1.5]" in clamped.summary()
    assert open_result(clamped.save(tmp_path / "clamped.json")).clamp == (-1.5, 1.5)


def test_clamp_settings():
    assert study.clamp_bounds("none", 5.0) is None and study.clamp_bounds(None, 5.0) is None
    assert study.clamp_bounds("upper", 5.0) == 5.0
    assert study.clamp_bounds("both", -3.0) == (-3.0, 3.0)
    assert study.clamp_bounds("clamp both sides", 2.0) == (-2.0, 2.0)  # the label older links carried
    with pytest.raises(ValueError, match="clamp"):
        study.clamp_bounds("sideways", 1.0)


def test_encoder_has_no_recurrence_and_no_loss():
    bert = handle("bert")
    result = study.run(Source(bert), IDS[:10], max_order=2)
    assert result.recurrent is None and not result.can_measure_loss and result.findings("rnn") == []
    assert result.sweep.error["softmax"].shape == (2, 4, 3)
    with pytest.raises(ValueError, match="needs a decoder"):
        study.run(Source(bert), IDS[:10], max_order=2, losses=("l2",))


@pytest.mark.parametrize("settings,message", [
    (dict(taylor_layer=3), "taylor_layer=3"),
    (dict(taylor_head=6), "taylor_head=6"),
    (dict(query=24), "query=24"),
    (dict(max_order=21), "max_order=21"),
    (dict(losses=("softplus",)), "Unknown denominator"),
    (dict(tolerance=0), "tolerance"),
])
def test_bad_settings_say_what_was_wrong(llama, settings, message):
    with pytest.raises(ValueError, match=message):
        study.run(Source(llama), IDS, **settings)


def test_order_beyond_the_highest_is_the_highest(llama):
    assert study.run(Source(llama), IDS, max_order=2, taylor_order=10).row.order == 2
