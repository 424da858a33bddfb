"""attention_stats' top-k pass (radix selection of each row's threshold, kernels/attention_stats/fused.py) where a
selection goes wrong: exact ties across the threshold, k beyond a key tile, k = every key, rows that see fewer than k
keys, negative and mixed-sign logits, softcapped logits."""

import pytest
import torch

from attnscope.kernels import attention_stats
from tests.kernels.helpers import DTYPES, check_attention_stats, make_qkv


def _assert_distinct_keys(result):
    """No key is picked twice in a row."""
    indices = result.topk_indices.sort(dim=-1).values
    repeated = (indices[..., 1:] == indices[..., :-1]) & (indices[..., 1:] >= 0)
    assert not repeated.any()


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype_name", ["fp32", "bf16"])
def test_ties_across_the_threshold_take_each_key_once(dtype_name, backend):
    """Keys repeat every 7 positions, so every row's logits tie in groups and k = 10 cuts through a group."""
    shape = (1, 2, 1, 90, 90, 32, True)
    q, k, v = make_qkv(shape, DTYPES[dtype_name])
    k = k[:, :, torch.arange(90) % 7]
    result = attention_stats(q, k, v, topk=10, backend=backend)
    check_attention_stats(result, q, k, v, causal=True, topk=10)
    _assert_distinct_keys(result)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("topk", [1, 70, 150], ids=lambda k: f"k{k}")
def test_k_from_one_to_every_key(topk, backend):
    """k = 1, k past a key tile, and k = S: a bidirectional row then returns every key once, in weight order."""
    shape = (1, 3, 1, 40, 150, 16, False)
    q, k, v = make_qkv(shape, torch.float32, logit_scale=2.0)
    result = attention_stats(q, k, v, causal=False, topk=topk, backend=backend)
    check_attention_stats(result, q, k, v, causal=False, topk=topk)
    _assert_distinct_keys(result)
    assert (result.topk_weights[..., 1:] <= result.topk_weights[..., :-1]).all()
    if topk == 150:
        assert torch.equal(result.topk_indices.sort(dim=-1).values, torch.arange(150).expand_as(result.topk_indices))


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_rows_that_see_fewer_than_k_keys_fill_the_rest_with_nothing(backend):
    """Causal rows near the start and a window of 4 see fewer than k = 12 keys: the rest is weight 0, index -1."""
    shape = (1, 2, 1, 50, 50, 16, True)
    q, k, v = make_qkv(shape, torch.float32, logit_scale=3.0)
    for window in (None, 4):
        result = attention_stats(q, k, v, topk=12, window=window, backend=backend)
        check_attention_stats(result, q, k, v, causal=True, topk=12, window=window)
        seen = torch.arange(1, 51).clamp(max=window or 50)  # keys row i sees
        assert torch.equal((result.topk_indices >= 0).sum(-1), seen.clamp(max=12).expand(1, 2, 50))


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_negative_mixed_and_softcapped_logits(backend):
    """Logits of both signs spanning about +-40 (their keys order negative floats by flipped bits), then capped."""
    shape = (1, 2, 1, 70, 70, 32, True)
    q, k, v = make_qkv(shape, torch.float32, logit_scale=7.0)
    for softcap in (None, 5.0):
        result = attention_stats(q, k, v, topk=9, softcap=softcap, backend=backend)
        check_attention_stats(result, q, k, v, causal=True, topk=9, softcap=softcap)
        _assert_distinct_keys(result)
