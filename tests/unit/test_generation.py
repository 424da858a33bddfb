"""Generation: each step's statistics equal the same row of one forward pass over the prompt and what was generated
(THEORY.md, "Generation"), on tiny random-weight models of the families whose attention differs."""

import numpy as np
import pytest
import torch

from attnscope import kernels
from attnscope.capture import run_with_capture
from attnscope.generation import STATISTICS, choose, generate
from tests.unit.tiny_models import VOCAB, WINDOW, build

FAMILIES = ["llama", "gemma3", "gemma2", "gpt_oss", "mistral", "gpt2"]


class _NoTokenizer:
    eos_token_id = None


def _prompt(n: int, seed: int = 0) -> list[int]:
    return torch.randint(1, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sample", [False, True])
def test_each_step_equals_its_row_of_one_forward_pass(family, sample):
    """12 prompt tokens and 10 new ones: past the tiny models' window of 8, so sliding layers' caches drop keys."""
    model = build(family)
    model.generation_config.eos_token_id = None  # random weights: do not stop early on a random end token
    prompt = _prompt(12)
    run = generate(model, _NoTokenizer(), prompt, max_new_tokens=10, sample=sample, temperature=1.5, seed=3)
    assert run.stop == "max_new_tokens" and len(run.generated_ids) == 10
    text = torch.tensor([prompt + list(run.generated_ids)])
    capture = run_with_capture(model, text[:, :-1])  # the last new token was never read
    with torch.no_grad():  # generation chose every token from the logits one forward pass gives
        logits = model(input_ids=text[:, :-1]).logits[0, len(prompt) - 1:]
    if not sample:
        assert logits.argmax(-1).tolist() == list(run.generated_ids)
    rows = slice(len(prompt) - 1, text.shape[1] - 1)
    for index in sorted(capture.layers):
        layer = capture.layer(index)
        stats = kernels.attention_stats(layer.q, layer.k, layer.v, scale=layer.scale, **layer.rule())
        for name in STATISTICS:
            expected = getattr(stats, name)[0, :, rows].T.numpy()  # (steps, heads)
            np.testing.assert_allclose(getattr(run, name)[:, index], expected, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{family} layer {index} {name}")
        if layer.sinks is not None:
            np.testing.assert_allclose(run.learned_sink_mass[:, index], stats.learned_sink_mass[0, :, rows].T.numpy(),
                                       rtol=1e-4, atol=1e-5)
        positions = np.arange(rows.start, rows.stop) + 1
        expected_visible = positions if layer.window is None else np.minimum(positions, layer.window)
        np.testing.assert_array_equal(run.visible[:, index], expected_visible)
        assert run.windows[index] == (layer.window or 0)
    if family in ("gemma3", "gemma2", "gpt_oss", "mistral"):
        assert WINDOW in run.windows
    assert (run.learned_sink_mass is not None) == (family == "gpt_oss")


def test_stops_at_an_end_token_and_at_the_position_limit():
    model = build("llama")
    greedy = generate(model, _NoTokenizer(), _prompt(6), max_new_tokens=5)
    end = greedy.generated_ids[2]
    model.generation_config.eos_token_id = end
    stopped = generate(model, _NoTokenizer(), _prompt(6), max_new_tokens=5)
    first = greedy.generated_ids.index(end) + 1
    assert stopped.stop == "eos" and stopped.generated_ids == greedy.generated_ids[:first]
    model.generation_config.eos_token_id = None
    limited = generate(model, _NoTokenizer(), _prompt(6), max_new_tokens=50, max_positions=9)
    assert limited.stop == "positions" and len(limited.generated_ids) == 3
    with pytest.raises(ValueError, match="already the model's limit of 6 positions"):
        generate(model, _NoTokenizer(), _prompt(6), max_new_tokens=5, max_positions=6)
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(model, _NoTokenizer(), [], max_new_tokens=5)
    timed = generate(model, _NoTokenizer(), _prompt(6), max_new_tokens=50, time_limit=0.0)
    assert timed.stop == "time" and len(timed.generated_ids) == 1


def test_sampling_follows_temperature_and_top_p():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    assert choose(logits, sample=False, temperature=1.0, top_p=1.0, generator=None) == 0
    draws = [choose(logits, sample=True, temperature=1.0, top_p=0.5, generator=torch.Generator().manual_seed(s))
             for s in range(50)]
    assert set(draws) == {0}  # token 0 alone has probability 0.64 >= top_p
    draws = [choose(logits, sample=True, temperature=100.0, top_p=1.0, generator=torch.Generator().manual_seed(s))
             for s in range(200)]
    assert set(draws) == {0, 1, 2, 3}  # nearly uniform at a high temperature


def test_a_chat_template_that_is_missing_or_fails_is_one_sentence():
    from attnscope.generation import chat_prompt

    class NoTemplate:
        chat_template = None

    class Broken:
        chat_template = "{{ raise_exception('only system and user turns alternate') }}"

        def apply_chat_template(self, *args, **kwargs):
            raise RuntimeError("only system and user turns alternate")

    with pytest.raises(ValueError, match="has no chat template: generate without it"):
        chat_prompt(NoTemplate(), "hello")
    with pytest.raises(ValueError, match=r"chat template failed on this text \(RuntimeError: only system"):
        chat_prompt(Broken(), "hello")
