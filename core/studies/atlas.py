"""The head atlas: every head's fingerprint over a whole corpus, written as Parquet shards that a run can resume.

`run(model, corpus, out)` reads the corpus (attnscope.corpus), cuts each document to `max_tokens` tokens, and writes,
for every document, one row per (layer, head) with its fingerprint (attnscope.analyses.fingerprint) into shards of
`shard_size` documents: `out/shard-<first>-<n>.parquet`, each written to a temporary name and renamed, so a shard is
either whole or absent. Documents that cannot be used (empty, not text, longer than the model's positions) go to
`out/problems-*.parquet` with the reason. The shards are the record of what is done: a run that starts where shards
exist skips every document they hold, so an interrupted run resumes and no document is counted twice.
`out/manifest.json` (rewritten at the end) names the model, the settings, the shards, the problems and the counts;
`out/induction.parquet` holds the model's induction score per head and random sequence (INDUCTION_SEQUENCES passes
on repeated random tokens), and `out/atlas.parquet` the per-head summary (AtlasResult, reopened by attnscope.open).

AtlasResult is what the API, the CLI and the Head atlas page show: every field's per-head mean over documents with its
spread and 95% interval (attnscope.analyses.atlas), the findings (each paper's claim beside what the corpus shows),
a layers x heads map of any field, the 2-D embedding of all heads coloured by cluster, and `diff` against another
atlas of a model of the same shape (AtlasDiff: B - A per head, Welch's t test, Benjamini-Hochberg).

Engines: "local" runs in this process; "ray" hands batches of documents to Ray Data actors that each hold the model
once (attnscope.studies.atlas_ray), on a local Ray instance or the cluster at `address`. On the same machine both
write the same rows, bit for bit (atlas_ray says what that takes).

Refused before any model work and before `out` is made (so a refused run leaves no folder behind), each in one
sentence, as a ValueError: engine "ray" without Ray Data installed (MissingPackage); an `out` that is a file or lies
under one; a corpus that cannot be read as a whole (attnscope.reader's ReadError naming the file: random bytes, over
the caller's Budget, ...); a corpus with no document the atlas can use (UnusableCorpus, with the reasons of the first
ones). A run that fails later removes the folders it made while they are still empty. `check_documents` makes the
checks that need no model, so the CLI refuses such a corpus before it loads one.

Opening (open_atlas for a folder or a file, read_atlas for an upload's bytes) reads under a Budget too: a saved result
through attnscope.studies.base, a folder's manifest.json through reader.parse_json, and a shard that cannot be read is
one sentence naming it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from attnscope.analyses import atlas as analysis
from attnscope.analyses import collapse, fingerprint
from attnscope.corpus import Document, read_corpus
from attnscope.reader import Budget, NotReadableJson, file_label, parse_json, shown, size_text
from attnscope.studies.atlas_shards import (Settings, fingerprint_rows, safe_label, usable,  # noqa: F401 (re-exported)
                                            write_batch, write_frame)
from attnscope.studies.base import RESULT_BUDGET, Finding, Result, open_result, read_result

EMBEDDINGS = analysis.EMBEDDINGS  # the head map's layouts, which the Head atlas page lists

ENGINES = ("local", "ray")
MANIFEST = "manifest.json"
SUMMARY = "atlas.parquet"
FORMAT = 2  # 2: slopes, Taylor order and N_s/N in the shards; the induction score per random sequence
SAMPLE_CHARS = 20_000  # characters of the first usable document kept as the sample the page opens heads on
REASONS_SHOWN = 3  # reasons an unusable corpus's message quotes
REASONS_KEPT = 20  # reasons UnusableCorpus keeps for a caller to list


def _ids(paths: Iterable[Path]) -> set[str]:
    import pyarrow.parquet as pq

    return {doc_id for path in paths for doc_id in pq.read_table(path, columns=["id"]).column(0).to_pylist()}


def done_ids(out: Path) -> set[str]:
    """Every document id the shards and problem files in `out` already hold."""
    return _ids([*out.glob("shard-*.parquet"), *out.glob("problems-*.parquet")])


def _batches(documents: Iterator[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for document in documents:
        batch.append(document)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def pending(corpus: str | Path, out: Path, settings: Settings, budget: Budget = Budget()) -> Iterator[Document]:
    """The corpus's documents (at most settings.limit), read under `budget`, that no shard in `out` holds yet."""
    seen = done_ids(out)
    return (d for d in read_corpus(corpus, text_column=settings.text_column, limit=settings.limit, budget=budget)
            if d.id not in seen)


