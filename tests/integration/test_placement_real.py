"""The packaged SmolLM2 on the CPU in bfloat16 (the code path a GPU runs in its default precision): every study runs,
the numbers stay close to float32's, and the API, the CLI and the result say where and in what it ran."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import attnscope

pytestmark = pytest.mark.slow
TEXT = "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is"


@pytest.fixture(scope="module")
def models():
    return attnscope.load("smollm2-135m"), attnscope.load("smollm2-135m", device="cpu", dtype="bfloat16")


def test_the_handle_says_where_and_in_what(models):
    fp32, bf16 = models
    assert (fp32.info["device"], fp32.info["dtype"], fp32.info["quantize"]) == ("cpu", "float32", "none")
    assert (bf16.info["device"], bf16.info["dtype"]) == ("cpu", "bfloat16")
    assert bf16.module.dtype == torch.bfloat16
    assert repr(bf16).endswith("on cpu in bfloat16)")
    assert fp32.fingerprint != bf16.fingerprint  # cached results of one are never read for the other


def test_bfloat16_statistics_stay_close_to_float32(models):
    """bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per operation); over 30 layers the residual stream
    drifts by a few percent, so head means agree to a few hundredths, not to fp32 rounding."""
    fp32, bf16 = (attnscope.stats(model, TEXT) for model in models)
    for field in ("entropy", "max_weight", "sink_mass"):
        a, b = getattr(fp32, field), getattr(bf16, field)
        assert a.shape == b.shape == (30, 9)
        assert np.abs(a - b).max() < 0.1, field
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99, field
    fp32_maps, bf16_maps = (attnscope.maps(model, TEXT, layer=3) for model in models)
    hidden = np.isnan(fp32_maps.values)  # the future, under the causal mask
    assert np.array_equal(hidden, np.isnan(bf16_maps.values))
    assert np.abs(fp32_maps.values - bf16_maps.values)[~hidden].max() < 0.05


def test_every_study_runs_in_bfloat16(models):
    _, bf16 = models
    taylor = attnscope.taylor(bf16, TEXT, max_order=4)
    assert np.isfinite(taylor.sweep.error["softmax"]).all()
    collapse = attnscope.collapse(bf16, max_length=256, windows=1)
    assert collapse.findings()


def test_the_cli_runs_in_bfloat16(tmp_path):
    out = tmp_path / "stats.json"
    done = subprocess.run([sys.executable, "-m", "attnscope", "stats", "--text", TEXT, "--dtype", "bfloat16",
                           "--device", "cpu", "--quiet", "--no-cache", "--out", str(out)],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    assert done.returncode == 0, done.stderr
    meta = attnscope.open(out).meta
    assert (meta["device"], meta["dtype"], meta["quantize"]) == ("cpu", "bfloat16", "none")
