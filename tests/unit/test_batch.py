"""core.analyses.batch: aggregation across prompts, by hand."""

import numpy as np
import pytest

from attnscope.analyses import batch


def test_spread_by_hand():
    result = batch.spread([np.array([[1.0, 2.0]]), np.array([[3.0, 6.0]])])
    np.testing.assert_allclose(result.mean, [[2.0, 4.0]])
    np.testing.assert_allclose(result.std, [[1.0, 2.0]])
    np.testing.assert_allclose(result.low, [[1.0, 2.0]])
    np.testing.assert_allclose(result.high, [[3.0, 6.0]])
    assert result.count == 2 and result.table().shape == (1, 2, 4)
    assert batch.spread([np.ones(3)]).std.tolist() == [0.0, 0.0, 0.0]


def test_spread_refuses_mismatched_shapes_and_nothing():
    with pytest.raises(ValueError, match="same shape"):
        batch.spread([np.ones((30, 9)), np.ones((6, 12))])
    with pytest.raises(ValueError, match="No prompts"):
        batch.spread([])


def test_common_prefix_keeps_shared_lengths():
    lengths, values = batch.common_prefix([([32, 64, 100], np.array([1.0, 2.0, 3.0])),
                                           ([32, 64], np.array([4.0, 5.0]))])
    assert lengths == [32, 64] and [v.tolist() for v in values] == [[1.0, 2.0], [4.0, 5.0]]
