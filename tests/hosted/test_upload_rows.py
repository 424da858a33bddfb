"""Rows 6 and 7 of the hosted-mode issue's table: uploaded .jsonl files that crashed the whole Prompts page, tried as
a visitor's upload reaches the parser (file name and bytes, as Streamlit's uploader hands them to parse_upload).

| # | what was tried | what happened before |
|---|---|---|
| 6 | a `.jsonl` line nested 200,000 levels deep | RecursionError out of parse_upload; the page crashed |
| 7 | a `.jsonl` line holding a 5,000-digit integer | ValueError (Python's int max str digits) out of parse_upload |
"""

import json

from attnscope.prompts import parse_upload

GOOD = json.dumps({"text": "The good line is kept.", "name": "good"})


def test_row6_jsonl_nested_200000_levels_deep_is_a_message_not_a_crash():
    nested = '{"text": ' + "[" * 200_000 + "]" * 200_000 + "}"  # well-formed JSON, only too deep
    parsed = parse_upload("deep.jsonl", f"{nested}\n{GOOD}\n".encode())
    assert not parsed.refused and [(p.name, p.text) for p in parsed.prompts] == [("good", "The good line is kept.")]
    assert parsed.problems == ["'deep.jsonl': 1 line(s) skipped, 1 kept. line 1: nested too deeply to read."]


def test_row7_jsonl_with_a_5000_digit_integer_is_a_message_not_a_crash():
    lines = ['{"text": "a", "n": ' + "1" * 5000 + "}", "1" * 5000, GOOD]
    parsed = parse_upload("digits.jsonl", "\n".join(lines).encode())
    assert not parsed.refused and [p.source for p in parsed.prompts] == ["digits.jsonl, line 3"]
    assert parsed.problems == [("'digits.jsonl': 2 line(s) skipped, 1 kept. line 1: an integer longer than 4,300 "
                               "digits; line 2: an integer longer than 4,300 digits.")]
