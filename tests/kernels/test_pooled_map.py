"""pooled_attention_map: Triton (interpreter) and torch paths against the fp64 tile-by-tile reference."""

import pytest
import torch

from attnscope.kernels import pooled_attention_map
from attnscope.kernels.pooled_map import naive
from tests.kernels import model_masks
from tests.kernels.helpers import MASKS, DTYPES, assert_within_rule, cases, make_mask, make_qkv, mask_id

CASES, IDS = cases()
MASK_CASES = [(shape, name, kind, softcap) for shape, name in CASES for kind, softcap in MASKS]
MASK_IDS = [f"{case_id}-{mask_id(kind, softcap)}" for case_id in IDS for kind, softcap in MASKS]
MODEL_CASES, MODEL_IDS = model_masks.cases(dtypes=("fp32", "bf16"))


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


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("shape,dtype_name,extras", MODEL_CASES, ids=MODEL_IDS)
def test_windows_sinks_and_softcap_match_reference(shape, dtype_name, extras, backend):
    model = model_masks.model_arguments(extras, shape)
    q, k, _ = make_qkv(shape, DTYPES[dtype_name], logit_scale=3.0 if "softcap" in model else 1.0)
    # 1: the exact map; 3 and 16: the packed kernel (padded offsets, whole ones); 100: the sub-tiled kernel
    for block, reduce, hide_sink in [(1, "mean", False), (3, "max", True), (16, "mean", True), (100, "max", False),
                                     (100, "mean", True)]:
        options = dict(block=block, reduce=reduce, causal=shape[-1], hide_sink=hide_sink, **model)
        result = pooled_attention_map(q, k, **options, backend=backend)
        reference = naive.pooled_attention_map(q, k, **options)
        plain = naive.pooled_attention_map(q, k, **options, dtype=q.dtype)
        assert result.shape == reference.shape
        assert_within_rule(result, reference, plain, what=f"{reduce} block {block} with {extras}")


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_learned_sinks_take_their_share_of_every_row(backend):
    """The exact map (block 1) of a row sums to 1 - p_sink, p_sink = exp(z_h) / (exp(z_h) + sum_j exp(s_j))."""
    shape = (1, 4, 2, 20, 20, 16, True)
    q, k, _ = make_qkv(shape, torch.float32)
    sinks = model_masks.make_sinks("mixed", 4)
    rows = pooled_attention_map(q, k, block=1, sinks=sinks, backend=backend).double().nansum(-1)
    scores = naive.masked_scores(q, k, causal=True, scale=None)
    sink_mass = 1 / (1 + torch.exp(scores - sinks.double()[None, :, None, None]).sum(-1))
    torch.testing.assert_close(rows, 1 - sink_mass, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_a_window_as_long_as_the_keys_changes_nothing(backend):
    shape = (1, 3, 1, 40, 75, 32, True)
    q, k, _ = make_qkv(shape, torch.float32)
    full = pooled_attention_map(q, k, block=10, backend=backend)
    torch.testing.assert_close(pooled_attention_map(q, k, block=10, window=75, backend=backend), full, equal_nan=True)


def test_windowed_torch_path_computes_only_the_keys_in_reach(monkeypatch):
    """Chunks of 10 rows, a window of 20 keys, tiles of 10: each chunk's scores span at most 10 + 20 + 2 x 10 keys
    (its rows' windows, widened to whole key tiles), so the work is O(T w), not O(T S)."""
    from attnscope.kernels.attention_stats import chunked

    monkeypatch.setattr(chunked, "CHUNK_BYTES", 2**14)  # 6 rows a chunk, rounded up to one tile of 10
    shape = (1, 2, 1, 300, 300, 16, True)
    q, k, _ = make_qkv(shape, torch.float32)
    reference = naive.pooled_attention_map(q, k, block=10, reduce="mean", window=20)
    plain = naive.pooled_attention_map(q, k, block=10, reduce="mean", window=20, dtype=torch.float32)
    cells = []
    matmul = torch.matmul

    def counting_matmul(a, b, *args, **kwargs):
        cells.append(a.shape[-2] * b.shape[-1])  # (heads x rows) x keys scores per key/value head
        return matmul(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "matmul", counting_matmul)
    result = pooled_attention_map(q, k, block=10, window=20, backend="torch")
    monkeypatch.setattr(torch, "matmul", matmul)
    assert_within_rule(result, reference, plain, what="window 20 over 300 keys")
    assert sum(cells) <= 2 * 300 * (10 + 20 + 2 * 10), f"{sum(cells)} scores computed for a window of 20"
    assert torch.isnan(result[..., 5:, :2]).all(), "tiles left of every window are blank"


def test_explicit_mask_on_the_triton_backend_says_it_is_not_there_yet():
    q, k, _ = make_qkv((1, 2, 1, 8, 8, 16, True), torch.float32)
    mask = make_mask("padding", (1, 2, 1, 8, 8, 16, True))
    with pytest.raises(ValueError, match="Triton kernels take no explicit mask"):
        pooled_attention_map(q, k, block=2, mask=mask, softcap=5.0, backend="triton")


@pytest.mark.parametrize("kwargs,message", [
    (dict(window=0), "window must be a positive"),
    (dict(window=2.5), "window must be a positive"),
    (dict(window=4, causal=False), "narrows the causal rule"),
    (dict(window=4, mask=torch.ones(8, 8, dtype=torch.bool)), "narrows the causal rule"),
    (dict(sinks=torch.zeros(3)), "one logit per query head"),
    (dict(sinks=torch.tensor([0.0, float("inf")])), "finite"),
], ids=["window0", "window_float", "window_bidirectional", "window_and_mask", "sinks_shape", "sinks_inf"])
def test_bad_window_and_sinks(kwargs, message):
    q, k, _ = make_qkv((1, 2, 1, 8, 8, 16, True), torch.float32)
    with pytest.raises(ValueError, match=message):
        pooled_attention_map(q, k, block=2, **kwargs)


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
