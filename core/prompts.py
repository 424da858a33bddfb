"""Prompts from uploaded files or pasted text, with every problem reported instead of raised.

Formats: .txt / .md (the whole file is one prompt), .jsonl (one {"text": ...} object per line; "name" optional),
.csv (a `text` column; a `name` column optional).

`parse_upload` never raises: whatever the name and bytes, it returns a `Parsed` whose `problems` are sentences for the
user, and an exception nobody foresaw becomes one refusal sentence. A whole file is refused (nothing kept) when the
library is full (`max_prompts=0`), its type is not in FORMATS, it is over `max_bytes`, it is empty or blank, it looks
binary (NUL bytes, as in UTF-16, or mostly control characters), it is not UTF-8 (the byte that failed is named; the
encoding is never guessed; a byte-order mark is dropped), a CSV has no `text` column (the columns found are listed) or
its header cannot be read, or no line or row is usable. Otherwise each bad JSONL line or CSV row is skipped and named
by number while the good ones are kept: not JSON; not an object with a non-blank string "text"; nested deeper than the
JSON parser's recursion limit; an integer over 4,300 digits (Python's int/str limit, enforced here whatever `sys` says,
so a 20 MB number cannot take minutes); a "text" that cannot be encoded as UTF-8 (a lone surrogate written as a
\\ud800 escape, which `Prompt.digest` could not hash); a CSV cell over `csv.field_size_limit()` characters (reading
resumes at the next row, found by `_csv_record_end`, so a long quoted cell never turns into rows of fragments).
A "name" that cannot be encoded is replaced by one made from the text, and the lines are listed.

Names shown to users (prompt names and the file names inside messages) are put on one line (whitespace and control
characters become single spaces) and cut to MAX_NAME_CHARS with "…". With `max_prompts`, parsing stops once that many
prompts are kept and no further prompt is built; the rest is counted in `Parsed.left_out` (JSONL: non-blank lines,
counted without parsing them; CSV: rows with a text, which the csv reader still reads to count).

JSONL is split at "\\n" only, as JSON Lines specifies, so a raw U+2028 or U+0085 inside a JSON string does not cut its
line; CSV follows the csv module's excel dialect, and a row is a record (a quoted cell may span lines), as in a
spreadsheet.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePath

FORMATS = {".txt": "text", ".md": "text", ".jsonl": "jsonl", ".csv": "csv"}
ENCODING = "utf-8"
MAX_BYTES = 20 * 10**6  # 20 MB as Streamlit's uploader counts them: .streamlit/config.toml's server.maxUploadSize
MAX_NAME_CHARS = 80  # prompt names and file names as users see them, "…" included
_DEFAULT_NAME_CHARS = 48  # a name made from the start of a text
_MAX_INT_DIGITS = 4300  # Python's default int/str conversion limit (sys.get_int_max_str_digits)
_SHOWN_PROBLEMS = 10  # malformed lines listed one by one before the rest are counted
_SHOWN_COLUMNS = 20  # columns listed when a CSV has no text column
_LINE_NUMBER_ROOM = 12  # characters kept free in a fallback name for ":" and a line number
# What reading one line or row can raise; UnicodeError and json.JSONDecodeError are ValueErrors.
_READ_ERRORS = (ValueError, TypeError, OverflowError, MemoryError, RecursionError)

_WORD = re.compile(r"[^\s\x00-\x1f\x7f-\x9f]+")  # whitespace and control characters separate the words of a name
_BLANK_LINE = re.compile(r"^[^\S\n]*$", re.MULTILINE)
_CSV_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)?")  # a physical line with its line break, as csv.reader wants it
_CSV_UNQUOTED = re.compile(r"[^,\r\n]*")  # the rest of a cell up to the next delimiter or line break


@dataclass(frozen=True)
class Prompt:
    name: str  # what the library shows: one line, at most MAX_NAME_CHARS
    text: str  # never blank; always encodable as UTF-8
    source: str  # "pasted" or the file name (with the line or row for multi-prompt files)

    @property
    def digest(self) -> str:
        """Content hash (SHA-256 of the UTF-8 text, first 16 hex digits): names a text without carrying it."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


@dataclass
class Parsed:
    """What parse_upload made of one file."""

    prompts: list[Prompt] = field(default_factory=list)  # the usable prompts, in file order
    problems: list[str] = field(default_factory=list)  # one sentence each, for the user, naming lines or rows
    refused: bool = False  # True when nothing of the file could be used
    left_out: int = 0  # not read for max_prompts: non-blank lines (JSONL); rows with a text, or unreadable (CSV)


class _Unusable(Exception):
    """One line cannot become a prompt; the message says why, after "line N: "."""


