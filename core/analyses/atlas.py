"""The head atlas's statistics: per-head summaries over documents, an embedding of all heads, clusters, and the
head-by-head difference of two atlases.

Every function takes plain arrays or frames (no model): `summarise` reduces the per-document rows the atlas runner
writes (one row per document, layer and head) to per-head means with their spread and a 95% confidence interval; the
others work on those summaries.

Choices, and why:
- The confidence interval is Student's t interval of the mean over documents (scipy.stats.t), the usual one for a
  mean of a few dozen to thousands of values; a field measured on one document has no interval (NaN).
- Two atlases are compared per head with Welch's t test from the two summaries (scipy.stats.ttest_ind_from_stats:
  the documents of the two atlases need not be the same), and the p-values of every head and field are corrected
  together with Benjamini-Hochberg (scipy.stats.false_discovery_control), since a model has hundreds of heads.
- The embedding standardises each field over heads (mean 0, variance 1) so that distances in tokens and weights in
  [0, 1] count alike, then projects with scikit-learn's PCA (or umap-learn's UMAP when it is installed and asked for).
  Clusters are k-means on the same standardised fields, k chosen by the silhouette score.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

KEYS = ("id", "tokens", "layer", "head")  # the runner's non-fingerprint columns
CONFIDENCE = 0.95
FDR = 0.05  # the false-discovery rate at which a head's change counts as significant
CLUSTER_RANGE = (2, 8)  # k tried for k-means
EMBEDDINGS = ("pca", "umap")
INSTALL = 'pip install "attnscope[atlas]"'  # the extra that brings Ray Data, scikit-learn and datasets
PACKAGES = {"ray": "Ray Data", "sklearn": "scikit-learn"}  # a module's package, as a sentence names it


class MissingPackage(ValueError):
    """An optional package a step needs is not installed: one sentence naming the step and the install."""


def require(module: str, step: str) -> None:
    """Import `module` now, or raise MissingPackage saying that `step` needs it and how to install it."""
    try:
        importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise MissingPackage(f"{step} needs {PACKAGES.get(top, top)}, which is not installed: {INSTALL}.") from None


@dataclass
class Summary:
    """Per-head summaries of F fields over documents: each array is (F, layers, heads)."""

    fields: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray  # sample standard deviation over documents (ddof 1; NaN with one document)
    low: np.ndarray  # the mean's 95% confidence interval
    high: np.ndarray
    median: np.ndarray
    q25: np.ndarray
    q75: np.ndarray
    count: np.ndarray  # documents with a finite value


def fields_of(rows: pd.DataFrame) -> tuple[str, ...]:
    return tuple(name for name in rows.columns if name not in KEYS)


def summarise(rows: pd.DataFrame, n_layers: int, n_heads: int) -> Summary:
    """Per-head summaries of every fingerprint column of `rows` (one row per document, layer and head; NaN values
    are left out of that head's numbers)."""
    from scipy import stats

    fields = fields_of(rows)
    grouped = rows.groupby(["layer", "head"])[list(fields)]
    index = pd.MultiIndex.from_product([range(n_layers), range(n_heads)], names=["layer", "head"])

    def grid(frame: pd.DataFrame) -> np.ndarray:  # (L*H, F) frame -> (F, L, H)
        return frame.reindex(index)[list(fields)].to_numpy(np.float64).T.reshape(len(fields), n_layers, n_heads)

    mean, std = grid(grouped.mean()), grid(grouped.std(ddof=1))
    count = np.nan_to_num(grid(grouped.count()))  # a head with no rows at all: 0 documents
    with np.errstate(invalid="ignore", divide="ignore"):
        half = stats.t.ppf(0.5 + CONFIDENCE / 2, count - 1) * std / np.sqrt(count)
    return Summary(fields=fields, mean=mean, std=std, low=mean - half, high=mean + half,
                   median=grid(grouped.median()), q25=grid(grouped.quantile(0.25)), q75=grid(grouped.quantile(0.75)),
                   count=count.astype(np.int64))


def join(a: Summary, b: Summary) -> Summary:
    """One Summary of a's fields then b's (same layers x heads)."""
    return Summary(fields=a.fields + b.fields, **{name: np.concatenate([getattr(a, name), getattr(b, name)])
                                                  for name in ("mean", "std", "low", "high", "median", "q25", "q75",
                                                               "count")})


def features(mean: np.ndarray, fields: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """(heads, F') standardised fields for the embedding and clusters: fields that vary across heads, each scaled to
    mean 0 and variance 1 over heads; a head's missing value (NaN) sits at the field's mean."""
    flat = mean.reshape(len(fields), -1).T  # (L*H, F)
    kept = [i for i in range(len(fields)) if np.isfinite(flat[:, i]).sum() > 1 and np.nanstd(flat[:, i]) > 0]
    values = flat[:, kept]
    values = (values - np.nanmean(values, 0)) / np.nanstd(values, 0)
    return np.nan_to_num(values, nan=0.0), [fields[i] for i in kept]


def embed(values: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, str]:
    """(heads, 2) coordinates of standardised features, and what they are ("PCA: 41% + 22% of the variance")."""
    if method not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {', '.join(EMBEDDINGS)}; got {method!r}.")
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise ValueError("UMAP needs the umap-learn package (pip install umap-learn); PCA needs nothing more.")
        coords = umap.UMAP(n_components=2, random_state=seed).fit_transform(values)
        return coords, "UMAP of the standardised fingerprints"
    require("sklearn", "The embedding of every head")
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=seed).fit(values)
    share = pca.explained_variance_ratio_
    return pca.transform(values), f"PCA: {share[0]:.0%} + {share[1]:.0%} of the variance"


def clusters(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """(heads,) k-means labels, k in CLUSTER_RANGE with the best silhouette score (0 for every head when there are
    too few heads to split)."""
    require("sklearn", "The clusters of heads")
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    best, best_score = np.zeros(len(values), dtype=np.int64), -np.inf
    for k in range(CLUSTER_RANGE[0], min(CLUSTER_RANGE[1], len(values) - 1) + 1):
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(values)
        if len(set(labels)) < 2:
            continue
        score = silhouette_score(values, labels)
        if score > best_score:
            best, best_score = labels, score
    return best


def describe_clusters(values: np.ndarray, names: Sequence[str], labels: np.ndarray, top: int = 2) -> list[str]:
    """Per cluster, the fields that set it apart: its mean standardised value furthest from 0 ("high induction")."""
    out = []
    for cluster in range(int(labels.max()) + 1):
        centre = values[labels == cluster].mean(0)
        order = np.argsort(-np.abs(centre))[:top]
        out.append(", ".join(f"{'high' if centre[i] > 0 else 'low'} {names[i]}" for i in order))
    return out


@dataclass
class Difference:
    """B - A per head of the fields both atlases have: each array (F, layers, heads)."""

    fields: tuple[str, ...]
    delta: np.ndarray
    p_value: np.ndarray  # Welch's t test of the two means (NaN where a side has fewer than two documents)
    significant: np.ndarray  # bool: p below the Benjamini-Hochberg threshold for FDR over every head and field


def difference(a: Summary, b: Summary) -> Difference:
    """Head-by-head B - A; the two must have the same layers x heads (heads of different shapes do not correspond)."""
    from scipy import stats

    if a.mean.shape[1:] != b.mean.shape[1:]:
        raise ValueError(f"The atlases have {a.mean.shape[1]} x {a.mean.shape[2]} and {b.mean.shape[1]} x "
                         f"{b.mean.shape[2]} layers x heads: heads are compared one to one only between models of the "
                         "same shape (base and fine-tuned, two precisions of one model).")
    fields = tuple(name for name in a.fields if name in b.fields)
    ia, ib = [a.fields.index(n) for n in fields], [b.fields.index(n) for n in fields]
    with np.errstate(invalid="ignore", divide="ignore"):
        p = stats.ttest_ind_from_stats(a.mean[ia], a.std[ia], a.count[ia], b.mean[ib], b.std[ib], b.count[ib],
                                       equal_var=False).pvalue
    p = np.where(np.isfinite(p), p, np.nan)
    significant = np.zeros(p.shape, dtype=bool)
    tested = np.isfinite(p)
    if tested.any():
        adjusted = stats.false_discovery_control(p[tested])
        significant[tested] = adjusted < FDR
    return Difference(fields=fields, delta=b.mean[ib] - a.mean[ia], p_value=p, significant=significant)
