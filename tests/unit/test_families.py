"""Faithful capture, family by family: what attnscope records and computes is what each architecture computes.

One tiny random-weight model per family (tests/unit/tiny_models.py), run on a text five times longer than the
sliding windows, so local layers really are local. The reference is the family's own eager attention
(``attn_implementation="eager"``, the written-out modeling code) with the same weights: its ``output_attentions``
are the probabilities, its logits the output. For every family:

1. capture leaves the output alone: bit for bit against a plain forward through the same "attnscope" function, and
   within fp32 rounding against eager;
2. the probabilities rebuilt from the capture (LayerCapture.probs) are eager's, layer by layer;
3. the kernels' row statistics (kernels.attention_stats with the layer's rule), their head means
   (maps.head_stats) and the engine's equal the same statistics computed from eager's probabilities, the kernel's
   output is eager's attention output, and the engine's model output is the plain forward's;
4. the rule is the compact one: sliding-window layers carry `window` and no mask, global layers the causal rule,
   the encoder full visibility, gpt-oss its learned sinks, Gemma 2 its softcap;
5. a text no longer than the window keeps it in the rule, so local layers still read as local;
6. under left padding (an explicit mask) every real token's probabilities and output are still eager's.

A family whose attention never reaches the registered function (Bloom's ALiBi) gets one sentence saying so.

Tolerances (fp32 throughout): layer 0 reads identical q/k/v on both sides, so differences there are one softmax's
rounding; later layers read a residual stream that went through SDPA (or the kernel) on one side and eager's
matmul-softmax on the other, which agree to about 1e-6 relative.
"""

import functools
from dataclasses import dataclass

import pytest
import torch

from attnscope import engine, kernels
from attnscope.analyses import maps
from attnscope.capture import ATTENTION_NAME, Capture, capturing, register_attention, run_with_capture
from tests.unit.tiny_models import ARCHITECTURES, ENCODERS, VOCAB, WINDOW, build

LENGTH = 5 * WINDOW
OUTPUT_TOLERANCE = dict(rtol=1e-5, atol=1e-5)  # logits (hidden states for BERT) of two fp32 implementations
PROBS_TOLERANCE = dict(rtol=0, atol=2e-6)  # attention weights, which lie in [0, 1]
STATS_TOLERANCE = dict(rtol=1e-5, atol=1e-5)  # entropies (nats), weights, distances (positions)
PADDED = 6  # left-padding tokens of the padded text



@dataclass(frozen=True)
class Design:
    windows: tuple[int | None, ...]  # per layer: keys a query sees at most, None for a global layer
    sinks: bool = False  # learned per-head sink logits (gpt-oss's s_aux)
    softcap: float | None = None  # attention-logit softcap


W = WINDOW
# Per family, the window of each layer (None = global) and whether it has learned sinks and a softcap: read off each
# architecture's design (Gemma 2/3 and gpt-oss start with a local layer, Qwen windows the layers from
# max_window_layers on, Mistral and Phi-3 window every layer), not off attnscope.
DESIGNS = {
    "llama": Design(windows=(None, None, None)),
    "gpt2": Design(windows=(None, None, None)),
    "bert": Design(windows=(None, None)),
    "qwen2": Design(windows=(None, W)),
    "qwen3": Design(windows=(None, W)),
    "gemma2": Design(windows=(W, None), softcap=2.0),
    "gemma3": Design(windows=(W, None)),
    "mistral": Design(windows=(W, W)),
    "phi3": Design(windows=(W, W)),
    "gpt_neox": Design(windows=(None, None)),
    "gpt_oss": Design(windows=(W, None), sinks=True),
}


def test_every_family_has_a_design():
    assert sorted(DESIGNS) == sorted(ARCHITECTURES)


@dataclass
class FamilyRun:
    model: torch.nn.Module  # attn_implementation="attnscope"
    eager: torch.nn.Module  # the same weights, attn_implementation="eager"
    ids: torch.Tensor  # (1, LENGTH)
    capture: Capture
    captured_output: torch.Tensor  # the model's output during run_with_capture
    plain_output: torch.Tensor  # a plain forward through the same "attnscope" function
    eager_output: torch.Tensor  # the same weights under attn_implementation="eager"
    eager_probs: list[torch.Tensor]  # per layer (1, Hq, T, S): eager's output_attentions, fp64


def _output(result) -> torch.Tensor:
    """Logits of a decoder, last hidden state of an encoder."""
    logits = getattr(result, "logits", None)
    return result.last_hidden_state if logits is None else logits


def _with_output(model: torch.nn.Module, call):
    """(what `call()` returns, the output of the forward pass of `model` it made)."""
    seen = []
    handle = model.register_forward_hook(lambda module, args, output: seen.append(_output(output)))
    try:
        result = call()
    finally:
        handle.remove()
    assert len(seen) == 1, "one forward pass"
    return result, seen[0]


