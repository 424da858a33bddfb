"""core.prompts.parse_upload on generated files: whatever the bytes, a Parsed with usable prompts, never an exception.

Random bytes, JSON Lines built from random JSON values mixed with random text lines, and CSV built from random cells
(quotes, commas, line breaks, NULs) go through parse_upload; every result must hold prompts whose text is non-blank and
encodable (so Prompt.digest works), one-line capped names, and str problems. Neither the last-resort catch nor a
per-line "could not be read" may fire: they mean an exception nobody foresaw. Invariants on well-formed input: every
valid {"text": ...} JSONL line is kept, every CSV row with a non-blank text cell is kept, in order, and a CSV row over
the csv module's field limit or the budget's value_bytes costs that row only.
"""

import csv
import io
import json
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnscope import prompts, reader

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SUFFIXES = [".txt", ".md", ".jsonl", ".json", ".csv", ".parquet", ".docx"]
# Characters that have broken parsers before: surrogates, line and paragraph separators, NUL, quotes, escapes.
TRICKY = "\ud800\udfff\u2028\u2029\x85\x00\x1c\r\n\t\"\\,{}[]\ufeff"
any_char = st.characters() | st.sampled_from(TRICKY)
visible_char = st.characters(exclude_categories=["Cc", "Cs"], exclude_characters="\ufeff")
max_prompts = st.none() | st.integers(min_value=0, max_value=5)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats() | st.text(any_char, max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(any_char, max_size=8), children,
                                                                       max_size=4),
    max_leaves=12)
names = st.text(any_char, max_size=20) | st.text(any_char, min_size=70, max_size=120) | json_values
# Objects with a "text", valid or not: surrogates, blank texts, long or odd names.
records = st.fixed_dictionaries({"text": st.text(any_char, max_size=120)}, optional={"name": names})


def check(parsed: prompts.Parsed, limit: int | None) -> None:
    assert isinstance(parsed, prompts.Parsed)
    assert all(isinstance(problem, str) and problem.encode() for problem in parsed.problems)
    assert not any("could not be read" in problem for problem in parsed.problems), parsed.problems
    assert parsed.refused == (not parsed.prompts)
    for prompt in parsed.prompts:
        assert isinstance(prompt, prompts.Prompt)
        assert isinstance(prompt.text, str) and prompt.text.strip() and prompt.text.encode()
        assert len(prompt.digest) == 16
        assert prompt.name and len(prompt.name) <= prompts.MAX_NAME_CHARS
        assert prompt.name == " ".join(prompt.name.split())  # one line, no runs of spaces
        assert prompt.name.encode() and isinstance(prompt.source, str)
    if limit is None:
        assert parsed.left_out == 0
    else:
        assert len(parsed.prompts) <= max(limit, 0) and (parsed.left_out == 0 or len(parsed.prompts) == limit)


@SETTINGS
@given(data=st.binary(max_size=3000) | st.text(any_char, max_size=1000).map(lambda t: t.encode("utf-8",
                                                                                                  "surrogatepass")),
       suffix=st.sampled_from(SUFFIXES), limit=max_prompts)
def test_random_bytes_never_raise(data, suffix, limit):
    check(prompts.parse_upload("upload" + suffix, data, max_prompts=limit), limit)


def _jsonl_line(value, ascii_only: bool) -> str:
    if not ascii_only:
        line = json.dumps(value, ensure_ascii=False)
        try:
            line.encode()
            return line
        except UnicodeEncodeError:
            pass
    return json.dumps(value)


valid_records = st.builds(lambda extra, text, name: {**extra, **({"name": name} if name is not None else {}),
                                                     "text": text},
                          st.dictionaries(st.text(any_char, max_size=8), json_values, max_size=3),
                          st.text(any_char, min_size=1, max_size=40).filter(
                              lambda t: t.strip() and reader.encoding_problem(t) is None),
                          st.none() | names)


@SETTINGS
@given(items=st.lists(st.tuples(valid_records.map(lambda r: ("valid", r))
                                | json_values.map(lambda v: ("value", v))
                                | st.text(visible_char | st.sampled_from(" \t\r"), max_size=60).map(
                                    lambda t: ("raw", t)),
                                st.booleans()),
                      max_size=12),
       line_break=st.sampled_from(["\n", "\r\n"]))
def test_jsonl_keeps_every_valid_text_line(items, line_break):
    lines = [value if kind == "raw" else _jsonl_line(value, ascii_only) for (kind, value), ascii_only in items]
    parsed = prompts.parse_upload("gen.jsonl", line_break.join(lines).encode())
    check(parsed, None)
    expected = Counter(value["text"] for (kind, value), _ in items if kind == "valid")
    assert not expected - Counter(p.text for p in parsed.prompts), parsed.problems


