"""Head-type scores on the packaged SmolLM2: the heads that follow the text's own repeats are the atlas's induction
heads on random tokens; every score equals the dense reference on the captured layers; the five statistics are the
engine's own."""

import numpy as np
import pytest
import torch

import attnscope
from attnscope import engine
from attnscope.analyses import detectors, fingerprint
from attnscope.capture import run_with_capture
from attnscope.studies import maps as study

pytestmark = pytest.mark.slow
# Two sentences that share phrases, the paragraph three times: its own repeats are plenty for the induction score.
TEXT = ("The committee met on Tuesday to review the budget for the new library. After a long discussion, the "
        "committee agreed that the budget for the new library should include a reading room for children. ") * 3


@pytest.fixture(scope="module")
def model():
    return attnscope.load("smollm2-135m")


@pytest.fixture(scope="module")
def result(model):
    return attnscope.stats(model, TEXT)


def _ranks(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values.ravel())).astype(np.float64)


def test_heads_following_the_texts_repeats_are_the_atlas_induction_heads(model, result):
    """The atlas measures induction on repeated random tokens (no meaning to follow, only the copy); a head that also
    leads on natural text with repeated phrases is an induction head by both readings. By chance a top-5 set would
    share 5 x 10 / 270 < 0.2 heads with a top-10 set, and the rank correlation would be about 0 +- 0.06."""
    assert result.induction_copy == 0 and result.induction_measured_on.startswith("the text's own repeats")
    tokenizer = model.tokenizer
    start = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    atlas = np.mean([fingerprint.induction_scores(model.module, fingerprint.repeated_tokens(
        len(tokenizer), seed=seed, start=start, avoid=tokenizer.all_special_ids), period=fingerprint.INDUCTION_PERIOD)
        for seed in range(fingerprint.INDUCTION_SEQUENCES)], axis=0)
    text_top = set(np.argsort(-result.induction, axis=None)[:5].tolist())
    atlas_top = set(np.argsort(-atlas, axis=None)[:10].tolist())
    assert len(text_top & atlas_top) >= 3, (sorted(text_top), sorted(atlas_top))
    assert np.corrcoef(_ranks(result.induction), _ranks(atlas))[0, 1] > 0.5
    strongest = np.unravel_index(np.argmax(result.induction), result.shape)
    assert f"L{strongest[0]}H{strongest[1]}" in result.findings()[-1].text()


def test_scores_equal_the_dense_reference_on_captured_layers(model, result):
    tokens = model.tokenize(TEXT)
    capture = run_with_capture(model.module, tokens.as_tensor())
    for index in (0, 9, 17, 29):
        for name in detectors.DETECTORS:
            expected, rows = detectors.reference_scores(capture.layer(index), tokens.ids, name)
            np.testing.assert_allclose(getattr(result, name)[index], expected.numpy(), rtol=1e-4, atol=1e-5,
                                       err_msg=f"layer {index} {name}")
            assert result.detector_rows[name][index] == int(rows.max())


def test_the_five_statistics_are_the_engines_own(model, result):
    """The detectors read the pass; they change none of what the engine computes."""
    streamed = engine.run(model.module, model.tokenize(TEXT).as_tensor())
    for name in study.STATISTICS:
        np.testing.assert_array_equal(getattr(result, name), streamed.stacked(name).numpy(), err_msg=name)
    assert torch.isfinite(streamed.stacked("entropy")).all()
