"""Two runs side by side: the same model on two texts, two models on one text, or both different.

Side A and side B each run the Attention maps study's own units (attnscope.studies.maps: model_stats for every head's
statistics, layer_maps and layer_stats for one head's map), so every number is cached exactly as on that page, and
the only new arithmetic is the subtraction B - A.

What B - A is taken over:
- both models have the same layers x heads: head by head, (layers, heads). Between two different models this means
  something only when one is derived from the other (a fine-tune keeps its heads' roles and numbers); the findings
  say so.
- different shapes: head numbers do not correspond, so each side's mean over heads is compared layer by layer,
  (min(layers), 1), with layers paired by relative depth (depth_pairs): each layer l of the shallower model (S layers)
  with the deeper model's (D layers) layer round(l * (D - 1) / (S - 1)), halves rounded up, so first meets first and
  last meets last and no layer of the shallower model is left out; SmolLM2's 30 layers against MiniLM's 6 pair
  (0, 0), (6, 1), (12, 2), (17, 3), (23, 4), (29, 5). A 1-layer model's one layer is both its first and its last; it
  is paired with the deeper model's last layer, the one that, like it, feeds the model's output. Relative depth is a
  convention, not a correspondence: it assumes both models spread their processing evenly over their layers.
- one head's map: cell by cell when both texts have the same number of tokens and so the same tiles (positions are
  compared, whatever the tokens); otherwise no difference map, and the result says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from attnscope.figures import compare as figures
from attnscope.figures import maps as map_figures
from attnscope.studies import maps as maps_study
from attnscope.studies.base import Finding, ProgressFn, Result, Source
from attnscope.tokens import Cut

CHANGED = ("entropy", "max_weight", "sink_mass")  # the statistics whose largest changes the findings name
TOP_CHANGES = 3  # heads (or layer pairs) named per statistic
MEAN_OVER_HEADS = "mean over heads"
LISTED_PAIRS = 12  # the Shapes finding lists every layer pair up to this many, else the first and last few
TITLE_MODEL_CHARS = 20  # a model name in a figure title is cut to this many characters, so titles fit a half-width
LAYER_PAIRING = "relative depth"  # meta["layer_pairing"] of results whose per-layer B - A follows depth_pairs


@dataclass(repr=False)  # Result's short repr
class CompareResult(Result):
    """Side A and side B: every head's statistics of each, B - A, and optionally one head's maps of each."""

    kind = "compare"
    title = "attnscope: compare two runs"

    meta: dict
    a: maps_study.StatsResult
    b: maps_study.StatsResult
    difference: dict  # statistic -> B - A: (layers, heads) when the shapes match, else (layer pairs, 1) of means
    maps_a: maps_study.MapsResult | None = None  # one head of one layer, when a layer was asked for
    maps_b: maps_study.MapsResult | None = None
    map_difference: np.ndarray | None = None  # (rows, cols) B - A of the two maps; None: see map_note
    map_note: str = ""  # why no difference map is drawn, or what the one drawn compares

    def __post_init__(self) -> None:
        """A result saved before layers were paired by relative depth (no meta["layer_pairing"]) paired layer i with
        layer i; its per-layer B - A is taken again from the two sides it carries, so rows and labels agree."""
        if not self.per_head and self.meta.get("layer_pairing") != LAYER_PAIRING:
            self.difference = differences(self.a, self.b)
            self.meta = {**self.meta, "layer_pairing": LAYER_PAIRING}

    @property
    def per_head(self) -> bool:
        """True when B - A is taken head by head (both sides have the same layers x heads)."""
        return self.a.shape == self.b.shape

    @property
    def columns(self) -> list[str]:
        """The difference arrays' column labels: the heads, or the one mean over heads."""
        return [f"H{h}" for h in range(self.a.shape[1])] if self.per_head else [MEAN_OVER_HEADS]

    @property
    def layer_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(layers_a, layers_b): row i of the difference arrays is A's layer layers_a[i] against B's layers_b[i]
        (the same layer on both sides when the models have the same depth; else paired by relative depth)."""
        return depth_pairs(self.a.shape[0], self.b.shape[0])

    @property
    def rows(self) -> list[str]:
        """The difference arrays' row labels: "L3" head by head, "A L6 / B L1" for a pair of layers."""
        if self.per_head:
            return [f"L{layer}" for layer in range(self.a.shape[0])]
        return [f"A L{a} / B L{b}" for a, b in zip(*self.layer_pairs)]

    def side(self, which: str) -> str:
        """"A: smollm2-135m, 19 tokens" for which = "a" or "b"."""
        stats = self.a if which == "a" else self.b
        return f"{which.upper()}: {stats.meta['model']}, {len(stats.tokens)} tokens"

    def findings(self) -> list[Finding]:
        meta, (layers_a, heads_a), (layers_b, heads_b) = self.meta, self.a.shape, self.b.shape
        what = {(True, True): "the same model on the same text", (True, False): "the same model on two texts",
                (False, True): "two models on the same text", (False, False): "two models on two texts"}[
            (meta["same_model"], meta["same_text"])]
        out = [Finding("Compared", f"{what}: {self.side('a')}; {self.side('b')}.")]
        if self.per_head:
            caveat = "" if meta["same_model"] else (" Between two models this means something only when one is "
                                                    "derived from the other (a fine-tune keeps its heads' numbers).")
            out.append(Finding("Shapes", f"Both have {layers_a} layers × {heads_a} heads: B − A is taken head by "
                                         f"head.{caveat}"))
        else:
            out.append(Finding("Shapes", f"A has {layers_a} layers × {heads_a} heads and B {layers_b} layers × "
                                         f"{heads_b} heads: head numbers do not correspond between the two models, "
                                         f"so B − A is taken on each layer's mean over heads, {self._pairing()}"))
        if len(self.a.tokens) != len(self.b.tokens):
            out.append(Finding("Text lengths", f"A has {len(self.a.tokens)} tokens and B {len(self.b.tokens)}: "
                                               "entropy grows with the number of keys a query sees (at most their "
                                               "log), so the normalised entropy compares the two more fairly."))
        if all(np.array_equal(getattr(self.a, name), getattr(self.b, name), equal_nan=True)
               for name in maps_study.STATISTICS):
            out.append(Finding("No change", "B − A is exactly 0 for every head and every statistic."))
        else:
            out += [self._largest_changes(name) for name in CHANGED]
        if self.maps_a is not None:
            where = f"layer {self.maps_a.layer}, head {self.maps_a.heads[0]}"
            if self.maps_b.layer != self.maps_a.layer:
                where = (f"A's layer {self.maps_a.layer} and B's layer {self.maps_b.layer} (the same relative "
                         f"depth), head {self.maps_a.heads[0]}")
            out.append(Finding("Maps", f"{where[0].upper()}{where[1:]}: " + (self.map_note or self._drawn())))
        return out

    def _pairing(self) -> str:
        """The sentence's end that says how layers were paired, with the pairs (A, B)."""
        (layers_a, _), (layers_b, _) = self.a.shape, self.b.shape
        pairs = [f"({a}, {b})" for a, b in zip(*self.layer_pairs)]
        if len(pairs) > LISTED_PAIRS:
            pairs = [*pairs[:LISTED_PAIRS - 3], "…", *pairs[-2:]]
        listed = f"layer pairs (A, B): {', '.join(pairs)}."
        if layers_a == layers_b:
            return f"layer by layer (both have {layers_a} layers); {listed}"
        (shallow, few), (deep, many) = sorted([("A", layers_a), ("B", layers_b)], key=lambda side: side[1])
        if few == 1:
            return (f"{shallow}'s one layer paired with {deep}'s last, L{many - 1} (a 1-layer model's layer is its "
                    "first and its last, and like a last layer it feeds the output).")
        return (f"layers paired by relative depth: {shallow}'s layer l with {deep}'s layer "
                f"round(l × {many - 1} / {few - 1}), halves up, first with first and last with last; {listed}")

    def _drawn(self) -> str:
        block = self.maps_a.block
        return "B − A drawn cell by cell." if block == 1 else f"B − A drawn tile by tile ({block}×{block} tokens)."

    def _largest_changes(self, name: str) -> Finding:
        label = maps_study.STATISTICS[name][0]
        a, b = self._compared(getattr(self.a, name), "a"), self._compared(getattr(self.b, name), "b")
        change = self.difference[name]
        order = np.argsort(-np.nan_to_num(np.abs(change), nan=-1.0), axis=None, kind="stable")[:TOP_CHANGES]
        cells = [np.unravel_index(index, change.shape) for index in order]
        where = (lambda cell: f"L{cell[0]}H{cell[1]}") if self.per_head else (lambda cell: self.rows[cell[0]])
        listed = ", ".join(f"{where(cell)} {a[cell]:.3f} → {b[cell]:.3f} ({change[cell]:+.3f})" for cell in cells)
        scope = "heads" if self.per_head else "layer pairs (means over heads)"
        mean_a, mean_b = float(np.nanmean(getattr(self.a, name))), float(np.nanmean(getattr(self.b, name)))
        return Finding(f"{label.capitalize()}: B − A", f"the {scope} that changed most: {listed}; the mean over "
                                                        f"every head goes {mean_a:.3f} → {mean_b:.3f} "
                                                        f"({mean_b - mean_a:+.3f}).")

    def _compared(self, values: np.ndarray, side: str) -> np.ndarray:
        return comparable(values, side=side, shape_a=self.a.shape, shape_b=self.b.shape)

    def figures(self, statistic: str | None = None, *, map_height: int | None = None) -> dict[str, object]:
        """A, B and B - A of one statistic (every statistic when None), then A, B and B - A of the one head's map.

        Titles are short (model names cut to TITLE_MODEL_CHARS) so they fit a figure half a page wide.

        Args:
            statistic: one of the difference's statistics, or None for all of them.
            map_height: height in pixels of the three maps; the page gives about the width of its column, so the
                square maps fill it; None keeps head_heatmap's height, for a full-width figure.
        """
        out = {}
        for name in [statistic] if statistic else list(self.difference):
            label = maps_study.STATISTICS.get(name, maps_study.LEARNED_SINK)[0]
            for which, stats in (("a", self.a), ("b", self.b)):
                out[f"{name}-{which}"] = map_figures.stat_heatmap(getattr(stats, name), label=label,
                                                                  title=f"{self._named(which)} · {label}")
            scope = "per head" if self.per_head else "paired layers"
            out[f"{name}-difference"] = figures.difference_heatmap(
                self.difference[name], columns=self.columns, rows=self.rows, label=label,
                title=f"B − A: {label}, {scope}")
        if self.maps_a is not None:
            head = self.maps_a.heads[0]
            where = f"L{self.maps_a.layer} H{head}" if self.maps_b.layer == self.maps_a.layer else (
                f"A L{self.maps_a.layer} / B L{self.maps_b.layer} H{head}")
            sink = " (sink hidden)" if self.maps_a.hide_sink else ""
            for which, result in (("a", self.maps_a), ("b", self.maps_b)):
                out[f"map-{which}"] = map_figures.head_heatmap(
                    result.values[0], tokens=result.tokens, block=result.block, reduce=result.reduce,
                    title=f"{self._named(which)} · L{result.layer} H{head}{sink}")
            if self.map_difference is not None:
                tokens = [t if t == u else f"{t}|{u}" for t, u in zip(self.maps_a.tokens, self.maps_b.tokens)]
                out["map-difference"] = figures.difference_map(self.map_difference, tokens=tokens,
                                                               block=self.maps_a.block, reduce=self.maps_a.reduce,
                                                               title=f"B − A · {where}{sink}")
            if map_height is not None:
                for key in ("map-a", "map-b", "map-difference"):
                    if key in out:
                        out[key].update_layout(height=map_height)
        return out

    def _named(self, which: str) -> str:
        """"A: smollm2-135m" for a figure title; a longer model name is cut to its last part, then with "…"."""
        name = str((self.a if which == "a" else self.b).meta["model"])
        if len(name) > TITLE_MODEL_CHARS:
            name = name.rstrip("/").rsplit("/", 1)[-1]
        if len(name) > TITLE_MODEL_CHARS:
            name = name[:TITLE_MODEL_CHARS - 1] + "…"
        return f"{which.upper()}: {name}"

    def to_frame(self) -> pd.DataFrame:
        """One row per statistic and head (columns statistic, layer, head, a, b, difference); when the shapes differ,
        one row per statistic and pair of layers (columns statistic, layer_a, layer_b, a, b, difference), a and b
        being the paired layers' means over heads and the layers paired by relative depth (see depth_pairs)."""
        rows = []
        layers_a, layers_b = self.layer_pairs
        for name, change in self.difference.items():
            a, b = self._compared(getattr(self.a, name), "a"), self._compared(getattr(self.b, name), "b")
            for row in range(change.shape[0]):
                for column in range(change.shape[1]):
                    where = ({"layer": row, "head": column} if self.per_head
                             else {"layer_a": int(layers_a[row]), "layer_b": int(layers_b[row])})
                    rows.append({"statistic": name, **where, "a": float(a[row, column]), "b": float(b[row, column]),
                                 "difference": float(change[row, column])})
        return pd.DataFrame(rows)


