"""core.analyses.taylor on tiny random models: the substitution machinery, and the helpers the page draws from."""

import math
import threading

import numpy as np
import pytest
import torch

from attnscope.analyses import taylor
from attnscope.capture import run_with_capture, substituting
from attnscope.kernels.taylor import naive
from tests.unit.tiny_models import DECODERS, build


def _ids(length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 97, (1, length), generator=torch.Generator().manual_seed(seed))


SUBSTITUTES = [taylor.Substitute("softmax"), taylor.Substitute("elu+1"),
               taylor.Substitute("taylor", order=3, denominator="taylor"),
               taylor.Substitute("taylor", order=2, denominator="l2", clamp=(-1.0, 1.0))]


@pytest.mark.parametrize("substitute", SUBSTITUTES, ids=lambda s: s.label)
@pytest.mark.parametrize("family", DECODERS)
def test_substitutes_never_see_the_future(family, substitute):
    """SDPA's mask function hands None for a plain causal mask; the substitute must still apply the causal rule."""
    model, ids = build(family), _ids(12)
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 5) % 97
    with torch.no_grad(), substituting(taylor.attention_function(substitute)):
        before, after = model(input_ids=ids).logits, model(input_ids=changed).logits
    torch.testing.assert_close(before[0, :8], after[0, :8], rtol=0, atol=0)
    assert not torch.allclose(before[0, 8:], after[0, 8:])


@pytest.mark.parametrize("family", DECODERS)
def test_exact_softmax_substitute_reproduces_the_model(family):
    model, ids = build(family), _ids(20)
    own = taylor.substitution_loss(model, ids, taylor.Substitute("model"))
    control = taylor.substitution_loss(model, ids, taylor.Substitute("softmax"))
    assert abs(own - control) < 1e-5
    replaced = taylor.substitution_loss(model, ids, taylor.Substitute("taylor", order=1))
    assert replaced != own, "the replacement must actually run"


def test_taylor_substitute_is_taylor_attention_in_every_layer():
    """With the substitute active, each layer's output is kernels.taylor_attention of what it received."""
    model, ids = build("llama"), _ids(10)
    substitute = taylor.Substitute("taylor", order=2, denominator="softmax")
    seen = []
    function = taylor.attention_function(substitute)

    def recording(layer):
        out = function(layer)
        reference = naive.taylor_attention(layer.q, layer.k, layer.v, order=2, denominator="softmax",
                                           causal=layer.causal, scale=layer.scale)
        seen.append(float((out.double() - reference).abs().max()))
        return out

    with torch.no_grad(), substituting(recording):
        model(input_ids=ids)
    assert len(seen) == 3 and max(seen) < 1e-5


def test_substitution_is_per_thread():
    """Another thread's forward pass keeps exact attention while this thread substitutes."""
    model, ids = build("llama"), _ids(9)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    result = {}
    with torch.no_grad(), substituting(taylor.attention_function(taylor.Substitute("elu+1"))):
        worker = threading.Thread(target=lambda: result.setdefault("logits", model(input_ids=ids).logits))
        worker.start()
        worker.join()
    torch.testing.assert_close(result["logits"], expected, rtol=0, atol=0)


def test_loss_needs_two_tokens():
    with pytest.raises(ValueError, match="two tokens"):
        taylor.substitution_loss(build("llama"), _ids(1), taylor.Substitute("model"))


def test_sweep_layer_matches_fp64_reference_per_head():
    """A head's error is ||O_n - O||_F / ||O||_F over its rows; recomputed here from q/k/v in fp64."""
    capture = run_with_capture(build("llama"), _ids(30))
    layer = capture.layer(1)
    sweep = taylor.sweep_layer(layer, max_order=5)
    target = naive.softmax_attention(layer.q, layer.k, layer.v, scale=layer.scale)[0]  # (H, T, D)
    for name in ("taylor", "softmax", "l2", "none"):
        for n in range(6):
            out = naive.taylor_attention(layer.q, layer.k, layer.v, order=n, denominator=name, scale=layer.scale)[0]
            goal = target / target.norm(dim=-1, keepdim=True) if name == "l2" else target
            expected = (out - goal).flatten(1).norm(dim=-1) / goal.flatten(1).norm(dim=-1)
            np.testing.assert_allclose(sweep.error[name][:, n], expected.numpy(), rtol=1e-6, atol=1e-10)


