"""One statistic over many prompts: per head (or per point of a curve), the mean and spread across prompts.

Each prompt is analysed on its own (its own capture); what is aggregated is one array per prompt of the same shape:
(layers, heads) for head statistics, (orders,) for a Taylor error curve, (lengths,) for a collapse curve.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HEAD_STATISTICS = ("entropy", "max_weight", "sink_mass")


@dataclass
class Spread:
    mean: np.ndarray
    std: np.ndarray  # population standard deviation across prompts (0 for a single prompt)
    low: np.ndarray  # minimum across prompts
    high: np.ndarray  # maximum across prompts
    count: int  # prompts aggregated

    def table(self) -> np.ndarray:
        return np.stack([self.mean, self.std, self.low, self.high], -1)


def spread(per_prompt: Sequence[np.ndarray]) -> Spread:
    """Mean, standard deviation, minimum and maximum over prompts of equally shaped arrays."""
    if not per_prompt:
        raise ValueError("No prompts to aggregate.")
    shapes = {np.shape(a) for a in per_prompt}
    if len(shapes) != 1:
        raise ValueError(f"Every prompt must give the same shape to be aggregated; got {sorted(shapes)}.")
    stack = np.stack([np.asarray(a, dtype=np.float64) for a in per_prompt])
    return Spread(mean=stack.mean(0), std=stack.std(0), low=stack.min(0), high=stack.max(0), count=len(stack))


def common_prefix(curves: Sequence[tuple[Sequence[int], np.ndarray]]) -> tuple[list[int], list[np.ndarray]]:
    """Curves measured on different x grids (e.g. context lengths up to each prompt's length): keep the x values
    every prompt has, in order, and each curve's values there."""
    shared = [x for x in curves[0][0] if all(x in xs for xs, _ in curves)]
    return shared, [np.asarray([values[list(xs).index(x)] for x in shared]) for xs, values in curves]
