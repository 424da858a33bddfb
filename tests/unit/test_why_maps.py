"""Value-weighted attention and attention rollout (attnscope.analyses.why_maps) against fp64 computations written from
their formulas on tiny random models, and the studies around them (attnscope.studies.why).

The reference builds each head's full (T, S) weights in fp64 numpy from the captured q, k, scale and rule (with a
learned sink's cell in the softmax), the parts alpha[h, i, j] * u[h, j] as vectors with u = v W_O[h] from
attnscope.analyses.contributions.head_values (tested against the model's own residual in test_why.py), and rollout as
the product e_t^T A_{L-1} ... A_0 of the full matrices A_l = rows-normalised(0.5 mean_h alpha + 0.5 I).
"""

import functools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from attnscope import anatomy
from attnscope.analyses import contributions, maps, why_maps
from attnscope.capture import run_with_capture
from attnscope.studies import why
from attnscope.studies.base import Source
from tests.references import pooled_tiles, visible_keys
from tests.unit.tiny_models import VOCAB, build, handle

FAMILIES = ["llama", "gpt2", "bert", "gpt_oss", "gemma2"]  # grouped-query, Conv1D, bidirectional, sinks, softcap+window


@functools.cache
def _captured(family: str, length: int = 23):
    model = build(family)
    ids = torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(length))
    return model, run_with_capture(model, ids)


