"""The head atlas: every head's fingerprint over a whole corpus, written as Parquet shards that a run can resume.

`run(model, corpus, out)` reads the corpus (attnscope.corpus), cuts each document to `max_tokens` tokens, and writes,
for every document, one row per (layer, head) with its fingerprint (attnscope.analyses.fingerprint) into shards of
`shard_size` documents: `out/shard-<first>-<n>.parquet`, each written to a temporary name and renamed, so a shard is
either whole or absent. Documents that cannot be used (empty, not text, longer than the model's positions) go to
`out/problems-*.parquet` with the reason. The shards are the record of what is done: a run that starts where shards
exist skips every document they hold, so an interrupted run resumes and no document is counted twice.
`out/manifest.json` (rewritten at the end) names the model, the settings, the shards, the problems and the counts;
`out/induction.parquet` holds the model's induction score per head (one pass on repeated random tokens).

Engines: "local" runs in this process; "ray" hands batches of documents to Ray Data actors that each hold the model
once (attnscope.studies.atlas_ray), on a local Ray instance or the cluster at `address`. Both write the same rows.
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

from attnscope.analyses import fingerprint
from attnscope.corpus import Document, read_corpus

ENGINES = ("local", "ray")
MANIFEST = "manifest.json"
FORMAT = 1


@dataclass(frozen=True)
class Settings:
    max_tokens: int = 512  # tokens analysed per document (its start)
    limit: int | None = None  # documents read from the corpus (unusable ones count)
    seed: int = 0  # the induction test's random tokens
    shard_size: int = 16  # documents per shard
    text_column: str = "text"


def fingerprint_rows(model, documents: Iterable[Document], settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows, problems) for some documents: one row per (document, layer, head), one problem per unusable one."""
    rows, problems = [], []
    limit = model.max_positions
    for document in documents:
        if document.text is None:
            problems.append({"id": document.id, "reason": document.problem})
            continue
        tokens = model.tokenize(document.text, max_tokens=settings.max_tokens)
        if limit and tokens.n_text_tokens > limit and settings.max_tokens > limit:
            problems.append({"id": document.id, "reason": f"{document.id}: {tokens.n_text_tokens:,} tokens, over "
                                                          f"the model's {limit:,} positions."})
            continue
        found = fingerprint.document_fingerprint(model.module, tokens.as_tensor())
        n_layers, n_heads = found["entropy"].shape
        layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
        rows.append(pd.DataFrame({"id": document.id, "tokens": len(tokens), "layer": layer.ravel(),
                                  "head": head.ravel(), **{name: values.ravel() for name, values in found.items()}}))
    frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return frame, pd.DataFrame(problems, columns=["id", "reason"])


def _ids(paths: Iterable[Path]) -> set[str]:
    import pyarrow.parquet as pq

    return {doc_id for path in paths for doc_id in pq.read_table(path, columns=["id"]).column(0).to_pylist()}


def done_ids(out: Path) -> set[str]:
    """Every document id the shards and problem files in `out` already hold."""
    return _ids([*out.glob("shard-*.parquet"), *out.glob("problems-*.parquet")])


def _write(frame: pd.DataFrame, path: Path) -> None:
    """Whole or absent: written under a temporary name, then renamed."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_parquet(temporary, index=False)
    os.replace(temporary, path)


def write_batch(out: Path, rows: pd.DataFrame, problems: pd.DataFrame, first: str) -> None:
    """One batch's shard and problem file, named by their first document id's position (unique per run)."""
    stamp = f"{time.time_ns():x}"
    if len(rows):
        _write(rows, out / f"shard-{stamp}-{first}.parquet")
    if len(problems):
        _write(problems, out / f"problems-{stamp}-{first}.parquet")


def safe_label(doc_id: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in doc_id)[:40]


def _batches(documents: Iterator[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for document in documents:
        batch.append(document)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def pending(corpus: str | Path, out: Path, settings: Settings) -> Iterator[Document]:
    """The corpus's documents (at most settings.limit) that no shard in `out` holds yet."""
    seen = done_ids(out)
    return (d for d in read_corpus(corpus, text_column=settings.text_column, limit=settings.limit)
            if d.id not in seen)