def run(model, corpus: str | Path, out: str | Path, *, settings: Settings = Settings(), engine: str = "local",
        address: str | None = None, workers: int = 2, progress: Callable[[float, str], None] | None = None,
        deadline: float | None = None, budget: Budget = Budget()) -> AtlasResult:
    """Fingerprint every document of `corpus` into `out` (resuming what is there), then summarise the folder.

    deadline: a time.monotonic() after which the local engine starts no new batch (hosted runs); what was written
    stays, and a later run resumes from it. budget: what reading the corpus may take in (attnscope.reader.Budget;
    a hosted deployment passes attnscope.hosting.Policy.file_budget). Returns the AtlasResult, also saved as
    out/atlas.parquet."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}.")
    check_extras(engine)
    out = Path(out)
    made = _check_out(out)
    _check_same_run(out, model, settings)
    sample = check_corpus(model, corpus, settings, budget)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"The atlas folder {out} cannot be made ({error.strerror or error}); give a folder you can "
                         "write to.") from None
    try:
        return _run(model, corpus, out, settings, engine, address=address, workers=workers, progress=progress,
                    deadline=deadline, sample=sample, budget=budget)
    except BaseException:
        _remove_empty(made)
        raise


def _run(model, corpus, out: Path, settings: Settings, engine: str, *, address, workers, progress, deadline,
         sample: str, budget: Budget) -> AtlasResult:
    documents = pending(corpus, out, settings, budget)
    started = time.perf_counter()
    if engine == "local":
        done = 0
        for batch in _batches(documents, settings.shard_size):
            if deadline is not None and time.monotonic() > deadline:
                break
            rows, problems = fingerprint_rows(model, batch, settings)
            write_batch(out, rows, problems, safe_label(batch[0].id))
            done += len(batch)
            if progress is not None:  # a stream has no known length: the fraction is of the limit, when there is one
                progress(min(0.99, done / (settings.limit or done + 1)), f"{done} documents fingerprinted")
    else:
        from attnscope.studies import atlas_ray

        atlas_ray.run(model.spec, documents, out, settings, address=address, workers=workers, progress=progress)
    manifest = write_manifest(model, corpus, out, settings, engine, seconds=time.perf_counter() - started,
                              sample=sample)
    result = summarise(out, manifest)
    result.save(out / SUMMARY)
    return result


class UnusableCorpus(ValueError):
    """A corpus with no document the atlas can use, refused before any model work: `read` documents were read and
    `reasons` holds why each of the first REASONS_KEPT was left out (the message quotes the first REASONS_SHOWN)."""

    def __init__(self, message: str, *, read: int, reasons: tuple[str, ...]):
        super().__init__(message)
        self.read, self.reasons = read, reasons


def check_extras(engine: str = "local", report: str | Path | None = None) -> None:
    """Refuse, before any work, a run that needs a package that is not installed: engine "ray" needs Ray Data, a
    report saved as .html scikit-learn (its embedding of every head). Raises MissingPackage (a ValueError)."""
    if engine == "ray":
        analysis.require("ray.data", 'The Ray engine (engine="ray")')
    if report is not None and Path(report).suffix.lower() == ".html":
        analysis.require("sklearn", f"The report {Path(report).name}, with its map of every head,")


def check_documents(corpus: str | Path, settings: Settings, budget: Budget = Budget()) -> None:
    """What check_corpus refuses without a model (the CLI calls it before loading one): a corpus that cannot be read
    as a whole (ReadError, naming the file), or none of whose documents holds text (UnusableCorpus). Reads up to the
    first document with text only, unless there is none."""
    read, reasons = 0, []
    for document in read_corpus(corpus, text_column=settings.text_column, limit=settings.limit, budget=budget):
        read += 1
        if document.text is not None:
            return
        if len(reasons) < REASONS_KEPT:
            reasons.append(document.problem)
    raise _unusable(corpus, settings, read, reasons)


def check_corpus(model, corpus: str | Path, settings: Settings, budget: Budget = Budget()) -> str:
    """The sample (the start of the first document the atlas can use), read before any model work; ReadError when
    the corpus cannot be read as a whole, UnusableCorpus when it (its first settings.limit documents) has no usable
    document. Reads up to the first usable document only, unless there is none."""
    read, reasons = 0, []
    for document in read_corpus(corpus, text_column=settings.text_column, limit=settings.limit, budget=budget):
        read += 1
        tokens, problem = usable(model, document, settings)
        if tokens is not None:
            return document.text[:SAMPLE_CHARS]
        if len(reasons) < REASONS_KEPT:
            reasons.append(problem)
    raise _unusable(corpus, settings, read, reasons)


def _unusable(corpus: str | Path, settings: Settings, read: int, reasons: list[str]) -> UnusableCorpus:
    if not read:
        return UnusableCorpus(f"The corpus {corpus} holds no documents, so there is nothing to fingerprint; give a "
                              "corpus with at least one text.", read=0, reasons=())
    quoted = "; ".join(reason.rstrip(".") for reason in reasons[:REASONS_SHOWN])
    more = f"; and {read - REASONS_SHOWN:,} more" if read > REASONS_SHOWN else ""
    if settings.limit is not None and read >= settings.limit:
        which = f"all of its first {read:,} documents (limit {settings.limit:,}) were"
    else:
        which = "its one document was" if read == 1 else f"all {read:,} documents read were"
    return UnusableCorpus(f"The corpus {corpus} has no document the atlas can use: {which} left out ({quoted}"
                          f"{more}); give documents with text in their '{settings.text_column}' field or column.",
                          read=read, reasons=tuple(reasons))


def _check_out(out: Path) -> list[Path]:
    """Refuse an atlas folder that cannot be made (it is a file, or a file is above it); the folders the run will
    make, deepest first."""
    missing = []
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "is a file" if folder == out else f"cannot be made: {folder} is a file"
                raise ValueError(f"The atlas folder {out} {where}; give a folder path (new, or an atlas folder to "
                                 "resume) that no file is in the way of.")
            break
        missing.append(folder)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed run made, deepest first, while they are empty (what was written stays)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _check_same_run(out: Path, model, settings: Settings) -> None:
    """A folder holds one model's atlas at one setting: resuming with another would mix their rows."""
    manifest = read_manifest(out)
    if manifest is None:
        return
    mine = {"format": FORMAT, "model": model.fingerprint, "max_tokens": settings.max_tokens, "seed": settings.seed,
            "taylor_tokens": settings.taylor_tokens}
    written = manifest.get("settings") if isinstance(manifest.get("settings"), dict) else {}
    theirs = {"format": manifest.get("attnscope_atlas"), "model": manifest.get("model_fingerprint"),
              **{key: written.get(key) for key in ("max_tokens", "seed", "taylor_tokens")}}
    if mine != theirs:
        raise ValueError(f"{out} holds an atlas of {manifest.get('model')} with other settings ({theirs}); give "
                         "another --out folder, or the same model and settings to resume it.")


