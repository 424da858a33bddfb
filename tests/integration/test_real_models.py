"""The packaged real models: real weights, capture equal to HF eager, the right attention direction."""

import math

import pytest
import torch

from attnscope.capture import run_with_capture
from attnscope.tokens import tokenize

pytestmark = pytest.mark.slow

TEXT = "The capital of France is Paris. The keys to the old cabinet in the hallway are"


def test_smollm2_knows_the_capital_of_france(smollm2):
    tokens = tokenize(smollm2.tokenizer, "The capital of France is")
    with torch.no_grad():
        logits = smollm2.model(input_ids=tokens.as_tensor()).logits[0, -1]
    probs = torch.softmax(logits, -1)
    paris = smollm2.tokenizer.encode(" Paris", add_special_tokens=False)
    assert len(paris) == 1
    assert probs[paris[0]] > 0.5, f"p(' Paris') = {probs[paris[0]]:.3f}: the weights are not the real model's"


def test_smollm2_geometry(smollm2):
    assert smollm2.kind == "decoder"
    assert smollm2.info == {"n_layers": 30, "n_heads": 9, "n_kv_heads": 3, "head_dim": 64, "max_positions": 8192,
                            "device": "cpu", "dtype": "float32", "quantize": "none"}


def test_capture_equals_eager_on_every_layer(smollm2, smollm2_eager):
    tokens = tokenize(smollm2.tokenizer, TEXT)
    capture = run_with_capture(smollm2.model, tokens.as_tensor())
    with torch.no_grad():
        eager = smollm2_eager(input_ids=tokens.as_tensor(), output_attentions=True)
    assert capture.n_layers == 30 and len(eager.attentions) == 30
    for index, expected in enumerate(eager.attentions):
        layer = capture.layer(index)
        assert layer.k.shape[1] == 3 and layer.groups == 3
        torch.testing.assert_close(layer.probs(), expected, rtol=0, atol=1e-5)
    # Capture leaves the model's predictions as they are (SDPA vs eager differ only by fp32 rounding).
    torch.testing.assert_close(torch.log_softmax(eager.logits[0, :-1], -1).gather(
        -1, tokens.as_tensor()[0, 1:, None]).squeeze(-1), capture.token_logprobs, rtol=0, atol=1e-4)


def test_capture_on_or_off_gives_identical_logits(smollm2):
    ids = tokenize(smollm2.tokenizer, TEXT).as_tensor()
    with torch.no_grad():
        plain = torch.log_softmax(smollm2.model(input_ids=ids).logits[0, :-1], -1)
    expected = plain.gather(-1, ids[0, 1:, None]).squeeze(-1)
    assert torch.equal(run_with_capture(smollm2.model, ids).token_logprobs, expected)


def test_smollm2_is_causal_and_its_loss_is_plausible(smollm2):
    """A decoder that sees the future predicts the next token almost perfectly; a real one does not."""
    ids = tokenize(smollm2.tokenizer, TEXT).as_tensor()
    capture = run_with_capture(smollm2.model, ids)
    loss = float(-capture.token_logprobs.mean())
    assert 1.0 < loss < 8.0, f"mean next-token loss {loss:.3f} nats is implausible for a 135M model"
    layer = capture.layer(5)
    assert layer.causal and layer.mask is None
    probs = layer.probs()
    assert float(probs.triu(diagonal=1).abs().max()) == 0.0


def test_minilm_runs_bidirectionally(minilm):
    assert minilm.kind == "encoder"
    tokens = tokenize(minilm.tokenizer, "The capital of France is Paris.")
    assert tokens.strings[0] == "[CLS]" and tokens.strings[-1] == "[SEP]"
    capture = run_with_capture(minilm.model, tokens.as_tensor())
    assert capture.n_layers == 6 and capture.token_logprobs is None
    layer = capture.layer(0)
    assert not layer.causal and layer.mask is None
    assert layer.scale == pytest.approx(1 / math.sqrt(32))
    future_mass = layer.probs()[0].triu(diagonal=1).sum(-1).mean(-1)  # (H,) mean weight on later tokens
    # Some heads of a real encoder look mostly backwards (head 2 of layer 0 is a previous-token head), so test the
    # layer as a whole: a causal model has exactly 0 here.
    assert float(future_mass.mean()) > 0.1, f"an encoder layer looks ahead; got {future_mass.tolist()}"
    assert int((future_mass > 0.01).sum()) >= layer.n_heads // 2


def test_head_statistics_of_the_real_model_equal_a_direct_computation(smollm2):
    from attnscope.analyses import maps

    capture = run_with_capture(smollm2.model, tokenize(smollm2.tokenizer, TEXT).as_tensor())
    for index in (0, 17, 29):
        layer = capture.layer(index)
        stats = maps.head_stats(layer)  # kernels.attention_stats (torch path on CPU)
        probs = layer.probs()[0].double()  # (H, T, T)
        entropy = -(probs * torch.log(probs.clamp(min=1e-300))).sum(-1)
        torch.testing.assert_close(stats.entropy, entropy.mean(-1).float(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(stats.sink_mass, probs[..., 0].mean(-1).float(), rtol=1e-4, atol=1e-6)
        n = probs.shape[-1]
        assert (entropy <= torch.log(torch.arange(1, n + 1, dtype=torch.float64)) + 1e-9).all()
