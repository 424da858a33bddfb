"""Attention maps and per-head statistics as studies: the units the Attention maps page caches, and the results
attnscope.maps / attnscope.stats return.

Units (each cached on its own by the dashboard):
- model_stats: every layer's per-head statistics in one streamed forward pass (attnscope.engine: each layer's
  statistics come from the pass that computes its output, and no layer's q/k/v is kept), which is what
  attnscope.stats and the page's Head statistics view run; the same pass gives the head-type scores (DETECTORS:
  previous-token, duplicate-token and induction, attnscope.analyses.detectors);
- model_induction_copy: the induction score on a repeated copy of the text, a second pass attnscope.stats runs only when
  the text has fewer than detectors.MIN_INDUCTION_ROWS tokens with an earlier copy to follow;
- layer_stats: one layer's per-head statistics from the text's capture (attnscope.analyses.maps.head_stats), for the
  views that draw that layer's maps anyway;
- layer_maps: some heads of one layer, pooled into block x block tiles;
- layer_window: some heads of one layer over a window of queries x keys, every token pair (a zoom);
- query_row: one query token's weights in one head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from attnscope import settings as S
from attnscope.analyses import detectors
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
DETECTORS = {  # head-type score field -> (column name, what it means); TransformerLens's patterns on the text's tokens
    "previous_token": ("previous-token score", "mean weight a token puts on the token just before it"),
    "duplicate_token": ("duplicate-token score", "mean weight a token puts on its earlier copies, over the tokens "
                        "that have one"),
    "induction": ("induction score", "mean weight a token puts on the tokens just after its earlier copies, over the "
                  "tokens that have one (on a repeated copy of the text when it has too few)"),
}
# A head whose score is above this is named as a head of the type: half its weight on the one key before; 30% on the
# copies (several keys, which a head shares with the first token's sink on real text).
HEAD_TYPE = {"previous_token": 0.5, "duplicate_token": 0.3, "induction": 0.3}
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
    collector = detectors.Collector(tokens.ids)
    with source.turn():
        streamed = engine.run(source.model.module, tokens.as_tensor(), on_layer=collector)
    values: dict[str, object] = {name: streamed.stacked(name).numpy() for name in STATISTICS}
    if streamed.has_learned_sinks:
        values["learned_sink_mass"] = streamed.stacked("learned_sink_mass").numpy()
    values["windows"] = tuple(int(streamed.windows.get(index) or 0) for index in range(streamed.n_layers))
    values.update(collector.scores())
    values["detector_rows"] = collector.rows()
    return values


def model_induction_copy(source: Source, text, cut: Cut) -> dict[str, object]:
    """The induction score (layers, heads) on a repeated copy of the text's tokens (detectors.repeated_copy, within
    the model's positions and the cut's max_tokens), over the rows of the second copy: "induction", "rows" (per
    layer, the rows counted) and "copied" (N: the copy repeats the first N tokens)."""
    import torch

    from attnscope import engine

    tokens = source.tokens(text, cut)
    limit = min(n for n in (cut.max_tokens, source.model.max_positions) if n)
    special = getattr(source.model.tokenizer, "all_special_ids", None) or ()
    ids, copied = detectors.repeated_copy(tokens.ids, limit=limit, special=special)
    collector = detectors.Collector(ids, detectors=(detectors.INDUCTION,), first_row=copied)
    with source.turn():
        engine.run(source.model.module, torch.tensor([ids], dtype=torch.long), on_layer=collector)
    return {"induction": collector.scores()[detectors.INDUCTION], "rows": collector.rows()[detectors.INDUCTION],
            "copied": copied}


def layer_maps(source: Source, text, cut: Cut, layer: int, heads: tuple[int, ...], block: int, reduce: str,
               hide_sink: bool) -> np.ndarray:
    """(len(heads), ceil(T/block), ceil(S/block)) pooled weights; NaN where a tile has no visible cell."""
    captured = source.capture(text, cut).layer(layer)
    pooled = analysis.pooled_map(captured, heads=list(heads), block=block, reduce=reduce, hide_sink=hide_sink)
    return pooled.values.numpy()


def layer_window(source: Source, text, cut: Cut, layer: int, heads: tuple[int, ...], queries: tuple[int, int],
                 keys: tuple[int, int], hide_sink: bool) -> np.ndarray:
    """(len(heads), q1 - q0, k1 - k0) exact weights of queries [q0, q1) x keys [k0, k1); NaN where a key is not
    visible to a query (and on key 0 with hide_sink)."""
    captured = source.capture(text, cut).layer(layer)
    return np.stack([analysis.attention_window(captured, head=head, queries=queries, keys=keys,
                                               hide_sink=hide_sink).numpy() for head in heads])


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


@dataclass(repr=False)  # Result's short repr
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
    # Head-type scores (DETECTORS), (layers, heads) float32; None in results saved before they existed.
    previous_token: np.ndarray | None = None
    duplicate_token: np.ndarray | None = None
    induction: np.ndarray | None = None
    detector_rows: dict[str, tuple[int, ...]] | None = None  # detector -> per layer, the rows its score averages
    induction_copy: int = 0  # 0: induction measured on the text's own repeats; N: on a repeated copy of its first N

    @property
    def shape(self) -> tuple[int, int]:
        return self.entropy.shape

    @property
    def induction_measured_on(self) -> str:
        """How the induction score was measured: "the text's own repeats, N rows" or "a repeated copy of its first
        N tokens" ("" in results saved before the score existed)."""
        if self.induction is None:
            return ""
        if self.induction_copy:
            plural = "s" if self.induction_copy > 1 else ""
            return f"a repeated copy of its first {self.induction_copy:,} token{plural}"
        return f"the text's own repeats, {self._rows('induction'):,} rows"

    def _rows(self, name: str) -> int:
        """The most rows a detector's score averaged over in any layer."""
        return max((self.detector_rows or {}).get(name, ()), default=0)

    def columns(self) -> dict[str, tuple[str, str]]:
        """Field -> (column label, what it means) for every (layers, heads) array this result holds, in the order
        figures() and to_frame() use: the statistics, the learned sink's mass, then the head-type scores."""
        extra = {"learned_sink_mass": LEARNED_SINK} if self.learned_sink_mass is not None else {}
        types = {name: column for name, column in DETECTORS.items() if getattr(self, name) is not None}
        return {**STATISTICS, **extra, **types}

    def _head_types(self) -> list[Finding]:
        """One finding per head-type score: the heads above its HEAD_TYPE threshold, strongest first, with scores."""
        out = []
        where = {"previous_token": "the token just before", "duplicate_token": "earlier copies of their own token",
                 "induction": "the tokens just after earlier copies of their own token"}
        measured = {"previous_token": f"averaged over the {self._rows('previous_token'):,} tokens with one before",
                    "duplicate_token": f"averaged over the {self._rows('duplicate_token'):,} tokens that repeat one",
                    "induction": f"measured on {self.induction_measured_on}"}
        for name, (label, _) in DETECTORS.items():
            values = getattr(self, name)
            if values is None:
                continue
            topic = label.replace(" score", " heads").capitalize()
            if not np.isfinite(values).any():
                missing = {"previous_token": "the text has no token with one before it",
                           "duplicate_token": "no token of the text repeats an earlier one",
                           "induction": f"no token repeats an earlier one in {self.induction_measured_on}"}[name]
                out.append(Finding(topic, f"No score: {missing}."))
                continue
            order = np.argsort(-np.nan_to_num(values, nan=-1.0), axis=None)
            cells = [np.unravel_index(i, self.shape) for i in order]
            above = [cell for cell in cells if values[cell] > HEAD_TYPE[name]]
            scored = lambda cell: f"{_head_name(*map(int, cell))} {values[cell]:.2f}"  # noqa: E731
            if self._rows(name) < detectors.MIN_INDUCTION_ROWS:
                text = (f"Too few tokens to name heads ({measured[name]}: fewer than {detectors.MIN_INDUCTION_ROWS}); "
                        f"the strongest: {', '.join(scored(cell) for cell in cells[:3])}.")
            elif above:
                named = ", ".join(scored(cell) for cell in above[:12]) + (" …" if len(above) > 12 else "")
                text = (f"{len(above)} of {values.size} heads put more than {HEAD_TYPE[name]:.0%} of their weight on "
                        f"{where[name]}, {measured[name]}: {named}.")
            else:
                text = (f"No head puts more than {HEAD_TYPE[name]:.0%} of its weight on {where[name]} "
                        f"({measured[name]}); the strongest: {', '.join(scored(cell) for cell in cells[:3])}.")
            out.append(Finding(topic, text))
        return out

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
                f"however long the text, their weights need not fall below about 1/{shortest} (a query spreads its "
                f"weight over at most that many keys, whatever L is); layers {listed}."))
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
            *self._head_types(),
        ]

    def figures(self) -> dict[str, object]:
        return {f"{name}-per-head": figures.stat_heatmap(getattr(self, name), title=f"{label} per head", label=label)
                for name, (label, _) in self.columns().items()}

    def to_frame(self) -> pd.DataFrame:
        n_layers, n_heads = self.shape
        windows = self.windows or (0,) * n_layers
        return pd.DataFrame([{"layer": layer, "head": head, "window": windows[layer],
                              **{name: float(getattr(self, name)[layer, head]) for name in self.columns()}}
                             for layer in range(n_layers) for head in range(n_heads)])


