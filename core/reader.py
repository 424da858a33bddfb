"""One reader for every text a visitor or a user hands attnscope: prompt uploads (attnscope.prompts) and corpora
(attnscope.corpus) go through the same formats, the same error contract and the same budget.

Formats (FORMATS), the same for an uploaded file (`read_upload`) and a file on disk (`read_path`):
- .txt / .md: the whole file is one document;
- .jsonl: one JSON object per line, split at "\\n" only as JSON Lines specifies (a raw U+2028 inside a string does not
  cut its line; a "\\r" before the "\\n" is JSON whitespace); blank lines are skipped;
- .json: one JSON array of such objects, read whole, then item by item (`JSONDecoder.raw_decode`);
- .csv: the csv module's excel dialect, a header row naming the columns; a row is a record (a quoted cell may span
  lines), streamed from the file;
- .parquet: the text column (and a "name" column when there is one) read a few rows at a time with pyarrow.
`read_path` also takes a folder (every file of those types below it, in path order, skipping names that start with
".") and a Hugging Face `datasets` folder written by `save_to_disk` (memory-mapped, read a batch at a time). A record's
text is in its text column or field (`text_column`, default "text": the exact name, else the first one equal to it
ignoring case and surrounding spaces); its "name", found the same way, is kept when it is a string (prompts show it).

Places and ids: a line of a .jsonl and an item of a .json count from 1 as an editor numbers them; a .csv row counts as
a spreadsheet numbers it (the header is row 1, blank lines count); a .parquet row counts from 1; a datasets row from 0,
as `dataset[i]` indexes it. A document's id is "<file>:<number>" ("<file>" alone for a text file, where <file> is the
path inside a folder; the bare number for a datasets row), so a run that stops can resume and nothing is counted twice.

Error contract. A failure of a whole file (or folder) raises ReadError at once, before any document is yielded: a
type not in FORMATS, over the budget, empty, not text (NUL or mostly control bytes in its first 8 KB, as in binary
files and UTF-16), not UTF-8 (where: the byte offset and the line; no encoding is guessed; a UTF-8 byte-order mark is
dropped; a byte that is not UTF-8 past the first 8 KB of a .jsonl or .csv costs only its record), a .csv without the
text column (the columns found are listed), a .json that is not an array, a .parquet without its PAR1 magic bytes,
damaged, or whose text column is not of a string type. Inside a folder such a failure costs only that file: it becomes
that file's Document with `problem` set. A record that cannot be used is still
yielded, with `text` None and `problem` one sentence naming the file, the place and the reason ("'c.jsonl', line 4: not
JSON (Expecting value)."), so the caller can list it and go on: not JSON; not an object; no text field; a text that is
null, not a string, blank, not valid UTF-8 (a byte in a .csv, a lone surrogate escape in JSON), or over the budget;
nested too deeply; an integer over 4,300 digits (Python's int/str limit, enforced here whatever `sys` says, so a
20 MB number cannot take minutes). Where reading cannot go on (a .json item that is not JSON, a damaged Parquet page,
the budget's document count reached), the last document has `cut` set and says that the rest was not read.

Budget. `Budget(total_bytes, value_bytes, documents, depth)` is passed in by the caller (generous defaults here; the
hosting policy passes tighter ones). total_bytes is checked from the file sizes before reading, and for Parquet also
against the text column's uncompressed size from the footer; value_bytes bounds one record as the file stores it
(a text file, a JSONL line and a CSV row are refused before they are parsed or even read whole: reading stops at the
limit and steps over the rest; a .json item, a Parquet or dataset value is measured once parsed, and a Parquet row
group of one row whose text column is over the limit is refused from its footer, unread); documents bounds the records
read, usable or not; depth bounds the JSON nesting of one record (json.loads of 200,000 brackets would raise
RecursionError: that too becomes "nested too deeply to read").

`parse_json(text, depth=...)` is the same JSON check for one whole text outside a corpus (a result file, Parquet
metadata): not JSON, nested too deeply, an integer too long, each refused as NotReadableJson saying why.

The csv module's process-wide field limit (131,072 characters by default) would refuse a long document whatever the
budget says, so importing this module raises it once to the largest the platform's C long holds; value_bytes bounds a
row here instead.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import BinaryIO, TextIO

FORMATS = {".txt": "text", ".md": "text", ".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
INPUTS = ("a .txt, .md, .jsonl, .json, .csv or .parquet file, a folder of them, or a Hugging Face datasets folder "
          "(save_to_disk)")
DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
ENCODING = "utf-8"
MAX_LABEL_CHARS = 80  # file names as messages show them, "…" included

_SNIFF_BYTES = 8192  # what is looked at to tell text from binary
_BOM = b"\xef\xbb\xbf"
_MAX_INT_DIGITS = 4300  # Python's default int/str conversion limit (sys.get_int_max_str_digits)
_SKIP_CHUNK = 1 << 20  # bytes or characters read at a time while stepping over a record that is over the budget
_BATCH_ROWS = 256  # Parquet and dataset rows read at a time, at most
_BATCH_BYTES = 16 * 10**6  # a Parquet batch's text, uncompressed, about
_SHOWN_COLUMNS = 20  # columns listed when a table has no text column
PARQUET_LIST_ITEMS = 100_000  # items in any one list of a Parquet footer: columns, row groups, metadata entries
_CSV_FIELD_LIMIT = 2**31 - 1  # the largest csv.field_size_limit the platform's C long holds everywhere
# What turning one record into a document can raise, besides what is foreseen; UnicodeError is a ValueError.
_RECORD_ERRORS = (ValueError, TypeError, OverflowError, MemoryError, RecursionError)

csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))

_WORD = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]+")  # whitespace and control characters separate the words of a label
_CSV_UNQUOTED = re.compile(r"[^,\r\n]*")  # the rest of a CSV cell up to the next delimiter or line break
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


@dataclass(frozen=True)
class Budget:
    """How much one read may take in; each limit, when reached, is one sentence (a ReadError or a problem)."""

    total_bytes: int | None = None  # bytes of the input: a file, a folder's files together, a Parquet text column
    # uncompressed; None: no limit
    value_bytes: int = 64 * 10**6  # bytes of one record as stored: a text file, a JSONL line, a CSV row, a .json item,
    # a Parquet or dataset text value
    documents: int | None = None  # records read, usable or not, before reading stops; None: no limit
    depth: int = 100  # JSON nesting of one record ({"text": "..."} is 1), measured once parsed; deeper ones are
    # refused, as are those the parser itself cannot nest (about 1,000 levels: RecursionError)

    def __post_init__(self):
        for name in ("total_bytes", "value_bytes", "documents", "depth"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"Budget.{name} must be a whole number of at least 1 or None; got {value!r}.")


class ReadError(ValueError):
    """A whole file or folder cannot be read: one sentence naming it, saying what was wrong and what to do."""

    def __init__(self, label: str, reason: str):
        super().__init__(f"'{label}' {reason}.")
        self.label, self.reason = label, reason


@dataclass(frozen=True)
class Document:
    id: str  # stable within the corpus: what a resumed run skips
    text: str | None  # None when the document cannot be used
    problem: str | None = None  # one sentence naming the file, the place and the reason, when text is None
    name: str | None = None  # the record's "name" field or column, when it has one that is a string
    place: str = ""  # where in its file: "line 3", "row 4", "item 2"; "" for a whole file
    reason: str | None = None  # the problem without its file and place, for a list of several
    cut: bool = False  # the last document read: nothing after it was read (its problem says why)


def one_line(text: str, limit: int) -> str:
    """`text` on one line (runs of whitespace and control characters become one space), at most `limit` characters
    with "…" marking a cut; reads only as far into `text` as the limit needs."""
    words, length = [], -1
    for match in _WORD.finditer(text):
        start, end = match.span()
        words.append(text[start:min(end, start + limit + 1)])
        length += 1 + end - start
        if length > limit:
            break
    flat = " ".join(words)
    return flat if length <= limit else flat[:limit - 1].rstrip() + "…"



def shown(text: object, limit: int) -> str:
    """Text from a file or its name as a message quotes it: one line, at most `limit` characters, and a lone
    surrogate (a byte that is not UTF-8, or a \\ud800 escape) written as a \\udcxx escape so that the message itself
    can be encoded."""
    text = text if isinstance(text, str) else str(text)
    return one_line(text.encode(ENCODING, "backslashreplace").decode(ENCODING), limit)


def file_label(name: object, limit: int = MAX_LABEL_CHARS) -> str:
    """A file name as messages show it (see `shown`); "(unnamed file)" for a blank one."""
    return shown(name, limit) or "(unnamed file)"


def size_text(n_bytes: float) -> str:
    """Megabytes and kilobytes of 10^6 and 10^3 bytes, as Streamlit's uploader shows sizes."""
    return f"{n_bytes / 10**6:.1f} MB" if n_bytes >= 10**6 else f"{n_bytes / 10**3:.1f} KB"


