"""contribution_scores: the torch path (L1 and L2) and the Triton kernel (L1, under TRITON_INTERPRET=1 here) against
the fp64 reference in kernels/contributions/naive.py, under the tolerance rule of tests/kernels/helpers.py.

The inputs are made to reach every branch: lengths and widths that are not multiples of the launch table's tiles or
of BLOCK_D, exact zeros in the whole (sign +1 there, and a whole row of zeros), parts that overshoot the whole
(|w_d - x_d| on both sides of w_d), weights of 0 (causal, so whole tiles of them when the shape is large enough, and
scattered), factors of either sign and exact zeros."""

import pytest
import torch

from attnscope.kernels.contributions import contribution_scores, naive
from tests.kernels.helpers import DEVICE, DTYPES, assert_within_rule

# (H, I, S, d): a single part; small and ragged; I, S and d past one tile and one BLOCK_D step, ragged in each; and
# I = S past two tiles, so that tiles above the diagonal hold no weight; no key at all.
SHAPES = [(1, 1, 1, 1), (2, 5, 7, 3), (2, 37, 45, 21), (2, 70, 70, 9), (1, 2, 0, 5)]
PRECISIONS = {name: DTYPES[name] for name in ("fp32", "bf16")}


def shape_id(shape, dtype_name: str) -> str:
    n_heads, n_queries, n_keys, width = shape
    return f"H{n_heads}-I{n_queries}-S{n_keys}-d{width}-{dtype_name}"


CASES = [(shape, name) for shape in SHAPES for name in PRECISIONS]
CASE_IDS = [shape_id(shape, name) for shape, name in CASES]


def make_parts(shape, dtype: torch.dtype, *, factor: bool, seed: int = 0):
    """(whole (I, d), values (H, S, d), weights (H, I, S), factor (I, d) or None) in `dtype` on the test device."""
    n_heads, n_queries, n_keys, width = shape
    with torch.device("cpu"):
        generator = torch.Generator().manual_seed(seed)
        whole = torch.randn(n_queries, width, generator=generator)
        whole[torch.rand(n_queries, width, generator=generator) < 0.2] = 0
        whole[-1] = 0  # a query whose whole is 0: every part scores -|part|_1
        values = 2 * torch.randn(n_heads, n_keys, width, generator=generator)  # parts larger than the whole, too
        weights = torch.rand(n_heads, n_queries, n_keys, generator=generator)
        weights[torch.rand(weights.shape, generator=generator) < 0.3] = 0
        hidden = torch.ones(n_queries, n_keys, dtype=torch.bool).triu(n_keys - n_queries + 1)  # causal, bottom-right
        weights.masked_fill_(hidden, 0.0)
        gain = None
        if factor:
            gain = torch.randn(n_queries, width, generator=generator)
            gain[torch.rand(n_queries, width, generator=generator) < 0.2] = 0
    return tuple(None if t is None else t.to(DEVICE, dtype) for t in (whole, values, weights, gain))


def check_scores(result, whole, values, weights, factor, *, norm: int, what: str) -> None:
    """result against the fp64 reference within twice the error of the reference computed in the inputs' dtype, and
    exactly 0 where the weight is 0."""
    assert result.shape == weights.shape and result.dtype == whole.dtype, what
    reference = naive.contribution_scores(whole, values, weights, factor=factor, norm=norm)
    plain = naive.contribution_scores(whole, values, weights, factor=factor, norm=norm, dtype=whole.dtype)
    assert_within_rule(result, reference, plain, what=what)
    assert (result[weights == 0] == 0).all(), f"{what}: a part with weight 0 scores other than 0"


