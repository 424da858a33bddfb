"""core.prompts: each upload format, and each kind of bad file with the message the user sees."""

import json

import pytest

from core import prompts


def test_text_and_markdown_are_one_prompt_each():
    parsed = prompts.parse_upload("story.md", "# Title\n\nOnce upon a time.".encode())
    assert not parsed.problems and len(parsed.prompts) == 1
    assert parsed.prompts[0].text == "# Title\n\nOnce upon a time." and parsed.prompts[0].source == "story.md"
    bom = prompts.parse_upload("a.txt", "\ufeffhello".encode("utf-8"))
    assert bom.prompts[0].text == "hello"


def test_jsonl_keeps_good_lines_and_reports_bad_ones_by_number():
    lines = [json.dumps({"text": "first", "name": "one"}), "{not json", json.dumps({"txt": "x"}), "",
             json.dumps({"text": "second"}), json.dumps(["text"]), json.dumps({"text": "   "})]
    parsed = prompts.parse_upload("batch.jsonl", "\n".join(lines).encode())
    assert [p.text for p in parsed.prompts] == ["first", "second"]
    assert parsed.prompts[0].name == "one" and parsed.prompts[1].source == "batch.jsonl, line 5"
    assert not parsed.refused and len(parsed.problems) == 1
    message = parsed.problems[0]
    assert "4 line(s) skipped, 2 kept" in message
    for number in (2, 3, 6, 7):
        assert f"line {number}:" in message


def test_csv_needs_a_text_column_and_lists_the_columns_found():
    good = prompts.parse_upload("p.csv", b"name,Text\na,hello there\nb,\nc,bye\n")
    assert [p.text for p in good.prompts] == ["hello there", "bye"] and good.prompts[0].name == "a"
    assert "1 row(s) with an empty text skipped (rows 3)" in good.problems[0]
    bad = prompts.parse_upload("p.csv", b"title,body\nx,y\n")
    assert bad.refused and bad.problems == ["'p.csv' has no 'text' column; columns found: 'title', 'body'."]


@pytest.mark.parametrize("name,data,message", [
    ("empty.txt", b"", "is empty"),
    ("blank.txt", b"  \n\t\n", "is empty"),
    ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
    ("latin.txt", "café au lait".encode("latin-1"), "not valid UTF-8 text (byte 3 cannot be decoded as UTF-8)"),
    ("notes.docx", b"hello", "unsupported file type '.docx'"),
    ("big.txt", b"a" * 2000, "is 2.0 KB, over the 1.0 KB limit"),
])
def test_bad_files_are_refused_with_a_clear_sentence(name, data, message):
    parsed = prompts.parse_upload(name, data, max_bytes=1000)
    assert parsed.refused and not parsed.prompts
    assert message in parsed.problems[0], parsed.problems


def test_markup_is_kept_verbatim_and_digest_names_the_text():
    text = "<script>alert(1)</script> **bold** [link](http://x)"
    prompt = prompts.parse_upload("x.txt", text.encode()).prompts[0]
    assert prompt.text == text
    assert prompt.digest == prompts.pasted(text).digest and len(prompt.digest) == 16
    assert prompts.pasted("  ", name="mine").name == "mine"