def encoding_problem(text: str) -> str | None:
    """Why `text` cannot be encoded as UTF-8 (a lone surrogate, from a JSON escape), or None when it can."""
    if text.isascii():  # known without a copy
        return None
    try:
        text.encode(ENCODING)
    except UnicodeEncodeError as error:
        return f"lone surrogate \\u{ord(text[error.start]):04x} at character {error.start + 1:,}"
    return None


def is_dataset_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in DATASET_MARKERS)


# --- where the bytes come from ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """One file: uploaded bytes or a path on disk."""

    key: str  # what its document ids start with: its name, or its path inside the corpus folder
    label: str  # its name as messages show it
    size: int
    path: Path | None = None
    data: bytes | None = None

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data) if self.data is not None else self.path.open("rb")

    def open_text(self) -> TextIO:
        """The file as text with its line breaks as they are, a byte that is not UTF-8 as a lone surrogate
        (surrogateescape) and a byte-order mark dropped: uploaded bytes decoded at once, a file on disk streamed."""
        if self.data is not None:
            return io.StringIO(self.data.decode("utf-8-sig", "surrogateescape"), newline="")
        return io.TextIOWrapper(self.path.open("rb"), encoding="utf-8-sig", errors="surrogateescape", newline="")

    def read(self) -> bytes:
        return self.data if self.data is not None else self.path.read_bytes()

    def head(self, count: int) -> bytes:
        if self.data is not None:
            return self.data[:count]
        with self.path.open("rb") as file:
            return file.read(count)

    def tail(self, count: int) -> bytes:
        if self.data is not None:
            return self.data[-count:]
        with self.path.open("rb") as file:
            file.seek(max(0, self.size - count))
            return file.read(count)