@pytest.mark.parametrize("factor", [False, True], ids=["no_factor", "factor"])
@pytest.mark.parametrize("norm", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("shape,dtype_name", CASES, ids=CASE_IDS)
def test_the_torch_path_matches_the_reference(shape, dtype_name, norm, factor):
    parts = make_parts(shape, PRECISIONS[dtype_name], factor=factor)
    whole, values, weights, gain = parts
    result = contribution_scores(whole, values, weights, factor=gain, norm=norm, backend="torch")
    check_scores(result, *parts, norm=norm, what=f"torch L{norm}")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_negative_weights_score_as_the_reference_says(backend):
    """contribution_scores is defined for any weights; attention's are never negative, but both paths must still agree
    with the reference (the torch path's test of which parts bend must use |weight|)."""
    whole, values, weights, gain = make_parts((3, 5, 7, 20), torch.float32, factor=True, seed=4)
    result = contribution_scores(whole, values, -weights, factor=gain, norm=1, backend=backend)
    check_scores(result, whole, values, -weights, gain, norm=1, what=f"{backend} L1, negative weights")


@pytest.mark.parametrize("factor", [False, True], ids=["no_factor", "factor"])
@pytest.mark.parametrize("shape,dtype_name", CASES, ids=CASE_IDS)
def test_the_triton_kernel_matches_the_reference(shape, dtype_name, factor):
    parts = make_parts(shape, PRECISIONS[dtype_name], factor=factor)
    whole, values, weights, gain = parts
    result = contribution_scores(whole, values, weights, factor=gain, norm=1, backend="triton")
    check_scores(result, *parts, norm=1, what="triton L1")


def test_the_triton_kernel_reads_strided_inputs_as_their_contiguous_copies():
    whole, values, weights, gain = make_parts((2, 37, 45, 21), torch.float32, factor=True)
    expected = contribution_scores(whole, values, weights, factor=gain, backend="triton")
    # values as a (S, H, d) tensor seen as (H, S, d); whole and factor as every other column of a wider tensor;
    # weights as a transposed (H, S, I) tensor
    strided_values = values.transpose(0, 1).contiguous().transpose(0, 1)
    strided_whole = torch.stack([whole, torch.ones_like(whole)], -1).flatten(-2)[:, ::2]
    strided_gain = torch.stack([gain, torch.ones_like(gain)], -1).flatten(-2)[:, ::2]
    strided_weights = weights.transpose(1, 2).contiguous().transpose(1, 2)
    assert not any(t.is_contiguous() for t in (strided_values, strided_whole, strided_gain, strided_weights))
    result = contribution_scores(strided_whole, strided_values, strided_weights, factor=strided_gain,
                                 backend="triton")
    assert torch.equal(result, expected)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("whole_shape,values_shape,weights_shape,factor_shape,message", [
    ((4,), (2, 3, 4), (2, 4, 3), None, "must be"),
    ((5, 4), (2, 3, 6), (2, 5, 3), None, "must agree"),
    ((5, 4), (2, 3, 4), (2, 6, 3), None, "must agree"),
    ((5, 4), (2, 3, 4), (3, 5, 3), None, "must agree"),
    ((5, 4), (2, 3, 4), (2, 5, 3), (5, 3), "factor must"),
], ids=["whole-1d", "width", "queries", "heads", "factor"])
def test_parts_that_do_not_fit_are_rejected_naming_their_shapes(whole_shape, values_shape, weights_shape,
                                                                 factor_shape, message, backend):
    factor = None if factor_shape is None else torch.ones(factor_shape)
    with pytest.raises(ValueError, match=message) as raised:
        contribution_scores(torch.ones(whole_shape), torch.ones(values_shape), torch.ones(weights_shape),
                            factor=factor, backend=backend)
    assert f"values {values_shape}" in str(raised.value)


def test_mixed_dtypes_integers_and_unknown_norms_are_rejected():
    whole, values, weights, _ = make_parts((2, 5, 7, 3), torch.float32, factor=False)
    with pytest.raises(ValueError, match="one device and dtype"):
        contribution_scores(whole, values.double(), weights)
    with pytest.raises(ValueError, match="floating point"):
        contribution_scores(whole.int(), values.int(), weights.int())
    with pytest.raises(ValueError, match="norm must be 1 or 2"):
        contribution_scores(whole, values, weights, norm=3)


def test_the_triton_kernel_refuses_float64_and_names_the_torch_path():
    whole, values, weights, _ = make_parts((2, 5, 7, 3), torch.float64, factor=False)
    with pytest.raises(ValueError, match="backend='torch'"):
        contribution_scores(whole, values, weights, backend="triton")