def _alpha(layer, head: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, S) fp64 weights of one head (a learned sink's cell in each row's softmax, then dropped) and visibility."""
    groups = layer.q.shape[1] // layer.k.shape[1]
    q, k = layer.q[0, head].double().numpy(), layer.k[0, head // groups].double().numpy()
    logits = q @ k.T * layer.scale
    if layer.softcap is not None:
        logits = layer.softcap * np.tanh(logits / layer.softcap)
    visible = visible_keys(layer, head)
    sink = None if layer.sinks is None else float(layer.sinks[head])
    alpha = np.zeros_like(logits)
    for row in range(len(logits)):
        cells = logits[row, visible[row]]
        both = cells if sink is None else np.append(cells, sink)
        weights = np.exp(both - both.max())
        alpha[row, visible[row]] = (weights / weights.sum())[:len(cells)]
    return alpha, visible


@pytest.mark.parametrize("family", FAMILIES)
def test_value_norms_are_the_norms_of_each_heads_value_times_its_slice_of_w_o(family):
    model, capture = _captured(family)
    layers = anatomy.attention_layers(model)
    for index in range(capture.n_layers):
        u = contributions.head_values(capture.layer(index), layers[index], dtype=torch.float64)  # (H, S, d)
        for head in range(u.shape[0]):
            got = why_maps.value_norms(capture.layer(index), layers[index], head=head, dtype=torch.float64)
            torch.testing.assert_close(got, u[head].norm(dim=-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("block,reduce", [(1, "mean"), (3, "mean"), (5, "max"), (7, "mean"), (23, "mean"),
                                          (30, "max")], ids=lambda v: str(v))
@pytest.mark.parametrize("family", FAMILIES)
def test_value_weighted_map_is_the_pooled_norm_of_each_weighted_value_vector(family, block, reduce):
    """|alpha[h, i, j] * u[h, j]|_2 with the vector materialised, pooled over the visible cells of each tile."""
    model, capture = _captured(family)
    layers = anatomy.attention_layers(model)
    index = capture.n_layers - 1
    layer = capture.layer(index)
    u = contributions.head_values(layer, layers[index], dtype=torch.float64).numpy()
    for head in (0, layer.n_heads - 1):
        alpha, visible = _alpha(layer, head)
        parts = np.linalg.norm(alpha[:, :, None] * u[head][None, :, :], axis=-1)  # (T, S) |alpha u|
        got, norms = why_maps.value_weighted_map(layer, layers[index], head=head, block=block, reduce=reduce)
        np.testing.assert_allclose(norms.double().numpy(), np.linalg.norm(u[head], axis=-1), rtol=1e-5)
        np.testing.assert_allclose(got.double().numpy(), pooled_tiles(parts, visible, block, reduce), rtol=1e-5,
                                   atol=1e-9, equal_nan=True, err_msg=f"{family} head {head}")


@pytest.mark.parametrize("reduce", maps.REDUCTIONS)
@pytest.mark.parametrize("block", [1, 4, 7])
def test_with_unit_value_norms_the_map_is_the_attention_map_pooled_as_the_maps_page_pools_it(block, reduce):
    _, capture = _captured("llama", 37)
    layer = capture.layer(1)
    ones = torch.ones(layer.k.shape[2])
    got = why_maps.pooled_key_scaled(layer, head=4, key_scale=ones, block=block, reduce=reduce)
    expected = maps.pooled_map(layer, heads=[4], block=block, reduce=reduce).values[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7, equal_nan=True)


def test_the_map_is_the_same_whatever_the_chunk_of_rows(monkeypatch):
    model, capture = _captured("gemma2", 41)
    layer, projection = capture.layer(0), anatomy.attention_layers(model)[0]
    whole, _ = why_maps.value_weighted_map(layer, projection, head=2, block=3, reduce="mean")
    monkeypatch.setattr(why_maps, "ROWS", 4)  # 3 rows per chunk: one tile row at a time
    monkeypatch.setattr(why_maps, "NORM_ROWS", 5)
    chunked, _ = why_maps.value_weighted_map(layer, projection, head=2, block=3, reduce="mean")
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-9, equal_nan=True)


def _rollout_reference(capture, token: int) -> np.ndarray:
    """(L + 1, T): e_t^T A_{L-1} ... A_l for every l, with the full fp64 matrices."""
    n_tokens = capture.layer(0).q.shape[2]
    row = np.eye(n_tokens)[token]
    rows = [row]
    for index in reversed(range(capture.n_layers)):
        layer = capture.layer(index)
        mean = np.mean([_alpha(layer, head)[0] for head in range(layer.n_heads)], axis=0)
        mixed = 0.5 * mean + 0.5 * np.eye(n_tokens)
        row = row @ (mixed / mixed.sum(axis=1, keepdims=True))
        rows.append(row)
    return np.stack(rows[::-1])


@pytest.mark.parametrize("family", FAMILIES)
def test_rollout_is_the_product_of_the_residual_mixed_head_means_from_the_token_down(family):
    _, capture = _captured(family)
    layers = [capture.layer(index) for index in range(capture.n_layers)]
    for token in (0, 11, 22):
        got = why_maps.rollout_row(layers, token=token).numpy()
        expected = _rollout_reference(capture, token)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8, err_msg=f"{family} token {token}")
        np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-9)
        assert got[-1, token] == 1.0 and got[-1].sum() == 1.0
        if family != "bert":  # causal: nothing after the token is relevant
            assert not got[:, token + 1:].any()


def test_rollout_is_the_same_whatever_the_chunk_of_rows(monkeypatch):
    _, capture = _captured("gpt_oss", 41)
    layers = [capture.layer(index) for index in range(capture.n_layers)]
    whole = why_maps.rollout_row(layers, token=40)
    monkeypatch.setattr(why_maps, "CHUNK_CELLS", 4 * 41 * 3)  # 3 rows of 4 heads at a time
    torch.testing.assert_close(why_maps.rollout_row(layers, token=40), whole, rtol=1e-6, atol=1e-9)


def test_bad_arguments_name_what_was_wrong():
    model, capture = _captured("llama")
    layer, projection = capture.layer(0), anatomy.attention_layers(model)[0]
    with pytest.raises(ValueError, match=r"Head 6 does not exist; this layer has heads 0\.\.5"):
        why_maps.value_weighted_map(layer, projection, head=6, block=1)
    with pytest.raises(ValueError, match="reduce must be one of"):
        why_maps.value_weighted_map(layer, projection, head=0, block=1, reduce="median")
    with pytest.raises(ValueError, match=r"token=23 is not a position of this text: it has 23 tokens"):
        why_maps.rollout_row([layer], token=23)


# ---- the studies ----------------------------------------------------------------------------------------------------


def _ids(length: int = 20) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.randint(0, VOCAB, (length,), generator=torch.Generator().manual_seed(3)))


@functools.cache
def _source() -> Source:
    return Source(handle("llama"))


def test_the_value_weighted_study_pools_like_the_maps_study_and_reads_the_tokens_row():
    import attnscope

    source, text = _source(), _ids()
    cut = source.cut(None)
    result = why.value_weighted(source, text, cut=cut, layer=1, head=2, cell_limit=8, token=-1)
    shown = attnscope.maps(source.model, text, layer=1, heads=[2], cell_limit=8)
    assert result.block == shown.block == 3 and result.values.shape == shown.values.shape[1:]
    assert result.query == 19 and result.meta["token"] == 19
    np.testing.assert_allclose(result.weights, source.capture(text, cut).layer(1).probs([2])[0, 0, 19], rtol=1e-6)
    assert "Weights and value norms" in result.findings()[0].text() and "Token 19" in result.findings()[0].measured
    (name, figure), = result.figures(marks=[19]).items()
    assert name == "value-weighted-layer1-head2" and figure.layout.shapes
    assert set(result.to_frame().columns) >= {"query_start", "key_start", "value_weighted"}
    with pytest.raises(ValueError, match=r"Layer 3 does not exist; this model has layers 0\.\.2"):
        why.value_weighted(source, text, cut=cut, layer=3)


def test_the_rollout_study_defaults_to_the_last_token_and_saves(tmp_path):
    import attnscope

    source, text = _source(), _ids()
    cut = source.cut(None)
    result = why.rollout(source, text, cut=cut)
    assert result.token == 19 and result.relevance.shape == (source.model.n_layers + 1, 20)
    assert result.top(3)[0] in range(20) and "Attention rollout" in result.findings()[0].text()
    assert why.ROLLOUT_DIFFERS in result.findings()[0].measured
    opened = attnscope.open(result.save(tmp_path / "rollout.json"))
    np.testing.assert_array_equal(opened.relevance, result.relevance)
    with pytest.raises(ValueError, match="token=20 is not a token position of this text"):
        why.rollout(source, text, cut=cut, token=20)


def _flow_result(rows: list[tuple[int, int, int, int, float]], n_layers: int, n_tokens: int, token: int):
    layer, query, key, head, value = (np.array(column) for column in zip(*rows))
    return why.ContributionsResult(
        meta={"token": token, "threshold": 0.1}, tokens=tuple(f"t{i}" for i in range(n_tokens)),
        layer=layer.astype(np.int16), query=query.astype(np.int32), key=key.astype(np.int32),
        head=head.astype(np.int16), contribution=value.astype(np.float32), n_layers=n_layers, n_heads=2)


def test_flow_relevance_follows_the_kept_edges_down_and_renormalises_each_boundary():
    # layer 1: token 3 is 0.5 its residual, 0.3 key 1 (head 0); layer 0: token 3 is 0.6 key 0, 0.2 residual; token 1 is
    # 0.4 key 0 (head 1) and 0.4 its residual
    result = _flow_result([(1, 3, -1, -1, 0.5), (1, 3, 1, 0, 0.3), (0, 3, 0, 0, 0.6), (0, 3, -1, -1, 0.2),
                           (0, 1, 0, 1, 0.4), (0, 1, -1, -1, 0.4)], n_layers=2, n_tokens=4, token=3)
    relevance = why.flow_relevance(result)
    np.testing.assert_allclose(relevance[2], [0, 0, 0, 1])
    np.testing.assert_allclose(relevance[1], np.array([0, 0.3, 0, 0.5]) / 0.8)
    below = np.array([0.5 * 0.6 + 0.3 * 0.4, 0.3 * 0.4, 0, 0.5 * 0.2])
    np.testing.assert_allclose(relevance[0], below / below.sum(), rtol=1e-6)


def test_head_roles_say_which_of_the_tokens_heads_are_induction_heads():
    result = _flow_result([(1, 3, 1, 0, 0.5), (1, 3, 2, 1, 0.2), (0, 1, 0, 1, 0.4)], n_layers=2, n_tokens=4, token=3)
    stats = SimpleNamespace(induction=np.array([[0.0, 0.1], [0.8, 0.2]]), induction_measured_on="a test")
    measured = why.head_roles(result, stats).measured
    assert measured.startswith("The heads token 3 ('t3') draws on most (summed contribution along its graph): "
                               "L1.H0 (0.5), L0.H1 (0.4), L1.H1 (0.2).")
    assert "L1.H0 0.80 is an induction head" in measured and "measured on a test" in measured
    stats.induction = np.zeros((2, 2))
    assert "none of them is an induction head" in why.head_roles(result, stats).measured
