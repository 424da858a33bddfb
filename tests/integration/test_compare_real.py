"""attnscope.compare on the packaged models: B - A is exactly the difference of two attnscope.stats calls (and of two
attnscope.maps calls), the same run twice differs by exactly 0, two models of different depths are compared layer pair
by layer pair at the same relative depth, with the sentence that says so; results save and reopen; the CLI gives the
same numbers."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import attnscope
from attnscope.studies import maps as maps_study

pytestmark = pytest.mark.slow
TEXT_A = "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is"
TEXT_B = "def add(a, b):\n    return a + b\n\nprint(add(2, 3))"
SAME_LENGTH_A, SAME_LENGTH_B = "The capital of France is Paris.", "The capital of Italy is Rome."  # 7 tokens each
FIELDS = tuple(maps_study.STATISTICS)


@pytest.fixture(scope="module")
def smollm2():
    return attnscope.load("smollm2-135m")


@pytest.fixture(scope="module")
def minilm():
    return attnscope.load("minilm-l6")


def test_two_texts_difference_is_b_minus_a_of_two_stats_calls(smollm2, tmp_path):
    result = attnscope.compare(smollm2, TEXT_A, text_b=TEXT_B, layer=4, head=2)
    a, b = attnscope.stats(smollm2, TEXT_A), attnscope.stats(smollm2, TEXT_B)
    assert result.per_head and result.meta["same_model"] and not result.meta["same_text"]
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(result.a, name), getattr(a, name))
        np.testing.assert_array_equal(getattr(result.b, name), getattr(b, name))
        np.testing.assert_array_equal(result.difference[name], getattr(b, name) - getattr(a, name))
    change = b.entropy - a.entropy
    layer, head = np.unravel_index(np.argmax(np.abs(change)), change.shape)
    entropy = next(f for f in result.findings() if f.topic == "Entropy (nats): B − A")
    assert entropy.measured.startswith(f"the heads that changed most: L{layer}H{head} ")
    assert f"({change[layer, head]:+.3f})" in entropy.measured
    texts = [f.text() for f in result.findings()]
    assert any("the same model on two texts" in t for t in texts)
    assert any("Both have 30 layers × 9 heads: B − A is taken head by head." in t for t in texts)
    assert any("Text lengths" in t for t in texts)
    assert result.map_difference is None and "map-difference" not in result.figures()
    assert any(f"no difference map: A has {len(a.tokens)} tokens and B {len(b.tokens)}" in t for t in texts)

    heatmap = result.figures("sink_mass")["sink_mass-difference"].data[0]
    sink_change = b.sink_mass - a.sink_mass
    assert heatmap.zmid == 0 and heatmap.zmax == -heatmap.zmin == np.abs(sink_change).max()  # centred at 0
    np.testing.assert_array_equal(heatmap.z, sink_change)
    frame = result.to_frame()
    assert len(frame) == len(FIELDS) * 30 * 9 and list(frame.columns) == ["statistic", "layer", "head", "a", "b",
                                                                          "difference"]
    for suffix in (".json", ".parquet"):
        again = attnscope.open(result.save(tmp_path / f"compare{suffix}"))
        assert type(again) is type(result) and again.meta == result.meta
        for name in FIELDS:
            np.testing.assert_array_equal(again.difference[name], result.difference[name])
        assert [f.text() for f in again.findings()] == texts
    assert "B − A" in result.save(tmp_path / "compare.html").read_text()
    assert len(pd.read_csv(result.save(tmp_path / "compare.csv"))) == len(frame)


def test_same_text_twice_differs_by_exactly_zero(smollm2):
    result = attnscope.compare(smollm2, TEXT_A, layer=7, head=8)
    for name in FIELDS:
        assert (result.difference[name] == 0).all()
    maps = attnscope.maps(smollm2, TEXT_A, layer=7, heads=[8])
    visible = np.isfinite(maps.values[0])  # a decoder's map is blank above the diagonal
    assert (result.map_difference[visible] == 0).all() and np.isnan(result.map_difference[~visible]).all()
    texts = [f.text() for f in result.findings()]
    assert any("the same model on the same text" in t for t in texts)
    assert any("B − A is exactly 0 for every head and every statistic." in t for t in texts)
    assert any("Layer 7, head 8: B − A drawn cell by cell." in t for t in texts)
    assert not any("changed most" in t for t in texts)
    heatmap = result.figures("entropy")["entropy-difference"].data[0]
    assert (heatmap.zmin, heatmap.zmid, heatmap.zmax) == (-1.0, 0.0, 1.0)  # all white, not a degenerate scale


def test_same_number_of_tokens_draws_the_difference_map(smollm2):
    result = attnscope.compare(smollm2, SAME_LENGTH_A, text_b=SAME_LENGTH_B, layer=3, head=5)
    a = attnscope.maps(smollm2, SAME_LENGTH_A, layer=3, heads=[5])
    b = attnscope.maps(smollm2, SAME_LENGTH_B, layer=3, heads=[5])
    assert len(a.tokens) == len(b.tokens) == 7
    np.testing.assert_array_equal(result.map_difference, b.values[0] - a.values[0])
    np.testing.assert_array_equal(result.maps_a.values, a.values)
    assert "the tokens differ at 2 of 7 positions (shown as A|B)" in result.map_note
    figure = result.figures()["map-difference"]
    assert "3:␣France|␣Italy" in figure.data[0].x and figure.data[0].zmid == 0
    # pooled: the same number of tokens gives the same tiles on both sides (four sentences each, 28 tokens, pooled
    # under the smallest cell limit, 8, into tiles of 4 x 4 tokens)
    long_a, long_b = " ".join([SAME_LENGTH_A] * 4), " ".join([SAME_LENGTH_B] * 4)
    pooled = attnscope.compare(smollm2, long_a, text_b=long_b, layer=3, head=5, cell_limit=8, reduce="max")
    a = attnscope.maps(smollm2, long_a, layer=3, heads=[5], cell_limit=8, reduce="max")
    b = attnscope.maps(smollm2, long_b, layer=3, heads=[5], cell_limit=8, reduce="max")
    assert len(a.tokens) == len(b.tokens) == 28 and pooled.maps_a.block == 4
    np.testing.assert_array_equal(pooled.map_difference, b.values[0] - a.values[0])
    same = attnscope.compare(smollm2, long_a, layer=3, head=5, cell_limit=8)
    assert any("B − A drawn tile by tile (4×4 tokens)." in f.text() for f in same.findings())


def test_two_models_of_different_depths_are_compared_by_relative_depth(smollm2, minilm, tmp_path):
    """SmolLM2 (30 layers x 9 heads) against MiniLM (6 x 12): each of MiniLM's layers l meets SmolLM2's layer
    round(l * 29 / 5) = 0, 6, 12, 17, 23, 29 (5.8, 11.6, 17.4, 23.2 rounded), and each row of B - A is B's layer mean
    over heads minus A's paired layer mean, named by both layer numbers in the table, the figure and the findings."""
    result = attnscope.compare(smollm2, TEXT_A, model_b=minilm, layer=2, head=3)
    a, b = attnscope.stats(smollm2, TEXT_A), attnscope.stats(minilm, TEXT_A)
    paired_a = [0, 6, 12, 17, 23, 29]
    assert not result.per_head and result.columns == ["mean over heads"]
    assert [layers.tolist() for layers in result.layer_pairs] == [paired_a, list(range(6))]
    rows = [f"A L{la} / B L{lb}" for la, lb in zip(paired_a, range(6))]
    assert result.rows == rows
    for name in FIELDS:
        expected = getattr(b, name).mean(1, keepdims=True) - getattr(a, name)[paired_a].mean(1, keepdims=True)
        assert result.difference[name].shape == (6, 1)
        np.testing.assert_allclose(result.difference[name], expected, rtol=1e-6, atol=1e-7)
    texts = [f.text() for f in result.findings()]
    assert any("two models on the same text" in t for t in texts)
    assert any("A has 30 layers × 9 heads and B 6 layers × 12 heads: head numbers do not correspond between the two "
               "models, so B − A is taken on each layer's mean over heads, layers paired by relative depth: B's "
               "layer l with A's layer round(l × 29 / 5), halves up, first with first and last with last; layer "
               "pairs (A, B): (0, 0), (6, 1), (12, 2), (17, 3), (23, 4), (29, 5)." in t for t in texts)
    change = b.entropy.mean(1) - a.entropy[paired_a].mean(1)
    top = int(np.argmax(np.abs(change)))
    entropy = next(f for f in result.findings() if f.topic == "Entropy (nats): B − A")
    assert entropy.measured.startswith(f"the layer pairs (means over heads) that changed most: {rows[top]} "
                                       f"{a.entropy[paired_a[top]].mean():.3f} → {b.entropy[top].mean():.3f} "
                                       f"({change[top]:+.3f})")
    assert result.maps_b.tokens[0] == "[CLS]" and result.map_difference is None
    assert (result.maps_a.layer, result.maps_b.layer) == (2, 0)  # B's map at A's relative depth: round(2 × 5 / 29)
    deep = attnscope.compare(smollm2, TEXT_A, model_b=minilm, layer=29, head=3)
    assert (deep.maps_a.layer, deep.maps_b.layer) == (29, 5)
    assert any(f.topic == "Maps" and "A's layer 29 and B's layer 5" in f.measured for f in deep.findings())
    figures = result.figures("entropy")
    assert figures["entropy-a"].data[0].z.shape == (30, 9) and figures["entropy-b"].data[0].z.shape == (6, 12)
    difference = figures["entropy-difference"]
    assert list(difference.data[0].x) == ["mean over heads"] and list(difference.data[0].y) == rows
    np.testing.assert_allclose(difference.data[0].z[:, 0], change, rtol=1e-6, atol=1e-7)
    assert difference.layout.title.text == "B − A: entropy (nats), paired layers"
    frame = result.to_frame()
    assert list(frame.columns) == ["statistic", "layer_a", "layer_b", "a", "b", "difference"]
    assert len(frame) == len(FIELDS) * 6
    entropy_rows = frame[frame.statistic == "entropy"]
    assert entropy_rows.layer_a.tolist() == paired_a and entropy_rows.layer_b.tolist() == list(range(6))
    np.testing.assert_allclose(entropy_rows.a, a.entropy[paired_a].mean(1), rtol=1e-6)
    np.testing.assert_allclose(entropy_rows.b, b.entropy.mean(1), rtol=1e-6)
    np.testing.assert_allclose(entropy_rows.difference, change, rtol=1e-6, atol=1e-7)
    again = attnscope.open(result.save(tmp_path / "models.json"))
    assert not again.per_head and [f.text() for f in again.findings()] == texts
    assert again.rows == rows and again.meta["layer_pairing"] == "relative depth"
    # a result saved before this rule (no layer_pairing, layer i against layer i) is rebuilt, as attnscope.open
    # rebuilds it, with B - A taken again from the two sides it carries
    older = dataclasses.replace(result, meta={k: v for k, v in result.meta.items() if k != "layer_pairing"},
                                difference={name: getattr(b, name).mean(1, keepdims=True)
                                            - getattr(a, name)[:6].mean(1, keepdims=True) for name in FIELDS})
    for name in FIELDS:
        np.testing.assert_array_equal(older.difference[name], result.difference[name])

    swapped = attnscope.compare(minilm, TEXT_A, model_b=smollm2, layer=None)  # the deeper model as B
    assert [layers.tolist() for layers in swapped.layer_pairs] == [list(range(6)), paired_a]
    np.testing.assert_allclose(swapped.difference["entropy"][:, 0], -change, rtol=1e-6, atol=1e-7)

    with pytest.raises(ValueError, match=r"Layer 30, head 0 does not exist in model A \(smollm2-135m: layers 0\.\.29"):
        attnscope.compare(smollm2, TEXT_A, model_b=minilm, layer=30)  # A's layer 6 would be B's layer 1: it exists
    with pytest.raises(ValueError, match=r"head 11 does not exist in model A \(smollm2-135m: layers 0\.\.29, heads"):
        attnscope.compare(smollm2, TEXT_A, model_b=minilm, layer=0, head=11)
    no_maps = attnscope.compare(smollm2, TEXT_A, model_b=minilm, layer=None)
    assert no_maps.maps_a is None and not any(name.startswith("map-") for name in no_maps.figures())