@dataclass(repr=False)  # Result's short repr
class MapsResult(Result):
    """Attention maps of some heads of one layer, pooled into block x block tiles (block 1: exact), of the whole text
    or of a window of it (a zoom: queries [q0, q1) x keys [k0, k1), every token pair)."""

    kind = "maps"
    title = "attnscope: attention maps"

    meta: dict
    tokens: tuple[str, ...]
    layer: int
    heads: tuple[int, ...]
    block: int
    reduce: str
    hide_sink: bool
    values: np.ndarray  # (len(heads), rows, columns): ceil(T/block) x ceil(S/block), or q1 - q0 x k1 - k0 in a zoom
    entropy: np.ndarray  # (len(heads),) mean row entropy over the whole text
    max_weight: np.ndarray  # (len(heads),)
    query_start: int = 0  # token position of the first row (q0 of a zoom); results saved before zooms read 0
    key_start: int = 0  # token position of the first column (k0 of a zoom)
    scale: str = S.default("map_scale")  # the colour scale figures() draws unless told another

    @property
    def queries(self) -> tuple[int, int]:
        """(q0, q1): the token positions the rows cover, q1 excluded."""
        return self.query_start, min(self.query_start + self.values.shape[1] * self.block, len(self.tokens))

    @property
    def keys(self) -> tuple[int, int]:
        """(k0, k1): the token positions the columns cover, k1 excluded."""
        return self.key_start, min(self.key_start + self.values.shape[2] * self.block, len(self.tokens))

    @property
    def zoomed(self) -> bool:
        whole = (0, len(self.tokens))
        return self.queries != whole or self.keys != whole

    def _window(self) -> str:
        (q0, q1), (k0, k1) = self.queries, self.keys
        return f"queries {q0}-{q1 - 1} × keys {k0}-{k1 - 1}"

    def findings(self) -> list[Finding]:
        pooled = (f"pooled into {self.block}×{self.block}-token tiles by their {self.reduce}" if self.block > 1
                  else "every token pair")
        where = f"{self._window()} of {len(self.tokens)} tokens" if self.zoomed else f"{len(self.tokens)} tokens"
        order = np.argsort(self.entropy)
        return [Finding("Maps", f"Layer {self.layer}, {len(self.heads)} head(s) over {where}, "
                                f"{pooled}" + (", first token hidden (not renormalised)." if self.hide_sink else ".")),
                Finding("Most focused head in this layer",
                        f"head {self.heads[order[0]]}: mean entropy {self.entropy[order[0]]:.2f} nats, mean max "
                        f"weight {self.max_weight[order[0]]:.3f}; most spread: head {self.heads[order[-1]]} "
                        f"({self.entropy[order[-1]]:.2f} nats).")]

    def thumbnails(self) -> list[figures.Thumbnail]:
        return [figures.Thumbnail(layer=self.layer, head=h, values=self.values[i], entropy=float(self.entropy[i]),
                                  max_weight=float(self.max_weight[i])) for i, h in enumerate(self.heads)]

    def figures(self, scale: str | None = None, marks: Sequence[int | tuple[int, int]] = ()) -> dict[str, object]:
        """Name -> plotly figure: each head's map (and the grid of them when there are several).

        Args:
            scale: the colour scale, "linear", "log" or "row" (default: the one this result was made with).
            marks: token positions or (first, last) spans to frame on each map (attnscope.tokens.find).
        """
        scale = self.scale if scale is None else scale
        sink = " (sink hidden)" if self.hide_sink else ""
        window = f", {self._window()}" if self.zoomed else ""
        out = {f"attention-map-layer{self.layer}-head{h}": figures.head_heatmap(
            self.values[i], tokens=self.tokens, block=self.block, reduce=self.reduce, scale=scale,
            queries=self.queries, keys=self.keys, marks=marks, title=f"Layer {self.layer}, head {h}{sink}{window}")
            for i, h in enumerate(self.heads)}
        if len(self.heads) > 1:
            out = {"head-grid": figures.head_grid(self.thumbnails(), n_cols=min(len(self.heads), 6),
                                                  sort_by_entropy=False, title=f"Layer {self.layer}", scale=scale),
                   **out}
        return out

    def to_frame(self) -> pd.DataFrame:
        """Long form, one row per head and cell (tile): query_start and key_start are token positions in the text."""
        _, rows, cols = self.values.shape
        head, row, col = np.meshgrid(np.arange(len(self.heads)), np.arange(rows), np.arange(cols), indexing="ij")
        return pd.DataFrame({"layer": self.layer, "head": np.asarray(self.heads)[head.ravel()],
                             "query_start": self.query_start + row.ravel() * self.block,
                             "key_start": self.key_start + col.ravel() * self.block,
                             "block": self.block, "weight": self.values.ravel()})

    def matrix_frame(self, *, head: int) -> pd.DataFrame:
        """One head's map as a query x key matrix, the table a spreadsheet expects (`.to_csv()` keeps the labels).

        Rows are labelled "query i: token" (or "queries a-b: first … last" for a tile), columns "key j: token" (or
        "keys a-b: first … last"); cells hold the weights, NaN where no key is visible.
        """
        if head not in self.heads:
            raise ValueError(f"Head {head} is not in these maps; they hold heads {', '.join(map(str, self.heads))}.")
        (q0, q1), (k0, k1) = self.queries, self.keys
        rows = figures.span_labels(self.tokens, start=q0, end=q1, block=self.block, singular="query",
                                   plural="queries")
        columns = figures.span_labels(self.tokens, start=k0, end=k1, block=self.block, singular="key",
                                      plural="keys")
        return pd.DataFrame(self.values[self.heads.index(head)], index=pd.Index(rows, name="query"),
                            columns=pd.Index(columns, name="key"))


