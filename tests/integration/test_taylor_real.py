"""The Softmax-vs-Taylor analyses on the packaged SmolLM2: page numbers against fp64 references from the captured
q/k/v, the guarantees the mathematics gives, and the zero-shot substitution; the study the page and the API share,
against the same references. Nothing here assumes real heads converge."""

import dataclasses

import numpy as np
import pytest
import torch

from attnscope.analyses import taylor
from attnscope.api import source
from attnscope.capture import run_with_capture
from attnscope.studies import taylor as study
from attnscope.tokens import tokenize
from attnscope.kernels import DENOMINATORS
from attnscope.kernels.taylor import naive
from tests.references import head_qkv, taylor_errors

pytestmark = pytest.mark.slow

TEXT = (
    "Mr and Mrs Dursley, of number four, Privet Drive, were proud to say that they were perfectly normal, thank you "
    "very much. They were the last people you'd expect to be involved in anything strange or mysterious, because "
    "they just didn't hold with such nonsense. def fibonacci(n):\n    if n < 2:\n        return n\n"
    "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is"
)
LAYERS_HEADS = [(0, 0), (14, 4), (29, 8)]
CAPITALS = "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is"  # 19 tokens


@pytest.fixture(scope="module")
def run(smollm2):
    ids = tokenize(smollm2.tokenizer, TEXT, max_tokens=512).as_tensor()
    return ids, run_with_capture(smollm2.model, ids)


@pytest.mark.parametrize("layer_index,head", LAYERS_HEADS)
def test_page_numbers_equal_fp64_reference(run, layer_index, head):
    _, capture = run
    layer = capture.layer(layer_index)
    sweep = taylor.sweep_layer(layer, max_order=10)
    for name, errors in taylor_errors(layer, head, 10).items():
        for n, expected in enumerate(errors):
            assert sweep.error[name][head, n] == pytest.approx(expected, rel=1e-6), (name, n)
    q, k, v = head_qkv(layer, head)
    scores = naive.masked_scores(q, k, causal=True, scale=layer.scale)
    visible = torch.isfinite(scores)
    assert sweep.logit_min[head] == pytest.approx(float(scores[visible].min()), rel=1e-6)
    assert sweep.logit_max[head] == pytest.approx(float(scores[visible].max()), rel=1e-6)
    assert sweep.logit_hist[head].sum() == int(visible.sum())


def test_real_logits_reach_where_the_series_fails(smollm2):
    """Reported, not assumed away: SmolLM2's scaled logits go far below zero, odd orders turn them into negative
    weights and even orders never do (P_2m(x) > 0 for every real x)."""
    sweep = study.run(source(smollm2), TEXT, max_order=10).sweep
    assert sweep.logit_min.min() < -10
    assert sweep.negative_weights[..., 1::2].max() > 0
    assert sweep.negative_weights[..., 0::2].max() == 0
    assert sweep.nonpositive_denominator[..., 0::2].max() == 0
    needed = taylor.order_needed(sweep.error["softmax"], 1e-2)
    reached = needed >= 0
    rows = np.argwhere(reached)
    for layer_index, head in rows:  # order_needed agrees with the errors it was read from
        n = needed[layer_index, head]
        assert sweep.error["softmax"][layer_index, head, n] < 1e-2
        assert (sweep.error["softmax"][layer_index, head, :n] >= 1e-2).all()


@pytest.mark.parametrize("layer_index", [0, 29])
def test_errors_fall_with_order_when_real_logits_are_bounded(run, layer_index):
    """Real q and k, q scaled so that every logit lies in [-1, 1]: the series converges as the mathematics says."""
    _, capture = run
    layer = capture.layer(layer_index)
    largest = float(naive.masked_scores(layer.q, layer.k, causal=True, scale=layer.scale).nan_to_num(
        0, posinf=0, neginf=0).abs().max())
    bounded = dataclasses.replace(layer, q=layer.q / largest)
    sweep = taylor.sweep_layer(bounded, max_order=10)
    for name in ("softmax", "taylor"):
        error = sweep.error[name].max(0)  # worst head per order
        assert error[1] > error[2] > error[10], name
        assert error[10] < 1e-6, f"{name}: {error[10]:.2e}"