def test_order_needed_and_spread():
    error = np.array([[[1.0, 0.5, 0.005, 0.001], [2.0, 3.0, 4.0, 5.0]]])  # (L=1, H=2, O=4)
    assert taylor.order_needed(error, 1e-2).tolist() == [[2, -1]]
    assert taylor.order_needed(error, 10.0).tolist() == [[0, 0]]
    spread = taylor.spread_over_heads(error)
    np.testing.assert_allclose(spread["median"], [1.5, 1.75, 2.0025, 2.5005])


def test_exp_truncation_error_matches_the_theory_table():
    """../shared/THEORY.md: at x = 1 order 4 errs 3.7e-3 and order 10 1e-8; at 3: 0.18, 2.9e-4; at 5: 0.56, 1.4e-2."""
    table = {(1, 4): 3.7e-3, (1, 10): 1e-8, (3, 4): 0.18, (3, 10): 2.9e-4, (5, 4): 0.56, (5, 10): 1.4e-2}
    for (x, n), expected in table.items():
        assert taylor.exp_truncation_error(np.array([x]), n)[0] == pytest.approx(expected, rel=0.1)
    assert taylor.exp_truncation_error(np.array([-20.0]), 10)[0] > 1e14  # P_10(-20) ~ 2e6 against e^-20 ~ 2e-9


def test_logit_quantiles_from_histograms():
    edges = naive.logit_bin_edges().numpy()
    hist = np.zeros((1, naive.LOGIT_BINS))
    hist[0, np.searchsorted(edges, -10.0, side="right") - 1] = 3
    hist[0, np.searchsorted(edges, 2.0, side="right") - 1] = 1
    low, median, high = taylor.logit_quantiles(hist, [0.1, 0.5, 0.9])[0]
    assert -10.25 < low < -9.75 and -10.25 < median < -9.75 and 1.75 < high < 2.25


def test_row_weights_and_recurrent_check():
    capture = run_with_capture(build("llama"), _ids(16))
    layer = capture.layer(2)
    row = taylor.row_weights(layer, head=4, query=9, order=3, denominator="taylor")
    assert np.isnan(row.softmax[10:]).all() and np.isnan(row.truncated[10:]).all()
    np.testing.assert_allclose(np.nansum(row.truncated), 1.0, rtol=1e-9)
    np.testing.assert_allclose(np.nansum(row.softmax), 1.0, rtol=1e-6)
    expected = naive.taylor_weights(torch.tensor(row.logits[:10]), 3) / row.denominator
    np.testing.assert_allclose(row.truncated[:10], expected.numpy(), rtol=1e-9)
    check = taylor.recurrent_check(layer, head=4, n_tokens=12)
    assert check.n_tokens == 12 and check.state_entries == [8, 64, 512]  # d = d_v = 8
    assert max(check.max_difference) <= 1e-12 * max(check.output_scale)
    assert check.linear_difference < 1e-12


def test_unsupported_layers_say_why():
    ids = _ids(10)
    attention_mask = torch.ones_like(ids)
    attention_mask[0, 7:] = 0
    from attnscope.capture import capturing

    with torch.no_grad(), capturing() as captured:
        build("bert")(input_ids=ids, attention_mask=attention_mask)
    padded = taylor.sweep_layer(captured[0], max_order=2)  # key padding: every row still sees 7 keys
    assert all(np.isfinite(padded.error[name]).all() for name in ("taylor", "softmax"))
    with pytest.raises(ValueError, match="explicit mask"):
        taylor.recurrent_check(captured[0], head=0, n_tokens=5)
    encoder = run_with_capture(build("bert"), ids)
    with pytest.raises(ValueError, match="causal"):
        taylor.recurrent_check(encoder.layer(0), head=0, n_tokens=5)
    assert math.isfinite(taylor.sweep_layer(encoder.layer(0), max_order=2).error["softmax"].max())


def test_prefix_is_what_the_model_computes_on_the_prefix_alone():
    model, ids = build("llama"), _ids(20)
    whole, short = run_with_capture(model, ids), run_with_capture(model, ids[:, :12])
    cut = whole.layer(1).prefix(12)
    for name in ("q", "k", "v"):
        torch.testing.assert_close(getattr(cut, name), getattr(short.layer(1), name), rtol=1e-5, atol=1e-6)
    assert whole.layer(1).prefix(50) is whole.layer(1)
    with pytest.raises(ValueError, match="causal"):
        run_with_capture(build("bert"), ids).layer(0).prefix(5)


