"""Why here: which heads matter for a text or a token, by ablation and by information-flow contributions.

Units (each cached on its own by the dashboard and the disk cache):
- ablation_base: the unablated pass (its loss, each layer's mean head outputs for mean ablation);
- ablation_layer: the loss with each of some heads of one layer ablated (attnscope.analyses.ablation);
- contribution_layer: one layer's information-flow edges above a threshold, for every query or some
  (attnscope.analyses.contributions), from the text's capture with hidden states;
- value_weighted_map: one head's value-weighted attention alpha * |v W_O|, pooled like the attention maps
  (attnscope.analyses.why_maps);
- rollout_row: attention rollout for one query token, every layer boundary (attnscope.analyses.why_maps).

attnscope.ablate and attnscope.contributions run the first three and return AblationResult and ContributionsResult;
value_weighted and rollout here return ValueWeightedResult and RolloutResult, the classic readings the Why here page
sets beside the contributions (flow_relevance, compare_rollout and head_roles put them into words).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from attnscope.analyses import ablation as ablation_analysis
from attnscope.analyses import contributions as flow
from attnscope.analyses import maps as maps_analysis
from attnscope.analyses import why_maps
from attnscope.figures import maps as map_figures
from attnscope.figures import why as figures
from attnscope.studies.base import Finding, ProgressFn, Result, Source, meta_for, progress_steps
from attnscope.tokens import Cut

TOP_HEADS = 3  # heads named in a finding
FLOW_PAPER = ("Ferrando & Voita (2024), *Information flow routes*: a prediction is carried by a sparse graph of "
              "important edges, found by one forward pass instead of ablating each component.")
VALUE_PAPER = ("Kobayashi et al. (2020), *Attention is not only a weight*: what a key adds to a query is "
               "alpha * v W_O, so its size alpha * |v W_O| says more than the weight alone; tokens that take much "
               "weight often have short value vectors.")
ROLLOUT_PAPER = ("Abnar & Zuidema (2020), *Quantifying attention flow in transformers*: attention rollout multiplies "
                 "each layer's head-averaged weights, mixed half and half with the residual connection, down to the "
                 "input tokens.")
ROLLOUT_DIFFERS = ("Rollout mixes the heads uniformly and treats the attention weights as the flow, ignoring the value "
                   "norms and the output projection; contributions measure each part's actual share of the residual "
                   "stream, head by head.")
TOP_POSITIONS = 5  # input positions named in the rollout findings
ABLATION_PAPER = ("Michel et al. (2019), *Are sixteen heads really better than one?*: most heads can be removed at "
                  "test time with little loss, a few cannot.")


# ---- units ----------------------------------------------------------------------------------------------------------


def ablation_base(source: Source, text, cut: Cut, target: int | None) -> ablation_analysis.Baseline:
    tokens = source.tokens(text, cut)
    with source.turn():
        return ablation_analysis.baseline(source.model.module, tokens.as_tensor(), target=target)


def ablation_layer(source: Source, text, cut: Cut, mode: str, target: int | None, layer: int,
                   heads: tuple[int, ...]) -> np.ndarray:
    base = source.unit(ablation_base, text, cut, target)
    tokens = source.tokens(text, cut)
    with source.turn():
        return ablation_analysis.ablate_layer(source.model.module, tokens.as_tensor(), base, layer=layer,
                                              heads=heads, n_heads=source.model.n_heads, mode=mode, target=target)


def contribution_layer(source: Source, text, cut: Cut, layer: int, norm: int, threshold: float,
                       queries: tuple[int, ...] | None, renormalize: bool) -> flow.Edges:
    import torch

    from attnscope.anatomy import attention_layers

    tokens = source.tokens(text, cut)
    capture = source.run_ids(tokens.ids, hidden_states=True)
    anatomy = attention_layers(source.model.module)[layer]
    picked = None if queries is None else torch.tensor(queries, dtype=torch.long)
    return flow.layer_edges(capture.layer(layer), capture.hidden_states[layer][0], anatomy, norm=norm,
                            threshold=threshold, queries=picked, renormalize=renormalize)


@dataclass
class ValueWeighted:
    """What value_weighted_map computes for one head."""

    values: np.ndarray  # (ceil(T/block), ceil(S/block)) pooled alpha * |u|; NaN where a tile has no visible cell
    norms: np.ndarray  # (S,) |u[head, j]|_2 = |v[kv(head), j] W_O[head]|_2


def value_weighted_map(source: Source, text, cut: Cut, layer: int, head: int, block: int,
                       reduce: str) -> ValueWeighted:
    from attnscope.anatomy import attention_layers

    captured = source.capture(text, cut).layer(layer)
    anatomy = attention_layers(source.model.module)[layer]
    values, norms = why_maps.value_weighted_map(captured, anatomy, head=head, block=block, reduce=reduce)
    return ValueWeighted(values=values.numpy(), norms=norms.numpy())


def rollout_row(source: Source, text, cut: Cut, token: int) -> np.ndarray:
    """(L + 1, T) float64: attention rollout from `token` at every layer boundary (row 0: the input tokens)."""
    capture = source.capture(text, cut)
    return why_maps.rollout_row([capture.layer(index) for index in range(capture.n_layers)], token=token).numpy()


# ---- results ------------------------------------------------------------------------------------------------------


@dataclass(repr=False)  # Result's short repr
class AblationResult(Result):
    """Each ablated head's loss and delta (loss with it ablated - loss without), with what the loss is."""

    kind = "ablation"
    title = "attnscope: head ablation"

    meta: dict
    tokens: tuple[str, ...]
    layers: np.ndarray  # (n,) each ablated head's layer
    heads: np.ndarray  # (n,) its query head
    losses: np.ndarray  # (n,) the loss with it ablated
    base_loss: float  # the loss with nothing ablated
    metric: str  # what the loss is
    n_layers: int
    n_heads: int

    @property
    def deltas(self) -> np.ndarray:
        return self.losses - self.base_loss

    def grid(self) -> np.ndarray:
        """(n_layers, n_heads) deltas, NaN for heads not ablated."""
        grid = np.full((self.n_layers, self.n_heads), np.nan)
        grid[self.layers, self.heads] = self.deltas
        return grid

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"layer": self.layers, "head": self.heads, "loss": self.losses, "delta": self.deltas})

    def _what(self) -> str:
        target = self.meta.get("target")
        return "the whole text" if target is None else f"token {target} ({self.tokens[target]!r})"

    def findings(self) -> list[Finding]:
        if not len(self.losses):
            return []
        deltas = self.deltas
        order = np.argsort(-deltas, kind="stable")
        hurt = [i for i in order[:TOP_HEADS] if deltas[i] > 0]
        named = ", ".join(f"L{self.layers[i]}.H{self.heads[i]} ({deltas[i]:+.3g})" for i in hurt)
        scale = max(abs(self.base_loss), 1e-12) if self.base_loss else float(np.abs(deltas).max() or 1)
        small = float(np.mean(np.abs(deltas) < 0.01 * scale))
        helped = int(np.sum(deltas < 0))
        mode = self.meta.get("mode", "zero")
        measured = (f"{mode.capitalize()} ablation of {len(deltas)} heads on {self._what()} ({self.metric}, "
                    f"{self.base_loss:.4g} unablated): "
                    + (f"the heads it depends on most are {named}. " if hurt else "no head's removal raises it. ")
                    + f"{small:.0%} of the heads change it by less than 1%"
                    + (f"; removing {helped} head{'s' if helped != 1 else ''} lowers it." if helped else "."))
        return [Finding("Which heads matter", measured, paper=ABLATION_PAPER)]

    def figures(self) -> dict[str, object]:
        label = f"Δ {self.metric}"
        return {
            "ablation-map": figures.delta_heatmap(self.grid(), title=f"Ablation delta per head: {self._what()}",
                                                  label=label),
            "ablation-bars": figures.delta_bars(self.layers, self.heads, self.deltas, label=label,
                                                title="The heads whose ablation changes the loss most"),
        }