class _NumberTooLong(Exception):
    """A JSON integer longer than _MAX_INT_DIGITS, raised before int() spends time on it."""


def _size(n_bytes: float) -> str:
    """Megabytes and kilobytes of 10^6 and 10^3 bytes, as Streamlit's uploader shows sizes."""
    return f"{n_bytes / 10**6:.1f} MB" if n_bytes >= 10**6 else f"{n_bytes / 10**3:.1f} KB"


def _refuse(message: str) -> Parsed:
    return Parsed(problems=[message], refused=True)


def _looks_binary(data: bytes) -> bool:
    sample = data[:8192]
    if b"\x00" in sample:
        return True
    control = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13))
    return control > 0.1 * len(sample)


def _one_line(text: str, limit: int) -> str:
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


def file_label(name: object, limit: int = MAX_NAME_CHARS) -> str:
    """A file name as messages show it: one line, at most `limit` characters, and a lone surrogate (a file-system name
    that is not UTF-8) written as a \\udcxx escape so that the message itself can be encoded."""
    text = name if isinstance(name, str) else str(name)
    return _one_line(text.encode(ENCODING, "backslashreplace").decode(ENCODING), limit) or "(unnamed file)"


def files_left_out(names: list, limit: int) -> str | None:
    """The sentence saying which uploaded files past the per-upload `limit` are not taken, or None when none are."""
    left = names[limit:]
    if not left:
        return None
    shown = ", ".join(f"'{file_label(name, 40)}'" for name in left[:5])
    verb = "was" if len(left) == 1 else "were"
    return (f"Only {limit} files are taken from one upload; {len(left)} {verb} left out ({shown}"
            f"{', …' if len(left) > 5 else ''}). Upload them separately.")


def _default_name(text: str, fallback: str) -> str:
    return _one_line(text, _DEFAULT_NAME_CHARS) or fallback


def _encoding_problem(text: str) -> str | None:
    """Why `text` cannot be encoded as UTF-8, or None when it can."""
    try:
        text.encode(ENCODING)
    except UnicodeEncodeError as error:
        return f"lone surrogate \\u{ord(text[error.start]):04x} at character {error.start + 1:,}"
    return None


def _listed(items: list) -> str:
    shown = "; ".join(map(str, items[:_SHOWN_PROBLEMS]))
    return shown + (f"; and {len(items) - _SHOWN_PROBLEMS} more" if len(items) > _SHOWN_PROBLEMS else "")


def _numbers(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:_SHOWN_PROBLEMS])) + (" …" if len(numbers) > _SHOWN_PROBLEMS else "")


def _cap_sentence(label: str, taken: int, left_out: int, unit: str) -> str:
    first = "the first prompt was" if taken == 1 else f"the first {taken:,} prompts were"
    rest = f"{left_out:,} more {unit} was" if left_out == 1 else f"{left_out:,} more {unit}s were"
    return f"'{label}': only {first} taken (the limit for this library); {rest} left out."


def parse_upload(name: str, data: bytes, *, max_bytes: int = MAX_BYTES, max_prompts: int | None = None) -> Parsed:
    """Prompts from one uploaded file; never raises: every problem is a sentence in `problems`.

    Args:
        name: the file name as uploaded; its suffix picks the format (FORMATS).
        data: the file's bytes.
        max_bytes: a larger file is refused unread.
        max_prompts: keep at most this many prompts (the room left in the library) and count what remains in
            `left_out` without parsing it; 0 or less refuses the file unread (the library is full); None: no limit.

    Returns:
        The good prompts, one sentence per problem, and `refused` when nothing of the file could be used.
    """
    label = "(unnamed file)"
    try:
        label = file_label(name)
        return _parse(name, label, data, max_bytes=max_bytes, max_prompts=max_prompts)
    except Exception as error:  # the promise to the page: a sentence, never a traceback, whatever the file holds
        return _refuse(f"'{label}' could not be read ({type(error).__name__}); nothing from it was added.")