def write_manifest(model, corpus, out: Path, settings: Settings, engine: str, *, seconds: float,
                   sample: str) -> dict:
    """Count what the shards hold, measure the induction scores once, and write manifest.json."""
    induction = out / "induction.parquet"
    if not induction.exists():
        tokenizer = model.tokenizer
        start = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        frames = []
        for sequence in range(fingerprint.INDUCTION_SEQUENCES):
            ids = fingerprint.repeated_tokens(len(tokenizer), seed=settings.seed + sequence, start=start,
                                              avoid=tokenizer.all_special_ids)
            scores = fingerprint.induction_scores(model.module, ids, period=fingerprint.INDUCTION_PERIOD)
            layer, head = np.meshgrid(np.arange(scores.shape[0]), np.arange(scores.shape[1]), indexing="ij")
            frames.append(pd.DataFrame({"sequence": sequence, "layer": layer.ravel(), "head": head.ravel(),
                                        "induction": scores.ravel()}))
        write_frame(pd.concat(frames, ignore_index=True), induction)
    previous = read_manifest(out) or {}
    sample = previous.get("sample") or sample
    shards = sorted(p.name for p in out.glob("shard-*.parquet"))
    problem_files = sorted(out.glob("problems-*.parquet"))
    problems = pd.concat([_read_table(p) for p in problem_files]) if problem_files else pd.DataFrame(
        columns=["id", "reason"])
    documents = len(_ids(out / name for name in shards))
    manifest = {
        "attnscope_atlas": FORMAT, "model": model.spec.name, "model_fingerprint": model.fingerprint,
        "corpus": str(corpus), "settings": asdict(settings), "engine": engine, "shards": shards,
        "documents": documents, "problems": problems.to_dict("records"), "induction": induction.name,
        "seconds_this_run": round(seconds, 2), "sample": sample,
    }
    temporary = out / f".{MANIFEST}.tmp"
    temporary.write_text(json.dumps(manifest, indent=1))
    os.replace(temporary, out / MANIFEST)
    return manifest


