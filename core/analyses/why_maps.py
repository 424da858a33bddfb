"""Two classic readings of attention beside information-flow contributions, computed from a capture without ever
holding the (T, S) maps of every head: value-weighted attention and attention rollout.

Value-weighted attention (Kobayashi et al. 2020, "Attention is not only a weight: analyzing transformers with vector
norms"). Head h hands query i the vector sum_j alpha[h, i, j] * u[h, j], u[h, j] = v[kv(h), j] W_O[h] (v before the
grouped-query repeat, W_O[h] the head's slice of the output projection: attnscope.analyses.contributions.head_values).
The size of key j's share of it is

    |alpha[h, i, j] * u[h, j]|_2 = alpha[h, i, j] * |u[h, j]|_2          (alpha >= 0)

so a key with a short value vector (often the first token, which takes most of the weight) matters less than its
weight says. A norm after attention (Gemma 2/3) rescales every part of a query by the same per-channel factor; it is
not included, as in the paper. value_weighted_map pools the map like attention maps (attnscope.analyses.maps
pooled_map): block x block tiles, the mean (or max) of the visible cells of a tile, NaN where none is visible. One
head, ROWS query rows (rounded to whole tiles) at a time: memory O(ROWS x S) besides the head's norms (S,).

Attention rollout (Abnar & Zuidema 2020, "Quantifying attention flow in transformers"). Each layer's attention is
mixed with the residual connection and its rows renormalised,

    A_l = (0.5 * mean_h alpha_l + 0.5 * I) / row sums

(without a learned sink and with a visible key the row sums are 1 already; a sink's share, or a row that sees no key,
leaves them short). The relevance of every position to query t is the row e_t^T A_{L-1} ... A_{0}. rollout_row
propagates that row vector down the layers: at layer l only the rows where it is non-zero are rebuilt from the captured
q and k, CHUNK_CELLS (heads x rows x keys) at a time, and no product of (T, T) matrices is formed. Rollout mixes the
heads uniformly and treats the weights as the flow: value norms and the output projection play no part.

All functions read the first sequence of the capture; tensors follow [B, H, T, D].
"""

from __future__ import annotations

import torch

from attnscope import cancel, kernels
from attnscope.analyses.maps import REDUCTIONS
from attnscope.anatomy import AttentionLayer
from attnscope.capture import LayerCapture

ROWS = 256  # query rows of one head whose probabilities over all S keys exist at once (value_weighted_map)
CHUNK_CELLS = 1 << 23  # heads x rows x keys per chunk of rollout_row (about 32 MB in fp32)
NORM_ROWS = 4096  # keys whose (rows, d_model) value-times-projection exists at once (value_norms)


def _check_head(layer: LayerCapture, head: int) -> None:
    if not 0 <= head < layer.n_heads:
        raise ValueError(f"Head {head} does not exist; this layer has heads 0..{layer.n_heads - 1}.")