def run(model, corpus: str | Path, out: str | Path, *, settings: Settings = Settings(), engine: str = "local",
        address: str | None = None, workers: int = 2, progress: Callable[[float, str], None] | None = None) -> dict:
    """Fingerprint every document of `corpus` into `out` (resuming what is there); returns the manifest."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_run(out, model, settings)
    documents = pending(corpus, out, settings)
    started = time.perf_counter()
    if engine == "local":
        done = 0
        for batch in _batches(documents, settings.shard_size):
            rows, problems = fingerprint_rows(model, batch, settings)
            write_batch(out, rows, problems, safe_label(batch[0].id))
            done += len(batch)
            if progress is not None:  # a stream has no known length: the fraction is of the limit, when there is one
                progress(min(0.99, done / (settings.limit or done + 1)), f"{done} documents fingerprinted")
    else:
        from attnscope.studies import atlas_ray

        atlas_ray.run(model.spec, documents, out, settings, address=address, workers=workers, progress=progress)
    return write_manifest(model, corpus, out, settings, engine, seconds=time.perf_counter() - started)


def _check_same_run(out: Path, model, settings: Settings) -> None:
    """A folder holds one model's atlas at one setting: resuming with another would mix their rows."""
    path = out / MANIFEST
    if not path.exists():
        return
    manifest = json.loads(path.read_text())
    mine = {"model": model.fingerprint, "max_tokens": settings.max_tokens, "seed": settings.seed}
    theirs = {"model": manifest.get("model_fingerprint"), "max_tokens": manifest["settings"].get("max_tokens"),
              "seed": manifest["settings"].get("seed")}
    if mine != theirs:
        raise ValueError(f"{out} holds an atlas of {manifest.get('model')} with other settings ({theirs}); give "
                         "another --out folder, or the same model and settings to resume it.")


def write_manifest(model, corpus, out: Path, settings: Settings, engine: str, *, seconds: float) -> dict:
    """Count what the shards hold, measure the induction scores once, and write manifest.json."""
    induction = out / "induction.parquet"
    if not induction.exists():
        tokenizer = model.tokenizer
        start = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        ids = fingerprint.repeated_tokens(len(tokenizer), seed=settings.seed, start=start,
                                          avoid=tokenizer.all_special_ids)
        scores = fingerprint.induction_scores(model.module, ids, period=fingerprint.INDUCTION_PERIOD)
        layer, head = np.meshgrid(np.arange(scores.shape[0]), np.arange(scores.shape[1]), indexing="ij")
        _write(pd.DataFrame({"layer": layer.ravel(), "head": head.ravel(), "induction": scores.ravel()}), induction)
    shards = sorted(p.name for p in out.glob("shard-*.parquet"))
    problem_files = sorted(out.glob("problems-*.parquet"))
    problems = pd.concat([pd.read_parquet(p) for p in problem_files]) if problem_files else pd.DataFrame(
        columns=["id", "reason"])
    documents = len(_ids(out / name for name in shards))
    manifest = {
        "attnscope_atlas": FORMAT, "model": model.spec.name, "model_fingerprint": model.fingerprint,
        "corpus": str(corpus), "settings": asdict(settings), "engine": engine, "shards": shards,
        "documents": documents, "problems": problems.to_dict("records"), "induction": induction.name,
        "seconds_this_run": round(seconds, 2),
    }
    temporary = out / f".{MANIFEST}.tmp"
    temporary.write_text(json.dumps(manifest, indent=1))
    os.replace(temporary, out / MANIFEST)
    return manifest


def read(out: str | Path) -> pd.DataFrame:
    """Every (document, layer, head) row of an atlas folder, the induction score joined per head."""
    out = Path(out)
    shards = sorted(out.glob("shard-*.parquet"))
    if not shards:
        raise ValueError(f"{out} holds no atlas shards (shard-*.parquet).")
    rows = pd.concat([pd.read_parquet(path) for path in shards], ignore_index=True)
    rows["id"] = rows["id"].astype("string")  # one dtype whichever engine wrote the shard
    induction = out / "induction.parquet"
    return rows.merge(pd.read_parquet(induction), on=["layer", "head"]) if induction.exists() else rows