@functools.cache
def _run(family: str) -> FamilyRun:
    ids = torch.randint(0, VOCAB, (1, LENGTH), generator=torch.Generator().manual_seed(3))
    model = build(family)
    eager = build(family, attn_implementation="eager")
    eager.load_state_dict(model.state_dict())
    capture, captured_output = _with_output(model, lambda: run_with_capture(model, ids))
    with torch.no_grad():
        plain_output = _output(model(input_ids=ids))
        eager_result = eager(input_ids=ids, output_attentions=True)
    return FamilyRun(model=model, eager=eager, ids=ids, capture=capture, captured_output=captured_output,
                     plain_output=plain_output, eager_output=_output(eager_result),
                     eager_probs=[p.double() for p in eager_result.attentions])


@pytest.mark.parametrize("family", list(DESIGNS))
def test_capture_leaves_the_output_alone(family):
    run = _run(family)
    assert torch.equal(run.captured_output, run.plain_output), "recording must not change a single bit"
    torch.testing.assert_close(run.plain_output, run.eager_output, **OUTPUT_TOLERANCE)


@pytest.mark.parametrize("family", list(DESIGNS))
def test_probs_rebuilt_from_the_capture_are_eagers(family):
    run = _run(family)
    assert run.capture.n_layers == len(run.eager_probs) == len(DESIGNS[family].windows)
    for index, expected in enumerate(run.eager_probs):
        torch.testing.assert_close(run.capture.layer(index).probs().double(), expected, **PROBS_TOLERANCE,
                                   msg=lambda m: f"layer {index}: {m}")


def _eager_row_stats(probs: torch.Tensor, sinks: bool) -> dict[str, torch.Tensor]:
    """Row statistics (B, H, T) fp64 straight from eager's probabilities (B, H, T, S); with learned sinks the sink
    cell's weight is what the real keys leave of 1, and it counts in the entropy and the max weight."""
    n_queries, n_keys = probs.shape[-2:]
    plogp = lambda p: torch.where(p > 0, p * torch.log(p.clamp(min=1e-300)), 0.0)  # noqa: E731
    left = 1 - probs.sum(-1)
    if not sinks:
        assert left.abs().max() < 1e-6, "without sinks eager's rows sum to 1"
    sink_cell = left.clamp(min=0) if sinks else torch.zeros_like(left)
    position = torch.arange(n_queries, dtype=torch.float64)[:, None] + (n_keys - n_queries)
    distance = (position - torch.arange(n_keys, dtype=torch.float64)[None, :]).abs()
    stats = dict(
        entropy=-plogp(probs).sum(-1) - plogp(sink_cell),
        max_weight=torch.maximum(probs.amax(-1), sink_cell),
        sink_mass=probs[..., 0],
        mean_distance=(probs * distance).sum(-1),
    )
    if sinks:
        stats["learned_sink_mass"] = sink_cell
    return stats


def _expected_visible(design: Design, index: int, n_queries: int, encoder: bool) -> torch.Tensor:
    """(T,) keys each query sees by the family's design: all, the causal prefix, or its last `window` keys."""
    if encoder:
        return torch.full((n_queries,), float(n_queries), dtype=torch.float64)
    counts = torch.arange(1, n_queries + 1, dtype=torch.float64)
    window = design.windows[index]
    return counts if window is None else counts.clamp(max=window)


@pytest.mark.parametrize("family", list(DESIGNS))
def test_kernel_statistics_are_those_of_eagers_probabilities(family):
    run, design = _run(family), DESIGNS[family]
    engine_run, engine_output = _with_output(run.model, lambda: engine.run(run.model, run.ids))
    torch.testing.assert_close(engine_output, run.plain_output, **OUTPUT_TOLERANCE)
    for index, probs in enumerate(run.eager_probs):
        layer = run.capture.layer(index)
        where = lambda m: f"layer {index}: {m}"  # noqa: E731
        n_visible = (probs[0] > 0).sum(-1).double()  # (H, T)
        expected_visible = _expected_visible(design, index, probs.shape[2], family in ENCODERS)
        assert torch.equal(n_visible, expected_visible.expand_as(n_visible)), f"layer {index} is not as designed"

        expected = _eager_row_stats(probs, design.sinks)
        stats = kernels.attention_stats(layer.q, layer.k, layer.v, scale=layer.scale, **layer.rule())
        assert (stats.learned_sink_mass is not None) == design.sinks
        for field, value in expected.items():
            torch.testing.assert_close(getattr(stats, field).double(), value, **STATS_TOLERANCE,
                                       msg=lambda m, field=field: where(f"{field}: {m}"))
        values = layer.v.double().repeat_interleave(layer.groups, dim=1)  # (1, Hq, S, Dv)
        torch.testing.assert_close(stats.output.double(), probs @ values, **STATS_TOLERANCE,
                                   msg=lambda m: where(f"output: {m}"))

        means = {field: value[0].mean(-1) for field, value in expected.items()}
        cells = n_visible + 1 if design.sinks else n_visible
        spread = cells > 1
        means["normalized_entropy"] = (torch.where(spread, expected["entropy"][0] / cells.clamp(min=2).log(), 0.0)
                                       .sum(-1) / spread.sum(-1))
        for what, head_stats in (("maps.head_stats", maps.head_stats(layer)), ("engine", engine_run.head_stats[index])):
            assert (head_stats.learned_sink_mass is not None) == design.sinks
            for field, value in means.items():
                torch.testing.assert_close(getattr(head_stats, field).double(), value, **STATS_TOLERANCE,
                                           msg=lambda m, field=field, what=what: where(f"{what} {field}: {m}"))


