"""Chunked map computations against a direct full-matrix reference, on captured tiny models."""

import math

import numpy as np
import pytest
import torch

from attnscope.analyses import maps
from attnscope.capture import run_with_capture
from tests.unit.tiny_models import VOCAB, build


def _layer(family: str, length: int, layer: int = 1):
    ids = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(length))
    return run_with_capture(build(family), ids).layer(layer)


def _reference_pool(probs: np.ndarray, visible: np.ndarray, block: int, reduce: str) -> np.ndarray:
    """Loop over tiles of the full matrix: mean or max over the visible cells, NaN if none."""
    n_rows, n_cols = probs.shape
    out = np.full((math.ceil(n_rows / block), math.ceil(n_cols / block)), np.nan)
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            tile = probs[r * block : (r + 1) * block, c * block : (c + 1) * block]
            seen = visible[r * block : (r + 1) * block, c * block : (c + 1) * block]
            if seen.any():
                out[r, c] = tile[seen].mean() if reduce == "mean" else tile[seen].max()
    return out


@pytest.mark.parametrize("family", ["llama", "bert"])
@pytest.mark.parametrize("length,block", [(1, 1), (37, 1), (37, 8), (300, 64), (513, 100)])
@pytest.mark.parametrize("reduce", maps.REDUCTIONS)
@pytest.mark.parametrize("hide_sink", [False, True])
def test_pooled_map_matches_full_matrix_reference(family, length, block, reduce, hide_sink):
    layer = _layer(family, length)
    heads = [0, 3]
    pooled = maps.pooled_map(layer, heads=heads, block=block, reduce=reduce, hide_sink=hide_sink)
    full = layer.probs(heads)[0].numpy()
    visible = layer.visible()[0, 0].numpy().copy()
    if hide_sink:
        visible[:, 0] = False
    for index in range(len(heads)):
        expected = _reference_pool(full[index], visible, block, reduce)
        np.testing.assert_allclose(pooled.values[index].numpy(), expected, rtol=1e-5, atol=1e-7, equal_nan=True)


def test_unpooled_map_is_the_probability_matrix_with_masked_cells_blank():
    layer = _layer("llama", 20)
    values = maps.pooled_map(layer, heads=[2], block=1).values[0]
    probs = layer.probs([2])[0, 0]
    upper = torch.triu(torch.ones(20, 20, dtype=torch.bool), diagonal=1)
    assert torch.isnan(values[upper]).all()
    torch.testing.assert_close(values[~upper], probs[~upper])


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_head_stats_match_direct_computation(family):
    layer = _layer(family, 300)
    stats = maps.head_stats(layer)
    probs = layer.probs()[0].double()
    entropy = -(probs * torch.log(probs.clamp(min=1e-300))).sum(-1)  # (H, T)
    n_visible = layer.visible()[0, 0].sum(-1).double()
    spread = n_visible > 1
    torch.testing.assert_close(stats.entropy, entropy.mean(-1).float())
    torch.testing.assert_close(stats.normalized_entropy,
                               (entropy[:, spread] / torch.log(n_visible[spread])).mean(-1).float())
    torch.testing.assert_close(stats.max_weight, probs.amax(-1).mean(-1).float())
    torch.testing.assert_close(stats.sink_mass, probs[..., 0].mean(-1).float())
    n = probs.shape[-1]
    distance = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).abs().double()
    torch.testing.assert_close(stats.mean_distance, (probs * distance).sum(-1).mean(-1).float())
    assert (stats.entropy <= torch.log(n_visible).max() + 1e-6).all(), "entropy never exceeds log(visible keys)"


def test_query_weights_is_one_row():
    layer = _layer("llama", 15)
    row = maps.query_weights(layer, head=4, query=9)
    torch.testing.assert_close(row, layer.probs([4])[0, 0, 9])
    assert row[10:].abs().max() == 0 and math.isclose(float(row.sum()), 1.0, rel_tol=1e-6)


def test_bad_arguments_name_what_was_wrong():
    layer = _layer("llama", 8)
    with pytest.raises(ValueError, match="Heads \\[9\\] do not exist"):
        maps.pooled_map(layer, heads=[9], block=1)
    with pytest.raises(ValueError, match="reduce must be one of"):
        maps.pooled_map(layer, heads=[0], block=2, reduce="median")
    with pytest.raises(ValueError, match="Query 8 does not exist"):
        maps.query_weights(layer, head=0, query=8)


@pytest.mark.parametrize("n,limit,expected", [(10, 256, 1), (256, 256, 1), (257, 256, 2), (4096, 256, 16)])
def test_block_for_keeps_within_the_cell_limit(n, limit, expected):
    assert maps.block_for(n, limit) == expected
    assert math.ceil(n / maps.block_for(n, limit)) <= limit


def _as_explicit_mask(layer):
    """The same layer with its rule written out as a bool mask, which sends it down the general path."""
    from dataclasses import replace

    return replace(layer, mask=layer.visible()[:, :, :, :].clone(), causal=False)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_general_path_for_explicit_masks_agrees_with_the_kernel_path(family):
    layer = _layer(family, 150)
    explicit = _as_explicit_mask(layer)
    assert maps._kernel_ready(layer) and not maps._kernel_ready(explicit)
    for reduce in maps.REDUCTIONS:
        kernel = maps.pooled_map(layer, heads=[1, 2], block=16, reduce=reduce, hide_sink=True)
        general = maps.pooled_map(explicit, heads=[1, 2], block=16, reduce=reduce, hide_sink=True)
        torch.testing.assert_close(kernel.values, general.values, equal_nan=True)
    kernel_stats, general_stats = maps.head_stats(layer), maps.head_stats(explicit)
    for field in ("entropy", "normalized_entropy", "max_weight", "sink_mass", "mean_distance"):
        torch.testing.assert_close(getattr(kernel_stats, field), getattr(general_stats, field), rtol=1e-4, atol=1e-5)


def test_padding_mask_takes_the_general_path_and_matches_reference():
    ids = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(3))
    attention_mask = torch.ones_like(ids)
    attention_mask[0, 30:] = 0
    from attnscope.capture import capturing

    with torch.no_grad(), capturing() as captured:
        build("bert")(input_ids=ids, attention_mask=attention_mask)
    layer = captured[0]
    assert layer.mask is not None and not maps._kernel_ready(layer)
    pooled = maps.pooled_map(layer, heads=[0], block=8, reduce="mean")
    visible = layer.visible()[0, 0].numpy()
    expected = _reference_pool(layer.probs([0])[0, 0].numpy(), visible, 8, "mean")
    np.testing.assert_allclose(pooled.values[0].numpy(), expected, rtol=1e-5, atol=1e-7, equal_nan=True)
