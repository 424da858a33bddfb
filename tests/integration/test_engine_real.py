"""The streaming engine and the kernel-only maps on the packaged SmolLM2: the numbers of capture + maps, the model's
own predictions."""

import pytest
import torch

from attnscope import engine
from attnscope.analyses import maps
from attnscope.analyses.collapse import builtin_text
from attnscope.capture import run_with_capture
from attnscope.tokens import tokenize
from tests.unit.test_maps import assert_maps_match_reference

pytestmark = pytest.mark.slow

TEXT = "The keys to the old cabinet in the hallway are kept by the janitor, who never answers the door."


@pytest.fixture(scope="module")
def long_ids(smollm2):
    """~700 tokens: several chunks of query rows in the kernel's torch path."""
    return smollm2.tokenizer(builtin_text()[:3000], return_tensors="pt").input_ids[:, :700]


def test_engine_head_stats_equal_maps_on_a_full_capture(smollm2, long_ids):
    result = engine.run(smollm2.model, long_ids, keep_layers=[0, 17])
    capture = run_with_capture(smollm2.model, long_ids)
    assert (result.n_layers, result.n_heads) == (30, 9)
    for index in range(30):
        expected = maps.head_stats(capture.layer(index))
        for field in engine.FIELDS:
            torch.testing.assert_close(getattr(result.head_stats[index], field), getattr(expected, field),
                                       rtol=1e-5, atol=1e-6, msg=lambda m: f"layer {index} {field}: {m}")
    # Kept layers are capture's: the first exactly, later ones to fp32 rounding (their inputs went through the
    # fused kernel's attention output here and SDPA's in run_with_capture).
    assert sorted(result.kept) == [0, 17]
    for name in ("q", "k", "v"):
        assert torch.equal(getattr(result.layer(0), name), getattr(capture.layer(0), name))
        torch.testing.assert_close(getattr(result.layer(17), name), getattr(capture.layer(17), name),
                                   rtol=1e-4, atol=1e-4)
    assert result.layer(17).causal and result.layer(17).mask is None


def test_engine_predictions_are_the_plain_forward(smollm2, long_ids):
    with torch.no_grad():
        logits = smollm2.model(input_ids=long_ids).logits
    plain = torch.log_softmax(logits[0, :-1], -1).gather(-1, long_ids[0, 1:, None]).squeeze(-1)
    result = engine.run(smollm2.model, long_ids)
    torch.testing.assert_close(result.token_logprobs, plain, rtol=1e-4, atol=1e-4)


def test_maps_match_the_reference_on_smollm2(smollm2):
    """The maps and head statistics against the fp64 reference of tests/unit/test_maps.py: layers as captured, and
    one with a sliding window and a softcap."""
    from dataclasses import replace

    ids = tokenize(smollm2.tokenizer, TEXT).as_tensor()
    capture = run_with_capture(smollm2.model, ids)
    for index in (0, 7, 29):
        assert_maps_match_reference(capture.layer(index), what=f"layer {index}")
    position = torch.arange(ids.shape[1])
    window = (position[None, :] <= position[:, None]) & (position[None, :] > position[:, None] - 6)
    masked = replace(capture.layer(7), mask=window[None, None], causal=False, softcap=5.0)
    assert_maps_match_reference(masked, what="layer 7 with a sliding window and a softcap")
