"""pooled_attention_map: Triton (interpreter) and torch paths against the fp64 tile-by-tile reference."""

import pytest
import torch

from attnscope.kernels import pooled_attention_map
from attnscope.kernels.pooled_map import naive
from tests.kernels.helpers import MASKS, DTYPES, assert_within_rule, cases, make_mask, make_qkv, mask_id

CASES, IDS = cases()
MASK_CASES = [(shape, name, kind, softcap) for shape, name in CASES for kind, softcap in MASKS]
MASK_IDS = [f"{case_id}-{mask_id(kind, softcap)}" for case_id in IDS for kind, softcap in MASKS]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("shape,dtype_name", CASES, ids=IDS)
# block <= 64 runs the packed kernel (1: the exact map; 3 and 10: padded offsets), 100 the sub-tiled one.
@pytest.mark.parametrize("block,reduce,hide_sink", [(1, "mean", False), (3, "max", True), (10, "max", False),
                                                     (16, "mean", True), (100, "max", True)], ids=lambda x: str(x))
def test_matches_reference(shape, dtype_name, block, reduce, hide_sink, backend):
    q, k, _ = make_qkv(shape, DTYPES[dtype_name])
    causal = shape[-1]
    result = pooled_attention_map(q, k, block=block, reduce=reduce, causal=causal, hide_sink=hide_sink, backend=backend)
    reference = naive.pooled_attention_map(q, k, block=block, reduce=reduce, causal=causal, hide_sink=hide_sink)
    plain = naive.pooled_attention_map(q, k, block=block, reduce=reduce, causal=causal, hide_sink=hide_sink,
                                       dtype=q.dtype)
    assert result.shape == reference.shape
    assert_within_rule(result, reference, plain, what=f"{reduce} block {block}")


@pytest.mark.parametrize("shape,dtype_name,kind,softcap", MASK_CASES, ids=MASK_IDS)
@pytest.mark.parametrize("block,reduce,hide_sink", [(1, "mean", False), (3, "max", True), (16, "mean", True)],
                         ids=lambda x: str(x))
def test_torch_path_with_masks_and_softcap_matches_reference(shape, dtype_name, kind, softcap, block, reduce,
                                                             hide_sink):
    q, k, _ = make_qkv(shape, DTYPES[dtype_name], logit_scale=3.0 if softcap else 1.0)
    options = dict(block=block, reduce=reduce, causal=shape[-1], hide_sink=hide_sink, mask=make_mask(kind, shape),
                   softcap=softcap)
    result = pooled_attention_map(q, k, **options, backend="torch")
    reference = naive.pooled_attention_map(q, k, **options)
    plain = naive.pooled_attention_map(q, k, **options, dtype=q.dtype)
    assert result.shape == reference.shape
    assert_within_rule(result, reference, plain, what=f"{reduce} block {block} under a {kind} mask")


def test_sliding_window_map_over_several_chunks(monkeypatch):
    """Each chunk computes only the key tiles its window reaches; the tiles it skips are NaN."""
    from attnscope.kernels.attention_stats import chunked

    monkeypatch.setattr(chunked, "CHUNK_BYTES", 2**16)
    shape = (1, 9, 3, 500, 500, 64, True)
    q, k, _ = make_qkv(shape, torch.float32)
    mask = make_mask("sliding", shape)
    result = pooled_attention_map(q, k, block=10, mask=mask, softcap=30.0, backend="torch")
    reference = naive.pooled_attention_map(q, k, block=10, reduce="mean", mask=mask, softcap=30.0)
    plain = naive.pooled_attention_map(q, k, block=10, reduce="mean", mask=mask, softcap=30.0, dtype=torch.float32)
    assert_within_rule(result, reference, plain, what="sliding window")
    assert torch.isnan(result[..., 10:, :5]).all(), "tiles far behind the window are blank"


def test_mask_or_softcap_on_the_triton_backend_says_it_is_not_there_yet():
    q, k, _ = make_qkv((1, 2, 1, 8, 8, 16, True), torch.float32)
    with pytest.raises(ValueError, match="Triton kernels take no explicit mask or softcap"):
        pooled_attention_map(q, k, block=2, softcap=5.0, backend="triton")


def test_torch_path_on_a_long_map(monkeypatch):
    from attnscope.kernels.attention_stats import chunked

    monkeypatch.setattr(chunked, "CHUNK_BYTES", 2**20)
    q, k, _ = make_qkv((1, 9, 3, 1023, 1023, 64, True), torch.float32)
    result = pooled_attention_map(q, k, block=100, backend="torch")
    reference = naive.pooled_attention_map(q, k, block=100, reduce="mean")
    plain = naive.pooled_attention_map(q, k, block=100, reduce="mean", dtype=torch.float32)
    assert_within_rule(result, reference, plain, what="long map")


def test_mean_tiles_of_a_causal_map_average_to_the_row_sums():
    """With block = T every row's probabilities sum to 1, so the single tile's mean is T / (visible cells)."""
    q, k, _ = make_qkv((1, 2, 1, 48, 48, 16, True), torch.float32)
    tile = pooled_attention_map(q, k, block=48, backend="triton")[0, :, 0, 0]
    torch.testing.assert_close(tile, torch.full((2,), 48 / (48 * 49 / 2)))


def test_bad_arguments():
    q, k, _ = make_qkv((1, 2, 1, 8, 8, 16, True), torch.float32)
    with pytest.raises(ValueError, match="block must be"):
        pooled_attention_map(q, k, block=0)
    with pytest.raises(ValueError, match="reduce must be one of"):
        pooled_attention_map(q, k, reduce="median")