@pytest.mark.parametrize("family", list(DESIGNS))
def test_the_captured_rule_is_the_compact_one(family):
    run, design = _run(family), DESIGNS[family]
    attention = {module.layer_idx: module for module in run.model.modules() if hasattr(module, "sinks")}
    for index, window in enumerate(design.windows):
        layer = run.capture.layer(index)
        assert layer.mask is None, f"layer {index} kept an explicit mask"
        assert layer.causal == (family not in ENCODERS) and layer.window == window, f"layer {index}"
        assert layer.softcap == design.softcap
        if design.sinks:
            assert layer.sinks is not None and layer.sinks.shape == (layer.n_heads,)
            assert torch.equal(layer.sinks, attention[index].sinks.detach().float())
        else:
            assert layer.sinks is None


@pytest.mark.parametrize("length", [WINDOW // 2, WINDOW])
@pytest.mark.parametrize("family", [family for family, design in DESIGNS.items() if any(design.windows)])
def test_a_text_within_the_window_keeps_the_window(family, length):
    """Where every query sees at most `window` keys the windowed rule is the causal one (SDPA's mask function hands no
    mask below the window, the causal pattern at it): the capture keeps the layer's window all the same."""
    run, design = _run(family), DESIGNS[family]
    ids = run.ids[:, :length]
    capture = run_with_capture(run.model, ids)
    with torch.no_grad():
        expected = run.eager(input_ids=ids, output_attentions=True).attentions
    for index, window in enumerate(design.windows):
        layer = capture.layer(index)
        assert (layer.causal, layer.mask, layer.window) == (True, None, window), f"layer {index}"
        torch.testing.assert_close(layer.probs(), expected[index], **PROBS_TOLERANCE,
                                   msg=lambda m: f"layer {index}: {m}")


@pytest.mark.parametrize("family", list(DESIGNS))
def test_left_padding_reproduces_eager_on_the_real_tokens(family):
    """Two texts, the first left-padded: the padding joins the layer's rule in one explicit mask, and every
    real token's probabilities and output are eager's, also through the engine. A padded query of a decoder sees no
    key: attnscope gives it zero weights where eager's additive mask gives 1/S on every key, so padded rows are not
    compared, but they must not leak into real ones (softmax's NaN there once made Gemma 2's every logit NaN)."""
    run = _run(family)
    ids = torch.randint(0, VOCAB, (2, LENGTH), generator=torch.Generator().manual_seed(4))
    padding = torch.ones_like(ids)
    padding[0, :PADDED] = 0
    real = padding.bool()  # (B, T)
    with torch.no_grad(), capturing() as captured:
        output = _output(run.model(input_ids=ids, attention_mask=padding))
    with torch.no_grad():
        eager = run.eager(input_ids=ids, attention_mask=padding, output_attentions=True)
    assert torch.isfinite(output).all()
    torch.testing.assert_close(output[real], _output(eager)[real], **OUTPUT_TOLERANCE)
    for index, expected in enumerate(eager.attentions):
        layer = captured[index]
        assert layer.mask is not None and layer.window is None, f"layer {index}: padding needs an explicit mask"
        probs = layer.probs().transpose(1, 2)[real]  # (real tokens, Hq, S)
        torch.testing.assert_close(probs, expected.transpose(1, 2)[real], **PROBS_TOLERANCE,
                                   msg=lambda m: f"layer {index}: {m}")
    _, engine_output = _with_output(run.model, lambda: engine.run(run.model, ids, attention_mask=padding))
    torch.testing.assert_close(engine_output[real], output[real], **OUTPUT_TOLERANCE)


def test_a_family_outside_the_attention_interface_says_so():
    """Bloom (like Falcon and MPT) adds ALiBi to its logits in its own attention code, which never calls the
    registered function: capture must say so in one sentence, not advise loading the model as it was loaded."""
    from transformers import AutoModelForCausalLM, BloomConfig

    register_attention()
    torch.manual_seed(0)
    bloom = AutoModelForCausalLM.from_config(BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4),
                                             attn_implementation=ATTENTION_NAME).eval()
    with pytest.raises(ValueError, match="BloomForCausalLM computes attention in its own code"):
        run_with_capture(bloom, torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(0)))


def test_loading_an_alibi_model_says_attnscope_cannot_see_it(tmp_path):
    """attnscope.load refuses Bloom (and Falcon, MPT) before reading weights, in one sentence."""
    from transformers import BloomConfig

    from attnscope.models import ModelLoadError, ModelSpec, load_model

    BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=r"\(Bloom\w*\) computes attention in its own code"):
        load_model(ModelSpec(str(tmp_path)))
