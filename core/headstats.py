"""Per-head means of the attention row statistics: the summary the streaming engine keeps for every layer.

kernels.attention_stats gives each query row's entropy, largest weight, weight on key 0 and mean distance; summarise
averages them over the rows of the first sequence, one number per head, and visible_keys counts the keys each row sees
(for the entropy divided by its maximum, log(visible keys)). It stands below both its users: attnscope.engine streams
it from the forward pass, attnscope.analyses.maps.head_stats applies it to a captured layer (and re-exports these
names). A query row that sees no key (only under an explicit mask) counts as a row with all-zero statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from attnscope import kernels
from attnscope.capture import LayerCapture


@dataclass
class HeadStats:
    entropy: torch.Tensor  # (h,) mean over query rows of the row entropy, nats
    normalized_entropy: torch.Tensor  # (h,) mean over rows with > 1 visible key of entropy / log(visible keys)
    max_weight: torch.Tensor  # (h,) mean over query rows of the largest weight
    sink_mass: torch.Tensor  # (h,) mean over query rows of the weight on key 0
    mean_distance: torch.Tensor  # (h,) mean over query rows of the expected |query position - key position|
    learned_sink_mass: torch.Tensor | None = None  # (h,) mean weight of the learned sink cell (models with sinks)


def visible_keys(layer: LayerCapture, heads: Sequence[int] | None = None) -> torch.Tensor:
    """(h or 1, T) fp64: how many keys each query row of the first sequence sees, for query heads `heads` (default
    all; one row stands for every head when the layer's mask is the same for all heads)."""
    n_queries, n_keys = layer.q.shape[2], layer.k.shape[2]
    if layer.mask is None:
        if layer.causal:
            counts = torch.arange(n_queries, dtype=torch.float64) + (n_keys - n_queries) + 1
            return (counts if layer.window is None else counts.clamp(max=layer.window))[None]
        return torch.full((1, n_queries), float(n_keys), dtype=torch.float64)
    counts = layer.mask[0].sum(-1, dtype=torch.float64).cpu()  # (Hq or 1, T)
    return counts if counts.shape[0] == 1 or heads is None else counts[list(heads)]


def summarise(stats: kernels.AttentionStats, n_visible: torch.Tensor) -> HeadStats:
    """Head means over the query rows of the first sequence of `stats` (fields (B, h, T)).

    Args:
        stats: kernels.attention_stats of a layer (or of some of its heads).
        n_visible: (h or 1, T) keys each row sees (visible_keys); the normalized entropy, entropy / log(visible
            keys), is averaged over the rows that see more than one key. With learned sinks the sink cell counts as
            one more cell: entropy / log(visible keys + 1).

    Returns:
        HeadStats with (h,) fields.
    """
    entropy = stats.entropy[0].double().cpu()  # (h, T)
    if stats.learned_sink_mass is not None:
        n_visible = n_visible + 1
    spread = (n_visible > 1).expand_as(entropy)
    normalized = torch.where(spread, entropy / torch.log(n_visible.clamp(min=2)), 0.0).sum(-1)
    mean = lambda x: x[0].double().cpu().mean(-1).float()  # noqa: E731
    return HeadStats(
        entropy=entropy.mean(-1).float(),
        normalized_entropy=(normalized / spread.sum(-1).clamp(min=1)).float(),
        max_weight=mean(stats.max_weight),
        sink_mass=mean(stats.sink_mass),
        mean_distance=mean(stats.mean_distance),
        learned_sink_mass=None if stats.learned_sink_mass is None else mean(stats.learned_sink_mass),
    )
