"""Readable fp64 reference for contribution scores: every part materialised, then its distance to the whole.

part[h, i, j] = weights[h, i, j] * factor[i] * values[h, j]         (H, I, S, d)
raw[h, i, j]  = |whole[i]|_p - |whole[i] - part[h, i, j]|_p
"""

from __future__ import annotations

import torch


def contribution_scores(whole, values, weights, *, factor=None, norm: int = 1,
                        dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(H, I, S) raw scores in `dtype`, from the (H, I, S, d) tensor of parts (small shapes only)."""
    whole, values, weights = whole.to(dtype), values.to(dtype), weights.to(dtype)
    scaled = values[:, None, :, :] * (1.0 if factor is None else factor.to(dtype)[None, :, None, :])
    parts = weights[..., None] * scaled  # (H, I, S, d)
    distance = torch.linalg.vector_norm(whole[None, :, None, :] - parts, ord=norm, dim=-1)
    return torch.linalg.vector_norm(whole, ord=norm, dim=-1)[None, :, None] - distance