class _Tally:
    """Records read so far against Budget.documents, shared by the files of a folder."""

    def __init__(self, limit: int | None):
        self.limit, self.read, self.spent = limit, 0, False

    def admit(self) -> bool:
        if self.limit is not None and self.read >= self.limit:
            self.spent = True
            return False
        self.read += 1
        return True

    def reason(self) -> str:
        return f"not read, nor anything after it: the limit is {self.limit:,} documents"


def _problem(source: _Source, number: int | None, place: str, reason: str, *, cut: bool = False,
             doc_id: str | None = None) -> Document:
    where = f"'{source.label}', {place}" if place else f"'{source.label}'"
    if doc_id is None:
        doc_id = source.key if number is None else f"{source.key}:{number}"
    return Document(doc_id, None, f"{where}: {reason}.", place=place, reason=reason, cut=cut)


def _failed(source: _Source, error: ReadError) -> Document:
    """A file of a folder that cannot be read, as its one document."""
    return Document(source.key, None, str(error), reason=error.reason)


# --- checks shared by every format -----------------------------------------------------------------------------------


def _kind(name: str, label: str) -> str:
    suffix = PurePath(name).suffix.lower()
    if suffix not in FORMATS:
        shown = f"'{file_label(suffix, 20)}'" if suffix else "no suffix"
        raise ReadError(label, f"is not a file type attnscope reads ({shown}); use {', '.join(list(FORMATS)[:-1])} "
                               f"or {list(FORMATS)[-1]}")
    return FORMATS[suffix]


def _looks_binary(sample: bytes) -> bool:
    if b"\x00" in sample:
        return True
    control = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13))
    return control > 0.1 * len(sample)


def _not_utf8(data: bytes, error: UnicodeDecodeError, offset: int = 0) -> str:
    position = offset + error.start
    line = data.count(b"\n", 0, error.start) + 1
    return (f"is not valid {ENCODING.upper()} text (the byte at offset {position:,}, on line {line:,}, is "
            f"0x{data[error.start]:02x}); save it as {ENCODING.upper()}")


def _check_text_file(source: _Source, budget: Budget) -> None:
    """What every text format (all but Parquet) must pass before it is parsed: size, emptiness, text, UTF-8."""
    if budget.total_bytes is not None and source.size > budget.total_bytes:
        raise ReadError(source.label, f"is {size_text(source.size)}, over the {size_text(budget.total_bytes)} limit "
                                      f"for one file")
    head = source.head(_SNIFF_BYTES + len(_BOM))
    skipped = len(_BOM) if head.startswith(_BOM) else 0
    head = head[skipped:]
    if not head.strip() and source.size <= skipped + len(head):
        raise ReadError(source.label, "is empty")
    if _looks_binary(head[:_SNIFF_BYTES]):
        raise ReadError(source.label, f"looks like a binary file, not text (it holds NUL or other control bytes, as "
                                      f"UTF-16 text does too); save it as {ENCODING.upper()} text")
    try:
        head.decode(ENCODING)
    except UnicodeDecodeError as error:
        cut_by_sniff = error.reason == "unexpected end of data" and source.size > skipped + len(head)
        if not cut_by_sniff:
            raise ReadError(source.label, _not_utf8(head, error, skipped)) from None


def _decoded(source: _Source) -> str:
    """The whole file as text, a byte-order mark dropped; ReadError naming the first byte that is not UTF-8."""
    data = source.read()
    skipped = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[skipped:].decode(ENCODING)
    except UnicodeDecodeError as error:
        raise ReadError(source.label, _not_utf8(data[skipped:], error, skipped)) from None


