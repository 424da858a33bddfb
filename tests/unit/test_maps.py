"""Maps and head statistics against a reference written from the definitions, on captured tiny models.

The reference (`_reference_probs`, `_reference_pool`, `_reference_stats`) is plain fp64 numpy from the layer's
captured q, k, scale and rule, sharing no code with attnscope: logits q_i . k_j * scale (the query head reads key
head h // (Hq // Hkv)), capped to c tanh(logits / c) under a softcap, a softmax over the keys the query sees (the
explicit mask if any, else key j <= i + S - T under the causal rule, narrowed to the last `window` keys), a row that
sees no key all zeros; tiles pooled by mean or max over their visible cells; row entropy, max weight, weight on key 0
and expected |query position - key position| averaged over the query rows.
"""

import functools
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from attnscope.analyses import maps
from attnscope.capture import ATTENTION_NAME, capturing, register_attention, run_with_capture
from tests.references import pooled_tiles, visible_keys
from tests.unit.tiny_models import VOCAB, build, padded_bert_layer

FIELDS = ("entropy", "normalized_entropy", "max_weight", "sink_mass", "mean_distance")


def _layer(family: str, length: int, layer: int = 1):
    ids = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(length))
    return run_with_capture(build(family), ids).layer(layer)


def _reference_probs(layer, head: int) -> tuple[np.ndarray, np.ndarray]:
    """(probs, visible), each (T, S): the attention weights of head `head` in fp64, zero where not visible."""
    assert layer.sinks is None, "the reference has no learned sink cell"
    groups = layer.q.shape[1] // layer.k.shape[1]
    q = layer.q[0, head].double().numpy()  # (T, D)
    k = layer.k[0, head // groups].double().numpy()  # (S, D)
    logits = q @ k.T * layer.scale
    if layer.softcap is not None:
        logits = layer.softcap * np.tanh(logits / layer.softcap)
    visible = visible_keys(layer, head)
    probs = np.zeros_like(logits)
    for row in range(logits.shape[0]):
        seen = visible[row]
        if seen.any():
            weights = np.exp(logits[row, seen] - logits[row, seen].max())
            probs[row, seen] = weights / weights.sum()
    return probs, visible


def _reference_map(layer, heads, block: int, reduce: str, hide_sink: bool) -> np.ndarray:
    """(len(heads), ceil(T/block), ceil(S/block)): _reference_pool of each head, key 0 left out under hide_sink."""
    pooled = []
    for head in heads:
        probs, visible = _reference_probs(layer, head)
        if hide_sink:
            visible[:, 0] = False
        pooled.append(pooled_tiles(probs, visible, block, reduce))
    return np.stack(pooled)


def _reference_stats(layer, heads) -> dict[str, np.ndarray]:
    """Per head, means over the query rows of: the row entropy; entropy / log(visible keys) over rows that see more
    than one key; the largest weight; the weight on key 0; the expected |query position - key position|."""
    out = {field: [] for field in FIELDS}
    for head in heads:
        probs, visible = _reference_probs(layer, head)
        n_queries, n_keys = probs.shape
        logs = np.log(np.where(probs > 0, probs, 1.0))  # 0 log 0 = 0
        entropy = -(probs * logs).sum(-1)
        n_visible = visible.sum(-1)
        spread = n_visible > 1
        distance = np.abs(np.arange(n_queries)[:, None] + n_keys - n_queries - np.arange(n_keys)[None, :])
        out["entropy"].append(entropy.mean())
        out["normalized_entropy"].append((entropy[spread] / np.log(n_visible[spread])).mean())
        out["max_weight"].append(probs.max(-1).mean())
        out["sink_mass"].append(probs[:, 0].mean())
        out["mean_distance"].append((probs * distance).sum(-1).mean())
    return {field: np.array(values) for field, values in out.items()}


def assert_maps_match_reference(layer, *, what: str) -> None:
    """head_stats, pooled_map and query_weights of `layer` equal the fp64 reference from the definitions (fp32
    precision: rtol 1e-5), for all heads and for a subset."""
    per_head_mask = layer.mask is not None and layer.mask.shape[1] > 1
    some = [layer.n_heads - 1, 1] if not per_head_mask else [4, 2, 0] if layer.n_heads > 4 else [1, 0]
    for heads in (None, some):
        got = maps.head_stats(layer, heads=heads)
        expected = _reference_stats(layer, range(layer.n_heads) if heads is None else heads)
        for field in FIELDS:
            np.testing.assert_allclose(getattr(got, field).double().numpy(), expected[field], rtol=1e-5, atol=1e-6,
                                       err_msg=f"{what} heads {heads} {field}")
    for block, reduce, hide_sink in [(1, "mean", False), (7, "max", True), (16, "mean", True), (16, "max", False)]:
        got = maps.pooled_map(layer, heads=some, block=block, reduce=reduce, hide_sink=hide_sink).values
        np.testing.assert_allclose(got.double().numpy(), _reference_map(layer, some, block, reduce, hide_sink),
                                   rtol=1e-5, atol=1e-7, equal_nan=True,
                                   err_msg=f"{what} block {block} {reduce} hide_sink {hide_sink}")
    probs, _ = _reference_probs(layer, 1)
    for query in (0, 3, layer.q.shape[2] - 1):
        np.testing.assert_allclose(maps.query_weights(layer, head=1, query=query).double().numpy(), probs[query],
                                   rtol=1e-5, atol=1e-7, err_msg=f"{what} query {query}")


@pytest.mark.parametrize("family", ["llama", "bert"])
@pytest.mark.parametrize("length,block", [(1, 1), (37, 1), (37, 8), (300, 64), (513, 100)])
@pytest.mark.parametrize("reduce", maps.REDUCTIONS)
@pytest.mark.parametrize("hide_sink", [False, True])
def test_pooled_map_matches_full_matrix_reference(family, length, block, reduce, hide_sink):
    layer = _layer(family, length)
    heads = [0, 3]
    pooled = maps.pooled_map(layer, heads=heads, block=block, reduce=reduce, hide_sink=hide_sink)
    expected = _reference_map(layer, heads, block, reduce, hide_sink)
    np.testing.assert_allclose(pooled.values.double().numpy(), expected, rtol=1e-5, atol=1e-7, equal_nan=True)


def test_unpooled_map_is_the_probability_matrix_with_masked_cells_blank():
    layer = _layer("llama", 20)
    values = maps.pooled_map(layer, heads=[2], block=1).values[0].double().numpy()
    upper = np.triu(np.ones((20, 20), dtype=bool), k=1)
    assert np.isnan(values[upper]).all() and not np.isnan(values[~upper]).any()
    np.testing.assert_allclose(np.nansum(values, -1), 1.0, rtol=1e-5)  # every row is a distribution
    np.testing.assert_allclose(values[~upper], _reference_probs(layer, 2)[0][~upper], rtol=1e-5, atol=1e-7)


def test_mean_pooled_tiles_are_the_means_of_the_unpooled_map():
    """Pooling property, without the reference: a mean tile is the mean of the visible cells of the block-1 map
    under it, a max tile their maximum."""
    layer = _layer("llama", 45)
    cells = maps.pooled_map(layer, heads=[3], block=1).values[0].double().numpy()
    for reduce, pool in (("mean", np.nanmean), ("max", np.nanmax)):
        tiles = maps.pooled_map(layer, heads=[3], block=10, reduce=reduce).values[0].double().numpy()
        for r in range(tiles.shape[0]):
            for c in range(tiles.shape[1]):
                tile = cells[r * 10 : (r + 1) * 10, c * 10 : (c + 1) * 10]
                if np.isnan(tile).all():
                    assert np.isnan(tiles[r, c]), (reduce, r, c)
                else:
                    assert tiles[r, c] == pytest.approx(pool(tile), rel=1e-5), (reduce, r, c)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_head_stats_match_direct_computation(family):
    layer = _layer(family, 300)
    stats = maps.head_stats(layer)
    expected = _reference_stats(layer, range(layer.n_heads))
    for field in FIELDS:
        np.testing.assert_allclose(getattr(stats, field).double().numpy(), expected[field], rtol=1e-5, atol=1e-6,
                                   err_msg=field)
    n_visible = visible_keys(layer, 0).sum(-1)
    assert (stats.entropy <= np.log(n_visible).max() + 1e-6).all(), "entropy never exceeds log(visible keys)"
    assert ((stats.normalized_entropy >= 0) & (stats.normalized_entropy <= 1 + 1e-6)).all()


def test_query_weights_is_one_row():
    layer = _layer("llama", 15)
    row = maps.query_weights(layer, head=4, query=9)
    np.testing.assert_allclose(row.double().numpy(), _reference_probs(layer, 4)[0][9], rtol=1e-5, atol=1e-7)
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
    """The same layer with its rule written out as a bool mask."""
    return replace(layer, mask=layer.visible()[:, :, :, :].clone(), causal=False)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_a_rule_written_out_as_a_mask_gives_the_same_maps_and_stats(family):
    layer = _layer(family, 150)
    explicit = _as_explicit_mask(layer)
    for reduce in maps.REDUCTIONS:
        rule = maps.pooled_map(layer, heads=[1, 2], block=16, reduce=reduce, hide_sink=True)
        written = maps.pooled_map(explicit, heads=[1, 2], block=16, reduce=reduce, hide_sink=True)
        torch.testing.assert_close(rule.values, written.values, equal_nan=True)
    rule_stats, written_stats = maps.head_stats(layer), maps.head_stats(explicit)
    for field in FIELDS:
        torch.testing.assert_close(getattr(rule_stats, field), getattr(written_stats, field), rtol=1e-5, atol=1e-6)


def test_padding_mask_matches_reference():
    layer = padded_bert_layer(length=40, padded_from=30)
    assert layer.mask is not None
    pooled = maps.pooled_map(layer, heads=[0], block=8, reduce="mean")
    expected = _reference_map(layer, [0], 8, "mean", hide_sink=False)
    np.testing.assert_allclose(pooled.values.double().numpy(), expected, rtol=1e-5, atol=1e-7, equal_nan=True)
    assert np.isnan(expected[0, :, -1]).all(), "the padded keys 30..39 are blank in every tile row"


def test_per_head_mask_with_a_subset_of_heads():
    """A mask that differs per head is cut to the requested heads."""
    layer = _masked_layers()["llama_random_softcap"]
    whole = maps.head_stats(layer)
    subset = maps.head_stats(layer, heads=[4, 2])
    for field in FIELDS:
        torch.testing.assert_close(getattr(subset, field), getattr(whole, field)[[4, 2]])
    pooled = maps.pooled_map(layer, heads=[4, 2], block=5, reduce="max").values
    every_head = maps.pooled_map(layer, heads=range(6), block=5, reduce="max").values
    torch.testing.assert_close(pooled, every_head[[4, 2]], equal_nan=True)


# ---------------------------------------------------------------------------------------------------------------
# Every kind of layer maps.py takes (explicit masks, padded queries that see no key, sliding windows as a rule and as a
# mask, softcaps, per-head masks, GPT-2's per-layer scale) against the reference. tests/integration/test_engine_real.py
# runs the same comparison on SmolLM2.


def build_gemma2(softcap: float):
    """A tiny Gemma 2: alternating sliding-window (8 keys) and full layers, logits softcapped."""
    from transformers import AutoModelForCausalLM, Gemma2Config

    register_attention()
    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=6, num_key_value_heads=2, head_dim=16, sliding_window=8,
                          attn_logit_softcapping=softcap, max_position_embeddings=1024)
    return AutoModelForCausalLM.from_config(config, attn_implementation=ATTENTION_NAME).eval()


