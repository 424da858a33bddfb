"""Generation on the packaged SmolLM2: each step's statistics are those of the same row of one forward pass over the
whole text; the API, the CLI and a saved result agree; bad input is one sentence."""

import os
import subprocess
import sys

import numpy as np
import pytest

import attnscope
from attnscope import kernels
from attnscope.capture import run_with_capture
from attnscope.generation import STATISTICS

pytestmark = pytest.mark.slow
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def model():
    return attnscope.load("smollm2-135m")


def test_instruct_model_answers_and_each_step_is_its_row_of_one_pass(model):
    result = attnscope.generate(model, QUESTION, max_new_tokens=16)
    assert result.meta["chat_template"] and "Paris" in result.generated_text
    assert result.stop in ("eos", "max_new_tokens")
    text = np.asarray(result.text_ids)[None, :-1]  # the last new token was never read
    import torch

    capture = run_with_capture(model.module, torch.tensor(text))
    rows = slice(len(result.prompt_ids) - 1, text.shape[1])
    for index in (0, 11, 29):
        layer = capture.layer(index)
        stats = kernels.attention_stats(layer.q, layer.k, layer.v, scale=layer.scale, **layer.rule())
        for name in STATISTICS:
            np.testing.assert_allclose(getattr(result, name)[:, index], getattr(stats, name)[0, :, rows].T.numpy(),
                                       rtol=1e-4, atol=1e-5, err_msg=f"layer {index} {name}")
    frame = result.to_frame()
    assert len(frame) == len(result.generated_ids) * 30 * 9 and set(STATISTICS) <= set(frame.columns)
    assert set(result.figures()) == {"timeline", "entropy-by-layer", "max_weight-by-layer"}


def test_sampling_is_reproducible_and_the_cli_gives_the_api_numbers(model, tmp_path):
    one = attnscope.generate(model, "Once upon a time", max_new_tokens=10, sample=True, temperature=0.9, seed=7,
                             chat="off")
    two = attnscope.generate(model, "Once upon a time", max_new_tokens=10, sample=True, temperature=0.9, seed=7,
                             chat="off")
    assert one.generated_ids == two.generated_ids
    out = tmp_path / "gen.json"
    done = subprocess.run([sys.executable, "-m", "attnscope", "generate", "--text", "Once upon a time",
                           "--max-new-tokens", "10", "--sample", "--temperature", "0.9", "--seed", "7",
                           "--chat", "off", "--out", str(out), "--quiet"], capture_output=True, text=True,
                          env=dict(os.environ), timeout=600)
    assert done.returncode == 0, done.stderr
    saved = attnscope.open(out)
    assert saved.generated_ids == one.generated_ids
    for name in STATISTICS:
        np.testing.assert_allclose(getattr(saved, name), getattr(one, name), rtol=1e-5, atol=1e-6)


def test_bad_generation_input_is_one_sentence(model):
    with pytest.raises(ValueError, match="text is empty"):
        attnscope.generate(model, "   ", max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        attnscope.generate(model, QUESTION, max_new_tokens=0)
    encoder = attnscope.load("minilm-l6")
    with pytest.raises(ValueError, match="is an encoder"):
        attnscope.generate(encoder, QUESTION, max_new_tokens=4)
    done = subprocess.run([sys.executable, "-m", "attnscope", "generate", "--text", "hi", "--max-new-tokens", "0"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "max-new-tokens" in done.stderr and "Traceback" not in done.stderr
