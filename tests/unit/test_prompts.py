"""core.prompts: each upload format, and each kind of bad file with the message the user sees."""

import json

import pytest

from attnscope import prompts


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
    assert good.problems == ["'p.csv': 1 row(s) skipped, 2 kept. row 3: empty \"text\"."]
    bad = prompts.parse_upload("p.csv", b"title,body\nx,y\n")
    assert bad.refused and bad.problems == ["'p.csv' has no 'text' column; columns found: 'title', 'body'."]


@pytest.mark.parametrize("name,data,message", [
    ("empty.txt", b"", "is empty"),
    ("blank.txt", b"  \n\t\n", "is empty"),
    ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "looks like a binary file, not text (it holds NUL"),
    ("latin.txt", "café au lait".encode("latin-1"),
     "is not valid UTF-8 text (the byte at offset 3, on line 1, is 0xe9)"),
    ("notes.docx", b"hello", "is not a file type attnscope reads ('.docx'); use .txt, .md, .jsonl, .json, .csv or "
                             ".parquet"),
    ("big.txt", b"a" * 2000, "is 2.0 KB, over the 1.0 KB limit for one file"),
    ("rows.parquet", b"PAR1 not really", "is not a .parquet file (a Parquet file starts and ends with the bytes PAR1)"),
    ("rows.json", b'{"text": "one object"}', "is not a JSON array of records (it starts with '{')"),
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


def test_utf16_and_bom_only_files_are_refused():
    assert "looks like a binary file" in prompts.parse_upload("u16.txt", "hello".encode("utf-16")).problems[0]
    assert prompts.parse_upload("bom.txt", b"\xef\xbb\xbf").problems == ["'bom.txt' is empty."]


@pytest.mark.parametrize("deep", ["[" * 200_000, '{"text": ' + "[" * 200_000 + "]" * 200_000 + "}"],
                         ids=["unclosed", "valid-json"])
def test_jsonl_nested_too_deeply_is_a_line_message(deep):
    data = "\n".join([deep, json.dumps({"text": "kept"})]).encode()
    parsed = prompts.parse_upload("deep.jsonl", data)
    assert [p.text for p in parsed.prompts] == ["kept"] and not parsed.refused
    assert parsed.problems == ["'deep.jsonl': 1 line(s) skipped, 1 kept. line 1: nested too deeply to read."]


def test_jsonl_integers_over_4300_digits_are_line_messages():
    lines = ['{"text": "a", "n": ' + "1" * 5000 + "}", "7" * 5000, '{"text": "b", "n": -' + "9" * 4300 + "}"]
    parsed = prompts.parse_upload("n.jsonl", "\n".join(lines).encode())
    assert [p.text for p in parsed.prompts] == ["b"]  # 4,300 digits is still within the limit
    assert parsed.problems == [("'n.jsonl': 2 line(s) skipped, 1 kept. line 1: an integer longer than 4,300 digits; "
                               "line 2: an integer longer than 4,300 digits.")]


def test_jsonl_lone_surrogates_reject_the_text_and_replace_the_name():
    lines = [r'{"text": "ab\ud800"}', r'{"text": "fine text", "name": "x\udc00"}']
    parsed = prompts.parse_upload("s.jsonl", "\n".join(lines).encode())
    assert [(p.name, p.text) for p in parsed.prompts] == [("fine text", "fine text")]
    assert parsed.prompts[0].digest
    assert parsed.problems == [
        ("'s.jsonl': 1 line(s) skipped, 1 kept. line 1: \"text\" cannot be encoded as UTF-8 (lone surrogate \\ud800 at "
         "character 3)."),
        "'s.jsonl': the \"name\" on line(s) 2 cannot be encoded as UTF-8, so those prompts are named after their text."]


def test_jsonl_splits_at_newlines_only():
    line = json.dumps({"text": "one\u2028two\x85three"}, ensure_ascii=False)
    parsed = prompts.parse_upload("u.jsonl", f"{line}\r\n{line}".encode())
    assert [p.text for p in parsed.prompts] == ["one\u2028two\x85three"] * 2 and not parsed.problems


def test_names_are_one_line_and_capped():
    long_name = "first line\n\n\tsecond " + "x" * 500
    parsed = prompts.parse_upload("n.jsonl", json.dumps({"text": "t", "name": long_name}).encode())
    name = parsed.prompts[0].name
    assert len(name) == prompts.MAX_NAME_CHARS and name.startswith("first line second x") and name.endswith("…")
    row = prompts.parse_upload("n.csv", f'name,text\n"{long_name}",t\n'.encode()).prompts[0]
    assert row.name == name
    assert prompts.pasted("t", name=long_name).name == name
    assert prompts.pasted("a\x1b[31mred\x00b\r\n\u2028c").name == "a [31mred b c"  # control characters too
    file_name = "f" * 251 + ".txt"
    message = prompts.parse_upload(file_name, b"").problems[0]
    assert message == f"'{'f' * 79}…' is empty."


def test_max_prompts_stops_taking_and_counts_the_usable_records_left_out():
    lines = [json.dumps({"text": f"t{i}"}) for i in range(10)]
    lines[6] = "{not json"  # after the cap: neither counted nor reported as malformed
    lines.insert(8, "   ")  # blank lines are not records
    parsed = prompts.parse_upload("many.jsonl", "\n".join(lines).encode(), max_prompts=4)
    assert [p.text for p in parsed.prompts] == ["t0", "t1", "t2", "t3"] and not parsed.refused
    assert parsed.left_out == 5
    assert parsed.problems == [("'many.jsonl': only the first 4 prompts were taken (the limit for this library); "
                               "5 more were left out.")]
    exact = prompts.parse_upload("many.jsonl", "\n".join(lines[:4]).encode() + b"\n\n", max_prompts=4)
    assert len(exact.prompts) == 4 and exact.left_out == 0 and not exact.problems
    one = prompts.parse_upload("p.csv", b"text\na\n\n,\nb\nc\n", max_prompts=1)
    assert [p.text for p in one.prompts] == ["a"] and one.left_out == 2
    assert one.problems == [("'p.csv': only the first prompt was taken (the limit for this library); 2 more were left "
                            "out.")]


def test_a_full_library_refuses_the_file_unread():
    parsed = prompts.parse_upload("x.jsonl", b'{"text": "a"}', max_prompts=0)
    assert parsed.refused and not parsed.prompts
    assert parsed.problems == [("'x.jsonl' was not read: the library is full; remove some prompts from it, then upload "
                               "the file again.")]


def test_csv_rows_over_the_value_budget_cost_one_row_each():
    big = "y" * 2000
    data = f'name,text\na,"{big}\nstill the same cell"\nb,good\nc,{big}\nd,"also ""good"""\n'.encode()
    parsed = prompts.parse_upload("big.csv", data, budget=prompts.Budget(value_bytes=1000))
    assert [(p.name, p.text) for p in parsed.prompts] == [("b", "good"), ("d", 'also "good"')]
    assert parsed.prompts[1].source == "big.csv, row 5"
    assert parsed.problems == [("'big.csv': 2 row(s) skipped, 2 kept. row 2: 2.0 KB, over the 1.0 KB limit for one "
                               "record; row 4: 2.0 KB, over the 1.0 KB limit for one record.")]
    assert [p.text for p in prompts.parse_upload("big.csv", data).prompts][0] == big + "\nstill the same cell"
    header = prompts.parse_upload("big.csv", f"{big},text\nx,y\n".encode(), budget=prompts.Budget(value_bytes=1000))
    assert header.refused and header.problems == [("'big.csv' has a header row (row 1) that cannot be read: 2.0 KB, "
                                                   "over the 1.0 KB limit for one record.")]


def test_csv_without_a_text_column_lists_at_most_20_columns():
    header = ",".join(f"c{i}" for i in range(25))
    parsed = prompts.parse_upload("wide.csv", f"{header}\n{header}\n".encode())
    assert parsed.refused and parsed.problems[0].endswith("'c18', 'c19' and 5 more.")


def test_an_unforeseen_exception_becomes_one_refusal(monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("surprise")

    monkeypatch.setattr(prompts.reader, "read_upload", broken)
    parsed = prompts.parse_upload("x.jsonl", b'{"text": "a"}')
    assert parsed.refused and parsed.problems == ["'x.jsonl' could not be read (KeyError); nothing from it was added."]


def test_files_past_the_upload_limit_are_named():
    assert prompts.files_left_out(["a.txt", "b.txt"], 2) is None
    assert prompts.files_left_out(["a.txt", "b.txt", "c.txt"], 2) == \
        "Only 2 files are taken from one upload; 1 was left out ('c.txt'). Upload them separately."
    many = prompts.files_left_out([f"{n}.txt" for n in range(9)], 1)
    assert many.startswith("Only 1 files are taken from one upload; 8 were left out ('1.txt', '2.txt', '3.txt', "
                           "'4.txt', '5.txt', …)")
    assert "\n" not in prompts.files_left_out(["a", "two\nlines"], 1)
