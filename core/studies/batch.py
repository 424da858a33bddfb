"""One study over many prompts: each prompt runs through the same entry point as a single text (stats, taylor or
collapse, with the same settings and the same cached units), and per head or per point of a curve the mean and spread
over prompts is reported (attnscope.analyses.batch).

What is aggregated from each prompt's result:
- stats: every head statistic, (layers, heads);
- taylor: per denominator, the median over heads of the relative error at each order, (orders,);
- collapse: per context length, the mean over heads of the max weight, entropy and first-token weight (lengths,),
  on the lengths every prompt reached.
A prompt the study cannot take (too short, an encoder for collapse, no token) is listed with the reason and the rest
goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from attnscope.analyses import batch as aggregate
from attnscope.figures import collapse as collapse_figures
from attnscope.figures import maps as map_figures
from attnscope.figures import taylor as taylor_figures
from attnscope.kernels.taylor import DENOMINATORS
from attnscope.studies import maps as maps_study
from attnscope.studies.base import Finding, ProgressFn, Result, Source

STUDIES = {"stats": "Head statistics", "taylor": "Softmax vs Taylor: error vs order",
           "collapse": "Context collapse: max weight, entropy and sink vs L"}
COLLAPSE_CURVES = ("max_weight", "entropy", "sink_mass")
MIN_COLLAPSE_TOKENS = 32


@dataclass(repr=False)  # Result's short repr
class BatchResult(Result):
    kind = "batch"
    title = "attnscope: one study over many prompts"

    meta: dict
    study: str  # "stats", "taylor" or "collapse"
    prompts: tuple[str, ...]  # names of the prompts aggregated, in order
    skipped: tuple[tuple[str, str], ...]  # (prompt name, why it was left out)
    x: tuple  # orders (taylor), context lengths (collapse); () for stats
    values: dict  # statistic -> (prompts, ...) one array per prompt, stacked

    def spread(self, name: str) -> aggregate.Spread:
        return aggregate.spread(list(self.values[name]))

    def findings(self) -> list[Finding]:
        count = len(self.prompts)
        out = [Finding("Prompts", f"{count} prompt(s) analysed" + (
            f"; left out: {', '.join(f'{name} ({why})' for name, why in self.skipped)}." if self.skipped else "."))]
        if not count:
            return out
        if self.study == "stats":
            for name in ("entropy", "max_weight", "sink_mass"):
                per_prompt = self.values[name].reshape(count, -1).mean(1)
                out.append(Finding(maps_study.STATISTICS[name][0].capitalize(),
                                   f"mean over heads {per_prompt.mean():.3f} (prompts from {per_prompt.min():.3f} to "
                                   f"{per_prompt.max():.3f}); the head that varies most between prompts is "
                                   f"{_most_varying(self.values[name])}."))
        elif self.study == "taylor":
            top = self.x[-1]
            for name in DENOMINATORS:
                at_top = self.values[name][:, -1]
                out.append(Finding(f"Error at order {top}, {name} denominator",
                                   f"median over heads {np.median(at_top):.3g} over prompts (from "
                                   f"{at_top.min():.3g} to {at_top.max():.3g})."))
        else:
            first, last = self.x[0], self.x[-1]
            weight = self.values["max_weight"]
            out.append(Finding("Vanishing attention",
                               f"from L = {first} to {last} the mean max weight goes {weight[:, 0].mean():.3f} → "
                               f"{weight[:, -1].mean():.3f} on average over prompts (1/L: {1 / first:.3f} → "
                               f"{1 / last:.4f}); the first-token weight {self.values['sink_mass'][:, 0].mean():.2f} "
                               f"→ {self.values['sink_mass'][:, -1].mean():.2f}."))
        return out

    def figures(self, statistic: str = "entropy") -> dict[str, object]:
        count = len(self.prompts)
        if not count:
            return {}
        if self.study == "stats":
            label = maps_study.STATISTICS[statistic][0]
            spread = self.spread(statistic)
            return {f"batch-{statistic}-mean": map_figures.stat_heatmap(
                        spread.mean, title=f"{label}: mean over {count} prompt(s)", label=label),
                    f"batch-{statistic}-std": map_figures.stat_heatmap(
                        spread.std, title=f"{label}: standard deviation over prompts", label="std")}
        if self.study == "taylor":
            curves = []
            for name in DENOMINATORS:
                spread = self.spread(name)
                curves.append(taylor_figures.Curve(f"{name}: mean over prompts", spread.mean, low=spread.low,
                                                   high=spread.high, colour=taylor_figures.DENOMINATOR_COLOURS[name]))
            return {"batch-error-vs-order": taylor_figures.error_vs_order(
                curves, title=f"Median error over heads, {count} prompt(s) (band: smallest to largest prompt)")}
        return {"batch-vanishing": collapse_figures.vanishing(
            list(self.x), *(self.values[name].T for name in COLLAPSE_CURVES), None, None,
            title=f"Mean over heads, {count} prompt(s) (median and quartiles over prompts)")}

    def to_frame(self) -> pd.DataFrame:
        rows = []
        for index, prompt in enumerate(self.prompts):
            for name, values in self.values.items():
                array = values[index]
                if self.study == "stats":
                    rows += [{"prompt": prompt, "statistic": name, "layer": layer, "head": head,
                              "value": float(array[layer, head])}
                             for layer in range(array.shape[0]) for head in range(array.shape[1])]
                else:
                    axis = "order" if self.study == "taylor" else "L"
                    rows += [{"prompt": prompt, "statistic": name, axis: x, "value": float(v)}
                             for x, v in zip(self.x, array)]
        return pd.DataFrame(rows)


def _most_varying(values: np.ndarray) -> str:
    std = values.std(0)
    layer, head = np.unravel_index(np.argmax(std), std.shape)
    return f"L{layer}H{head} (standard deviation {std[layer, head]:.3f})"


def _summary(study: str, result) -> tuple[tuple, dict[str, np.ndarray]]:
    """(x, statistic -> array) of one prompt's result."""
    if study == "stats":
        return (), {name: getattr(result, name) for name in maps_study.STATISTICS}
    if study == "taylor":
        orders = tuple(range(result.max_order + 1))
        return orders, {name: np.median(result.sweep.error[name].reshape(-1, len(orders)), 0)
                        for name in DENOMINATORS}
    return tuple(result.lengths), {name: np.array([getattr(s, name).mean() for s in result.summaries])
                                   for name in COLLAPSE_CURVES}