def _cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "attnscope", *args], capture_output=True, text=True, input=stdin,
                          env=dict(os.environ), timeout=600)


def test_cli_compare_gives_the_api_numbers(smollm2, minilm, tmp_path):
    out = tmp_path / "compare.json"
    done = _cli("compare", "--text-file", "-", "--text-b", TEXT_B, "--layer", "4", "--head", "2", "--out", str(out),
                "--quiet", "--no-cache", stdin=TEXT_A)
    assert done.returncode == 0, done.stderr
    cli, api = attnscope.open(out), attnscope.compare(smollm2, TEXT_A, text_b=TEXT_B, layer=4, head=2,
                                                      cell_limit=256)
    for name in FIELDS:
        np.testing.assert_array_equal(cli.difference[name], api.difference[name])
    assert [f.text() for f in cli.findings()] == [f.text() for f in api.findings()]

    done = _cli("compare", "--text", TEXT_A, "--model-b", "minilm-l6", "--quiet", "--no-cache")
    assert done.returncode == 0, done.stderr
    assert "head numbers do not correspond" in done.stdout
    done = _cli("compare", "--text-file", "-", "--text-file-b", "-", "--quiet", stdin=TEXT_A)
    assert done.returncode == 1
    assert done.stderr.strip() == ("attnscope compare: Only one of --text-file and --text-file-b can be standard "
                                   "input (-).")