def test_order_one_with_sum_denominator_is_linear_attention(run):
    _, capture = run
    layer = capture.layer(7)
    sweep = taylor.sweep_layer(layer, max_order=1)
    linear = naive.linear_attention(layer.q, layer.k, layer.v, feature_map=naive.identity_plus_one,
                                    scale=layer.scale)[0]  # (H, T, D)
    target = naive.softmax_attention(layer.q, layer.k, layer.v, scale=layer.scale)[0]
    expected = (linear - target).flatten(1).norm(dim=-1) / target.flatten(1).norm(dim=-1)
    np.testing.assert_allclose(sweep.error["taylor"][:, 1], expected.numpy(), rtol=1e-6)


def test_recurrent_form_on_a_real_head(run):
    _, capture = run
    check = taylor.recurrent_check(capture.layer(12), head=3, n_tokens=32)
    assert check.state_entries == [64, 64 * 64, 64 * 64 * 64]
    for difference, scale in zip(check.max_difference, check.output_scale):
        assert difference <= 1e-10 * max(scale, 1.0)
    assert check.linear_difference <= 1e-10


def test_exact_softmax_substitute_reproduces_the_models_loss(smollm2, run):
    ids, capture = run
    own = taylor.substitution_loss(smollm2.model, ids, taylor.Substitute("model"))
    control = taylor.substitution_loss(smollm2.model, ids, taylor.Substitute("softmax"))
    assert abs(control - own) < 1e-5
    assert own == pytest.approx(float(-capture.token_logprobs.double().mean()), abs=1e-4)
    taylor_10 = taylor.substitution_loss(smollm2.model, ids, taylor.Substitute("taylor", order=10, denominator="l2"))
    assert taylor_10 != own  # zero-shot replacement changes the model; how much is what the page reports


def _arrays(sweep: taylor.ModelSweep) -> dict[str, np.ndarray]:
    """Every array of a sweep by name ("error.l2" for the per-denominator errors)."""
    arrays = {f"error.{key}": values for key, values in sweep.error.items()}
    return {**arrays, **{field.name: getattr(sweep, field.name) for field in dataclasses.fields(sweep)
                         if field.name != "error"}}


def _reference_errors(capture, max_order: int) -> dict[str, np.ndarray]:
    """denominator -> (L, H, O): ||O_n - O||_F / ||O||_F over each head's rows, from kernels/taylor/naive.py in fp64
    (for "l2" against the L2-normalised softmax rows)."""
    errors = {name: np.empty((capture.n_layers, capture.layer(0).n_heads, max_order + 1)) for name in DENOMINATORS}
    for index in range(capture.n_layers):
        layer = capture.layer(index)
        target = naive.softmax_attention(layer.q, layer.k, layer.v, scale=layer.scale)[0]  # (H, T, Dv)
        for name in DENOMINATORS:
            goal = target / target.norm(dim=-1, keepdim=True) if name == "l2" else target
            for order in range(max_order + 1):
                out = naive.taylor_attention(layer.q, layer.k, layer.v, order=order, denominator=name,
                                             scale=layer.scale)[0]
                errors[name][index, :, order] = ((out - goal).flatten(1).norm(dim=-1)
                                                 / goal.flatten(1).norm(dim=-1)).numpy()
    return errors


@pytest.fixture(scope="module")
def reference_loss(smollm2):
    """loss(attention, ids): SmolLM2's mean next-token loss (fp64 from the logits) with attention(q, k, v, scale) ->
    (B, Hq, T, Dv) in every layer, registered as the model's attention implementation (k/v before the grouped-query
    repeat). A fresh load of the prepared checkpoint, so nothing of attnscope's own attention runs in it."""
    from transformers import AttentionInterface, AutoModelForCausalLM

    chosen = {}

    def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        return chosen["attention"](query, key, value, scaling).to(query.dtype).transpose(1, 2).contiguous(), None

    AttentionInterface.register("attnscope-test-reference", forward)
    model = AutoModelForCausalLM.from_pretrained(smollm2.source, dtype=torch.float32,
                                                 attn_implementation="attnscope-test-reference").eval()

    def loss(attention, ids: torch.Tensor) -> float:
        chosen["attention"] = attention
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        return float(-torch.log_softmax(logits[0, :-1].double(), -1).gather(-1, ids[0, 1:, None]).mean())

    return loss