@torch.no_grad()
def value_norms(layer: LayerCapture, anatomy: AttentionLayer, *, head: int,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """|u[head, j]|_2 = |v[kv(head), j] W_O[head]|_2 for every key j: (S,) in `dtype`, for the first sequence.

    Only this head's slice of W_O is used, NORM_ROWS keys at a time (head_values builds (H, S, d_model) at once).
    """
    _check_head(layer, head)
    width = layer.v.shape[-1]
    weight = anatomy.matrix()[:, head * width:(head + 1) * width].to(device=layer.v.device, dtype=dtype)  # (d, Dv)
    values = layer.v[0, layer.kv_head(head)].to(dtype)  # (S, Dv)
    return torch.cat([torch.linalg.vector_norm(values[start:start + NORM_ROWS] @ weight.t(), dim=-1)
                      for start in range(0, values.shape[0], NORM_ROWS)])


@torch.no_grad()
def pooled_key_scaled(layer: LayerCapture, *, head: int, key_scale: torch.Tensor, block: int,
                      reduce: str = "mean") -> torch.Tensor:
    """One head's map alpha[i, j] * key_scale[j], pooled into block x block tiles over the visible cells.

    Args:
        layer: a captured layer; its rule (causal, sliding window, learned sinks, softcap, explicit mask) applies.
        head: query-head index.
        key_scale: (S,) a factor per key (ones: the attention map itself).
        block: tile side in cells (1: every cell).
        reduce: "mean" over the visible cells of a tile or "max".

    Returns:
        (ceil(T/block), ceil(S/block)) fp32 on the CPU; NaN where a tile has no visible cell.
    """
    _check_head(layer, head)
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}.")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}.")
    n_queries, n_keys = layer.q.shape[2], layer.k.shape[2]
    if key_scale.shape != (n_keys,):
        raise ValueError(f"key_scale must have shape ({n_keys},) for this layer's keys; got {tuple(key_scale.shape)}.")
    scale = key_scale.to(device=layer.q.device, dtype=torch.float32)
    step = block * max(1, ROWS // block)  # whole tiles per chunk
    out = []
    for start in range(0, n_queries, step):
        rows = slice(start, min(start + step, n_queries))
        probs = layer.probs([head], rows)[0, 0]  # (t, S)
        visible = layer.visible(rows)[0]  # (1 or Hq, t, S)
        visible = visible[head if visible.shape[0] > 1 else 0]
        out.append(kernels.pool_tiles(probs * scale[None, :], visible, block, reduce).cpu())
    return torch.cat(out)


def value_weighted_map(layer: LayerCapture, anatomy: AttentionLayer, *, head: int, block: int,
                       reduce: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Kobayashi et al.'s value-weighted attention alpha[head, i, j] * |u[head, j]|_2 of one head, pooled.

    Args:
        layer: a captured layer.
        anatomy: its output projection (attnscope.anatomy.attention_layers(model)[l]).
        head: query-head index.
        block: tile side in cells (1: every token pair), as attention maps are pooled.
        reduce: "mean" over the visible cells of a tile or "max".

    Returns:
        (map, norms): map (ceil(T/block), ceil(S/block)) fp32, NaN where a tile has no visible cell; norms (S,) fp32
        the value norms |u[head, j]|_2.
    """
    norms = value_norms(layer, anatomy, head=head)
    return pooled_key_scaled(layer, head=head, key_scale=norms, block=block, reduce=reduce), norms.float().cpu()


@torch.no_grad()
def rollout_step(layer: LayerCapture, relevance: torch.Tensor) -> torch.Tensor:
    """relevance^T A_l for one layer: (T,) -> (S,) in relevance's dtype, A_l = (0.5 * mean_h alpha + 0.5 * I) with
    its rows renormalised to sum 1. Only the rows where relevance is non-zero are built, in chunks."""
    n_queries, n_keys = layer.q.shape[2], layer.k.shape[2]
    if n_queries != n_keys:
        raise ValueError(f"Rollout needs as many queries as keys (a whole text's pass); this layer has {n_queries} "
                         f"queries and {n_keys} keys.")
    out = torch.zeros(n_keys, dtype=relevance.dtype)
    needed = torch.nonzero(relevance).flatten()
    if not len(needed):
        return out
    step = max(1, CHUNK_CELLS // max(1, layer.n_heads * n_keys))
    for start in range(int(needed[0]), int(needed[-1]) + 1, step):
        rows = slice(start, min(start + step, int(needed[-1]) + 1))
        weights = relevance[rows]
        if not bool(weights.any()):
            continue
        mixed = 0.5 * layer.probs(rows=rows)[0].mean(dim=0).cpu().to(relevance.dtype)  # (t, S)
        mixed[torch.arange(mixed.shape[0]), torch.arange(rows.start, rows.stop)] += 0.5
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        out += weights @ mixed
    return out


def rollout_row(layers: list[LayerCapture], *, token: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Abnar & Zuidema's attention rollout for one query token, layer boundary by layer boundary.

    Args:
        layers: the captured layers 0..L-1 of one pass over the text.
        token: the query position t.
        dtype: the precision of the propagated row (the weights are rebuilt in fp32).

    Returns:
        (L + 1, T): row l is the relevance of each position's stream entering layer l to token t at the top; row L is
        e_t and row 0, e_t^T A_{L-1} ... A_0, the relevance of the input tokens. Every row sums to 1.
    """
    n_tokens = layers[0].q.shape[2]
    if not 0 <= token < n_tokens:
        raise ValueError(f"token={token} is not a position of this text: it has {n_tokens} tokens.")
    relevance = torch.zeros(n_tokens, dtype=dtype)
    relevance[token] = 1.0
    rows = [relevance]
    for layer in reversed(layers):
        cancel.checkpoint()
        relevance = rollout_step(layer, relevance)
        rows.append(relevance)
    return torch.stack(rows[::-1])