@dataclass(repr=False)  # Result's short repr
class ContributionsResult(Result):
    """Information-flow edges: (layer, query, key, head) -> contribution. key = head = -1 is the residual stream's
    part, key = -2 a learned sink's."""

    kind = "contributions"
    title = "attnscope: information-flow contributions"

    meta: dict
    tokens: tuple[str, ...]
    layer: np.ndarray  # int16
    query: np.ndarray  # int32
    key: np.ndarray  # int32
    head: np.ndarray  # int16
    contribution: np.ndarray  # float32
    n_layers: int
    n_heads: int

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"layer": self.layer, "query": self.query, "key": self.key, "head": self.head,
                             "contribution": self.contribution})

    def head_totals(self) -> np.ndarray:
        """(n_layers, n_heads) the sum of each head's kept contributions."""
        grid = np.zeros((self.n_layers, self.n_heads))
        parts = self.head >= 0
        np.add.at(grid, (self.layer[parts].astype(int), self.head[parts].astype(int)), self.contribution[parts])
        return grid

    def residual_share(self) -> np.ndarray:
        """(n_layers,) the mean contribution of the residual's part over the queries that kept it (NaN: none)."""
        out = np.full(self.n_layers, np.nan)
        residual = self.key == flow.RESIDUAL
        for index in range(self.n_layers):
            pick = residual & (self.layer == index)
            if pick.any():
                out[index] = float(self.contribution[pick].mean())
        return out

    def _scope(self) -> str:
        token = self.meta.get("token")
        return "every token" if token is None else f"token {token} ({self.tokens[token]!r})"

    def findings(self) -> list[Finding]:
        if not len(self.contribution):
            return []
        totals = self.head_totals()
        flat = np.argsort(-totals, axis=None, kind="stable")[:TOP_HEADS]
        named = ", ".join(f"L{i // self.n_heads}.H{i % self.n_heads} ({totals.flat[i]:.3g})" for i in flat
                          if totals.flat[i] > 0)
        share = self.residual_share()
        mean_share = float(np.nanmean(share)) if np.isfinite(share).any() else float("nan")
        threshold = self.meta.get("threshold", 0.0)
        measured = (f"{len(self.contribution):,} edges at or above {threshold:g} for {self._scope()} "
                    f"(L{self.meta.get('norm', 1)} distances). The heads that carry the most are {named}; the residual "
                    f"stream's own part averages {mean_share:.0%} of a token's stream after attention.")
        return [Finding("What each token is made of", measured, paper=FLOW_PAPER)]

    def figures(self) -> dict[str, object]:
        out = {"contributions-heads": figures.head_totals(self.head_totals(),
                                                          title=f"Summed contribution per head: {self._scope()}")}
        if self.meta.get("token") is not None:
            out["contribution-graph"] = figures.contribution_graph(
                self.layer, self.query, self.key, self.head, self.contribution, tokens=self.tokens,
                n_layers=self.n_layers, title=f"Information flow into {self._scope()}")
        return out