def test_page_numbers_equal_fp64_references(smollm2, smollm2_eager, reference_loss):
    """The Softmax-vs-Taylor page on the default example text: every head's error at every order and denominator,
    the logit range and count, the sentences and title counts read from them, the probed row, and the zero-shot
    losses, each against a reference computed here from the captured q/k/v or with fp64 attention in the model."""
    ids = tokenize(smollm2.tokenizer, CAPITALS, max_tokens=2048).as_tensor()
    n_tokens = ids.shape[1]
    result = study.run(source(smollm2), CAPITALS, max_tokens=2048)
    capture = run_with_capture(smollm2.model, ids)
    n_layers, n_heads = capture.n_layers, capture.layer(0).n_heads
    assert result.summary() == (f"{n_tokens} tokens · {n_layers} layers × {n_heads} heads · orders 0–10 · no clamp · "
                                "fp64 on CPU")
    errors = _reference_errors(capture, max_order=10)
    for name in DENOMINATORS:
        np.testing.assert_allclose(result.sweep.error[name], errors[name], rtol=1e-6, err_msg=name)
    scores = [naive.masked_scores(capture.layer(i).q, capture.layer(i).k, causal=True, scale=capture.layer(i).scale)
              for i in range(n_layers)]
    assert float(result.sweep.logit_min.min()) == pytest.approx(min(float(s[s.isfinite()].min()) for s in scores),
                                                                rel=1e-6)
    assert result.sweep.logit_hist.sum() == n_layers * n_heads * n_tokens * (n_tokens + 1) // 2  # causal cells

    needed = taylor.order_needed(errors["softmax"], result.tolerance)
    total = n_layers * n_heads
    assert f"{int((needed < 0).sum())} of {total} heads never below {result.tolerance:g}" in \
        result.figures()["order-needed"].layout.title.text
    reached = f"exact softmax (Σ eˢ): {int((needed >= 0).sum())} of {total} heads"
    assert reached in result.findings("needed")[0].measured

    probe, layer = result.row, capture.layer(result.layer)
    logits = (layer.k[0, layer.kv_head(result.head)].double() @ layer.q[0, result.head, probe.query].double()) \
        * layer.scale
    visible = logits[: probe.query + 1]  # causal: keys 0..query
    weights = naive.taylor_weights(visible, probe.order)
    assert probe.denominator == "taylor" and probe.query == n_tokens - 1
    assert probe.weights.denominator == pytest.approx(float(weights.sum()), rel=1e-12)
    assert result.findings("weights")[0].measured == (
        f"Denominator of this row: {float(weights.sum()):.4g}. Negative weights in this row: "
        f"{int((weights < 0).sum())} of {n_tokens}.")

    losses = study.run(source(smollm2), CAPITALS, max_tokens=2048, max_order=3, losses=("l2",)).losses
    with torch.no_grad():
        logits = smollm2_eager(input_ids=ids).logits
    model_loss = float(-torch.log_softmax(logits[0, :-1].double(), -1).gather(-1, ids[0, 1:, None]).mean())
    exact = reference_loss(lambda q, k, v, scale: naive.softmax_attention(q, k, v, scale=scale), ids)
    linear = reference_loss(lambda q, k, v, scale: naive.linear_attention(q, k, v, feature_map=naive.elu_plus_one,
                                                                          scale=scale), ids)
    assert losses.references == pytest.approx({"the model as trained": model_loss,
                                               "exact softmax (written out)": exact,
                                               "linear attention, elu(x)+1": linear}, rel=1e-6)
    assert losses.denominators == ("l2",) and losses.orders == (1, 2, 3)
    # 30 layers of low-order Taylor attention amplify rounding: the same fp32 forward with naive's attention in fp32
    # instead of fp64 moves these losses by up to 1.2e-5 relative, while the orders' losses lie 1e-2 and more apart.
    for column, order in enumerate(losses.orders):
        expected = reference_loss(lambda q, k, v, scale: naive.taylor_attention(q, k, v, order=order, denominator="l2",
                                                                                scale=scale), ids)
        assert losses.taylor[0, column] == pytest.approx(expected, rel=1e-4), order


def test_the_api_equals_the_pages_units(smollm2):
    """attnscope.taylor's result and the page's (the same run through the dashboard's cached Source) hold identical
    arrays and say the same things."""
    from attnscope.app.cached import AppSource

    settings = dict(max_tokens=2048, max_order=4, clamp="both", taylor_layer=7, taylor_head=3, losses=("taylor",))
    page = study.run(AppSource(smollm2.spec), CAPITALS, **settings)
    api = study.run(source(smollm2), CAPITALS, **settings)
    page_arrays = _arrays(page.sweep)
    for name, values in _arrays(api.sweep).items():
        assert np.array_equal(values, page_arrays[name], equal_nan=True), name
    np.testing.assert_array_equal(api.losses.taylor, page.losses.taylor)
    assert api.recurrent == page.recurrent and api.findings() == page.findings()