# ---- entry points -------------------------------------------------------------------------------------------------


def stats(source: Source, text, *, cut: Cut, progress: ProgressFn | None = None,
          induction_copy: bool = True) -> StatsResult:
    """Every head's statistics and head-type scores over the text, from one streamed pass (model_stats); with too few
    repeats for the induction score, a second pass over a repeated copy of the text (model_induction_copy) unless
    induction_copy is False (callers that show no head-type score: Compare, Batch)."""
    tokens = source.tokens(text, cut)
    step = progress_steps(progress, 2)
    step(0, f"Per-head statistics of every layer: one pass over {len(tokens)} tokens")
    values = source.unit(model_stats, text, cut)
    step(1, "Per-head statistics of every layer")
    if induction_copy and max(values["detector_rows"][detectors.INDUCTION], default=0) < detectors.MIN_INDUCTION_ROWS:
        step(1, "Too few repeats for the induction score: one more pass over a repeated copy of the text")
        copy = source.unit(model_induction_copy, text, cut)
        values = {**values, "induction": copy["induction"], "induction_copy": copy["copied"],
                  "detector_rows": {**values["detector_rows"], detectors.INDUCTION: copy["rows"]}}
    step(2, "Per-head statistics and head-type scores")
    return StatsResult(meta=meta_for(source.model, tokens, max_tokens=cut.max_tokens, keep=cut.keep),
                       tokens=tokens.strings, **values)