@dataclass(repr=False)  # Result's short repr
class ValueWeightedResult(Result):
    """One head's value-weighted attention alpha[i, j] * |v_j W_O| (Kobayashi et al. 2020), pooled like its attention
    map; with `query`, that token's row of weights too."""

    kind = "value-weighted"
    title = "attnscope: value-weighted attention"

    meta: dict
    tokens: tuple[str, ...]
    layer: int
    head: int
    block: int  # tile side in tokens (1: every token pair)
    reduce: str  # how tiles were pooled: "mean" or "max" of their visible cells
    values: np.ndarray  # (ceil(T/block), ceil(S/block)); NaN where a tile has no visible cell
    norms: np.ndarray  # (S,) |v_j W_O[head]|_2 of every key
    query: int | None = None  # the token whose row `weights` holds
    weights: np.ndarray | None = None  # (S,) that token's attention weights in this head (0 where hidden)

    def _name(self, position: int) -> str:
        return f"{position} ({self.tokens[position]!r})"

    def findings(self) -> list[Finding]:
        norms = self.norms
        median = float(np.median(norms)) or 1.0
        low, high = int(np.argmin(norms)), int(np.argmax(norms))
        measured = (f"Layer {self.layer}, head {self.head}: |v W_O| ranges from {norms[low]:.3g} (token "
                    f"{self._name(low)}) to {norms[high]:.3g} (token {self._name(high)}); the first token's is "
                    f"{norms[0]:.3g}, {norms[0] / median:.2g} times the median.")
        if self.query is not None and self.weights is not None:
            sized = self.weights * norms
            total = float(sized.sum()) or 1.0
            by_weight, by_size = int(np.argmax(self.weights)), int(np.argmax(sized))
            measured += (f" Token {self._name(self.query)} puts {self.weights[0]:.0%} of its weight on the first "
                         f"token, which makes {sized[0] / total:.0%} of its value-weighted total; its largest weight "
                         f"is on token {self._name(by_weight)}, its largest value-weighted part comes from token "
                         f"{self._name(by_size)}.")
        return [Finding("Weights and value norms", measured, paper=VALUE_PAPER)]

    def figures(self, scale: str = "log", marks=()) -> dict[str, object]:
        """The value-weighted map under a colour scale ("linear", "log" or "row"), with token positions or spans in
        `marks` framed (its row and column)."""
        return {f"value-weighted-layer{self.layer}-head{self.head}": map_figures.head_heatmap(
            self.values, tokens=self.tokens, block=self.block, reduce=self.reduce, scale=scale, marks=marks,
            label="α·‖vW_O‖", title=f"Layer {self.layer}, head {self.head}: value-weighted, α·‖v W_O‖")}

    def to_frame(self) -> pd.DataFrame:
        """Long form, one row per cell (tile): query_start and key_start are token positions."""
        rows, cols = self.values.shape
        row, col = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        return pd.DataFrame({"layer": self.layer, "head": self.head, "query_start": row.ravel() * self.block,
                             "key_start": col.ravel() * self.block, "block": self.block,
                             "value_weighted": self.values.ravel()})


