"""Attention maps and per-head statistics as studies: the units the Attention maps page caches, and the results
attnscope.maps / attnscope.stats return.

Units (each cached on its own by the dashboard):
- model_stats: every layer's per-head statistics in one streamed forward pass (attnscope.engine: each layer's
  statistics come from the pass that computes its output, and no layer's q/k/v is kept), which is what
  attnscope.stats and the page's Head statistics view run;
- layer_stats: one layer's per-head statistics from the text's capture (attnscope.analyses.maps.head_stats), for the
  views that draw that layer's maps anyway;
- layer_maps: some heads of one layer, pooled into block x block tiles;
- query_row: one query token's weights in one head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from attnscope.analyses import maps as analysis
from attnscope.figures import maps as figures
from attnscope.studies.base import Finding, ProgressFn, Result, Source, meta_for, progress_steps
from attnscope.tokens import Cut

STATISTICS = {  # HeadStats field -> (column name, what it means)
    "entropy": ("entropy (nats)", "mean over query tokens of the attention entropy; at most log(visible keys)"),
    "normalized_entropy": ("entropy / log(visible)", "entropy divided by its maximum, 1 = uniform attention"),
    "max_weight": ("max weight", "mean over query tokens of the largest weight"),
    "sink_mass": ("sink mass", "mean weight on the first token"),
    "mean_distance": ("mean distance", "expected |query position - key position|, in tokens"),
}
LEARNED_SINK = ("learned sink mass", "mean weight of the learned sink cell (no token, no value)")
SINK_HEAD = 0.5  # a head whose mean weight on token 0 is above this is counted as a sink head
LOCAL_HEAD = 2.0  # ... whose mean distance is below this many tokens, as a local (previous-token-like) head


@dataclass
class LayerStats:
    """One layer's per-head statistics as numpy arrays (H,), averaged over query tokens."""

    entropy: np.ndarray
    normalized_entropy: np.ndarray
    max_weight: np.ndarray
    sink_mass: np.ndarray
    mean_distance: np.ndarray


# ---- units --------------------------------------------------------------------------------------------------------


def layer_stats(source: Source, text, cut: Cut, layer: int) -> LayerStats:
    stats = analysis.head_stats(source.capture(text, cut).layer(layer))
    return LayerStats(**{name: getattr(stats, name).numpy() for name in STATISTICS})


def model_stats(source: Source, text, cut: Cut) -> dict[str, object]:
    """Statistic -> (layers, heads) for every head, from one streamed forward pass; with learned sinks also their
    mass, and each layer's sliding window (0 for a global layer)."""
    from attnscope import engine

    tokens = source.tokens(text, cut)
    with source.turn():
        streamed = engine.run(source.model.module, tokens.as_tensor())
    values: dict[str, object] = {name: streamed.stacked(name).numpy() for name in STATISTICS}
    if streamed.has_learned_sinks:
        values["learned_sink_mass"] = streamed.stacked("learned_sink_mass").numpy()
    values["windows"] = tuple(int(streamed.windows.get(index) or 0) for index in range(streamed.n_layers))
    return values


def layer_maps(source: Source, text, cut: Cut, layer: int, heads: tuple[int, ...], block: int, reduce: str,
               hide_sink: bool) -> np.ndarray:
    """(len(heads), ceil(T/block), ceil(S/block)) pooled weights; NaN where a tile has no visible cell."""
    captured = source.capture(text, cut).layer(layer)
    pooled = analysis.pooled_map(captured, heads=list(heads), block=block, reduce=reduce, hide_sink=hide_sink)
    return pooled.values.numpy()


def query_row(source: Source, text, cut: Cut, layer: int, head: int, query: int) -> np.ndarray:
    """(S,) one query token's weights in one head; invisible keys are 0."""
    captured = source.capture(text, cut).layer(layer)
    return analysis.query_weights(captured, head=head, query=query).cpu().numpy()


# ---- results ------------------------------------------------------------------------------------------------------


