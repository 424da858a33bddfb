"""contribution_scores: how much each head's value at each key adds to a query's residual stream, without the
(heads, queries, keys, d_model) tensor of parts.

Information-flow contributions (Ferrando & Voita 2024, "Information flow routes"; llm-transparency-tool): at one layer
the residual stream of query i after attention, the whole w_i, is the sum of its parts: the residual entering the
layer and one part per head h and visible key j, alpha[h, i, j] * g_i * u[h, j], where u[h, j] = v[h, j] W_O[h] is key
j's value through head h's slice of the output projection and g_i the factor a norm after attention applies to query
i's attention output (1 without one). A part's raw score is how much closer to w_i it is than nothing:

    raw[h, i, j] = |w_i|_p - |w_i - alpha[h, i, j] * g_i * u[h, j]|_p      (p = 1 or 2)

This module computes the raw scores of every part for a chunk of queries; attnscope.analyses.contributions clips
them at the floor, normalises them per query and keeps the edges above a threshold.

naive.py is the fp64 reference (the parts materialised), chunked.py the torch path (no (H, I, S, d) tensor: a matrix
product plus the few parts where the L1 distance is not linear in the weight), fused.py the Triton kernel for the L1
distances (imported only when it runs).
"""

from __future__ import annotations

import torch

from attnscope.kernels.contributions import chunked
from attnscope.kernels.utils import resolve_backend

__all__ = ["NORMS", "contribution_scores"]

NORMS = (1, 2)


def check_parts(whole: torch.Tensor, values: torch.Tensor, weights: torch.Tensor,
                factor: torch.Tensor | None) -> None:
    """ValueError naming the shapes when whole (I, d), values (H, S, d), weights (H, I, S), factor (I, d) disagree."""
    shapes = (f"whole {tuple(whole.shape)}, values {tuple(values.shape)}, weights {tuple(weights.shape)}"
              + ("" if factor is None else f", factor {tuple(factor.shape)}"))
    if whole.ndim != 2 or values.ndim != 3 or weights.ndim != 3:
        raise ValueError(f"whole must be (I, d), values (H, S, d) and weights (H, I, S); got {shapes}.")
    n_heads, n_keys, width = values.shape
    if whole.shape[1] != width or weights.shape != (n_heads, whole.shape[0], n_keys):
        raise ValueError(f"whole (I, d), values (H, S, d) and weights (H, I, S) must agree on I, H, S and d; "
                         f"got {shapes}.")
    if width == 0 or n_heads == 0:
        raise ValueError(f"the parts need at least one head and one channel; got {shapes}.")
    if factor is not None and factor.shape != whole.shape:
        raise ValueError(f"factor must have whole's shape (I, d); got {shapes}.")
    tensors = [whole, values, weights] + ([] if factor is None else [factor])
    if any(t.device != whole.device for t in tensors) or any(t.dtype != whole.dtype for t in tensors):
        raise ValueError(f"whole, values, weights and factor must share one device and dtype; got {shapes}.")
    if not whole.is_floating_point():
        raise ValueError(f"the parts must be floating point; got {whole.dtype}.")


def contribution_scores(whole: torch.Tensor, values: torch.Tensor, weights: torch.Tensor, *,
                        factor: torch.Tensor | None = None, norm: int = 1, backend: str = "auto") -> torch.Tensor:
    """raw[h, i, j] = |w_i|_p - |w_i - weights[h, i, j] * factor_i * values[h, j]|_p for every head, query and key.

    Args:
        whole: (I, d) the residual stream of each query after attention (the whole the parts add up to).
        values: (H, S, d) each key's value through each head's slice of the output projection, v[h, j] W_O[h].
        weights: (H, I, S) the attention weights alpha[h, i, j] (0 where a key is hidden).
        factor: (I, d) what a norm after attention multiplies query i's attention output by; None: 1.
        norm: 1 (L1 distances, as llm-transparency-tool) or 2 (L2: matrix products only).
        backend: "auto" (Triton on CUDA for norm 1, torch elsewhere), "triton" or "torch".

    Returns:
        (H, I, S) in whole's dtype: each part's raw score, in [-|part|_p, |part|_p]; 0 where the weight is 0.
    """
    check_parts(whole, values, weights, factor)
    if norm not in NORMS:
        raise ValueError(f"norm must be 1 or 2; got {norm!r}.")
    if norm == 2 or resolve_backend(backend, whole.device) == "torch":
        return chunked.contribution_scores(whole, values, weights, factor=factor, norm=norm)
    from attnscope.kernels.contributions import fused  # imports triton

    return fused.l1_scores(whole, values, weights, factor=factor)