@dataclass(repr=False)  # Result's short repr
class RolloutResult(Result):
    """Attention rollout (Abnar & Zuidema 2020) for one query token: the relevance of every position at every layer
    boundary."""

    kind = "rollout"
    title = "attnscope: attention rollout"

    meta: dict
    tokens: tuple[str, ...]
    token: int
    relevance: np.ndarray  # (L + 1, T): row l for the streams entering layer l; row 0 the input tokens, row L e_token

    @property
    def inputs(self) -> np.ndarray:
        """(T,) the relevance of each input token (sums to 1)."""
        return self.relevance[0]

    def top(self, count: int = TOP_POSITIONS) -> list[int]:
        return [int(p) for p in np.argsort(-self.inputs, kind="stable")[:count]]

    def findings(self) -> list[Finding]:
        named = ", ".join(f"{p} ({self.tokens[p]!r}, {self.inputs[p]:.0%})" for p in self.top())
        measured = (f"Rollout from token {self.token} ({self.tokens[self.token]!r}) down to the inputs: "
                    f"{self.inputs[0]:.0%} on the first token, {self.inputs[self.token]:.0%} on the token itself; the "
                    f"most relevant inputs are {named}. {ROLLOUT_DIFFERS}")
        return [Finding("Attention rollout", measured, paper=ROLLOUT_PAPER)]

    def figures(self, flow: np.ndarray | None = None) -> dict[str, object]:
        """The input tokens' rollout as bars; `flow` (T,), the same token's relevance along its contribution graph
        (flow_relevance), drawn beside it."""
        return {"rollout": figures.relevance_bars(
            self.inputs, tokens=self.tokens, token=self.token, flow=flow,
            title=f"Which input tokens matter to token {self.token} ({self.tokens[self.token]})")}

    def to_frame(self) -> pd.DataFrame:
        layers, positions = np.meshgrid(np.arange(self.relevance.shape[0]), np.arange(self.relevance.shape[1]),
                                        indexing="ij")
        return pd.DataFrame({"boundary": layers.ravel(), "position": positions.ravel(),
                             "relevance": self.relevance.ravel()})