def _head_name(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def _windows(local: list[tuple[int, int]]) -> str:
    sizes = sorted({window for _, window in local})
    return " or ".join(f"{size:,}" for size in sizes)


@dataclass
class StatsResult(Result):
    """Every head's statistics over one text: arrays (layers, heads)."""

    kind = "stats"
    title = "attnscope: head statistics"

    meta: dict
    tokens: tuple[str, ...]
    entropy: np.ndarray
    normalized_entropy: np.ndarray
    max_weight: np.ndarray
    sink_mass: np.ndarray
    mean_distance: np.ndarray
    learned_sink_mass: np.ndarray | None = None  # (layers, heads), models with learned sinks (gpt-oss) only
    windows: tuple[int, ...] = ()  # per layer: its sliding window in keys, 0 for a global layer

    @property
    def shape(self) -> tuple[int, int]:
        return self.entropy.shape

    def _columns(self) -> dict[str, tuple[str, str]]:
        extra = {"learned_sink_mass": LEARNED_SINK} if self.learned_sink_mass is not None else {}
        return {**STATISTICS, **extra}

    def findings(self) -> list[Finding]:
        n_heads = self.entropy.size
        sinks = np.argwhere(self.sink_mass > SINK_HEAD)
        local = np.argwhere(self.mean_distance < LOCAL_HEAD)
        focused = np.unravel_index(np.argmax(self.max_weight), self.shape)
        diffuse = np.unravel_index(np.argmax(np.nan_to_num(self.normalized_entropy, nan=-1)), self.shape)
        names = lambda cells: ", ".join(_head_name(*map(int, c)) for c in cells[:12]) + (  # noqa: E731
            " …" if len(cells) > 12 else "")
        local_layers = [(layer, window) for layer, window in enumerate(self.windows) if window]
        extra = []
        if local_layers:
            shortest = min(window for _, window in local_layers)
            listed = ", ".join(str(layer) for layer, _ in local_layers[:24]) + (" …" if len(local_layers) > 24 else "")
            extra.append(Finding(
                "Local (sliding-window) layers",
                f"{len(local_layers)} of {len(self.windows)} layers see only the last {_windows(local_layers)} keys: "
                f"however long the text, their weights need not fall below about 1/{shortest} (THEORY.md, sliding "
                f"windows); layers {listed}."))
        if self.learned_sink_mass is not None:
            learned, first = float(np.nanmean(self.learned_sink_mass)), float(np.mean(self.sink_mass))
            top = np.unravel_index(np.nanargmax(self.learned_sink_mass), self.shape)
            extra.append(Finding(
                "Learned sinks",
                f"The model's learned sink cells take {learned:.1%} of the attention on average (most in "
                f"{_head_name(*map(int, top))}: {self.learned_sink_mass[top]:.1%}), beside {first:.1%} on the first "
                "token: a built-in sink the weights on real tokens do not include."))
        return [
            Finding("Attention sinks",
                    f"{len(sinks)} of {n_heads} heads put more than {SINK_HEAD:.0%} of their weight on the first "
                    f"token, averaged over the {len(self.tokens)} query tokens" + (f": {names(sinks)}." if len(sinks)
                                                                                     else ".")),
            Finding("Local heads",
                    f"{len(local)} of {n_heads} heads look on average less than {LOCAL_HEAD:g} tokens back"
                    + (f": {names(local)}." if len(local) else ".")),
            Finding("Most focused and most diffuse head",
                    f"{_head_name(*map(int, focused))} has the largest mean max weight "
                    f"({self.max_weight[focused]:.3f}); {_head_name(*map(int, diffuse))} the highest normalised "
                    f"entropy ({self.normalized_entropy[diffuse]:.3f} of the uniform maximum)."),
            *extra,
        ]

    def figures(self) -> dict[str, object]:
        return {f"{name}-per-head": figures.stat_heatmap(getattr(self, name), title=f"{label} per head", label=label)
                for name, (label, _) in self._columns().items()}

    def to_frame(self) -> pd.DataFrame:
        n_layers, n_heads = self.shape
        windows = self.windows or (0,) * n_layers
        return pd.DataFrame([{"layer": layer, "head": head, "window": windows[layer],
                              **{name: float(getattr(self, name)[layer, head]) for name in self._columns()}}
                             for layer in range(n_layers) for head in range(n_heads)])


@dataclass
class MapsResult(Result):
    """Attention maps of some heads of one layer, pooled into block x block tiles (block 1: exact)."""

    kind = "maps"
    title = "attnscope: attention maps"

    meta: dict
    tokens: tuple[str, ...]
    layer: int
    heads: tuple[int, ...]
    block: int
    reduce: str
    hide_sink: bool
    values: np.ndarray  # (len(heads), ceil(T/block), ceil(S/block))
    entropy: np.ndarray  # (len(heads),) mean row entropy
    max_weight: np.ndarray  # (len(heads),)

    def findings(self) -> list[Finding]:
        pooled = (f"pooled into {self.block}×{self.block}-token tiles by their {self.reduce}" if self.block > 1
                  else "every token pair")
        order = np.argsort(self.entropy)
        return [Finding("Maps", f"Layer {self.layer}, {len(self.heads)} head(s) over {len(self.tokens)} tokens, "
                                f"{pooled}" + (", first token hidden (not renormalised)." if self.hide_sink else ".")),
                Finding("Most focused head in this layer",
                        f"head {self.heads[order[0]]}: mean entropy {self.entropy[order[0]]:.2f} nats, mean max "
                        f"weight {self.max_weight[order[0]]:.3f}; most spread: head {self.heads[order[-1]]} "
                        f"({self.entropy[order[-1]]:.2f} nats).")]

    def thumbnails(self) -> list[figures.Thumbnail]:
        return [figures.Thumbnail(layer=self.layer, head=h, values=self.values[i], entropy=float(self.entropy[i]),
                                  max_weight=float(self.max_weight[i])) for i, h in enumerate(self.heads)]

    def figures(self) -> dict[str, object]:
        sink = " (sink hidden)" if self.hide_sink else ""
        out = {f"attention-map-layer{self.layer}-head{h}": figures.head_heatmap(
            self.values[i], tokens=self.tokens, block=self.block, reduce=self.reduce,
            title=f"Layer {self.layer}, head {h}{sink}") for i, h in enumerate(self.heads)}
        if len(self.heads) > 1:
            out = {"head-grid": figures.head_grid(self.thumbnails(), n_cols=min(len(self.heads), 6),
                                                  sort_by_entropy=False, title=f"Layer {self.layer}"), **out}
        return out

    def to_frame(self) -> pd.DataFrame:
        _, rows, cols = self.values.shape
        head, row, col = np.meshgrid(np.arange(len(self.heads)), np.arange(rows), np.arange(cols), indexing="ij")
        return pd.DataFrame({"layer": self.layer, "head": np.asarray(self.heads)[head.ravel()],
                             "query_start": row.ravel() * self.block, "key_start": col.ravel() * self.block,
                             "block": self.block, "weight": self.values.ravel()})


# ---- entry points -------------------------------------------------------------------------------------------------


def stats(source: Source, text, *, cut: Cut, progress: ProgressFn | None = None) -> StatsResult:
    tokens = source.tokens(text, cut)
    step = progress_steps(progress, 1)
    step(0, f"Per-head statistics of every layer: one pass over {len(tokens)} tokens")
    values = source.unit(model_stats, text, cut)
    step(1, "Per-head statistics of every layer")
    return StatsResult(meta=meta_for(source.model, tokens, max_tokens=cut.max_tokens, keep=cut.keep),
                       tokens=tokens.strings, **values)


def maps(source: Source, text, *, cut: Cut, layer: int = 0, heads: Sequence[int] | None = None,
         cell_limit: int | None = None, reduce: str = "mean", hide_sink: bool = False,
         progress: ProgressFn | None = None) -> MapsResult:
    tokens = source.tokens(text, cut)
    n_layers, n_heads = source.model.info["n_layers"], source.model.info["n_heads"]
    if not 0 <= layer < n_layers:
        raise ValueError(f"Layer {layer} does not exist; this model has layers 0..{n_layers - 1}.")
    heads = tuple(range(n_heads)) if heads is None else tuple(int(h) for h in heads)
    block = 1 if cell_limit is None else analysis.block_for(len(tokens), cell_limit)
    step = progress_steps(progress, 2)
    values = source.unit(layer_maps, text, cut, layer, heads, block, reduce, hide_sink)
    step(1, f"Maps of layer {layer}")
    stats = source.unit(layer_stats, text, cut, layer)
    step(2, f"Statistics of layer {layer}")
    return MapsResult(meta=meta_for(source.model, tokens, max_tokens=cut.max_tokens, keep=cut.keep, layer=layer,
                                    reduce=reduce, hide_sink=hide_sink, cell_limit=cell_limit),
                      tokens=tokens.strings, layer=layer, heads=heads, block=block, reduce=reduce,
                      hide_sink=hide_sink, values=values, entropy=stats.entropy[list(heads)],
                      max_weight=stats.max_weight[list(heads)])