# "on" compiles the row function with torch.compile: about a minute on the CPU the first time, so it is slow.
@pytest.mark.parametrize("policy", ["off", pytest.param("on", marks=pytest.mark.slow)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_picked_logprobs_equal_log_softmax_eager_and_compiled(policy, dtype, monkeypatch):
    """The row function next_token_logprobs uses (compiled on large CPU calls) against torch's log_softmax, on logits
    spread over +-80 (exp would overflow without the row maximum)."""
    from attnscope import logprobs

    monkeypatch.setenv("ATTNSCOPE_CPU_COMPILE", policy)
    monkeypatch.setattr(logprobs, "ROWS", 7)  # several blocks, the last one short
    logits = torch.randn(1, 30, 1000, generator=torch.Generator().manual_seed(0)) * 40
    ids = torch.randint(0, 1000, (1, 30), generator=torch.Generator().manual_seed(1))
    expected = torch.log_softmax(logits[0, :-1].to(dtype), -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    tolerance = 4 * torch.finfo(dtype).eps * 80
    torch.testing.assert_close(logprobs.next_token_logprobs(logits, ids, dtype=dtype), expected, rtol=0,
                               atol=tolerance)


def test_one_next_token_loss_for_the_model_and_its_substitutes():
    """substitution_loss is attnscope.logprobs.next_token_loss of the logits; log-probabilities taken a block of rows
    at a time equal one whole log_softmax: in fp32 exactly what a capture records, in fp64 the loss's."""
    from attnscope.logprobs import ROWS, next_token_logprobs, next_token_loss

    model, ids = build("llama"), _ids(ROWS + 40)  # crosses a chunk boundary
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    logprobs = next_token_logprobs(logits, ids)
    whole = torch.log_softmax(logits[0, :-1].double(), -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    torch.testing.assert_close(logprobs, whole, rtol=0, atol=1e-12)
    assert taylor.substitution_loss(model, ids, taylor.Substitute("model")) == next_token_loss(logits, ids)
    assert next_token_loss(logits, ids) == pytest.approx(float(-whole.mean()), rel=1e-12)
    captured = run_with_capture(model, ids).token_logprobs  # fp32, the whole matrix at once
    torch.testing.assert_close(next_token_logprobs(logits, ids, dtype=torch.float32), captured, rtol=0, atol=0)
    torch.testing.assert_close(logprobs.float(), captured, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        next_token_logprobs(logits[:, :-1], ids)



@pytest.mark.parametrize("family", ["gemma2", "gemma3", "mistral", "gpt_oss"])
def test_every_family_sweeps_and_substitutes_under_its_own_rule(family):
    """Sliding windows, softcaps (Gemma 2) and learned sinks (gpt-oss): each layer's sweep equals the fp64 reference
    under the layer's own rule (a sweep that ignored the window, the cap or the sink would not), the written-out
    softmax control loses nothing against the model, and the RNN form says why it does not apply."""
    from attnscope.kernels.taylor import naive

    model, ids = build(family), _ids(40)
    capture = run_with_capture(model, ids)
    for index in sorted(capture.layers):
        layer = capture.layer(index)
        sweep = taylor.sweep_layer(layer, max_order=6)
        rule = layer.rule()
        target = naive.softmax_attention(layer.q, layer.k, layer.v, scale=layer.scale, **rule)
        for order in (0, 2, 6):
            for name in ("taylor", "softmax"):
                approx = naive.taylor_attention(layer.q, layer.k, layer.v, order=order, denominator=name,
                                                scale=layer.scale, **rule)
                expected = ((approx - target).norm(dim=(-2, -1)) / target.norm(dim=(-2, -1)))[0].numpy()
                np.testing.assert_allclose(sweep.error[name][:, order], expected, rtol=1e-3, atol=1e-6,
                                           err_msg=f"{family} layer {index} order {order} {name}")
    reference = taylor.substitution_loss(model, ids, taylor.Substitute("model"))
    assert taylor.substitution_loss(model, ids, taylor.Substitute("softmax")) == pytest.approx(reference, abs=1e-4)
    local = next(capture.layer(i) for i in sorted(capture.layers)
                 if capture.layer(i).window or capture.layer(i).sinks is not None or capture.layer(i).softcap)
    with pytest.raises(ValueError, match="recurrent form does not apply"):
        taylor.recurrent_check(local, head=0, n_tokens=5)
