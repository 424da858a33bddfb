"""Head fingerprints (attnscope.analyses.fingerprint) against the captured probabilities, on tiny models of the
families whose rules differ (a window narrower than the offset, softcaps, learned sinks, bidirectional BERT)."""

import numpy as np
import pytest
import torch

from attnscope import engine
from attnscope.analyses import fingerprint
from attnscope.capture import run_with_capture
from tests.unit.tiny_models import VOCAB, WINDOW, build

FAMILIES = ["llama", "gemma2", "gemma3", "gpt_oss", "gpt2", "bert"]


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


def _offset_mean(probs: torch.Tensor, offset: int, rows: range, n_keys: int) -> np.ndarray:
    """Mean over `rows` of probs[h, i, i - offset] where that key is visible (probability > 0 or the rule allows)."""
    picks = [[float(probs[h, i, i - offset]) for i in rows if i - offset >= 0] for h in range(probs.shape[0])]
    return np.array([np.mean(p) for p in picks])


@pytest.mark.parametrize("family", FAMILIES)
def test_document_fingerprint_equals_the_captured_probabilities(family):
    model, ids = build(family), _ids(30)
    found = fingerprint.document_fingerprint(model, ids)
    capture = run_with_capture(model, ids)
    streamed = engine.run(model, ids)
    for index in sorted(capture.layers):
        probs = capture.layer(index).probs()[0].double()  # (H, T, S): 0 where hidden
        np.testing.assert_allclose(found["previous_token"][index], _offset_mean(probs, 1, range(30), 30),
                                   rtol=1e-4, atol=1e-6, err_msg=f"{family} layer {index}")
        for name in fingerprint.STATISTICS:
            np.testing.assert_array_equal(found[name][index], getattr(streamed.head_stats[index], name).numpy())
    assert ("learned_sink_mass" in found) == (family == "gpt_oss")


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt_oss"])
def test_induction_score_equals_the_captured_probabilities(family):
    """Period 12 against a window of 8: sliding layers cannot see the target key (NaN), global layers can."""
    model, period = build(family), 12
    ids = fingerprint.repeated_tokens(VOCAB, period=period, seed=1, start=[1], avoid=[0, 1])
    assert torch.equal(ids[0, 1:1 + period], ids[0, 1 + period:])
    scores = fingerprint.induction_scores(model, ids, period=period)
    capture = run_with_capture(model, ids)
    n = ids.shape[1]
    for index in sorted(capture.layers):
        layer = capture.layer(index)
        if layer.window is not None and layer.window < period:
            assert np.isnan(scores[index]).all()
            continue
        probs = layer.probs()[0].double()
        expected = _offset_mean(probs, period - 1, range(n - period, n), n)
        np.testing.assert_allclose(scores[index], expected, rtol=1e-4, atol=1e-6, err_msg=f"{family} {index}")
    if family == "gemma3":
        assert WINDOW < period and np.isnan(scores).any() and not np.isnan(scores).all()
