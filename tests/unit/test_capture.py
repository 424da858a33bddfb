"""Capture on tiny Llama (GQA), GPT-2 and BERT models: it must reproduce HF eager and change nothing."""

import threading

import pytest
import torch
from transformers import AttentionInterface

from attnscope.capture import (
    ATTENTION_NAME,
    capturing,
    explicit_attention,
    register_attention_function,
    run_with_capture,
)
from tests.unit.tiny_models import DECODERS, FAMILIES, VOCAB, build


def _ids(length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (1, length), generator=generator)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("length", [1, 7, 33])
def test_probs_rebuilt_from_q_k_equal_eager_output_attentions(family, length):
    ids = _ids(length)
    capture = run_with_capture(build(family), ids)
    eager = build(family, attn_implementation="eager")
    with torch.no_grad():
        attentions = eager(input_ids=ids, output_attentions=True).attentions
    assert capture.n_layers == len(attentions)
    for index, expected in enumerate(attentions):
        torch.testing.assert_close(capture.layer(index).probs(), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_capture_does_not_change_the_model_output(family):
    ids = _ids(29)
    model = build(family)
    with torch.no_grad():
        plain = model(input_ids=ids)
        with capturing():
            captured = model(input_ids=ids)
        sdpa = build(family, attn_implementation="sdpa")(input_ids=ids)
    field = "logits" if family in DECODERS else "last_hidden_state"
    torch.testing.assert_close(getattr(captured, field), getattr(plain, field), rtol=0, atol=0)
    torch.testing.assert_close(getattr(captured, field), getattr(sdpa, field), rtol=0, atol=0)


@pytest.mark.parametrize("family", DECODERS)
def test_decoder_cannot_see_the_future(family):
    """Changing the last token must leave every earlier position's logits untouched."""
    ids = _ids(20)
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % VOCAB
    model = build(family)
    with torch.no_grad(), capturing():
        first, second = model(input_ids=ids).logits, model(input_ids=changed).logits
    torch.testing.assert_close(first[:, :-1], second[:, :-1], rtol=0, atol=1e-6)
    assert not torch.allclose(first[:, -1], second[:, -1])


def _future_leak(attn_implementation: str) -> float:
    ids = _ids(20)
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % VOCAB
    model = build("llama", attn_implementation=attn_implementation)
    with torch.no_grad():
        first, second = model(input_ids=ids).logits, model(input_ids=changed).logits
    return float((first[:, :-1] - second[:, :-1]).abs().max())


def test_the_causality_check_catches_a_missing_mask_function():
    """An attention that applies only the mask it is handed sees the future unless a materialised mask is registered."""
    AttentionInterface.register("attnscope-test-no-mask", explicit_attention)
    assert _future_leak("attnscope-test-no-mask") > 1e-3
    register_attention_function("attnscope-test-lazy-mask", explicit_attention, materialise_mask=False)
    assert _future_leak("attnscope-test-lazy-mask") > 1e-3, "SDPA's mask function passes None for a causal pattern"
    register_attention_function("attnscope-test-with-mask", explicit_attention, materialise_mask=True)
    assert _future_leak("attnscope-test-with-mask") == 0.0


def test_gqa_keys_are_stored_before_the_repeat():
    capture = run_with_capture(build("llama"), _ids(11))
    layer = capture.layer(0)
    assert layer.q.shape == (1, 6, 11, 8)
    assert layer.k.shape == (1, 2, 11, 8) and layer.v.shape == (1, 2, 11, 8)
    assert layer.groups == 3 and [layer.kv_head(h) for h in range(6)] == [0, 0, 0, 1, 1, 1]
    assert layer.causal and layer.mask is None


def test_gpt2_per_layer_scale_is_recorded():
    capture = run_with_capture(build("gpt2"), _ids(9))
    head_dim = 8
    assert [capture.layer(i).scale for i in range(3)] == pytest.approx([head_dim**-0.5 / (i + 1) for i in range(3)])


def test_bert_is_bidirectional():
    capture = run_with_capture(build("bert"), _ids(12))
    layer = capture.layer(0)
    assert not layer.causal and layer.mask is None
    probs = layer.probs()
    assert (probs[0, :, 0, 1:] > 0).all(), "the first token must attend to later tokens in an encoder"
    assert capture.token_logprobs is None


def test_padding_mask_is_kept_and_reproduces_eager():
    ids = _ids(10)
    attention_mask = torch.ones_like(ids)
    attention_mask[0, 7:] = 0
    model, eager = build("bert"), build("bert", attn_implementation="eager")
    with torch.no_grad(), capturing() as captured:
        model(input_ids=ids, attention_mask=attention_mask)
    expected = eager(input_ids=ids, attention_mask=attention_mask, output_attentions=True).attentions
    layer = captured[0]
    assert layer.mask is not None and layer.mask.dtype == torch.bool
    assert captured[1].mask is layer.mask, "layers that received the same mask share one copy"
    torch.testing.assert_close(layer.probs(), expected[0], rtol=0, atol=2e-6)


def test_layer_filter_keeps_only_requested_layers():
    capture = run_with_capture(build("llama"), _ids(5), layers=[1])
    assert list(capture.layers) == [1]
    with pytest.raises(ValueError, match="Layer 0 was not captured"):
        capture.layer(0)


def test_token_logprobs_match_the_logits():
    ids = _ids(13)
    model = build("llama")
    capture = run_with_capture(model, ids)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    expected = torch.log_softmax(logits[:-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    torch.testing.assert_close(capture.token_logprobs, expected)


def test_capture_is_per_thread():
    """A forward pass in another thread, during a capture here, is not recorded here."""
    model = build("llama")
    with torch.no_grad(), capturing() as captured:
        worker = threading.Thread(target=lambda: model(input_ids=_ids(4)))
        worker.start()
        worker.join()
    assert captured == {}


def test_model_loaded_without_attnscope_reports_clearly():
    with pytest.raises(ValueError, match=ATTENTION_NAME):
        run_with_capture(build("llama", attn_implementation="sdpa"), _ids(4))
