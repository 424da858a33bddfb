"""The fast path of the collapse analysis gives the readable reference's numbers on a layer of the packaged SmolLM2
run on the built-in document: real weights, a first-token sink, weights spread over hundreds of keys."""

import pytest

from attnscope.analyses import collapse, collapse_folds, collapse_reference
from attnscope.capture import run_with_capture
from attnscope.tokens import tokenize
from tests.unit.test_collapse_reference import assert_same_rows

pytestmark = pytest.mark.slow

LAYER = 14  # a middle layer of 30


@pytest.fixture(scope="module")
def capture(smollm2):
    ids = tokenize(smollm2.tokenizer, collapse.builtin_text(), max_tokens=256).as_tensor()
    return run_with_capture(smollm2.model, ids, hidden_states=True)


@pytest.mark.parametrize("vectors", ["values", "hidden"])
def test_fast_path_equals_the_reference_on_a_real_layer(capture, vectors):
    layer = capture.layer(LAYER)
    hidden = capture.hidden_states[LAYER] if vectors == "hidden" else None
    temperature = vectors == "values"  # the sweep reads the logits only; one dense eigendecomposition per row and T
    fast = collapse_folds.analyse_layer(layer, rows=4, hidden=hidden, temperature=temperature, seed=LAYER)
    reference = collapse_reference.analyse_layer(layer, rows=4, hidden=hidden, temperature=temperature, seed=LAYER)
    assert reference.n_values[-1] == 128 and reference.bound_ns == collapse_reference.BOUND_NS
    assert_same_rows(fast, reference, layer, f"SmolLM2 layer {LAYER} {vectors}")