@SETTINGS
@given(lines=st.lists((records | json_values).map(json.dumps) | st.text(any_char, max_size=40), max_size=10),
       limit=max_prompts)
def test_jsonl_with_anything_on_its_lines_never_raises(lines, limit):
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    check(prompts.parse_upload("gen.jsonl", data, max_prompts=limit), limit)


cells = st.text(any_char, max_size=12)
csv_tables = st.lists(st.lists(cells, max_size=5), max_size=8)


@SETTINGS
@given(header=st.lists(cells, max_size=4), at=st.integers(0, 4), rows=csv_tables, written=st.booleans(),
       limit=max_prompts)
def test_csv_with_anything_in_its_cells_never_raises(header, at, rows, written, limit):
    header = header[:at] + ["text"] + header[at:]
    if written:
        buffer = io.StringIO()
        csv.writer(buffer).writerows([header, *rows])
        text = buffer.getvalue()
    else:  # joined by hand: unbalanced quotes and bare line breaks inside cells
        text = "\n".join(",".join(row) for row in [header, *rows])
    check(prompts.parse_upload("gen.csv", text.encode("utf-8", "surrogatepass"), max_prompts=limit), limit)


@SETTINGS
@given(header=st.lists(st.text(visible_char, max_size=6), max_size=3), at=st.integers(0, 3),
       rows=st.lists(st.lists(st.text(visible_char | st.sampled_from('\r\n",\t '), max_size=12), max_size=5),
                     max_size=8))
def test_csv_keeps_every_row_with_a_text(header, at, rows):
    header = header[:at] + ["text"] + header[at:]
    column = header.index("text")  # the exact name first, before one that differs only in case or spaces
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *rows])
    parsed = prompts.parse_upload("gen.csv", buffer.getvalue().encode())
    check(parsed, None)
    expected = [row[column] for row in rows if column < len(row) and row[column].strip()]
    assert [p.text for p in parsed.prompts] == expected, parsed.problems


def _lines_per_record_by_csv(text: str) -> list[int]:
    """How many physical lines csv.reader takes for each record of `text`."""
    taken = []

    def lines():
        for line in io.StringIO(text, newline=""):
            taken.append(line)
            yield line

    counts, before = [], 0
    for _ in csv.reader(lines()):
        counts.append(len(taken) - before)
        before = len(taken)
    return counts


def _lines_per_record_by_scan(text: str) -> list[int]:
    counts, count, state = [], 0, reader._FIELD
    for line in io.StringIO(text, newline=""):
        count, state = count + 1, reader._csv_scan(line, state)
        if state == reader._ENDED:
            counts.append(count)
            count, state = 0, reader._FIELD
    return counts + ([count] if count else [])


@SETTINGS
@given(text=st.text(st.sampled_from('"",\r\n ab\x00'), max_size=40))
def test_csv_scan_ends_records_where_the_csv_module_does(text):
    assert _lines_per_record_by_scan(text) == _lines_per_record_by_csv(text)


@SETTINGS
@given(rows=st.lists(st.lists(st.text(visible_char | st.sampled_from('\r\n",'), max_size=8), max_size=3),
                     max_size=8))
def test_csv_rows_over_the_field_limit_cost_one_row_each(rows):
    limit = 4
    text_rows = [["text"], *rows]
    buffer = io.StringIO()
    csv.writer(buffer).writerows(text_rows)
    previous = csv.field_size_limit(limit)
    try:
        parsed = prompts.parse_upload("gen.csv", buffer.getvalue().encode())
    finally:
        csv.field_size_limit(previous)
    check(parsed, None)
    fits = [row for row in rows if all(len(cell) <= limit for cell in row)]
    assert [p.text for p in parsed.prompts] == [row[0] for row in fits if row and row[0].strip()]
    too_long = sum(1 for row in rows if any(len(cell) > limit for cell in row))
    assert " ".join(parsed.problems).count("field larger than field limit") == too_long


def _written(row: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(row)
    return buffer.getvalue()


@SETTINGS
@given(rows=st.lists(st.lists(st.text(visible_char | st.sampled_from('\r\n",'), max_size=12), min_size=1,
                              max_size=3), max_size=8),
       limit=st.integers(8, 40))
def test_csv_rows_over_the_value_budget_cost_one_row_each(rows, limit):
    text = _written(["text"]) + "".join(map(_written, rows))
    parsed = prompts.parse_upload("gen.csv", text.encode(), budget=reader.Budget(value_bytes=limit))
    check(parsed, None)
    fits = [row for row in rows if len(_written(row).encode()) <= limit]
    assert [p.text for p in parsed.prompts] == [row[0] for row in fits if row[0].strip()], parsed.problems
    too_long = len(rows) - len(fits)
    assert " ".join(parsed.problems).count("limit for one record") == min(too_long, 10)