def _parse(name: str, label: str, data: bytes, *, max_bytes: int, max_prompts: int | None) -> Parsed:
    if max_prompts is not None and max_prompts <= 0:
        return _refuse(f"'{label}' was not read: the library is full; remove some prompts from it, then upload "
                       f"the file again.")
    suffix = PurePath(name).suffix.lower()
    if suffix not in FORMATS:
        return _refuse(f"'{label}': unsupported file type '{file_label(suffix, 20) if suffix else '(none)'}'; "
                       f"use {', '.join(FORMATS)}.")
    if len(data) > max_bytes:
        return _refuse(f"'{label}' is {_size(len(data))}, over the {_size(max_bytes)} limit.")
    if not data.strip():
        return _refuse(f"'{label}' is empty.")
    if _looks_binary(data):
        return _refuse(f"'{label}' looks like a binary file, not text.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        return _refuse(f"'{label}' is not valid {ENCODING.upper()} text (byte {error.start} cannot be decoded as "
                       f"{ENCODING.upper()}); save it as {ENCODING.upper()} and upload it again.")
    if not text.strip():  # a byte-order mark alone, or only Unicode spaces
        return _refuse(f"'{label}' is empty.")
    kind = FORMATS[suffix]
    if kind == "text":
        return Parsed(prompts=[Prompt(name=_default_name(text, label), text=text, source=label)])
    stem = file_label(name, MAX_NAME_CHARS - _LINE_NUMBER_ROOM)  # fallback names are "<stem>:<line or row>"
    if kind == "jsonl":
        return _parse_jsonl(label, stem, text, max_prompts)
    return _parse_csv(label, stem, text, max_prompts)


def _parse_int(digits: str) -> int:
    if len(digits.lstrip("-")) > _MAX_INT_DIGITS:
        raise _NumberTooLong
    return int(digits)


def _jsonl_lines(text: str) -> Iterator[tuple[int, str, int]]:
    """(line number, line, offset just after it) for each line, split at "\\n" only (a "\\r" before it is JSON
    whitespace)."""
    start, number = 0, 1
    while (end := text.find("\n", start)) >= 0:
        yield number, text[start:end], end + 1
        start, number = end + 1, number + 1
    yield number, text[start:], len(text)


def _nonblank_lines(text: str, start: int) -> int:
    """How many lines of text[start:] hold more than whitespace; `start` is 0 or just after a "\\n"."""
    if start >= len(text):
        return 0
    return text.count("\n", start) + 1 - sum(1 for _ in _BLANK_LINE.finditer(text, start))


def _jsonl_prompt(decoder: json.JSONDecoder, line: str, number: int, label: str, stem: str) -> tuple[Prompt, bool]:
    """The prompt on one JSONL line, and whether its "name" had to be replaced; raises _Unusable saying why not."""
    try:
        record = decoder.decode(line)
    except json.JSONDecodeError as error:
        raise _Unusable(f"not JSON ({error.msg})") from None
    except _NumberTooLong:
        raise _Unusable(f"an integer longer than {_MAX_INT_DIGITS:,} digits") from None
    except RecursionError:
        raise _Unusable("nested too deeply to read") from None
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise _Unusable('no string field "text"')
    if not text.strip():
        raise _Unusable('empty "text"')
    if problem := _encoding_problem(text):
        raise _Unusable(f'"text" cannot be encoded as {ENCODING.upper()} ({problem})')
    given = record.get("name")
    name = _one_line(given, MAX_NAME_CHARS) if isinstance(given, str) else ""
    replaced = bool(name) and _encoding_problem(given) is not None
    if replaced or not name:
        name = _default_name(text, f"{stem}:{number}")
    return Prompt(name=name, text=text, source=f"{label}, line {number}"), replaced


def _parse_jsonl(label: str, stem: str, text: str, max_prompts: int | None) -> Parsed:
    parsed, bad, renamed = Parsed(), [], []
    decoder = json.JSONDecoder(parse_int=_parse_int)  # one per file: a decoder's scanner is not shared by threads
    for number, line, after in _jsonl_lines(text):
        if not line.strip():
            continue
        try:
            prompt, replaced = _jsonl_prompt(decoder, line, number, label, stem)
        except _Unusable as why:
            bad.append(f"line {number}: {why}")
            continue
        except _READ_ERRORS as error:
            bad.append(f"line {number}: could not be read ({type(error).__name__})")
            continue
        if replaced:
            renamed.append(number)
        parsed.prompts.append(prompt)
        if max_prompts is not None and len(parsed.prompts) >= max_prompts:
            parsed.left_out = _nonblank_lines(text, after)
            break
    if bad:
        parsed.problems.append(f"'{label}': {len(bad):,} line(s) skipped, {len(parsed.prompts):,} kept. "
                               f"{_listed(bad)}.")
    if renamed:
        parsed.problems.append(f"'{label}': the \"name\" on line(s) {_numbers(renamed)} cannot be encoded as "
                               f"{ENCODING.upper()} (a lone surrogate), so those prompts are named after their text.")
    if parsed.left_out:
        parsed.problems.append(_cap_sentence(label, len(parsed.prompts), parsed.left_out, "line"))
    if not parsed.prompts:
        parsed.refused = True
        if not bad:
            parsed.problems.append(f"'{label}' has no lines with text.")
    return parsed


class _Lines:
    """The physical lines of `text` from `offset` on, line breaks kept; the reader of the lines may move `offset`."""

    def __init__(self, text: str):
        self.text, self.offset = text, 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        end = _CSV_LINE.match(self.text, self.offset).end()
        if end == self.offset:
            raise StopIteration
        line, self.offset = self.text[self.offset:end], end
        return line


def _csv_record_end(text: str, start: int) -> int:
    """Offset just past the CSV record that starts at `start`, read as csv.reader's excel dialect reads it: a cell
    that starts with '"' runs to the next '"' that is not doubled, then (like any other cell) to the next ',' or
    line break. Used only to step over a record the csv module refused, whatever its length."""
    position, length = start, len(text)
    while position < length:
        if text[position] == '"':
            position += 1
            while (position := text.find('"', position)) >= 0 and text.startswith('"', position + 1):
                position += 2
            if position < 0:
                return length
            position += 1
        position = _CSV_UNQUOTED.match(text, position).end()
        if position >= length:
            return length
        if text[position] != ",":
            return position + (2 if text.startswith("\r\n", position) else 1)
        position += 1
    return length


def _csv_records(text: str) -> Iterator[tuple[int, list[str] | None, str]]:
    """(row number, cells, "") for each CSV record, or (row number, None, error) for one the csv module refuses (a
    cell over csv.field_size_limit()); reading resumes after the refused record. Rows are records counted from 1,
    blank ones included, as a spreadsheet numbers them.

    The csv module reads on its own until it refuses a record; only then is the text read again through _Lines,
    which knows where each record starts, so that _csv_record_end can step over the refused ones."""
    read = 0
    try:
        for read, cells in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
            yield read, cells, ""
        return
    except csv.Error:
        pass
    lines = _Lines(text)
    reader = csv.reader(lines)
    number = 0
    while True:
        start, number = lines.offset, number + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            lines.offset = _csv_record_end(text, start)
            yield number, None, str(error)
            continue
        if number > read:
            yield number, cells, ""


def _has_text(cells: list[str] | None, column: int) -> bool:
    return cells is None or (column < len(cells) and bool(cells[column].strip()))


def _parse_csv(label: str, stem: str, text: str, max_prompts: int | None) -> Parsed:
    records = _csv_records(text)
    header: list[str] = []
    for _, cells, error in records:
        if error:
            return _refuse(f"'{label}' is not readable as CSV: {error} in the header row.")
        if cells:
            header = cells
            break
    columns: dict[str, int] = {}
    for index, column in enumerate(header):
        columns.setdefault(column.strip().lower(), index)
    if "text" not in columns:
        found = ", ".join(f"'{_one_line(c, 40)}'" for c in header[:_SHOWN_COLUMNS]) or "none"
        more = f" and {len(header) - _SHOWN_COLUMNS} more" if len(header) > _SHOWN_COLUMNS else ""
        return _refuse(f"'{label}' has no 'text' column; columns found: {found}{more}.")
    text_column, name_column = columns["text"], columns.get("name")
    parsed, empty, bad = Parsed(), [], []
    for number, cells, error in records:
        if error:
            bad.append(f"row {number}: {error}")
            continue
        if not cells:  # a blank line
            continue
        try:  # cells come from decoded UTF-8, so unlike JSON they cannot hold a lone surrogate
            value = cells[text_column] if text_column < len(cells) else ""
            if not value.strip():
                empty.append(number)
                continue
            given = cells[name_column] if name_column is not None and name_column < len(cells) else ""
            parsed.prompts.append(Prompt(name=_one_line(given, MAX_NAME_CHARS)
                                         or _default_name(value, f"{stem}:{number}"),
                                         text=value, source=f"{label}, row {number}"))
        except _READ_ERRORS as error:
            bad.append(f"row {number}: could not be read ({type(error).__name__})")
            continue
        if max_prompts is not None and len(parsed.prompts) >= max_prompts:
            parsed.left_out = sum(1 for _, rest, _ in records if _has_text(rest, text_column))
            break
    if empty:
        parsed.problems.append(f"'{label}': {len(empty):,} row(s) with an empty text skipped "
                               f"(rows {_numbers(empty)}).")
    if bad:
        parsed.problems.append(f"'{label}': {len(bad):,} unreadable row(s) skipped, {len(parsed.prompts):,} kept. "
                               f"{_listed(bad)}.")
    if parsed.left_out:
        parsed.problems.append(_cap_sentence(label, len(parsed.prompts), parsed.left_out, "row"))
    if not parsed.prompts:
        parsed.refused = True
        parsed.problems.append(f"'{label}' has no rows with text.")
    return parsed


def pasted(text: str, name: str = "") -> Prompt:
    """A prompt typed or pasted by the user; the name is put on one line and cut to MAX_NAME_CHARS."""
    return Prompt(name=_one_line(name, MAX_NAME_CHARS) or _default_name(text, "pasted text"), text=text,
                  source="pasted")
