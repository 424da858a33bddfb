"""attention_stats: Triton (interpreter) and torch paths against the fp64 reference."""

import pytest
import torch

from attnscope.kernels import attention_stats
from attnscope.kernels.attention_stats import naive
from tests.kernels.helpers import DTYPES, assert_within_rule, cases, make_qkv

FIELDS = ("lse", "entropy", "max_weight", "sink_mass", "mean_distance", "topk_weights", "output")
CASES, IDS = cases()


def _check(result, q, k, v, *, causal, topk):
    reference = naive.attention_stats(q, k, v, causal=causal, topk=topk)
    plain = naive.attention_stats(q, k, v, causal=causal, topk=topk, dtype=q.dtype)
    for field in FIELDS:
        assert_within_rule(getattr(result, field), getattr(reference, field), getattr(plain, field), what=field)
    # Indices: ties are legitimate, so check that the chosen key carries the largest weight.
    full = torch.softmax(naive.masked_scores(q, k, causal=causal, scale=None), dim=-1)
    chosen = full.gather(-1, result.argmax[..., None]).squeeze(-1)
    torch.testing.assert_close(chosen, full.amax(-1), rtol=1e-3, atol=1e-6)
    assert torch.equal(result.topk_indices == -1, reference.topk_indices == -1)
    found = result.topk_indices >= 0
    picked = full.gather(-1, result.topk_indices.clamp(min=0))
    torch.testing.assert_close(picked[found], reference.topk_weights.double()[found], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("shape,dtype_name", CASES, ids=IDS)
def test_triton_matches_reference(shape, dtype_name):
    q, k, v = make_qkv(shape, DTYPES[dtype_name])
    causal, topk = shape[-1], min(5, shape[4])
    result = attention_stats(q, k, v, causal=causal, topk=topk, backend="triton")
    _check(result, q, k, v, causal=causal, topk=topk)


@pytest.mark.parametrize("shape,dtype_name", CASES, ids=IDS)
def test_torch_path_matches_reference(shape, dtype_name):
    q, k, v = make_qkv(shape, DTYPES[dtype_name])
    causal, topk = shape[-1], min(5, shape[4])
    _check(attention_stats(q, k, v, causal=causal, topk=topk, backend="torch"), q, k, v, causal=causal, topk=topk)


@pytest.mark.parametrize("n_queries", [500, 1023])
def test_torch_path_on_larger_shapes(n_queries, monkeypatch):
    from attnscope.kernels.attention_stats import chunked

    monkeypatch.setattr(chunked, "CHUNK_BYTES", 2**20)  # force several chunks
    q, k, v = make_qkv((1, 9, 3, n_queries, n_queries, 64, True), torch.float32)
    result = attention_stats(q, k, v, topk=8, backend="torch")
    _check(result, q, k, v, causal=True, topk=8)


def test_without_v_or_topk_leaves_them_out():
    q, k, _ = make_qkv((1, 2, 1, 20, 20, 16, True), torch.float32)
    for backend in ("triton", "torch"):
        result = attention_stats(q, k, backend=backend)
        assert result.output is None and result.topk_weights is None and result.topk_indices is None


def test_peaked_logits_and_first_row():
    """Large logits (near one-hot rows) stay finite; the first causal row sees only key 0."""
    q, k, v = make_qkv((1, 3, 1, 64, 64, 32, True), torch.float32, logit_scale=30.0)
    for backend in ("triton", "torch"):
        result = attention_stats(q, k, v, topk=3, backend=backend)
        for field in ("lse", "entropy", "max_weight", "mean_distance"):
            assert torch.isfinite(getattr(result, field)).all(), (backend, field)
        assert torch.allclose(result.max_weight[..., 0], torch.ones(1)) and (result.argmax[..., 0] == 0).all()
        assert torch.allclose(result.entropy[..., 0], torch.zeros(1), atol=1e-6)
        assert (result.topk_indices[..., 0, 1:] == -1).all() and (result.topk_weights[..., 0, 1:] == 0).all()


def test_entropy_is_bounded_by_log_of_visible_keys():
    q, k, _ = make_qkv((1, 3, 1, 100, 100, 64, True), torch.float32, logit_scale=0.01)
    result = attention_stats(q, k, backend="torch")
    visible = torch.arange(1, 101, dtype=torch.float32)
    assert (result.entropy <= torch.log(visible) + 1e-5).all()
    torch.testing.assert_close(result.entropy, torch.log(visible).expand_as(result.entropy), atol=1e-3, rtol=0)


@pytest.mark.parametrize("bad,message", [
    (dict(q=torch.zeros(1, 3, 4, 8), k=torch.zeros(1, 2, 4, 8)), "multiple of the key/value heads"),
    (dict(q=torch.zeros(1, 2, 4, 8), k=torch.zeros(1, 2, 4, 16)), "q's B and D"),
    (dict(q=torch.zeros(1, 2, 9, 8), k=torch.zeros(1, 2, 4, 8)), "T <= S"),
    (dict(q=torch.zeros(2, 8), k=torch.zeros(2, 8)), "4-D"),
    (dict(q=torch.zeros(1, 2, 4, 8, dtype=torch.float64), k=torch.zeros(1, 2, 4, 8, dtype=torch.float64)), "float32"),
])
def test_bad_inputs_name_the_shapes(bad, message):
    with pytest.raises(ValueError, match=message):
        attention_stats(bad["q"], bad["k"])


def test_bad_backend_and_topk():
    q, k, _ = make_qkv((1, 2, 1, 8, 8, 16, True), torch.float32)
    with pytest.raises(ValueError, match="backend must be one of"):
        attention_stats(q, k, backend="cuda")
    with pytest.raises(ValueError, match="topk must be in"):
        attention_stats(q, k, topk=9)
