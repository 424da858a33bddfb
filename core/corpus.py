"""A corpus for corpus-wide studies (the head atlas), read as a stream of documents, one at a time.

The corpus is read by attnscope.reader, the one reader prompt uploads use too, so both take the same formats and say
the same sentences: a .txt/.md file (one document), a .jsonl, .json, .csv or .parquet file (one document per record,
the text in `text_column`), a folder of such files (in path order), or a Hugging Face `datasets` folder written with
`save_to_disk` (memory-mapped, so rows stream). Parquet and datasets rows are read a batch at a time, JSON Lines and
CSV a record at a time; a .json array is read whole.

Each document has a stable id (the file's path relative to the corpus, `file:line` for JSONL, `file:row` for tables
with CSV rows numbered as a spreadsheet numbers them, `file:item` for a .json array, the row index for a dataset), so
a run that stops can resume and no document is counted twice. A document that cannot be used is still yielded, with
`problem` set to one sentence (file, place, reason) and no text, so the caller can list it in its manifest and go on.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

from attnscope.reader import INPUTS, Budget, Document, ReadError, is_dataset_folder, read_path

FORMATS = INPUTS
__all__ = ["FORMATS", "Budget", "Document", "ReadError", "is_dataset_folder", "read_corpus"]


def read_corpus(path: str | Path, *, text_column: str = "text", limit: int | None = None,
                budget: Budget = Budget()) -> Iterator[Document]:
    """The documents of a corpus, in a stable order, at most `limit` (unusable ones count too).

    Args:
        path: a file, a folder of files, or a datasets folder.
        text_column: the column or field that holds each document's text.
        limit: stop after this many documents; None: all.
        budget: the limits the reader keeps to (attnscope.reader.Budget); past its `documents`, the last document
            yielded says that the rest was not read.

    Raises (at once, before any document is read):
        ReadError (a ValueError): a path that does not exist or is none of the formats, or a file that cannot be read
            as a whole (over the budget, not text, not UTF-8, a table without the text column ...).
    """
    return itertools.islice(read_path(path, text_column=text_column, budget=budget), limit)