# ---- entry point --------------------------------------------------------------------------------------------------


def depth_pairs(n_layers_a: int, n_layers_b: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair two models' layers by relative depth: every layer of the shallower model once, in order.

    Layer l of the shallower model (S layers) meets the deeper model's (D layers) layer round(l * (D - 1) / (S - 1)),
    halves rounded up: first with first, last with last, and the deeper model's layers in increasing order (strictly,
    as D >= S). Equal depths pair layer l with layer l. A 1-layer model's one layer is both its first and its last: it
    meets the deeper model's last layer, which like it feeds the model's output.

    Args:
        n_layers_a, n_layers_b: the two models' numbers of layers (at least 1 each).

    Returns:
        (layers_a, layers_b): int64 arrays of length min(n_layers_a, n_layers_b); pair i is A's layer layers_a[i]
        with B's layer layers_b[i].
    """
    if n_layers_a < 1 or n_layers_b < 1:
        raise ValueError(f"depth_pairs: models have {n_layers_a} and {n_layers_b} layers; each needs at least one.")
    few, many = sorted((n_layers_a, n_layers_b))
    shallow = np.arange(few, dtype=np.int64)
    deep = np.broadcast_to(relative_layer(shallow, few, many), shallow.shape).astype(np.int64)
    return (shallow, deep) if n_layers_a <= n_layers_b else (deep, shallow)


def relative_layer(layer, n_layers_a: int, n_layers_b: int):
    """B's layer at the relative depth of A's `layer` (an int, or an integer array): round(layer * (L_B - 1) /
    (L_A - 1)), halves up, computed in integers so no float rounds the wrong way; a 1-layer A meets B's last layer
    (like it, the one that feeds the output); the same layer when both have as many. depth_pairs follows it."""
    if n_layers_a == n_layers_b:
        return layer
    if n_layers_a == 1:
        return n_layers_b - 1
    return (2 * layer * (n_layers_b - 1) + (n_layers_a - 1)) // (2 * (n_layers_a - 1))


def comparable(values: np.ndarray, *, side: str, shape_a: tuple[int, int], shape_b: tuple[int, int]) -> np.ndarray:
    """One side's (layers, heads) statistic as B - A takes it: unchanged when both sides have the same shape, else
    the mean over heads of that side's paired layers (depth_pairs), (min(layers), 1).

    Args:
        values: (layers, heads) of side `side` ("a" or "b"); shape_a, shape_b: both sides' (layers, heads).
    """
    if shape_a == shape_b:
        return values
    layers = depth_pairs(shape_a[0], shape_b[0])[0 if side == "a" else 1]
    return np.nanmean(values[layers], axis=1, keepdims=True)


def differences(a: maps_study.StatsResult, b: maps_study.StatsResult) -> dict[str, np.ndarray]:
    """Statistic -> B - A of the two sides (comparable): (layers, heads), or (min(layers), 1) for layer pairs.
    The learned sink mass is compared only when both sides have one."""
    names = [*maps_study.STATISTICS, *(["learned_sink_mass"] if a.learned_sink_mass is not None
                                       and b.learned_sink_mass is not None else [])]
    return {name: comparable(getattr(b, name), side="b", shape_a=a.shape, shape_b=b.shape)
            - comparable(getattr(a, name), side="a", shape_a=a.shape, shape_b=b.shape) for name in names}


def _same(text_a, text_b) -> bool:
    return (text_a if isinstance(text_a, str) else tuple(text_a)) == (text_b if isinstance(text_b, str) else
                                                                     tuple(text_b))


def _map_difference(maps_a: maps_study.MapsResult, maps_b: maps_study.MapsResult) -> tuple[np.ndarray | None, str]:
    n_a, n_b = len(maps_a.tokens), len(maps_b.tokens)
    if n_a != n_b:
        return None, (f"no difference map: A has {n_a} tokens and B {n_b}, and a map is compared cell by cell, "
                      "which needs the same positions on both sides.")
    if maps_a.block != maps_b.block:
        return None, (f"no difference map: A is pooled into {maps_a.block}-token tiles and B into "
                      f"{maps_b.block}-token tiles.")
    changed = sum(t != u for t, u in zip(maps_a.tokens, maps_b.tokens))
    note = (f"B − A compares positions: the tokens differ at {changed} of {n_a} positions (shown as A|B)."
            if changed else "")
    return maps_b.values[0] - maps_a.values[0], note


def run(source_a: Source, text_a, cut_a: Cut, source_b: Source, text_b, cut_b: Cut, *, layer: int | None = 0,
        head: int = 0, cell_limit: int | None = None, reduce: str = "mean", hide_sink: bool = False,
        progress: ProgressFn | None = None) -> CompareResult:
    """Side A (source_a's model on text_a, cut_a) against side B.

    Args:
        layer, head: the head whose maps are drawn: A's layer `layer` and, when B has another number of layers, B's
            layer at the same relative depth (relative_layer); the head must exist in both; layer None: no maps.
        cell_limit, reduce, hide_sink: as for attnscope.studies.maps.maps.
        progress: progress(fraction, message) between units.

    Returns:
        A CompareResult; its difference arrays are (layers, heads) or, when the models' shapes differ,
        (min(layers), 1): each row a pair of layers at the same relative depth (depth_pairs), B's mean over heads
        minus A's.
    """
    steps = [("a", source_a, text_a, cut_a), ("b", source_b, text_b, cut_b)]
    layers = {}
    if layer is not None:
        layers = {"a": layer, "b": relative_layer(layer, source_a.model.info["n_layers"],
                                                  source_b.model.info["n_layers"])}
        for name, source in (("A", source_a), ("B", source_b)):
            n_layers, n_heads = source.model.info["n_layers"], source.model.info["n_heads"]
            if not (0 <= layers[name.lower()] < n_layers and 0 <= head < n_heads):
                raise ValueError(f"Layer {layer}, head {head} does not exist in model {name} "
                                 f"({source.model.spec.name}: layers 0..{n_layers - 1}, heads 0..{n_heads - 1}); "
                                 "choose a layer of A and a head both models have.")
    total = 2 * len(steps) if layer is not None else len(steps)
    report = progress or (lambda fraction, message: None)
    stats = {}
    for index, (which, source, text, cut) in enumerate(steps):
        report(index / total, f"Side {which.upper()}: per-head statistics of every layer")
        stats[which] = maps_study.stats(source, text, cut=cut, induction_copy=False)  # no head-type score shown
    a, b = stats["a"], stats["b"]
    difference = differences(a, b)
    maps, map_difference, map_note = {}, None, ""
    if layer is not None:
        for index, (which, source, text, cut) in enumerate(steps):
            report((len(steps) + index) / total, f"Side {which.upper()}: map of layer {layers[which]}, head {head}")
            maps[which] = maps_study.maps(source, text, cut=cut, layer=layers[which], heads=[head],
                                          cell_limit=cell_limit, reduce=reduce, hide_sink=hide_sink)
        map_difference, map_note = _map_difference(maps["a"], maps["b"])
    report(1.0, "Compared")
    spec_a, spec_b = source_a.model.spec, source_b.model.spec
    meta = {"model_a": a.meta["model"], "model_b": b.meta["model"], "tokens_a": len(a.tokens),
            "tokens_b": len(b.tokens),
            "same_model": (spec_a.name, spec_a.revision) == (spec_b.name, spec_b.revision),
            "same_text": _same(text_a, text_b), "layer": layer, "head": head, "cell_limit": cell_limit,
            "reduce": reduce, "hide_sink": hide_sink, "layer_pairing": LAYER_PAIRING, "attnscope": a.meta["attnscope"]}
    return CompareResult(meta=meta, a=a, b=b, difference=difference, maps_a=maps.get("a"), maps_b=maps.get("b"),
                         map_difference=map_difference, map_note=map_note)
