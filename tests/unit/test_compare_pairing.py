"""core.studies.compare.depth_pairs: two models of different depths are compared layer pair by layer pair, each
layer of the shallower model with the deeper model's layer at the same relative depth."""

import numpy as np
import pytest

from attnscope.studies.compare import comparable, depth_pairs, relative_layer


def test_equal_depths_pair_each_layer_with_itself():
    for n in (1, 2, 6, 30):
        layers_a, layers_b = depth_pairs(n, n)
        assert layers_a.tolist() == layers_b.tolist() == list(range(n))


def test_smollm2_against_minilm_pairs_by_relative_depth_both_ways():
    """30 layers against 6: l -> round(l * 29 / 5) = 0, 5.8, 11.6, 17.4, 23.2, 29."""
    layers_a, layers_b = depth_pairs(30, 6)
    assert layers_a.tolist() == [0, 6, 12, 17, 23, 29] and layers_b.tolist() == [0, 1, 2, 3, 4, 5]
    swapped_a, swapped_b = depth_pairs(6, 30)
    assert swapped_a.tolist() == [0, 1, 2, 3, 4, 5] and swapped_b.tolist() == [0, 6, 12, 17, 23, 29]


def test_halves_round_up_in_exact_integers():
    """3 layers against 6: l * 5 / 2 = 0, 2.5, 5; Python's round would give 2 (half to even), the rule gives 3."""
    assert depth_pairs(3, 6)[1].tolist() == [0, 3, 5]
    assert depth_pairs(3, 4)[1].tolist() == [0, 2, 3]  # 1.5 -> 2
    assert depth_pairs(5, 7)[1].tolist() == [0, 2, 3, 5, 6]  # 1.5 -> 2, 4.5 -> 5


def test_a_one_layer_model_meets_the_deeper_models_last_layer():
    assert [p.tolist() for p in depth_pairs(1, 12)] == [[0], [11]]
    assert [p.tolist() for p in depth_pairs(12, 1)] == [[11], [0]]
    assert [p.tolist() for p in depth_pairs(1, 1)] == [[0], [0]]


@pytest.mark.parametrize("shallow", [2, 3, 5, 6, 12, 16, 24, 29, 30])
@pytest.mark.parametrize("deep", [30, 32, 48, 80])
def test_pairs_run_first_to_last_in_order_at_the_same_relative_depth(shallow, deep):
    few, many = depth_pairs(shallow, deep)
    assert few.tolist() == list(range(shallow))  # every layer of the shallower model once, in order
    assert many[0] == 0 and many[-1] == deep - 1  # first with first, last with last
    assert (np.diff(many) >= 1).all()  # strictly increasing: no deeper layer is used twice
    relative = few / (shallow - 1)
    assert (np.abs(many / (deep - 1) - relative) <= 0.5 / (deep - 1) + 1e-12).all()  # the nearest layer
    assert [p.tolist() for p in depth_pairs(deep, shallow)] == [many.tolist(), few.tolist()]


def test_no_layers_is_refused():
    with pytest.raises(ValueError, match="models have 0 and 6 layers; each needs at least one"):
        depth_pairs(0, 6)


def test_comparable_takes_each_sides_paired_layers_mean_over_heads():
    a = np.arange(30 * 9, dtype=np.float64).reshape(30, 9)
    b = -np.arange(6 * 12, dtype=np.float64).reshape(6, 12)
    b[2, 3] = np.nan  # a missing head is left out of the mean, as in nanmean
    shapes = {"shape_a": a.shape, "shape_b": b.shape}
    np.testing.assert_array_equal(comparable(a, side="a", **shapes)[:, 0], a[[0, 6, 12, 17, 23, 29]].mean(1))
    expected_b = [np.nanmean(row) for row in b]
    np.testing.assert_array_equal(comparable(b, side="b", **shapes)[:, 0], expected_b)
    same = np.ones((30, 9))
    assert comparable(same, side="a", shape_a=(30, 9), shape_b=(30, 9)) is same  # head by head, untouched


@pytest.mark.parametrize("n_a,n_b", [(30, 6), (6, 30), (18, 30), (1, 12), (12, 1), (7, 7)])
def test_a_layer_of_either_model_finds_its_partner_at_the_same_relative_depth(n_a, n_b):
    layers_a, layers_b = depth_pairs(n_a, n_b)
    for a, b in zip(layers_a, layers_b):  # every pair of depth_pairs, read from A's side
        assert relative_layer(int(a), n_a, n_b) == b
    partners = [relative_layer(layer, n_a, n_b) for layer in range(n_a)]  # every layer of A, even unpaired ones
    assert partners == sorted(partners) and 0 <= partners[0] and partners[-1] == n_b - 1
    if n_b == 1:  # B's one layer is every layer's partner
        assert set(partners) == {0}
        return
    for layer, partner in enumerate(partners):  # no other layer of B lies nearer in relative depth
        depth = layer / (n_a - 1) if n_a > 1 else 1.0  # a 1-layer model's layer counts as its last
        assert abs(partner / (n_b - 1) - depth) <= 0.5 / (n_b - 1) + 1e-12