def read(out: str | Path) -> pd.DataFrame:
    """Every (document, layer, head) row of an atlas folder, the induction score (mean over sequences) joined per
    head."""
    rows = _shard_rows(Path(out))
    induction = Path(out) / "induction.parquet"
    if not induction.exists():
        return rows
    return rows.merge(_read_table(induction).groupby(["layer", "head"], as_index=False)["induction"].mean(),
                      on=["layer", "head"])


def _shard_rows(out: Path) -> pd.DataFrame:
    shards = sorted(out.glob("shard-*.parquet"))
    if not shards:
        raise ValueError(f"{out} holds no atlas shards (shard-*.parquet): run `attnscope atlas` into it first.")
    rows = pd.concat([_read_table(path) for path in shards], ignore_index=True)
    rows["id"] = rows["id"].astype("string")  # one dtype whichever engine wrote the shard
    # One order whatever order the shards were written in (Ray's batches arrive in any order): a mean over documents
    # sums in row order, and a different order rounds differently in the last bit.
    return rows.sort_values(["id", "layer", "head"], ignore_index=True)


def summarise(out: str | Path, manifest: dict | None = None, *, budget: Budget = RESULT_BUDGET) -> AtlasResult:
    """The AtlasResult of an atlas folder: every field's per-head summary over its documents (and the induction score
    over its random sequences). The manifest is read under `budget` (its size, its nesting), a shard or the induction
    file that cannot be read is one sentence naming it."""
    out = Path(out)
    if manifest is None:
        manifest = read_manifest(out, budget=budget)
        if manifest is None:
            raise ValueError(f"{out} has no {MANIFEST}: it is not an atlas folder, or its run never finished a batch.")
    if manifest.get("attnscope_atlas") != FORMAT:
        raise ValueError(f"{out} holds an atlas of format {manifest.get('attnscope_atlas')}; this attnscope reads "
                         f"format {FORMAT}. Run it again into a new folder.")
    rows = _shard_rows(out)
    n_layers, n_heads = int(rows["layer"].max()) + 1, int(rows["head"].max()) + 1
    summary = analysis.summarise(rows, n_layers, n_heads)
    induction = out / "induction.parquet"
    if induction.exists():
        per_sequence = _read_table(induction).rename(columns={"sequence": "id"})
        summary = analysis.join(summary, analysis.summarise(per_sequence, n_layers, n_heads))
    try:
        meta = {key: manifest[key] for key in ("model", "model_fingerprint", "corpus", "engine", "documents")}
        meta["settings"] = {k: v for k, v in manifest["settings"].items() if k not in ("shard_size", "limit")}
        problems = tuple(p["reason"] for p in manifest["problems"])
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{out / MANIFEST} is not an atlas manifest (no {shown(str(error), 60)} where one is "
                         "expected); run `attnscope atlas` into a new folder.") from None
    return AtlasResult(meta=meta, summary=summary, problems=problems, sample=manifest.get("sample", ""))


