"""Head fingerprints on the packaged SmolLM2: its induction heads are found, and they are about repetition."""

import numpy as np
import pytest
import torch

import attnscope
from attnscope.analyses import fingerprint
from attnscope.capture import run_with_capture

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model():
    return attnscope.load("smollm2-135m")


def test_smollm2_has_induction_heads_and_they_need_the_repeat(model):
    tokenizer = model.tokenizer
    ids = fingerprint.repeated_tokens(len(tokenizer), period=64, seed=0, start=[tokenizer.bos_token_id],
                                      avoid=tokenizer.all_special_ids)
    scores = fingerprint.induction_scores(model.module, ids, period=64)
    layer, head = np.unravel_index(np.nanargmax(scores), scores.shape)
    assert scores[layer, head] > 0.5 and (scores > 0.3).sum() >= 3
    probs = run_with_capture(model.module, ids, layers=[int(layer)]).layer(int(layer)).probs([int(head)])[0, 0]
    rows = range(ids.shape[1] - 64, ids.shape[1])
    assert scores[layer, head] == pytest.approx(float(np.mean([probs[i, i - 63] for i in rows])), rel=1e-4)
    # The same random tokens with the second copy shuffled: nothing to complete, and the head looks elsewhere.
    shuffled = ids.clone()
    shuffled[0, -64:] = ids[0, -64:][torch.randperm(64, generator=torch.Generator().manual_seed(1))]
    control = fingerprint.induction_scores(model.module, shuffled, period=64)
    assert control[layer, head] < 0.1 * scores[layer, head]


def test_document_fingerprint_of_a_text(model):
    found = fingerprint.document_fingerprint(model.module, model.tokenize(
        "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is").as_tensor())
    assert set(found) == {*fingerprint.STATISTICS, "previous_token", *fingerprint.SLOPES, fingerprint.TAYLOR_ORDER,
                          fingerprint.RATIO, fingerprint.SATURATED}
    assert all(values.shape == (30, 9) for values in found.values())
    assert all(np.isfinite(found[name]).all() for name in (*fingerprint.STATISTICS, "previous_token", "taylor_order"))
    assert found["previous_token"].max() > 0.5  # SmolLM2 has previous-token heads
    # About 20 tokens: no row sees the 32 keys a slope needs, nor enough for N_s/N at N = 16.
    assert all(np.isnan(found[name]).all() for name in (*fingerprint.SLOPES, fingerprint.RATIO, fingerprint.SATURATED))