def flow_relevance(result: ContributionsResult) -> np.ndarray:
    """(L + 1, T) the relevance of every position to the followed token along its contribution graph, the graph's
    counterpart of rollout: row L is e_token, and going down, rel_l[j] = sum over the kept edges (l, i, j) of
    rel_{l+1}[i] * contribution, the residual's part taken to j = i and a learned sink's dropped; each row is then
    divided by its sum (edges under the threshold are gone), so rows sum to 1 like rollout's."""
    token = result.meta.get("token")
    if token is None:
        raise ValueError("flow_relevance needs the contributions followed from one token (token=...).")
    n_layers, n_tokens = result.n_layers, len(result.tokens)
    relevance = np.zeros((n_layers + 1, n_tokens))
    relevance[n_layers, token] = 1.0
    sources = flow.edge_sources(result.query, result.key)
    for layer in reversed(range(n_layers)):
        pick = (result.layer == layer) & (sources >= 0)
        np.add.at(relevance[layer], sources[pick],
                  relevance[layer + 1][result.query[pick]] * result.contribution[pick])
        total = relevance[layer].sum()
        if total > 0:
            relevance[layer] /= total
    return relevance


def compare_rollout(rollout: RolloutResult, contributions: ContributionsResult) -> Finding:
    """Rollout's most relevant input tokens beside those of the same token's contribution graph (flow_relevance)."""
    graph = flow_relevance(contributions)[0]
    by_graph = [int(p) for p in np.argsort(-graph, kind="stable")[:TOP_POSITIONS] if graph[p] > 0]
    by_rollout = rollout.top()
    shared = [p for p in by_rollout if p in by_graph]
    name = lambda p: f"{p} ({rollout.tokens[p]!r})"  # noqa: E731
    measured = (f"For token {name(rollout.token)}, rollout's top inputs are {', '.join(map(name, by_rollout))}; along "
                f"the contribution graph (edges of at least {contributions.meta.get('threshold', 0):g}) they are "
                f"{', '.join(map(name, by_graph)) or 'none'}; {len(shared)} of {len(by_rollout)} are shared. "
                f"On the first token: rollout {rollout.inputs[0]:.0%}, the graph {graph[0]:.0%}.")
    return Finding("Rollout against contributions", measured)


def head_roles(contributions: ContributionsResult, stats, top: int = TOP_HEADS) -> Finding:
    """Which heads the followed token's contribution graph draws on most and which of them are induction heads on this
    text (stats: attnscope.studies.maps.StatsResult; threshold attnscope.studies.maps.HEAD_TYPE["induction"])."""
    from attnscope.studies.maps import HEAD_TYPE

    totals = contributions.head_totals()
    order = [int(i) for i in np.argsort(-totals, axis=None, kind="stable")[:top] if totals.flat[i] > 0]
    scope = contributions._scope()
    if not order:
        return Finding("Induction heads on this token's path",
                       f"No head's edge reaches {scope} at this threshold: lower it to see the heads.")
    cells = [divmod(i, contributions.n_heads) for i in order]
    named = ", ".join(f"L{layer}.H{head} ({totals[layer, head]:.3g})" for layer, head in cells)
    if stats.induction is None:
        return Finding("Induction heads on this token's path", f"The heads {scope} draws on most: {named}.")
    threshold = HEAD_TYPE["induction"]
    induction = [(layer, head) for layer, head in cells if stats.induction[layer, head] > threshold]
    score = lambda cell: f"L{cell[0]}.H{cell[1]} {stats.induction[cell]:.2f}"  # noqa: E731
    if induction:
        verdict = ", ".join(map(score, induction)) + (" is an induction head" if len(induction) == 1
                                                      else " are induction heads")
    else:
        verdict = "none of them is an induction head"
    measured = (f"The heads {scope} draws on most (summed contribution along its graph): {named}. Of these, {verdict} "
                f"(induction score above {threshold:.0%}, measured on {stats.induction_measured_on}).")
    return Finding("Induction heads on this token's path", measured)