def read_manifest(out: Path, *, budget: Budget = RESULT_BUDGET) -> dict | None:
    """The manifest.json of an atlas folder, read under `budget` (its size and nesting); None when there is none."""
    path = out / MANIFEST
    if not path.exists():
        return None
    size = path.stat().st_size
    if budget.total_bytes is not None and size > budget.total_bytes:
        raise ValueError(f"{path} is {size_text(size)}, over the {size_text(budget.total_bytes)} limit for a "
                         "manifest; it is not one `attnscope atlas` wrote: run it into a new folder.")
    try:
        manifest = parse_json(path.read_bytes().decode("utf-8"), depth=budget.depth)
    except (NotReadableJson, UnicodeDecodeError) as why:
        reason = why if isinstance(why, NotReadableJson) else "not UTF-8 text"
        raise ValueError(f"{path} is not a readable atlas manifest ({reason}); run `attnscope atlas` into a new "
                         "folder.") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} is not an atlas manifest (not a JSON object); run `attnscope atlas` into a new "
                         "folder.")
    return manifest


def _read_table(path: Path) -> pd.DataFrame:
    """One Parquet file of an atlas folder; a file that cannot be read (damaged, or not written by attnscope, such
    as one whose pandas metadata nests too deeply to parse) is one sentence naming it."""
    import pyarrow as pa

    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError, ValueError, KeyError, TypeError, RecursionError) as error:
        reason = "nested too deeply to read" if isinstance(error, RecursionError) else \
            shown(str(error) or type(error).__name__, 160)
        raise ValueError(f"{path} cannot be read ({reason}); it is not a file `attnscope atlas` wrote: remove it, "
                         "or run the atlas into a new folder.") from None


def open_atlas(path: str | Path, *, budget: Budget = RESULT_BUDGET) -> AtlasResult:
    """An atlas folder (its shards are summarised) or a saved AtlasResult (.parquet or .json), read under `budget`
    (attnscope.studies.base.read_result says what it bounds)."""
    path = Path(path)
    if path.is_dir():
        return summarise(path, budget=budget)
    return _atlas_only(open_result(path, budget=budget), path.name)


def read_atlas(name: str, data: bytes, *, budget: Budget = RESULT_BUDGET) -> AtlasResult:
    """A saved AtlasResult from the bytes of a file (an upload named `name`), read under `budget`."""
    return _atlas_only(read_result(name, data, budget=budget), file_label(name))


def _atlas_only(result: Result, label: str) -> AtlasResult:
    if not isinstance(result, AtlasResult):
        raise ValueError(f"{label} holds a {result.kind} result, not a head atlas; give an atlas folder or the "
                         "atlas.parquet that `attnscope atlas` wrote.")
    return result


# ---- the result -----------------------------------------------------------------------------------------------------

LABELS = {
    "entropy": "Entropy (nats)", "normalized_entropy": "Entropy / log(keys seen)", "max_weight": "Max weight",
    "sink_mass": "First-token sink mass", "learned_sink_mass": "Learned-sink mass",
    "mean_distance": "Mean distance (tokens)", "previous_token": "Previous-token score",
    "max_weight_slope": "Slope of max weight vs log L", "entropy_slope": "Slope of entropy vs log L",
    "taylor_order": f"Taylor order needed at {fingerprint.TAYLOR_TOLERANCE:g}",
    "ns_ratio": f"N_s/N at N = {fingerprint.SATURATION_N}", "saturated": "Saturated (N_s/N in 0.70-0.85)",
    "induction": "Induction score",
}
INDUCTION_HEAD, PREVIOUS_TOKEN_HEAD, SINK_HEAD = 0.3, 0.5, 0.5  # mean scores the findings call a head of that kind
NAMED = 3  # heads named per finding
MIN_CLUSTER_HEADS = 4  # fewer heads than this are not embedded or clustered


def label(field: str) -> str:
    return LABELS.get(field, field)


def _in_sentence(text: str) -> str:
    """A label as the middle of a sentence: "Max weight" -> "max weight", "N_s/N at N = 16" unchanged."""
    return text[0].lower() + text[1:] if text[:1].isupper() and text[1:2].islower() else text


def _head(index: int, n_heads: int) -> str:
    return f"L{index // n_heads}H{index % n_heads}"


