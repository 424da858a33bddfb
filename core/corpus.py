"""A corpus for corpus-wide studies (the head atlas), read as a stream of documents, one at a time.

`read_corpus(path)` takes:
- a folder: every .txt and .md file below it (sorted by path), one document each;
- a .jsonl file: one JSON object per line with a text field (`text_column`, default "text");
- a .csv file: one row per document, the text column by name;
- a .parquet file: one row per document, read a record batch at a time (pyarrow);
- a Hugging Face `datasets` dataset saved with `save_to_disk` (a folder holding dataset_info.json or state.json), read
  with `datasets.load_from_disk` (its Arrow files are memory-mapped, so rows stream).

Each document has a stable id (the file's path relative to the corpus, `file:line` for JSONL, `file:row` for tables,
`row` for a dataset), so a run that stops can resume and no document is counted twice. A document that cannot be
used (empty, not UTF-8 text, no text field, not a string) is still yielded, with `problem` set to one sentence and
no text, so the caller can list it in its manifest and go on.

The standard library's json for JSONL, pyarrow's streaming readers for CSV and Parquet (pandas would read them whole), and
`datasets` only when a dataset folder is given.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".md")
FORMATS = "a folder of .txt/.md files, a .jsonl, .csv or .parquet file, or a datasets folder (save_to_disk)"
_BATCH_ROWS = 256  # Parquet rows read at a time


@dataclass(frozen=True)
class Document:
    id: str  # stable within the corpus: what a resumed run skips
    text: str | None  # None when the document cannot be used
    problem: str | None = None  # one sentence saying why, when text is None


def _checked(doc_id: str, value) -> Document:
    if not isinstance(value, str):
        kind = "missing" if value is None else f"a {type(value).__name__}, not a string"
        return Document(doc_id, None, f"{doc_id}: its text is {kind}.")
    if not value.strip():
        return Document(doc_id, None, f"{doc_id}: empty.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        return Document(doc_id, None, f"{doc_id}: not valid text (lone surrogate at character {error.start + 1:,}).")
    return Document(doc_id, value)


def _text_file(path: Path, doc_id: str) -> Document:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        return Document(doc_id, None, f"{doc_id}: looks like a binary file, not text.")
    try:
        return _checked(doc_id, data.decode("utf-8"))
    except UnicodeDecodeError as error:
        return Document(doc_id, None, f"{doc_id}: not UTF-8 text (byte {error.start:,} is 0x{data[error.start]:02x}).")


def _folder(root: Path) -> Iterator[Document]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    for path in files:
        yield _text_file(path, path.relative_to(root).as_posix())


def _jsonl(path: Path, column: str) -> Iterator[Document]:
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            doc_id = f"{path.name}:{number}"
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (UnicodeDecodeError, ValueError):
                yield Document(doc_id, None, f"{doc_id}: not a JSON object.")
                continue
            if not isinstance(record, dict) or column not in record:
                yield Document(doc_id, None, f"{doc_id}: no \"{column}\" field.")
                continue
            yield _checked(doc_id, record[column])


def _csv(path: Path, column: str) -> Iterator[Document]:
    """Rows by record batches (pyarrow's streaming reader: quoted cells may span lines and hold whole documents,
    with no process-wide field-size limit to raise, as the csv module would need)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    options = dict(parse_options=pacsv.ParseOptions(newlines_in_values=True),
                   read_options=pacsv.ReadOptions(block_size=1 << 24),
                   convert_options=pacsv.ConvertOptions(column_types={column: pa.string()}))  # "42" is a text
    try:
        reader = pacsv.open_csv(path, **options)
    except (pa.ArrowInvalid, UnicodeDecodeError) as error:
        raise ValueError(f"{path.name} cannot be read as CSV: {str(error).splitlines()[0]}") from None
    names = reader.schema.names
    if column not in names:
        raise ValueError(f"{path.name} has no '{column}' column (columns: {', '.join(names) or 'none'}); pass "
                         "text_column=... .")
    number = 0
    try:
        for batch in reader:
            for value in batch.column(names.index(column)).to_pylist():
                number += 1
                yield _checked(f"{path.name}:{number}", value)
    except pa.ArrowInvalid as error:
        raise ValueError(f"{path.name} row {number + 1} cannot be read as CSV: {str(error).splitlines()[0]}") from None


def _parquet(path: Path, column: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    if column not in table.schema_arrow.names:
        raise ValueError(f"{path.name} has no '{column}' column (columns: {', '.join(table.schema_arrow.names)}); "
                         "pass text_column=... .")
    number = 0
    for batch in table.iter_batches(batch_size=_BATCH_ROWS, columns=[column]):
        for value in batch.column(0).to_pylist():
            number += 1
            yield _checked(f"{path.name}:{number}", value)


def _dataset(root: Path, column: str) -> Iterator[Document]:
    try:
        import datasets
    except ImportError:
        raise ValueError(f"{root} is a Hugging Face datasets folder: `pip install datasets` to read it.") from None
    data = datasets.load_from_disk(str(root))
    if isinstance(data, datasets.DatasetDict):
        raise ValueError(f"{root} holds several splits ({', '.join(data)}): pass the folder of one split.")
    if column not in data.column_names:
        raise ValueError(f"{root} has no '{column}' column (columns: {', '.join(data.column_names)}); pass "
                         "text_column=... .")
    for number, value in enumerate(data[column] if len(data) <= _BATCH_ROWS else _rows(data, column)):
        yield _checked(str(number), value)


def _rows(data, column: str) -> Iterator:
    for start in range(0, len(data), _BATCH_ROWS):
        yield from data[start:start + _BATCH_ROWS][column]


def is_dataset_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in ("dataset_info.json", "state.json",
                                                                    "dataset_dict.json"))


def read_corpus(path: str | Path, *, text_column: str = "text", limit: int | None = None) -> Iterator[Document]:
    """The documents of a corpus, in a stable order, at most `limit` (unusable ones count too).

    Raises (at once, before any document is read further):
        ValueError: a path that does not exist or is none of the formats, or a table without the text column.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path} does not exist; give {FORMATS}.")
    if is_dataset_folder(path):
        documents = _dataset(path, text_column)
    elif path.is_dir():
        documents = _folder(path)
    elif path.suffix.lower() == ".jsonl":
        documents = _jsonl(path, text_column)
    elif path.suffix.lower() == ".csv":
        documents = _csv(path, text_column)
    elif path.suffix.lower() == ".parquet":
        documents = _parquet(path, text_column)
    elif path.suffix.lower() in TEXT_SUFFIXES:
        documents = iter([_text_file(path, path.name)])
    else:
        raise ValueError(f"{path.name}: not a corpus attnscope reads; give {FORMATS}.")
    first = next(documents, None)  # a table without the text column says so now
    if first is None:
        return iter(())
    return itertools.islice(itertools.chain([first], documents), limit)