def maps(source: Source, text, *, cut: Cut, layer: int = 0, heads: Sequence[int] | None = None,
         cell_limit: int | None = None, reduce: str = "mean", hide_sink: bool = False,
         queries: tuple[int, int] | None = None, keys: tuple[int, int] | None = None, map_scale: str | None = None,
         progress: ProgressFn | None = None) -> MapsResult:
    """Maps of one layer's heads: the whole text (pooled into tiles when longer than cell_limit), or with `queries`
    and/or `keys` a zoom, (start, end) token positions, end excluded (the other side defaults to the whole text),
    drawn token by token; a zoom side longer than cell_limit is refused. map_scale: the figures' colour scale."""
    heads = S.head_numbers(heads, "maps")
    tokens = source.tokens(text, cut)
    n_layers, n_heads = source.model.info["n_layers"], source.model.info["n_heads"]
    if not 0 <= layer < n_layers:
        raise ValueError(f"Layer {layer} does not exist; this model has layers 0..{n_layers - 1}.")
    heads = tuple(range(n_heads)) if heads is None else tuple(int(h) for h in heads)
    map_scale = S.check("map_scale", S.default("map_scale") if map_scale is None else map_scale)
    step = progress_steps(progress, 2)
    zoom = queries is not None or keys is not None
    if zoom:
        whole = (0, len(tokens))
        queries = analysis.check_range("queries", whole if queries is None else queries, len(tokens))
        keys = analysis.check_range("keys", whole if keys is None else keys, len(tokens))
        for name, (start, end) in (("queries", queries), ("keys", keys)):
            if cell_limit is not None and end - start > cell_limit:
                raise ValueError(f"The zoom's {name} {start}:{end} span {end - start} tokens, more than the cell "
                                 f"limit of {cell_limit} per side: narrow the range or raise the cell limit.")
        block = 1
        values = source.unit(layer_window, text, cut, layer, heads, queries, keys, hide_sink)
        step(1, f"Window of layer {layer}")
    else:
        block = 1 if cell_limit is None else analysis.block_for(len(tokens), cell_limit)
        values = source.unit(layer_maps, text, cut, layer, heads, block, reduce, hide_sink)
        step(1, f"Maps of layer {layer}")
    stats = source.unit(layer_stats, text, cut, layer)
    step(2, f"Statistics of layer {layer}")
    return MapsResult(meta=meta_for(source.model, tokens, max_tokens=cut.max_tokens, keep=cut.keep, layer=layer,
                                    reduce=reduce, hide_sink=hide_sink, cell_limit=cell_limit, queries=queries,
                                    keys=keys, map_scale=map_scale),
                      tokens=tokens.strings, layer=layer, heads=heads, block=block, reduce=reduce,
                      hide_sink=hide_sink, values=values, entropy=stats.entropy[list(heads)],
                      max_weight=stats.max_weight[list(heads)], query_start=queries[0] if zoom else 0,
                      key_start=keys[0] if zoom else 0, scale=map_scale)