@dataclass
class Embedding:
    """Every head (layer-major order) in 2-D, its cluster, and what the axes and clusters are."""

    coords: np.ndarray  # (heads, 2)
    labels: np.ndarray  # (heads,) cluster
    names: list[str]  # per cluster: the fields that set it apart
    axis: str  # "PCA: 41% + 22% of the variance"
    features: list[str]  # the fields embedded (those that vary across heads)


@dataclass(repr=False)  # Result's short repr
class AtlasResult(Result):
    """Per-head fingerprints of one model over a corpus: each field's mean over documents, spread and interval."""

    kind = "atlas"
    title = "attnscope: head atlas"

    meta: dict  # model, its fingerprint, corpus, engine, documents, settings
    summary: analysis.Summary
    problems: tuple = ()  # why each left-out document was left out
    sample: str = ""  # the start of the first usable document: the page opens a head's maps on it

    @property
    def shape(self) -> tuple[int, int]:
        return self.summary.mean.shape[1], self.summary.mean.shape[2]

    @property
    def fields(self) -> tuple[str, ...]:
        return self.summary.fields

    def values(self, field: str, statistic: str = "mean") -> np.ndarray:
        """(layers, heads) of one field's statistic: mean, std, low, high, median, q25, q75 or count."""
        if field not in self.fields:
            raise ValueError(f"This atlas has no field {field!r}; it has {', '.join(self.fields)}.")
        return getattr(self.summary, statistic)[self.fields.index(field)]

    def to_frame(self) -> pd.DataFrame:
        """One row per head: each field's mean, then its std, 95% interval, median and document count."""
        n_layers, n_heads = self.shape
        layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
        columns = {"layer": layer.ravel(), "head": head.ravel()}
        for field in self.fields:
            columns[field] = self.values(field).ravel()
        for field in self.fields:
            for statistic in ("std", "low", "high", "median", "count"):
                columns[f"{field}_{statistic}"] = self.values(field, statistic).ravel()
        return pd.DataFrame(columns)

    def embedding(self, method: str = "pca") -> Embedding:
        """Every head in 2-D with its cluster; computed once per method for this result (the page draws it on every
        rerun, and k-means over every k takes a good part of a second)."""
        memo = self.__dict__.setdefault("_embeddings", {})  # not a field: never saved, never compared
        if method not in memo:
            memo[method] = self._embedding(method)
        return memo[method]

    def _embedding(self, method: str) -> Embedding:
        values, names = analysis.features(self.summary.mean, self.fields)
        if len(values) < MIN_CLUSTER_HEADS or not names:
            raise ValueError(f"{len(values)} heads with {len(names)} varying fields: too few to embed.")
        coords, axis = analysis.embed(values, method)
        labels = analysis.clusters(values)
        described = analysis.describe_clusters(values, [_in_sentence(label(n)) for n in names], labels)
        return Embedding(coords=coords, labels=labels, names=described, axis=axis, features=names)

    def strongest(self, field: str, count: int = NAMED) -> str:
        """'L18H6 0.92 [0.90, 0.94], ...': the heads with the largest mean of a field, with their intervals."""
        mean, low, high = (self.values(field, s).ravel() for s in ("mean", "low", "high"))
        order = [i for i in np.argsort(-np.nan_to_num(mean, nan=-np.inf))[:count] if np.isfinite(mean[i])]
        n_heads = self.shape[1]
        return ", ".join(f"{_head(i, n_heads)} {mean[i]:.2f}" + (f" [{low[i]:.2f}, {high[i]:.2f}]"
                                                                 if np.isfinite(low[i]) else "") for i in order)

    def findings(self) -> list[Finding]:
        n_layers, n_heads = self.shape
        total = n_layers * n_heads
        settings = self.meta["settings"]
        out = [Finding("Corpus", f"{self.meta['documents']} documents, up to {settings['max_tokens']} tokens each, "
                                 f"{total} heads ({n_layers} layers x {n_heads}); {len(self.problems)} documents left "
                                 "out. Intervals are 95% t intervals of the mean over documents.")]
        if "induction" in self.fields:
            strong = int((self.values("induction") > INDUCTION_HEAD).sum())
            out.append(Finding(
                "Induction heads",
                f"{strong} of {total} heads put more than {INDUCTION_HEAD} of their weight on the token after the "
                f"earlier occurrence, over {fingerprint.INDUCTION_SEQUENCES} sequences of "
                f"{fingerprint.INDUCTION_PERIOD} random tokens repeated; the strongest: {self.strongest('induction')}.",
                "induction heads attend from a repeated token to the token that followed its earlier occurrence "
                "(Olsson et al. 2022)."))
        strong = int((self.values("previous_token") > PREVIOUS_TOKEN_HEAD).sum())
        out.append(Finding("Previous-token heads",
                           f"{strong} of {total} heads put more than {PREVIOUS_TOKEN_HEAD} of their weight on the "
                           f"previous token, on average over documents; the strongest: "
                           f"{self.strongest('previous_token')}."))
        strong = int((self.values("sink_mass") > SINK_HEAD).sum())
        out.append(Finding("First-token sinks", f"{strong} of {total} heads put more than {SINK_HEAD} of their weight "
                                                f"on the first token; the strongest: {self.strongest('sink_mass')}."))
        out += self._collapse_findings(total) + self._taylor_findings(total)
        return out

    def _collapse_findings(self, total: int) -> list[Finding]:
        max_slope, entropy_slope = self.values("max_weight_slope"), self.values("entropy_slope")
        falls = int((self.values("max_weight_slope", "high") < 0).sum())
        rises = int((self.values("entropy_slope", "low") > 0).sum())
        measured = int(np.isfinite(max_slope).sum())
        top = float(np.nanmax(self.values("normalized_entropy")))
        bound = (f"The largest mean normalised entropy of a head is {top:.3f} (entropy / log of the keys a row sees, "
                 "at most 1).")
        paper = "as L grows every weight tends to 1/L and the entropy approaches log L (Mudarisov et al., Lemma 1)."
        if not measured:
            out = [Finding("Vanishing attention", f"no slope: no row sees {fingerprint.MIN_KEYS} keys or more in these "
                                                  f"documents, or none sees two different numbers of them. {bound}",
                           paper)]
        else:
            out = [Finding(
                "Vanishing attention",
                f"of {measured} heads with a slope, the max weight falls with log L in {falls} (95% interval below 0) "
                f"and the entropy rises in {rises} (interval above 0); median slopes {np.nanmedian(max_slope):+.3f} "
                f"(max weight) and {np.nanmedian(entropy_slope):+.3f} (entropy, nats per unit of log L; uniform "
                f"attention: +1). {bound}", paper)]
        if "ns_ratio" in self.fields and np.isfinite(self.values("ns_ratio")).any():
            ratio = self.values("ns_ratio")
            low, high = collapse.SATURATED_BAND
            band = int(((ratio >= low) & (ratio <= high)).sum())
            out.append(Finding(
                "Saturated heads",
                f"{band} of {int(np.isfinite(ratio).sum())} heads have a mean N_s/N in [{low}, {high}] at N = "
                f"{fingerprint.SATURATION_N} (median {np.nanmedian(ratio):.2f}); a head is in the band in "
                f"{np.nanmean(self.values('saturated')):.0%} of its documents on average.",
                "N_s/N saturates at 0.70-0.85; 70-80% means a saturated head (Mudarisov et al., fig. 3)."))
        return out

    def _taylor_findings(self, total: int) -> list[Finding]:
        order, settings = self.values("taylor_order"), self.meta["settings"]
        reached = int((order <= fingerprint.TAYLOR_MAX_ORDER).sum())
        median = float(np.nanmedian(order))
        said = f"> {fingerprint.TAYLOR_MAX_ORDER}" if median > fingerprint.TAYLOR_MAX_ORDER else f"{median:.1f}"
        return [Finding(
            "Taylor order needed",
            f"{reached} of {total} heads reproduce their outputs within {fingerprint.TAYLOR_TOLERANCE:g} relative "
            f"error by order {fingerprint.TAYLOR_MAX_ORDER} on average over documents (first "
            f"{min(settings['taylor_tokens'], settings['max_tokens'])} tokens, exact softmax denominator); median "
            f"order {said}.",
            "adding orders up to n = 10 nearly matches softmax (Mongaras & Larson).")]

    def figures(self, field: str | None = None, embedding: str = "pca") -> dict[str, object]:
        """The layers x heads map of `field` (every field when None), then the embedding of all heads."""
        from attnscope.figures import atlas as atlas_figures
        from attnscope.figures.maps import stat_heatmap

        out = {f"map-{name}": stat_heatmap(self.values(name), title=f"{label(name)}: mean over documents",
                                           label=label(name)) for name in ([field] if field else self.fields)}
        try:
            found = self.embedding(embedding)
        except analysis.MissingPackage:
            raise
        except ValueError:  # too few heads, or none varies
            return out
        n_heads = self.shape[1]
        means = {name: self.values(name).ravel() for name in found.features}
        hover = [[f"{label(name)} {means[name][i]:.3g}" for name in found.features] for i in range(len(found.coords))]
        out["embedding"] = atlas_figures.embedding(
            found.coords, found.labels, n_heads=n_heads, names=found.names, hover=hover, axis=found.axis,
            title=f"Every head of {self.meta['model']}, by its fingerprint")
        return out

    def diff(self, other: AtlasResult) -> AtlasDiff:
        """B - A head by head, with `self` as A and `other` as B."""
        if not isinstance(other, AtlasResult):
            kind = getattr(other, "kind", type(other).__name__)
            raise ValueError(f"The other side is a {kind} result, not a head atlas; compare two atlases (an atlas "
                             "folder or the atlas.parquet that `attnscope atlas` wrote, opened with attnscope.open).")
        return AtlasDiff(meta={"a": _side(self), "b": _side(other)},
                         difference=analysis.difference(self.summary, other.summary))


