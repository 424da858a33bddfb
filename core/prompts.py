"""Prompts from uploaded files or pasted text, with every problem reported instead of raised.

Formats: .txt / .md (the whole file is one prompt), .jsonl (one {"text": ...} object per line; "name" optional),
.csv (a `text` column; a `name` column optional). Bytes are decoded as UTF-8 (a byte-order mark is dropped); a file
that is not UTF-8 is refused with the encoding that was tried, never guessed at. A file that looks binary (NUL
bytes, or mostly control characters) is refused before decoding. Good lines of a JSONL file are kept when others are
malformed, and the malformed ones are listed by line number.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import PurePath

FORMATS = {".txt": "text", ".md": "text", ".jsonl": "jsonl", ".csv": "csv"}
ENCODING = "utf-8"
MAX_BYTES = 20 * 2**20  # the same limit as .streamlit/config.toml's server.maxUploadSize
_SHOWN_PROBLEMS = 10  # malformed lines listed one by one before the rest are counted


@dataclass(frozen=True)
class Prompt:
    name: str  # what the library shows
    text: str
    source: str  # "pasted" or the file name (with the line or row for multi-prompt files)

    @property
    def digest(self) -> str:
        """Content hash (SHA-256 of the UTF-8 text, first 16 hex digits): names a text without carrying it."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


@dataclass
class Parsed:
    prompts: list[Prompt] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one sentence each, for the user
    refused: bool = False  # True when nothing of the file could be used


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.1f} MB" if n_bytes >= 2**20 else f"{n_bytes / 1024:.1f} KB"


def _refuse(message: str) -> Parsed:
    return Parsed(problems=[message], refused=True)


def _looks_binary(data: bytes) -> bool:
    sample = data[:8192]
    if b"\x00" in sample:
        return True
    control = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13))
    return control > 0.1 * len(sample)


def _default_name(text: str, fallback: str) -> str:
    first = " ".join(text.split())[:48]
    return first + ("…" if len(" ".join(text.split())) > 48 else "") if first else fallback


def parse_upload(name: str, data: bytes, *, max_bytes: int = MAX_BYTES) -> Parsed:
    """Prompts from one uploaded file; never raises for bad content."""
    suffix = PurePath(name).suffix.lower()
    if suffix not in FORMATS:
        return _refuse(f"'{name}': unsupported file type '{suffix or '(none)'}'; use {', '.join(FORMATS)}.")
    if len(data) > max_bytes:
        return _refuse(f"'{name}' is {_size(len(data))}, over the {_size(max_bytes)} limit.")
    if not data.strip():
        return _refuse(f"'{name}' is empty.")
    if _looks_binary(data):
        return _refuse(f"'{name}' looks like a binary file, not text.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        return _refuse(f"'{name}' is not valid {ENCODING.upper()} text (byte {error.start} cannot be decoded as "
                       f"{ENCODING.upper()}); save it as {ENCODING.upper()} and upload it again.")
    kind = FORMATS[suffix]
    if kind == "text":
        return Parsed(prompts=[Prompt(name=_default_name(text, name), text=text, source=name)])
    if kind == "jsonl":
        return _parse_jsonl(name, text)
    return _parse_csv(name, text)


def _parse_jsonl(name: str, text: str) -> Parsed:
    parsed, bad = Parsed(), []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            bad.append(f"line {number}: not JSON ({error.msg})")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            bad.append(f"line {number}: no string field \"text\"")
            continue
        if not record["text"].strip():
            bad.append(f"line {number}: empty \"text\"")
            continue
        label = record.get("name") if isinstance(record.get("name"), str) else None
        parsed.prompts.append(Prompt(name=label or _default_name(record["text"], f"{name}:{number}"),
                                     text=record["text"], source=f"{name}, line {number}"))
    if bad:
        listed = "; ".join(bad[:_SHOWN_PROBLEMS]) + (f"; and {len(bad) - _SHOWN_PROBLEMS} more"
                                                      if len(bad) > _SHOWN_PROBLEMS else "")
        parsed.problems.append(f"'{name}': {len(bad)} line(s) skipped, {len(parsed.prompts)} kept. {listed}.")
    if not parsed.prompts:
        parsed.refused = True
        if not bad:
            parsed.problems.append(f"'{name}' has no lines with text.")
    return parsed


def _parse_csv(name: str, text: str) -> Parsed:
    try:
        reader = csv.DictReader(io.StringIO(text))
        columns = reader.fieldnames or []
    except csv.Error as error:
        return _refuse(f"'{name}' is not readable as CSV: {error}.")
    lowered = {c.strip().lower(): c for c in columns if c is not None}
    if "text" not in lowered:
        found = ", ".join(f"'{c}'" for c in columns) or "none"
        return _refuse(f"'{name}' has no 'text' column; columns found: {found}.")
    column, label_column = lowered["text"], lowered.get("name")
    parsed, empty = Parsed(), []
    try:
        for row_number, row in enumerate(reader, start=2):  # row 1 is the header
            value = row.get(column) or ""
            if not value.strip():
                empty.append(row_number)
                continue
            label = (row.get(label_column) or "").strip() if label_column else ""
            parsed.prompts.append(Prompt(name=label or _default_name(value, f"{name}:{row_number}"), text=value,
                                         source=f"{name}, row {row_number}"))
    except csv.Error as error:
        parsed.problems.append(f"'{name}': reading stopped at row {reader.line_num}: {error}.")
    if empty:
        rows = ", ".join(map(str, empty[:_SHOWN_PROBLEMS])) + (" …" if len(empty) > _SHOWN_PROBLEMS else "")
        parsed.problems.append(f"'{name}': {len(empty)} row(s) with an empty text skipped (rows {rows}).")
    if not parsed.prompts:
        parsed.refused = True
        parsed.problems.append(f"'{name}' has no rows with text.")
    return parsed


def pasted(text: str, name: str = "") -> Prompt:
    """A prompt typed or pasted by the user."""
    return Prompt(name=name.strip() or _default_name(text, "pasted text"), text=text, source="pasted")