def _type_name(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "bytes" if isinstance(value, bytes) else f"a {type(value).__name__}"


def _text_problem(value, column: str, budget: Budget, *, from_bytes: bool = False) -> str | None:
    """Why `value` cannot be a document's text, or None when it can. from_bytes: it was decoded from a file's bytes
    with surrogateescape, so a lone surrogate stands for a byte that is not UTF-8."""
    if value is None:
        return f'"{column}" is null'
    if not isinstance(value, str):
        return f'"{column}" is {_type_name(value)}, not a string'
    if not value or value.isspace():
        return f'empty "{column}"'
    if len(value) * 4 > budget.value_bytes:  # else it fits whatever its characters
        size = len(value.encode(ENCODING, "surrogatepass"))
        if size > budget.value_bytes:
            return f'"{column}" is {size_text(size)}, over the {size_text(budget.value_bytes)} limit for one value'
    problem = encoding_problem(value)
    byte = next((ord(c) - 0xDC00 for c in value if "\udc80" <= c <= "\udcff"), None) if problem and from_bytes else None
    if byte is not None:
        return f'not {ENCODING.upper()} text (byte 0x{byte:02x} in "{column}"); save the file as {ENCODING.upper()}'
    if problem:
        return f'"{column}" cannot be encoded as {ENCODING.upper()} ({problem})'
    return None


def _find(names: Collection[str], wanted: str) -> str | None:
    """The column or field called `wanted`: exactly, else the first equal to it ignoring case and surrounding
    spaces."""
    if wanted in names:
        return wanted
    folded = wanted.strip().casefold()
    return next((n for n in names if isinstance(n, str) and n.strip().casefold() == folded), None)


def _no_column(label: str, column: str, names: list) -> ReadError:
    found = ", ".join(f"'{shown(c, 40)}'" for c in names[:_SHOWN_COLUMNS]) or "none"
    more = f" and {len(names) - _SHOWN_COLUMNS} more" if len(names) > _SHOWN_COLUMNS else ""
    return ReadError(label, f"has no '{shown(column, 40)}' column; columns found: {found}{more}")


def _not_strings(label: str, column: str, kind) -> ReadError:
    return ReadError(label, f"has a '{shown(column, 40)}' column of {kind}, not of strings; store the texts as "
                            f"strings, or name the column that holds them")


# --- text files ------------------------------------------------------------------------------------------------------


def _text_document(source: _Source, budget: Budget) -> Document:
    _check_text_file(source, budget)
    if source.size > budget.value_bytes:
        raise ReadError(source.label, f"is {size_text(source.size)}, over the {size_text(budget.value_bytes)} limit "
                                      f"for one document")
    text = _decoded(source)
    if not text.strip():  # a byte-order mark alone, or only Unicode spaces
        raise ReadError(source.label, "is empty")
    return Document(source.key, text)


# --- JSON Lines and JSON ---------------------------------------------------------------------------------------------


class _Unusable(Exception):
    """One record cannot become a document; the message says why."""


class _NumberTooLong(Exception):
    """A JSON integer longer than _MAX_INT_DIGITS, raised before int() spends time on it."""


def _parse_int(digits: str) -> int:
    if len(digits.lstrip("-")) > _MAX_INT_DIGITS:
        raise _NumberTooLong
    return int(digits)


def _deeper_than(value, limit: int) -> bool:
    """Whether containers nest more than `limit` levels in `value` (a parsed JSON value), walked without recursion."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        container, depth = stack.pop()
        if depth > limit:
            return True
        children = container.values() if isinstance(container, dict) else container
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _record_text(record, column: str, budget: Budget) -> tuple[str, str | None]:
    """(text, name) of one parsed JSON record; raises _Unusable saying why it has no usable text."""
    if not isinstance(record, dict):
        raise _Unusable(f"not a JSON object with a \"{column}\" field (it is {_type_name(record)})")
    key = _find(record, column)
    if key is None:
        raise _Unusable(f'no "{column}" field')
    text = record[key]
    if problem := _text_problem(text, column, budget):
        raise _Unusable(problem)
    name_key = _find(record, "name")
    name = record[name_key] if name_key is not None else None
    return text, name if isinstance(name, str) else None


class NotReadableJson(ValueError):
    """A JSON text that parse_json refuses; the message says why (it names no file: the caller does)."""


def parse_json(text: str, *, depth: int = Budget.depth, decoder: json.JSONDecoder | None = None):
    """One JSON value from a whole text, refused (NotReadableJson, saying why) when it is not JSON, nests containers
    more than `depth` levels (a record, a result file, Parquet metadata: 200,000 brackets would make json.loads raise
    RecursionError) or holds an integer longer than 4,300 digits (refused before int() spends time on it).

    decoder: one made by json_decoder(), to reuse across the records of one file (not across threads)."""
    try:
        value = (decoder or json_decoder()).decode(text)
    except json.JSONDecodeError as error:
        raise NotReadableJson(f"not JSON ({error.msg})") from None
    except _NumberTooLong:
        raise NotReadableJson(f"an integer longer than {_MAX_INT_DIGITS:,} digits") from None
    except RecursionError:
        raise NotReadableJson("nested too deeply to read") from None
    if text.count("[") + text.count("{") > depth and _deeper_than(value, depth):
        raise NotReadableJson("nested too deeply to read")
    return value


def json_decoder() -> json.JSONDecoder:
    """A decoder that refuses integers longer than 4,300 digits (parse_json says so)."""
    return json.JSONDecoder(parse_int=_parse_int)


def _decode_record(decoder: json.JSONDecoder, line: str, budget: Budget):
    """One JSON value, or _Unusable saying why not."""
    try:
        return parse_json(line, depth=budget.depth, decoder=decoder)
    except NotReadableJson as why:
        raise _Unusable(str(why)) from None


def _read_line(stream: BinaryIO, limit: int) -> tuple[bytes, int] | None:
    """The next line (its "\\n" included) and its size; b"" for a line of over `limit` bytes besides its "\\n",
    which is read past, not kept. None at the end."""
    line = stream.readline(limit + 1)
    if not line:
        return None
    if len(line) <= limit or line.endswith(b"\n"):
        return line, len(line)
    size = len(line)
    while chunk := stream.readline(_SKIP_CHUNK):
        size += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return b"", size


def _jsonl(source: _Source, column: str, budget: Budget, tally: _Tally) -> Iterator[Document]:
    _check_text_file(source, budget)
    return _jsonl_documents(source, column, budget, tally)


def _jsonl_documents(source: _Source, column: str, budget: Budget, tally: _Tally) -> Iterator[Document]:
    decoder = json_decoder()  # one per file: a decoder's scanner is not shared by threads
    with source.open() as stream:
        for number in itertools.count(1):
            read = _read_line(stream, budget.value_bytes)
            if read is None:
                return
            raw, size = read
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            if raw and not raw.strip():
                continue
            place = f"line {number}"
            if not tally.admit():
                yield _problem(source, number, place, tally.reason(), cut=True)
                return
            if not raw:
                yield _problem(source, number, place, f"{size_text(size)}, over the "
                                                      f"{size_text(budget.value_bytes)} limit for one record")
                continue
            try:
                line = raw.decode(ENCODING)
            except UnicodeDecodeError as error:
                yield _problem(source, number, place, f"not {ENCODING.upper()} text (the byte at offset "
                                                      f"{error.start:,} of the line is 0x{raw[error.start]:02x}); "
                                                      f"save the file as {ENCODING.upper()}")
                continue
            try:
                text, name = _record_text(_decode_record(decoder, line, budget), column, budget)
            except _Unusable as why:
                yield _problem(source, number, place, str(why))
                continue
            except _RECORD_ERRORS as error:
                yield _problem(source, number, place, f"could not be read ({type(error).__name__})")
                continue
            yield Document(f"{source.key}:{number}", text, name=name, place=place)


def _json(source: _Source, column: str, budget: Budget, tally: _Tally) -> Iterator[Document]:
    _check_text_file(source, budget)
    text = _decoded(source)
    start = _JSON_SPACE.match(text).end()
    if start == len(text):
        raise ReadError(source.label, "is empty")
    if text[start] != "[":
        raise ReadError(source.label, f"is not a JSON array of records (it starts with {text[start]!r}); write "
                                      f"[{{\"{column}\": \"...\"}}, ...], or one object per line as .jsonl")
    return _json_documents(source, text, start + 1, column, budget, tally)


def _where(text: str, position: int) -> str:
    """A position in a text as an editor shows it."""
    line_start = text.rfind("\n", 0, position) + 1
    return f"line {text.count(chr(10), 0, position) + 1}, column {position - line_start + 1}"


def _json_documents(source: _Source, text: str, position: int, column: str, budget: Budget,
                    tally: _Tally) -> Iterator[Document]:
    decoder = json_decoder()
    rest = "; the rest of the file was not read"
    position = _JSON_SPACE.match(text, position).end()
    if text.startswith("]", position):
        return
    for number in itertools.count(1):
        place = f"item {number}"
        if not tally.admit():
            yield _problem(source, number, place, tally.reason(), cut=True)
            return
        try:
            record, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            yield _problem(source, number, place, f"not JSON ({error.msg} at {_where(text, error.pos)}){rest}",
                           cut=True)
            return
        except _NumberTooLong:
            yield _problem(source, number, place, f"an integer longer than {_MAX_INT_DIGITS:,} digits{rest}",
                           cut=True)
            return
        except RecursionError:
            yield _problem(source, number, place, f"nested too deeply to read{rest}", cut=True)
            return
        stored = end - position
        if stored * 4 > budget.value_bytes:
            stored = len(text[position:end].encode(ENCODING, "surrogatepass"))
        if stored > budget.value_bytes:
            yield _problem(source, number, place, f"{size_text(stored)}, over the {size_text(budget.value_bytes)} "
                                                  f"limit for one record")
        elif _deeper_than(record, budget.depth):
            yield _problem(source, number, place, "nested too deeply to read")
        else:
            try:
                item_text, name = _record_text(record, column, budget)
                yield Document(f"{source.key}:{number}", item_text, name=name, place=place)
            except _Unusable as why:
                yield _problem(source, number, place, str(why))
        position = _JSON_SPACE.match(text, end).end()
        if text.startswith(",", position):
            position = _JSON_SPACE.match(text, position + 1).end()
            continue
        if text.startswith("]", position):
            after = _JSON_SPACE.match(text, position + 1).end()
            if after < len(text):
                yield _problem(source, number + 1, f"item {number + 1}",
                               f"not JSON (extra data after the array at {_where(text, after)}){rest}", cut=True)
            return
        yield _problem(source, number + 1, f"item {number + 1}",
                       f"not JSON (Expecting ',' delimiter at {_where(text, position)}){rest}", cut=True)
        return


# --- CSV -------------------------------------------------------------------------------------------------------------

# Where a scan of a CSV record stands after a piece of it: at the start of a cell, inside an unquoted cell (or after a
# quoted cell's closing quote), inside a quoted cell, just after a quote inside a quoted cell (the closing quote or the
# first of a doubled one); or past the record's end.
_FIELD, _UNQUOTED, _QUOTED, _AFTER_QUOTE, _ENDED = range(5)


def _csv_scan(piece: str, state: int) -> int:
    """The scan's state after `piece`, read as csv.reader's excel dialect reads it: a cell that starts with '"' runs
    to the next '"' that is not doubled, then (like any other cell) to the next ',' or line break; a line break
    outside quotes ends the record (_ENDED). Pieces may be any cut of the record's text."""
    position, length = 0, len(piece)
    while position < length:
        if state == _QUOTED:
            position = piece.find('"', position)
            if position < 0:
                return _QUOTED
            position, state = position + 1, _AFTER_QUOTE
        elif state in (_AFTER_QUOTE, _FIELD) and piece[position] == '"':
            position, state = position + 1, _QUOTED  # a doubled quote, or a quoted cell starting
        else:
            position = _CSV_UNQUOTED.match(piece, position).end()
            if position >= length:
                return _UNQUOTED
            if piece[position] != ",":
                return _ENDED
            position, state = position + 1, _FIELD
    return state


def _stored_size(text: str) -> int:
    """Bytes `text` took in the file (a byte that was not UTF-8 is one escaped character): an ASCII string's length,
    known without encoding it."""
    return len(text) if text.isascii() else len(text.encode(ENCODING, "surrogateescape"))


class _RecordTooLong(Exception):
    """A CSV record grew over Budget.value_bytes; raised by _CsvLines inside csv.reader."""


class _CsvLines:
    """The physical lines of a CSV text stream, line breaks kept, for csv.reader: it remembers the lines of the
    record being read, and refuses (_RecordTooLong) a line that would take the record over `limit` bytes."""

    def __init__(self, stream: TextIO, limit: int):
        self.stream, self.limit = stream, limit
        self.record: list[str] = []
        self.size = 0  # bytes of the record so far, as stored

    def start_record(self) -> None:
        self.record, self.size = [], 0

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        line = self.stream.readline(self.limit - self.size + 1)  # a character is at least a byte
        if not line:
            raise StopIteration
        self.record.append(line)
        self.size += _stored_size(line)
        if self.size > self.limit:
            raise _RecordTooLong
        return line

    def skip_record(self) -> int:
        """Read past the rest of a record csv.reader refused; its size in bytes."""
        state = _FIELD
        for line in self.record:
            state = _csv_scan(line, state)
        while state != _ENDED and (piece := self.stream.readline(_SKIP_CHUNK)):
            self.size += _stored_size(piece)
            state = _csv_scan(piece, state)
        return self.size


def _csv_records(lines: _CsvLines) -> Iterator[tuple[int, list[str] | None, str]]:
    """(row number, cells, "") for each record, or (row number, None, why) for one csv.reader or the budget refuses;
    reading resumes after it. Rows count from 1, blank ones included, as a spreadsheet numbers them."""
    reader = csv.reader(lines)
    for number in itertools.count(1):
        lines.start_record()
        try:
            cells = next(reader)
        except StopIteration:
            return
        except _RecordTooLong:
            size = lines.skip_record()
            yield number, None, f"{size_text(size)}, over the {size_text(lines.limit)} limit for one record"
            continue
        except csv.Error as error:
            lines.skip_record()
            yield number, None, f"not readable as CSV ({error})"
            continue
        yield number, cells, ""


def _csv(source: _Source, column: str, budget: Budget, tally: _Tally) -> Iterator[Document]:
    _check_text_file(source, budget)
    stream = source.open_text()
    try:
        records = _csv_records(_CsvLines(stream, budget.value_bytes))
        header: list[str] = []
        for number, cells, why in records:
            if why:
                raise ReadError(source.label, f"has a header row (row {number}) that cannot be read: {why}")
            if cells:
                header = cells
                break
        text_name = _find(header, column)
        if text_name is None:
            raise _no_column(source.label, column, header)
    except BaseException:
        stream.close()
        raise
    name_name = _find(header, "name")
    return _csv_documents(source, stream, records, header.index(text_name),
                          None if name_name is None else header.index(name_name), column, budget, tally)


def _csv_documents(source: _Source, stream: TextIO, records, text_at: int, name_at: int | None, column: str,
                   budget: Budget, tally: _Tally) -> Iterator[Document]:
    with stream:
        for number, cells, why in records:
            if cells == []:  # a blank line
                continue
            place = f"row {number}"
            if not tally.admit():
                yield _problem(source, number, place, tally.reason(), cut=True)
                return
            if why:
                yield _problem(source, number, place, why)
                continue
            if text_at >= len(cells):
                yield _problem(source, number, place, f'no "{column}" cell (the row has {len(cells)})')
                continue
            if problem := _text_problem(cells[text_at], column, budget, from_bytes=True):
                yield _problem(source, number, place, problem)
                continue
            name = cells[name_at] if name_at is not None and name_at < len(cells) else None
            yield Document(f"{source.key}:{number}", cells[text_at], name=name, place=place)


# --- Parquet ---------------------------------------------------------------------------------------------------------


def _is_text_type(kind) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        return _is_text_type(kind.value_type)
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _first_line(error: Exception) -> str:
    return shown(str(error).splitlines()[0] if str(error) else type(error).__name__, 160)


def _parquet(source: _Source, column: str, budget: Budget, tally: _Tally) -> Iterator[Document]:
    import pyarrow as pa

    if budget.total_bytes is not None and source.size > budget.total_bytes:
        raise ReadError(source.label, f"is {size_text(source.size)}, over the {size_text(budget.total_bytes)} limit "
                                      f"for one file")
    if source.size < 12 or source.head(4) != b"PAR1" or source.tail(4) != b"PAR1":
        raise ReadError(source.label, "is not a .parquet file (a Parquet file starts and ends with the bytes PAR1); "
                                      "write it with pandas' DataFrame.to_parquet or pyarrow.parquet.write_table")
    try:
        table = parquet_file(source.data if source.data is not None else source.path, source.size)
        names = table.schema_arrow.names
    except (pa.ArrowException, OSError, ValueError) as error:
        raise ReadError(source.label, f"is a damaged .parquet file ({_first_line(error)}); write it again") from None
    text_name = _find(names, column)
    if text_name is None:
        raise _no_column(source.label, column, names)
    kind = table.schema_arrow.field(text_name).type
    if not _is_text_type(kind):
        raise _not_strings(source.label, text_name, kind)
    name_name = _find(names, "name")
    if name_name is not None and not _is_text_type(table.schema_arrow.field(name_name).type):
        name_name = None
    metadata = table.metadata
    text_sizes = [sum(group.column(i).total_uncompressed_size for i in range(group.num_columns)
                      if group.column(i).path_in_schema == text_name)
                  for group in map(metadata.row_group, range(metadata.num_row_groups))]
    if budget.total_bytes is not None and sum(text_sizes) > budget.total_bytes:
        raise ReadError(source.label, f"holds {size_text(sum(text_sizes))} of text once uncompressed, over the "
                                      f"{size_text(budget.total_bytes)} limit for one file")
    columns = [text_name] + ([name_name] if name_name not in (None, text_name) else [])
    return _parquet_documents(source, table, text_sizes, columns, column, budget, tally)


def parquet_file(source: Path | bytes, size: int):
    """A pyarrow ParquetFile of a file on disk or its bytes (`size` of them), whose footer is read within the file's
    own size: no string in it longer than the file, no list of more than PARQUET_LIST_ITEMS items (pyarrow makes room
    for a list's declared length before reading it, so a small footer could otherwise take far more memory than it
    holds). Raises what pyarrow raises for a damaged file (ArrowException, OSError)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.ParquetFile(pa.BufferReader(source) if isinstance(source, bytes) else source,
                          thrift_string_size_limit=max(size, 1), thrift_container_size_limit=PARQUET_LIST_ITEMS)


_NOT_UTF8 = object()  # a Parquet string value whose bytes are not UTF-8


def _values(array) -> list:
    """An Arrow array as Python values, _NOT_UTF8 for a string value whose bytes are not valid UTF-8."""
    try:
        return array.to_pylist()
    except UnicodeDecodeError:
        values = []
        for index in range(len(array)):
            try:
                values.append(array[index].as_py())
            except UnicodeDecodeError:
                values.append(_NOT_UTF8)
        return values


def _parquet_documents(source: _Source, table, text_sizes: list[int], columns: list[str], column: str,
                       budget: Budget, tally: _Tally) -> Iterator[Document]:
    import pyarrow as pa

    metadata, number = table.metadata, 0
    for group, text_size in enumerate(text_sizes):
        rows = metadata.row_group(group).num_rows
        if rows == 1 and text_size > budget.value_bytes:  # one value, over the limit: known from the footer
            number += 1
            if not tally.admit():
                yield _problem(source, number, f"row {number}", tally.reason(), cut=True)
                return
            yield _problem(source, number, f"row {number}", f'"{column}" is {size_text(text_size)} uncompressed, '
                                                            f'over the {size_text(budget.value_bytes)} limit for '
                                                            f'one value')
            continue
        batch_rows = max(1, min(_BATCH_ROWS, _BATCH_BYTES * rows // max(text_size, 1)))
        try:
            for batch in table.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns):
                texts = _values(batch.column(0))
                names = _values(batch.column(1)) if len(columns) > 1 else [None] * len(texts)
                for text, name in zip(texts, names):
                    number += 1
                    place = f"row {number}"
                    if not tally.admit():
                        yield _problem(source, number, place, tally.reason(), cut=True)
                        return
                    if text is _NOT_UTF8:
                        yield _problem(source, number, place, f'"{column}" is not {ENCODING.upper()} text; write the '
                                                              f'file again from valid text')
                    elif problem := _text_problem(text, column, budget):
                        yield _problem(source, number, place, problem)
                    else:
                        yield Document(f"{source.key}:{number}", text, name=name if isinstance(name, str) else None,
                                       place=place)
        except (pa.ArrowException, OSError) as error:
            yield _problem(source, number + 1, f"row {number + 1}", f"cannot be read ({_first_line(error)}); the "
                                                                    f"rest of the file was not read", cut=True)
            return


# --- one file, a folder, a datasets folder ---------------------------------------------------------------------------

_ROWS = {"jsonl": _jsonl, "json": _json, "csv": _csv, "parquet": _parquet}


def _read_file(source: _Source, column: str, budget: Budget, tally: _Tally) -> Iterator[Document]:
    kind = _kind(source.key, source.label)
    if kind == "text":
        tally.admit()  # the first document of this read: always admitted
        return iter([_text_document(source, budget)])
    return _ROWS[kind](source, column, budget, tally)


def read_upload(name: str, data: bytes, *, text_column: str = "text", budget: Budget = Budget()) -> Iterator[Document]:
    """The documents of one uploaded file, in file order (a single file, so never a folder).

    Args:
        name: the file name as uploaded; its suffix picks the format (FORMATS).
        data: the file's bytes.
        text_column: the column or field that holds the text.
        budget: the limits this read keeps to.

    Returns:
        An iterator of Documents; unusable records have `text` None and `problem` set.

    Raises:
        ReadError: at once, when the file as a whole cannot be read (the message is one sentence).
    """
    label = file_label(name)
    return _read_file(_Source(key=name, label=label, size=len(data), data=data), text_column, budget,
                      _Tally(budget.documents))


def read_path(path: str | Path, *, text_column: str = "text", budget: Budget = Budget()) -> Iterator[Document]:
    """The documents at `path` (a file, a folder of files, or a datasets folder), in a stable order.

    Raises:
        ReadError: at once, when the path does not exist or the file or folder as a whole cannot be read; inside a
            folder, a file that cannot be read is one Document with its problem instead.
    """
    path = Path(path)
    if not path.exists():
        raise ReadError(file_label(str(path)), f"does not exist; give {INPUTS}")
    tally = _Tally(budget.documents)
    if is_dataset_folder(path):
        return _dataset(path, text_column, budget, tally)
    if path.is_dir():
        return _folder(path, text_column, budget, tally)
    return _read_file(_Source(key=path.name, label=file_label(path.name), size=path.stat().st_size, path=path),
                      text_column, budget, tally)


def _folder(root: Path, column: str, budget: Budget, tally: _Tally) -> Iterator[Document]:
    files = sorted((p for p in root.rglob("*") if p.suffix.lower() in FORMATS and p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(root).parts)),
                   key=lambda p: p.relative_to(root).as_posix())
    sources = [_Source(key=(key := p.relative_to(root).as_posix()), label=file_label(key), size=p.stat().st_size,
                       path=p) for p in files]
    total = sum(s.size for s in sources)
    if budget.total_bytes is not None and total > budget.total_bytes:
        raise ReadError(file_label(str(root)), f"holds {size_text(total)} in {len(sources):,} files, over the "
                                               f"{size_text(budget.total_bytes)} limit")
    return _folder_documents(sources, column, budget, tally)


def _folder_documents(sources: list[_Source], column: str, budget: Budget, tally: _Tally) -> Iterator[Document]:
    for source in sources:
        if FORMATS[PurePath(source.key).suffix.lower()] == "text":
            if not tally.admit():
                yield _problem(source, None, "", tally.reason(), cut=True)
                return
            try:
                yield _text_document(source, budget)
            except ReadError as error:
                yield _failed(source, error)
            continue
        try:
            rows = _read_file(source, column, budget, tally)
        except ReadError as error:
            if not tally.admit():
                yield _problem(source, None, "", tally.reason(), cut=True)
                return
            yield _failed(source, error)
            continue
        yield from rows
        if tally.spent:
            return


def _dataset(root: Path, column: str, budget: Budget, tally: _Tally) -> Iterator[Document]:
    label = file_label(root.name or str(root))
    try:
        import datasets
    except ImportError:
        raise ReadError(label, "is a Hugging Face datasets folder: `pip install datasets` to read it") from None
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    if budget.total_bytes is not None and total > budget.total_bytes:
        raise ReadError(label, f"holds {size_text(total)}, over the {size_text(budget.total_bytes)} limit")
    try:
        data = datasets.load_from_disk(str(root))
    except (OSError, ValueError) as error:
        raise ReadError(label, f"cannot be loaded as a datasets folder ({_first_line(error)}); write it again with "
                               f"save_to_disk") from None
    if isinstance(data, datasets.DatasetDict):
        raise ReadError(label, f"holds several splits ({', '.join(data)}): give the folder of one split")
    text_name = _find(data.column_names, column)
    if text_name is None:
        raise _no_column(label, column, data.column_names)
    kind = data.data.schema.field(text_name).type
    if not _is_text_type(kind):
        raise _not_strings(label, text_name, kind)
    return _dataset_documents(_Source(key=label, label=label, size=total), data, text_name, column, budget, tally)


def _dataset_documents(source: _Source, data, text_name: str, column: str, budget: Budget,
                       tally: _Tally) -> Iterator[Document]:
    texts = data.select_columns([text_name])
    for start in range(0, len(texts), _BATCH_ROWS):
        for index, text in enumerate(texts[start:start + _BATCH_ROWS][text_name], start=start):
            place = f"row {index}"
            if not tally.admit():
                yield _problem(source, index, place, tally.reason(), cut=True, doc_id=str(index))
                return
            if problem := _text_problem(text, column, budget):
                yield _problem(source, index, place, problem, doc_id=str(index))
            else:
                yield Document(str(index), text, place=place)