# ---- the studies -----------------------------------------------------------------------------------------------


def _pairs(heads, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """(layer, head) pairs: None = every head; head numbers = those heads in every layer; pairs as given."""
    if heads is None:
        return [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    if all(isinstance(h, tuple) for h in heads):
        pairs = list(dict.fromkeys(heads))
    else:
        pairs = [(layer, int(head)) for layer in range(n_layers) for head in dict.fromkeys(heads)]
    for layer, head in pairs:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"heads: there is no head {layer}.{head}; this model has layers 0..{n_layers - 1} with "
                             f"heads 0..{n_heads - 1}.")
    return pairs


def _position(value: int | None, n_tokens: int, name: str, low: int = 0) -> int | None:
    """A token position of the text (-1: its last token), or ValueError naming the range."""
    if value == -1:
        value = n_tokens - 1
    if value is not None and not low <= value < n_tokens:
        raise ValueError(f"{name}={value} is not a token position of this text: it has {n_tokens} tokens, so "
                         f"{name} must be from {low} to {n_tokens - 1}.")
    return value


def ablate(source: Source, text, *, cut: Cut, mode: str = "zero", heads: Sequence | None = None,
           target: int | None = None, progress: ProgressFn | None = None) -> AblationResult:
    """Each head's ablation loss (attnscope.analyses.ablation), one unit per layer."""
    tokens = source.tokens(text, cut)
    model = source.model
    n_layers, n_heads = model.n_layers, model.n_heads
    pairs = _pairs(heads, n_layers, n_heads)
    if model.kind == "decoder" and len(tokens) < 2:
        raise ValueError("Ablation needs a text of at least two tokens: the first has no next-token loss.")
    target = _position(target, len(tokens), "target", 1 if model.kind == "decoder" else 0)
    step = progress_steps(progress, len(pairs) + 1)
    step(0, f"The unablated pass over {len(tokens)} tokens")
    base = source.unit(ablation_base, text, cut, target)

    def announce(layer: int, layer_heads: tuple[int, ...], done: int) -> None:
        step(done + 1, f"Layer {layer}: ablating {len(layer_heads)} head{'s' if len(layer_heads) > 1 else ''} "
                       f"({done} of {len(pairs)} done)")

    losses = ablation_analysis.losses_by_layer(
        pairs, lambda layer, layer_heads: source.unit(ablation_layer, text, cut, mode, target, layer, layer_heads),
        announce)
    step(len(pairs) + 1, "Ablation done")
    return AblationResult(
        meta=meta_for(model, tokens, max_tokens=cut.max_tokens, keep=cut.keep, mode=mode, target=target),
        tokens=tokens.strings, layers=np.array([p[0] for p in pairs], dtype=np.int32),
        heads=np.array([p[1] for p in pairs], dtype=np.int32), losses=losses, base_loss=base.loss, metric=base.metric,
        n_layers=n_layers, n_heads=n_heads)


def contributions(source: Source, text, *, cut: Cut, norm: int = 1, threshold: float = 0.0, token: int | None = None,
                  renormalize: bool = False, progress: ProgressFn | None = None) -> ContributionsResult:
    """Every layer's information-flow edges (attnscope.analyses.contributions), one unit per layer; with `token`,
    from the top layer down along the edges kept (llm-transparency-tool's traversal)."""
    tokens = source.tokens(text, cut)
    model = source.model
    token = _position(token, len(tokens), "token")
    n_layers = model.n_layers
    step = progress_steps(progress, n_layers)
    frontier = None if token is None else (token,)
    found: dict[int, flow.Edges] = {}
    for done, layer in enumerate(reversed(range(n_layers))):
        count = len(tokens) if frontier is None else len(frontier)
        step(done, f"Layer {layer}: the contributions to {count} token{'s' if count != 1 else ''} "
                   f"({done} of {n_layers} layers done)")
        edges = source.unit(contribution_layer, text, cut, layer, norm, threshold, frontier, renormalize)
        found[layer] = edges
        if frontier is not None:
            frontier = flow.sources_of(edges)
            if not frontier:
                break
    step(n_layers, "Contributions done")
    layers = sorted(found)
    joined = flow.Edges.join([found[layer] for layer in layers])
    layer_of = np.concatenate([np.full(len(found[layer].query), layer, dtype=np.int16) for layer in layers]) \
        if layers else np.zeros(0, np.int16)
    return ContributionsResult(
        meta=meta_for(model, tokens, max_tokens=cut.max_tokens, keep=cut.keep, norm=norm, threshold=threshold,
                      token=token, renormalize=renormalize),
        tokens=tokens.strings, layer=layer_of, query=joined.query, key=joined.key, head=joined.head,
        contribution=joined.contribution, n_layers=n_layers, n_heads=model.n_heads)


def _layer_and_head(model, layer: int, head: int) -> None:
    if not 0 <= layer < model.n_layers:
        raise ValueError(f"Layer {layer} does not exist; this model has layers 0..{model.n_layers - 1}.")
    if not 0 <= head < model.n_heads:
        raise ValueError(f"Head {head} does not exist; this model has heads 0..{model.n_heads - 1}.")


def value_weighted(source: Source, text, *, cut: Cut, layer: int = 0, head: int = 0, cell_limit: int | None = None,
                   reduce: str = "mean", token: int | None = None,
                   progress: ProgressFn | None = None) -> ValueWeightedResult:
    """One head's value-weighted attention (attnscope.analyses.why_maps), pooled like attnscope.maps pools the same
    head's map under the same cell_limit and reduce; with `token` (-1: the last) that token's weights too."""
    from attnscope.studies.maps import query_row

    tokens = source.tokens(text, cut)
    _layer_and_head(source.model, layer, head)
    token = _position(token, len(tokens), "token")
    block = 1 if cell_limit is None else maps_analysis.block_for(len(tokens), cell_limit)
    step = progress_steps(progress, 1)
    part = source.unit(value_weighted_map, text, cut, layer, head, block, reduce)
    weights = None if token is None else source.unit(query_row, text, cut, layer, head, token)
    step(1, f"Value-weighted map of layer {layer}, head {head}")
    return ValueWeightedResult(
        meta=meta_for(source.model, tokens, max_tokens=cut.max_tokens, keep=cut.keep, layer=layer, head=head,
                      cell_limit=cell_limit, reduce=reduce, token=token),
        tokens=tokens.strings, layer=layer, head=head, block=block, reduce=reduce, values=part.values,
        norms=part.norms, query=token, weights=weights)


def rollout(source: Source, text, *, cut: Cut, token: int | None = None,
            progress: ProgressFn | None = None) -> RolloutResult:
    """Attention rollout from `token` (None or -1: the last token) at every layer boundary
    (attnscope.analyses.why_maps.rollout_row)."""
    tokens = source.tokens(text, cut)
    token = _position(len(tokens) - 1 if token is None else token, len(tokens), "token")
    step = progress_steps(progress, 1)
    relevance = source.unit(rollout_row, text, cut, token)
    step(1, f"Rollout from token {token}")
    return RolloutResult(meta=meta_for(source.model, tokens, max_tokens=cut.max_tokens, keep=cut.keep, token=token),
                         tokens=tokens.strings, token=token, relevance=relevance)
