"""The streaming engine on tiny models: the same statistics as capture + maps, the same model output, only kept
layers held."""

import pytest
import torch

from attnscope import engine
from attnscope.analyses import maps
from attnscope.capture import run_with_capture
from attnscope.logprobs import next_token_logprobs
from tests.unit.test_maps import build_gemma2
from tests.unit.tiny_models import DECODERS, FAMILIES, VOCAB, build


def _ids(length: int, seed: int = 1, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _assert_stats_equal(actual: maps.HeadStats, expected: maps.HeadStats, what: str) -> None:
    for field in engine.FIELDS:
        torch.testing.assert_close(getattr(actual, field), getattr(expected, field), rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"{what} {field}: {m}")


def _assert_same_layer(actual, expected, *, exact: bool = False) -> None:
    """exact: the first layer, whose input is the embeddings; later layers' inputs went through attention outputs that
    are the fused kernel's here and SDPA's in run_with_capture, equal to fp32 rounding."""
    for name in ("q", "k", "v"):
        if exact:
            assert torch.equal(getattr(actual, name), getattr(expected, name)), name
        else:
            torch.testing.assert_close(getattr(actual, name), getattr(expected, name), rtol=1e-5, atol=1e-5)
    assert (actual.scale, actual.causal, actual.softcap) == (expected.scale, expected.causal, expected.softcap)
    assert (actual.mask is None) == (expected.mask is None)
    if actual.mask is not None:
        assert torch.equal(actual.mask, expected.mask)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("length", [1, 37, 300])
def test_head_stats_equal_maps_on_a_full_capture(family, length):
    model, ids = build(family), _ids(length)
    result = engine.run(model, ids)
    capture = run_with_capture(model, ids)
    assert result.n_layers == capture.n_layers and result.n_heads == capture.n_heads
    for index in range(capture.n_layers):
        _assert_stats_equal(result.head_stats[index], maps.head_stats(capture.layer(index)), f"layer {index}")
    assert result.stacked("entropy").shape == (capture.n_layers, capture.n_heads)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_model_output_is_the_plain_forward(family):
    model, ids = build(family), _ids(45)
    with torch.no_grad():
        plain = model(input_ids=ids, output_hidden_states=True)
    result = engine.run(model, ids, keep_layers=[1], hidden_states=True)
    capture = run_with_capture(model, ids, layers=[1], hidden_states=True)
    # The engine's attention output is the fused kernel's, SDPA's is SDPA's: equal to fp32 rounding.
    torch.testing.assert_close(result.hidden_states[1], plain.hidden_states[1], rtol=1e-5, atol=1e-5)
    if family in DECODERS:
        torch.testing.assert_close(result.token_logprobs, capture.token_logprobs, rtol=1e-5, atol=1e-5)
        assert result.token_logprobs.shape == (44,)
    else:
        assert result.token_logprobs is None


def test_token_logprobs_of_given_logits_are_those_of_one_log_softmax():
    """The engine's (and the capture's) log-probabilities: block by block of rows, exactly those of one log_softmax
    over all rows."""
    logits = torch.randn(1, 1100, 97, generator=torch.Generator().manual_seed(0)) * 5
    ids = _ids(1100)
    expected = torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    assert torch.equal(next_token_logprobs(logits, ids, dtype=torch.float32), expected)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_kept_layers_equal_run_with_capture_and_only_they_are_kept(family):
    model, ids = build(family), _ids(29)
    result = engine.run(model, ids, keep_layers=[0, 1])
    capture = run_with_capture(model, ids)
    assert sorted(result.kept) == [0, 1] and sorted(result.head_stats) == list(range(capture.n_layers))
    for index in (0, 1):
        _assert_same_layer(result.layer(index), capture.layer(index), exact=index == 0)
    assert sorted(engine.run(model, ids).kept) == []
    with pytest.raises(ValueError, match="Layer 2 was not kept"):
        result.layer(2)
    assert result.as_capture().layer(1) is result.kept[1]


def test_engine_holds_no_layer_it_was_not_asked_to_keep():
    """Every tensor the run hands back is a kept layer's or a (heads,) statistic."""
    model, ids = build("llama"), _ids(64)
    result = engine.run(model, ids, keep_layers=[2])
    big = [(name, tuple(t.shape)) for name, t in _tensors(result) if t.numel() > 6 * 64]
    assert big == [("kept.2.q", (1, 6, 64, 8)), ("kept.2.k", (1, 2, 64, 8)), ("kept.2.v", (1, 2, 64, 8))]


def _tensors(result):
    for index, layer in result.kept.items():
        for name in ("q", "k", "v"):
            yield f"kept.{index}.{name}", getattr(layer, name)
    for index, stats in result.head_stats.items():
        for field in engine.FIELDS:
            if getattr(stats, field) is not None:  # learned_sink_mass: models with learned sinks only
                yield f"head_stats.{index}.{field}", getattr(stats, field)


def test_padding_mask_and_empty_rows():
    """Left padding: explicit masks, and padded queries that see no key, through the kernel's torch path."""
    model, ids = build("llama"), _ids(40, batch=2)
    attention_mask = torch.ones_like(ids)
    attention_mask[0, :5] = 0
    result = engine.run(model, ids, attention_mask=attention_mask, keep_layers=[1])
    from attnscope.capture import capturing

    with torch.no_grad(), capturing() as captured:
        plain = model(input_ids=ids, attention_mask=attention_mask).logits
    assert captured[1].mask is not None and (captured[1].visible()[0].sum(-1) == 0).any()
    for index, layer in captured.items():
        _assert_stats_equal(result.head_stats[index], maps.head_stats(layer), f"layer {index}")
    _assert_same_layer(result.layer(1), captured[1])
    logprobs = torch.log_softmax(plain[0, :-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    torch.testing.assert_close(result.token_logprobs[5:], logprobs[5:], rtol=1e-5, atol=1e-5)


def test_sliding_window_and_softcap():
    """Gemma 2: a sliding-window layer (kept as its rule, no mask) and a full layer, both softcapped."""
    model, ids = build_gemma2(softcap=1.0), _ids(45)
    result = engine.run(model, ids, keep_layers=[0, 1])
    capture = run_with_capture(model, ids)
    assert capture.layer(0).mask is None and capture.layer(0).window == model.config.sliding_window
    assert capture.layer(1).window is None and capture.layer(1).softcap == 1.0
    assert result.windows == {0: model.config.sliding_window, 1: None}
    for index in (0, 1):
        _assert_stats_equal(result.head_stats[index], maps.head_stats(capture.layer(index)), f"layer {index}")
        _assert_same_layer(result.layer(index), capture.layer(index))
    torch.testing.assert_close(result.token_logprobs, capture.token_logprobs, rtol=1e-5, atol=1e-5)


def test_softcapped_model_matches_eager_attention():
    """Gemma 2's full layers get no mask from SDPA's mask function: the engine and the plain attnscope function
    must both apply the causal rule themselves (the plain function once let softcapped layers see the future)."""
    from transformers import AutoModelForCausalLM

    model, ids = build_gemma2(softcap=1.0), _ids(45)
    eager = AutoModelForCausalLM.from_config(model.config.__class__(**model.config.to_dict()),
                                             attn_implementation="eager").eval()
    eager.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected = eager(input_ids=ids).logits
        plain = model(input_ids=ids).logits
    torch.testing.assert_close(plain, expected, rtol=1e-5, atol=1e-5)
    logprobs = torch.log_softmax(expected[0, :-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    torch.testing.assert_close(engine.run(model, ids).token_logprobs, logprobs, rtol=1e-5, atol=1e-5)


def test_other_threads_keep_plain_attention():
    import threading

    model, ids = build("llama"), _ids(33)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    seen = []

    def consumer(index, layer):
        other = threading.Thread(target=lambda: seen.append(model(input_ids=ids).logits))
        if not seen:
            with torch.no_grad():
                other.start()
                other.join()
        return torch.nn.functional.scaled_dot_product_attention(
            layer.q, layer.k.repeat_interleave(layer.groups, 1), layer.v.repeat_interleave(layer.groups, 1),
            is_causal=True, scale=layer.scale)

    from attnscope.capture import streaming

    with torch.no_grad(), streaming(consumer):
        model(input_ids=ids)
    assert torch.equal(seen[0], expected)


def test_errors_say_what_to_do():
    ids = _ids(10)
    with pytest.raises(ValueError, match="attn_implementation='attnscope'"):
        engine.run(build("llama", attn_implementation="sdpa"), ids)
    with pytest.raises(ValueError, match=r"keep_layers \[7\] do not exist; this model has layers 0..2"):
        engine.run(build("llama"), ids, keep_layers=[7])
    with pytest.raises(ValueError, match="field must be one of"):
        engine.run(build("llama"), ids).stacked("lse")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_triton_backend_through_the_engine(dtype):
    """backend="triton" (the interpreter here, compiled on a GPU) inside a whole forward pass: the same statistics
    and the same next-token log-probabilities as the torch path, in fp32 and bf16 models."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from attnscope.capture import register_attention

    register_attention()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=96, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256)  # head_dim 16
    model = AutoModelForCausalLM.from_config(config, attn_implementation="attnscope", dtype=dtype).eval()
    ids = _ids(70)
    torch_path, triton_path = engine.run(model, ids, backend="torch"), engine.run(model, ids, backend="triton")
    # Layer 0 reads the same q/k/v on both paths: fp32 statistics agree closely whatever the model's dtype. Layer 1
    # reads what each path's layer-0 output made of the residual stream, rounded to bf16 (eps 2^-8) in a bf16 model.
    loose = dtype == torch.bfloat16
    for index in range(2):
        tolerance = dict(rtol=2e-2, atol=2e-2) if loose and index > 0 else dict(rtol=1e-4, atol=1e-5)
        for field in engine.FIELDS:
            torch.testing.assert_close(getattr(triton_path.head_stats[index], field),
                                       getattr(torch_path.head_stats[index], field), **tolerance)
    torch.testing.assert_close(triton_path.token_logprobs, torch_path.token_logprobs,
                               rtol=2e-2 if loose else 1e-4, atol=5e-2 if loose else 1e-4)