def _side(result: AtlasResult) -> str:
    return f"{result.meta['model']} on {result.meta['documents']} documents of {result.meta['corpus']}"


@dataclass(repr=False)  # Result's short repr
class AtlasDiff(Result):
    """Two atlases of models of the same shape, B - A per head."""

    kind = "atlas-diff"
    title = "attnscope: two head atlases, B - A"

    meta: dict  # "a", "b": what each side is
    difference: analysis.Difference

    def values(self, field: str, what: str = "delta") -> np.ndarray:
        if field not in self.difference.fields:
            raise ValueError(f"Both atlases have {', '.join(self.difference.fields)}; not {field!r}.")
        return getattr(self.difference, what)[self.difference.fields.index(field)]

    def findings(self) -> list[Finding]:
        out = [Finding("Sides", f"A: {self.meta['a']}. B: {self.meta['b']}. A head changed when Welch's t test "
                                f"separates its means at a false-discovery rate of {analysis.FDR:.0%} over every head "
                                "and field (Benjamini-Hochberg).")]
        n_heads = self.difference.delta.shape[2]
        for field in self.difference.fields:
            delta, significant = self.values(field).ravel(), self.values(field, "significant").ravel()
            order = np.argsort(-np.abs(np.nan_to_num(delta)))[:NAMED]
            largest = ", ".join(f"{_head(i, n_heads)} {delta[i]:+.3g}" for i in order
                                if np.isfinite(delta[i]) and delta[i] != 0)
            out.append(Finding(label(field), f"{int(significant.sum())} of {delta.size} heads changed; the largest "
                                             f"changes: {largest or 'none'}."))
        return out

    def figures(self, field: str | None = None) -> dict[str, object]:
        from attnscope.figures import atlas as atlas_figures
        from attnscope.figures.compare import difference_heatmap

        out = {}
        for name in [field] if field else self.difference.fields:
            delta = self.values(name)
            figure = difference_heatmap(delta, columns=[f"H{h}" for h in range(delta.shape[1])],
                                        title=f"{label(name)}: B - A", label=label(name))
            out[f"diff-{name}"] = atlas_figures.mark_significant(figure, self.values(name, "significant"))
        return out

    def to_frame(self) -> pd.DataFrame:
        fields, delta = self.difference.fields, self.difference.delta
        f, layer, head = np.meshgrid(np.arange(len(fields)), np.arange(delta.shape[1]), np.arange(delta.shape[2]),
                                     indexing="ij")
        return pd.DataFrame({"field": np.array(fields)[f.ravel()], "layer": layer.ravel(), "head": head.ravel(),
                             "delta": delta.ravel(), "p_value": self.difference.p_value.ravel(),
                             "significant": self.difference.significant.ravel()})