def run(source: Source, prompts: Sequence[tuple[str, str]], *, study: str, settings: dict | None = None,
        progress: ProgressFn | None = None) -> BatchResult:
    """Run `study` ("stats", "taylor" or "collapse") on each (name, text) with the same settings (the entry point's
    keywords: max_tokens, keep, max_order, n_tokens, clamp, max_length, windows, ...)."""
    if study not in STUDIES:
        raise ValueError(f"study must be one of {', '.join(STUDIES)}; got {study!r}.")
    if not prompts:
        raise ValueError("No prompts to run: add some first.")
    settings = dict(settings or {})
    runner = _runner(study, settings)
    names, skipped, per_prompt = [], [], []
    for index, (name, text) in enumerate(prompts):
        if progress is not None:
            progress(index / len(prompts), f"Prompt {index + 1}/{len(prompts)}: {name[:60]}")
        try:
            result = runner(source, text)
        except ValueError as error:
            skipped.append((name, str(error).rstrip(".")))
            continue
        names.append(name)
        per_prompt.append(_summary(study, result))
    if progress is not None:
        progress(1.0, "Done")
    x, values = (), {}
    if per_prompt:
        if study == "collapse":  # lengths differ with the prompts' lengths: keep those every prompt reached
            shared = None
            for name in COLLAPSE_CURVES:
                shared, curves = aggregate.common_prefix([(p[0], p[1][name]) for p in per_prompt])
                values[name] = np.stack(curves)
            x = tuple(shared)
        else:
            x = per_prompt[0][0]
            values = {name: np.stack([p[1][name] for p in per_prompt]) for name in per_prompt[0][1]}
    meta = {"model": source.model.spec.name, "revision": source.model.spec.revision or "", "study": study,
            "prompts": len(names), **{k: v for k, v in settings.items() if not callable(v)}}
    return BatchResult(meta=meta, study=study, prompts=tuple(names), skipped=tuple(skipped), x=x, values=values)


def _runner(study: str, settings: dict) -> Callable:
    from attnscope.studies import collapse as collapse_study
    from attnscope.studies import taylor as taylor_study

    if study == "stats":
        return lambda source, text: maps_study.stats(  # the batch shows no head-type score: no extra pass for one
            source, text, cut=source.model.cut(settings.get("max_tokens"), settings.get("keep", "start")),
            induction_copy=False)
    if study == "taylor":
        return lambda source, text: taylor_study.run(source, text, **settings)

    def collapse(source: Source, text: str):
        if source.model.kind != "decoder":
            raise ValueError("context collapse over prompts needs a decoder")
        tokens = source.tokens(text, source.model.cut(settings.get("max_tokens")))
        if len(tokens) < MIN_COLLAPSE_TOKENS:
            raise ValueError(f"{len(tokens)} tokens, fewer than {MIN_COLLAPSE_TOKENS}")
        return collapse_study.run(source, text, **settings)
    return collapse