@functools.cache
def _masked_layers() -> dict:
    """Layers of every kind: explicit masks, softcaps, windows, and plain ones (built once; nothing mutates them)."""
    generator = torch.Generator().manual_seed(5)
    ids = torch.randint(0, VOCAB, (1, 40), generator=generator)
    layers = {}
    padding = torch.ones_like(ids)
    padding[0, 30:] = 0
    with torch.no_grad(), capturing() as captured:
        build("bert")(input_ids=ids, attention_mask=padding)
    layers["bert_padding"] = captured[0]
    left_padding = torch.ones_like(ids)
    left_padding[0, :5] = 0  # the padded queries see no key at all
    with torch.no_grad(), capturing() as captured:
        build("llama")(input_ids=ids, attention_mask=left_padding)
    layers["llama_left_padding"] = captured[1]
    with torch.no_grad(), capturing() as captured:
        build_gemma2(softcap=1.0)(input_ids=torch.randint(0, VOCAB, (1, 45), generator=generator))
    layers["gemma2_sliding_softcap"], layers["gemma2_full_softcap"] = captured[0], captured[1]
    capture = run_with_capture(build("llama"), torch.randint(0, VOCAB, (1, 70), generator=generator))
    layers["llama_plain"] = capture.layer(1)
    plain = capture.layer(2)
    position = torch.arange(70)
    window = (position[None, :] <= position[:, None]) & (position[None, :] > position[:, None] - 9)
    layers["llama_window"] = replace(plain, mask=window[None, None], causal=False)
    layers["llama_window_rule"] = replace(plain, window=9)  # the same window as a rule: the kernels' own path
    per_head = torch.rand(1, 6, 70, 70, generator=generator) > 0.6
    per_head[:, 2, 10] = False  # a row of head 2 that sees nothing
    layers["llama_random_softcap"] = replace(plain, mask=per_head, causal=False, softcap=0.7)
    layers["llama_causal_softcap"] = replace(plain, softcap=0.5)
    capture = run_with_capture(build("bert"), torch.randint(0, VOCAB, (1, 50), generator=generator))
    layers["bert_softcap"] = replace(capture.layer(1), softcap=1.5)
    layers["gpt2"] = run_with_capture(build("gpt2"), torch.randint(0, VOCAB, (1, 33), generator=generator)).layer(2)
    return layers


def test_the_cases_cover_masks_softcaps_and_empty_rows():
    layers = _masked_layers()
    sliding = layers["gemma2_sliding_softcap"]
    assert sliding.mask is None and sliding.window == 8 and sliding.softcap == 1.0
    assert layers["gemma2_full_softcap"].mask is None and layers["gemma2_full_softcap"].window is None
    assert torch.equal(layers["llama_window_rule"].visible(), layers["llama_window"].visible())
    assert (layers["llama_left_padding"].visible().sum(-1) == 0).any()
    assert layers["gpt2"].scale != layers["gpt2"].q.shape[-1] ** -0.5, "GPT-2's scale differs from 1/sqrt(D) here"


@pytest.mark.parametrize("name", ["bert_padding", "llama_left_padding", "gemma2_sliding_softcap",
                                  "gemma2_full_softcap", "llama_plain", "llama_window", "llama_window_rule",
                                  "llama_random_softcap", "llama_causal_softcap", "bert_softcap", "gpt2"])
def test_maps_match_the_reference_on_every_kind_of_layer(name):
    assert_maps_match_reference(_masked_layers()[name], what=name)
