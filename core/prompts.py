"""Prompts from uploaded files or pasted text, with every problem reported instead of raised.

Uploads are read by attnscope.reader, the one reader corpora use too: the same formats (reader.FORMATS: .txt / .md
are one prompt each; .jsonl, .json, .csv and .parquet hold one prompt per record in a `text` field or column, with an
optional `name`), the same sentences, the same Budget. This module turns its documents into a library's prompts.

`parse_upload` never raises: whatever the name and bytes, it returns a `Parsed` whose `problems` are sentences for the
user, and an exception nobody foresaw becomes one refusal sentence. A whole file is refused (nothing kept) when the
library is full (`max_prompts=0`), when the reader refuses it (reader.ReadError: its type, its size, empty, not text,
not UTF-8, no text column, not a Parquet file ...; that sentence is the problem), or when none of its records is
usable. Otherwise the bad records are skipped and named by place (line, row or item) in one sentence, and the good ones
kept. A "name" that cannot be encoded as UTF-8 is replaced by one made from the text, and the places are listed.

Names shown to users (prompt names and the file names inside messages) are put on one line (whitespace and control
characters become single spaces) and cut to MAX_NAME_CHARS with "…". With `max_prompts`, no prompt is built once that
many are kept; the usable records after them are counted in `Parsed.left_out` (the reader still reads them, within the
budget, to count them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

from attnscope import reader
from attnscope.reader import ENCODING, Budget, encoding_problem, file_label, one_line

FORMATS = reader.FORMATS
MAX_BYTES = 20 * 10**6  # 20 MB as Streamlit's uploader counts them: .streamlit/config.toml's server.maxUploadSize
MAX_NAME_CHARS = reader.MAX_LABEL_CHARS  # prompt names and file names as users see them, "…" included
_DEFAULT_NAME_CHARS = 48  # a name made from the start of a text
_SHOWN_PROBLEMS = 10  # malformed records listed one by one before the rest are counted

__all__ = ["FORMATS", "MAX_BYTES", "MAX_NAME_CHARS", "Budget", "Parsed", "Prompt", "file_label", "files_left_out",
           "parse_upload", "pasted"]


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
    problems: list[str] = field(default_factory=list)  # one sentence each, for the user, naming lines, rows or items
    refused: bool = False  # True when nothing of the file could be used
    left_out: int = 0  # usable records past max_prompts, not taken


def _refuse(message: str) -> Parsed:
    return Parsed(problems=[message], refused=True)


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
    return one_line(text, _DEFAULT_NAME_CHARS) or fallback


def _cap_sentence(label: str, taken: int, left_out: int) -> str:
    first = "the first prompt was" if taken == 1 else f"the first {taken:,} prompts were"
    rest = "1 more was" if left_out == 1 else f"{left_out:,} more were"
    return f"'{label}': only {first} taken (the limit for this library); {rest} left out."


def parse_upload(name: str, data: bytes, *, max_bytes: int = MAX_BYTES, max_prompts: int | None = None,
                 budget: Budget = Budget()) -> Parsed:
    """Prompts from one uploaded file; never raises: every problem is a sentence in `problems`.

    Args:
        name: the file name as uploaded; its suffix picks the format (reader.FORMATS).
        data: the file's bytes.
        max_bytes: a larger file is refused unread (the page's upload limit; with budget.total_bytes, the smaller
            applies).
        max_prompts: keep at most this many prompts (the room left in the library) and count the usable records that
            remain in `left_out`; 0 or less refuses the file unread (the library is full); None: no limit.
        budget: the limits the reader keeps to (reader.Budget).

    Returns:
        The good prompts, one sentence per problem, and `refused` when nothing of the file could be used.
    """
    label = "(unnamed file)"
    try:
        label = file_label(name)
        total = max_bytes if budget.total_bytes is None else min(max_bytes, budget.total_bytes)
        return _parse(name, label, data, budget=replace(budget, total_bytes=total), max_prompts=max_prompts)
    except Exception as error:  # the promise to the page: a sentence, never a traceback, whatever the file holds
        return _refuse(f"'{label}' could not be read ({type(error).__name__}); nothing from it was added.")


def _places(documents: list[reader.Document]) -> str:
    """ "line(s) 2, 5" for documents read at lines 2 and 5."""
    unit = documents[0].place.split()[0]
    numbers = [d.place.split()[-1] for d in documents]
    return f"{unit}(s) " + ", ".join(numbers[:_SHOWN_PROBLEMS]) + (" …" if len(numbers) > _SHOWN_PROBLEMS else "")


def _prompt(document: reader.Document, label: str) -> tuple[Prompt, bool]:
    """The prompt a usable document makes, and whether its "name" had to be replaced (not encodable)."""
    given = document.name or ""
    name = one_line(given, MAX_NAME_CHARS)
    replaced = bool(name) and encoding_problem(given) is not None
    if replaced or not name:
        name = _default_name(document.text, file_label(document.id))
    source = f"{label}, {document.place}" if document.place else label
    return Prompt(name=name, text=document.text, source=source), replaced


def _parse(name: str, label: str, data: bytes, *, budget: Budget, max_prompts: int | None) -> Parsed:
    if max_prompts is not None and max_prompts <= 0:
        return _refuse(f"'{label}' was not read: the library is full; remove some prompts from it, then upload "
                       f"the file again.")
    try:
        documents = reader.read_upload(name, data, budget=budget)
    except reader.ReadError as error:
        return _refuse(str(error))
    parsed, bad, renamed, cut = Parsed(), [], [], None
    for document in documents:
        if document.cut:
            cut = document.problem
            break
        full = max_prompts is not None and len(parsed.prompts) >= max_prompts
        if document.text is None:
            if not full:
                bad.append(document)
            continue
        if full:
            parsed.left_out += 1
            continue
        prompt, replaced = _prompt(document, label)
        parsed.prompts.append(prompt)
        if replaced:
            renamed.append(document)
    if bad:
        listed = "; ".join(f"{d.place}: {d.reason}" for d in bad[:_SHOWN_PROBLEMS])
        more = f"; and {len(bad) - _SHOWN_PROBLEMS} more" if len(bad) > _SHOWN_PROBLEMS else ""
        unit = bad[0].place.split()[0]
        parsed.problems.append(f"'{label}': {len(bad):,} {unit}(s) skipped, {len(parsed.prompts):,} kept. "
                               f"{listed}{more}.")
    if renamed:
        parsed.problems.append(f"'{label}': the \"name\" on {_places(renamed)} cannot be encoded as "
                               f"{ENCODING.upper()}, so those prompts are named after their text.")
    if parsed.left_out:
        parsed.problems.append(_cap_sentence(label, len(parsed.prompts), parsed.left_out))
    if cut:
        parsed.problems.append(cut)
    if not parsed.prompts:
        parsed.refused = True
        if not bad and not cut:
            parsed.problems.append(f"'{label}' holds no texts.")
    return parsed


def pasted(text: str, name: str = "") -> Prompt:
    """A prompt typed or pasted by the user; the name is put on one line and cut to MAX_NAME_CHARS."""
    return Prompt(name=one_line(name, MAX_NAME_CHARS) or _default_name(text, "pasted text"), text=text,
                  source="pasted")
