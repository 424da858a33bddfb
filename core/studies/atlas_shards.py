"""The head atlas's unit of work, shared by its two engines: a batch of documents in, their fingerprint rows and
problems out, written as one shard.

attnscope.studies.atlas runs it in this process, attnscope.studies.atlas_ray in Ray actors; both import it from here,
so neither engine imports the other at its top (atlas_ray is loaded only when engine="ray" asks for it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from attnscope.analyses import fingerprint
from attnscope.corpus import Document
from attnscope.tokens import Tokens


@dataclass(frozen=True)
class Settings:
    max_tokens: int = 512  # tokens analysed per document (its start)
    limit: int | None = None  # documents read from the corpus (unusable ones count)
    seed: int = 0  # the induction test's random tokens
    shard_size: int = 16  # documents per shard
    text_column: str = "text"
    taylor_tokens: int = fingerprint.TAYLOR_TOKENS  # rows of each document the Taylor sweep reads

    def __post_init__(self):
        for name, low in (("max_tokens", 2), ("shard_size", 1), ("taylor_tokens", 1), ("limit", 1)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < low):
                raise ValueError(f"{name} must be a whole number of at least {low}; got {value!r}.")


def usable(model, document: Document, settings: Settings) -> tuple[Tokens | None, str | None]:
    """(the document's tokens, None) when the atlas can use it, else (None, the sentence saying why not)."""
    if document.text is None:
        return None, document.problem
    tokens = model.tokenize(document.text, max_tokens=settings.max_tokens)
    limit = model.max_positions
    if limit and tokens.n_text_tokens > limit and settings.max_tokens > limit:
        return None, f"{document.id}: {tokens.n_text_tokens:,} tokens, over the model's {limit:,} positions."
    return tokens, None


def fingerprint_rows(model, documents: Iterable[Document], settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows, problems) for some documents: one row per (document, layer, head), one problem per unusable one.
    Each document is its own forward pass (1, T): no padding, so a document's rows do not depend on its batch."""
    rows, problems = [], []
    for document in documents:
        tokens, problem = usable(model, document, settings)
        if tokens is None:
            problems.append({"id": document.id, "reason": problem})
            continue
        found = fingerprint.document_fingerprint(model.module, tokens.as_tensor(),
                                                 taylor_tokens=settings.taylor_tokens)
        n_layers, n_heads = found["entropy"].shape
        layer, head = np.meshgrid(np.arange(n_layers), np.arange(n_heads), indexing="ij")
        rows.append(pd.DataFrame({"id": document.id, "tokens": len(tokens), "layer": layer.ravel(),
                                  "head": head.ravel(), **{name: values.ravel() for name, values in found.items()}}))
    frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return frame, pd.DataFrame(problems, columns=["id", "reason"])


def write_frame(frame: pd.DataFrame, path: Path) -> None:
    """Whole or absent: written under a temporary name, then renamed."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_parquet(temporary, index=False)
    os.replace(temporary, path)


def write_batch(out: Path, rows: pd.DataFrame, problems: pd.DataFrame, first: str) -> None:
    """One batch's shard and problem file, named by their first document id's position (unique per run)."""
    stamp = f"{time.time_ns():x}"
    if len(rows):
        write_frame(rows, out / f"shard-{stamp}-{first}.parquet")
    if len(problems):
        write_frame(problems, out / f"problems-{stamp}-{first}.parquet")


def safe_label(doc_id: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in doc_id)[:40]
