"""attnscope.reader: one reader behind prompt uploads and corpora. Each format gives the same texts through an upload
(reader.read_upload, prompts.parse_upload) and a path (reader.read_path, corpus.read_corpus); each malformed file or
record gives one sentence naming the file, the place and the fix, the same through every entry point."""

import csv
import io
import json
import random
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnscope import prompts, reader
from attnscope.corpus import read_corpus
from attnscope.reader import Budget, ReadError, read_path, read_upload

TABLES = (".jsonl", ".json", ".csv", ".parquet")


def _table(suffix: str, records: list[dict]) -> bytes:
    """`records` written as a file of one of the table formats, as other tools write them."""
    if suffix == ".jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    if suffix == ".json":
        return json.dumps(records, ensure_ascii=False, indent=1).encode()
    if suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
        return buffer.getvalue().encode()
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buffer)
    return buffer.getvalue()


def _everywhere(name: str, data: bytes, folder: Path, **kwargs) -> dict:
    """What each entry point makes of one file: texts and problems (or the ReadError's sentence)."""
    path = folder / name
    path.write_bytes(data)
    seen = {}
    for entry, read in (("upload", lambda: read_upload(name, data, **kwargs)),
                        ("path", lambda: read_path(path, **kwargs)),
                        ("corpus", lambda: read_corpus(path, **kwargs))):
        try:
            seen[entry] = [(d.text, d.problem) for d in read()]
        except ReadError as error:
            seen[entry] = str(error)
    parsed = prompts.parse_upload(name, data, budget=kwargs.get("budget", Budget()))
    seen["prompts"] = ([p.text for p in parsed.prompts], parsed.problems)
    return seen


def _one(seen: dict) -> str:
    """The sentence every entry point gave for a file refused whole."""
    assert seen["upload"] == seen["path"] == seen["corpus"] and isinstance(seen["upload"], str), seen
    assert seen["prompts"] == ([], [seen["upload"]])
    return seen["upload"]


def _problems(seen: dict) -> list[str]:
    """The problem sentences every entry point gave for a file read record by record."""
    assert seen["upload"] == seen["path"] == seen["corpus"], seen
    return [problem for _, problem in seen["upload"] if problem]


@pytest.mark.parametrize("suffix", TABLES)
def test_each_table_format_gives_the_same_texts_through_every_entry_point(suffix, tmp_path):
    records = [{"name": "one", "text": "first, with \"quotes\"\nand a line break"},
               {"name": "two", "text": "é ü 中 🙂"},
               {"name": "three", "text": "  spaces kept  "}]
    seen = _everywhere("rows" + suffix, _table(suffix, records), tmp_path)
    texts = [r["text"] for r in records]
    assert [text for text, _ in seen["upload"]] == texts and not _problems(seen)
    assert seen["prompts"] == (texts, [])
    parsed = prompts.parse_upload("rows" + suffix, _table(suffix, records))
    assert [p.name for p in parsed.prompts] == ["one", "two", "three"]


@pytest.mark.parametrize("suffix", [".txt", ".md"])
def test_a_text_file_is_one_document_through_every_entry_point(suffix, tmp_path):
    seen = _everywhere("story" + suffix, "\ufeff# Title\n\nOnce upon a time.".encode(), tmp_path)
    assert seen["upload"] == seen["path"] == seen["corpus"] == [("# Title\n\nOnce upon a time.", None)]
    assert seen["prompts"] == (["# Title\n\nOnce upon a time."], [])


texts = st.text(st.characters(exclude_categories=["Cc", "Cs"], exclude_characters="\ufeff") | st.sampled_from(
    "\n\t \",'\\{}[]\u2028"), min_size=1, max_size=30).filter(str.strip)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(texts, min_size=1, max_size=6), suffix=st.sampled_from(TABLES))
def test_any_texts_read_back_the_same_from_an_upload_and_a_path(values, suffix):
    data = _table(suffix, [{"text": value} for value in values])
    with tempfile.TemporaryDirectory() as folder:
        seen = _everywhere("gen" + suffix, data, Path(folder))
    assert [text for text, _ in seen["upload"]] == values and not _problems(seen)
    assert seen["prompts"] == (values, [])


RANDOM = random.Random(25).randbytes(3000)


@pytest.mark.parametrize("name,message", [
    ("noise.txt", "'noise.txt' looks like a binary file, not text (it holds NUL or other control bytes, as UTF-16 "
                  "text does too); save it as UTF-8 text."),
    ("noise.jsonl", "'noise.jsonl' looks like a binary file, not text"),
    ("noise.json", "'noise.json' looks like a binary file, not text"),
    ("noise.csv", "'noise.csv' looks like a binary file, not text"),
    ("noise.parquet", "'noise.parquet' is not a .parquet file (a Parquet file starts and ends with the bytes PAR1); "
                      "write it with pandas' DataFrame.to_parquet or pyarrow.parquet.write_table."),
])
def test_random_bytes_are_one_sentence_everywhere(name, message, tmp_path):
    assert _one(_everywhere(name, RANDOM, tmp_path)).startswith(message)


def test_a_damaged_parquet_file_is_one_sentence_not_pyarrows_text(tmp_path):
    data = b"PAR1" + RANDOM[:200] + b"PAR1"
    sentence = _one(_everywhere("damaged.parquet", data, tmp_path))
    assert sentence.startswith("'damaged.parquet' is a damaged .parquet file (")
    assert sentence.endswith("; write it again.")
    assert "magic bytes" not in sentence


@pytest.mark.parametrize("suffix,data,sentence", [
    (".txt", "ok\ncafé".encode("latin-1"),
     "'bad.txt' is not valid UTF-8 text (the byte at offset 6, on line 2, is 0xe9); save it as UTF-8."),
    (".json", '[{"text": "café"}]'.encode("latin-1"),
     "'bad.json' is not valid UTF-8 text (the byte at offset 14, on line 1, is 0xe9); save it as UTF-8."),
])
def test_a_file_that_is_not_utf8_names_the_byte_and_the_line(suffix, data, sentence, tmp_path):
    assert _one(_everywhere("bad" + suffix, data, tmp_path)) == sentence


def test_a_record_that_is_not_utf8_costs_that_record_and_names_it(tmp_path):
    good = "x" * 9000  # past the first 8 KB that decide whether the whole file is text
    lines = [json.dumps({"text": good}), json.dumps({"text": "café"}, ensure_ascii=False), json.dumps({"text": "ok"})]
    data = "\n".join(lines).encode().replace("é".encode(), b"\xe9")
    seen = _everywhere("late.jsonl", data, tmp_path)
    assert _problems(seen) == ["'late.jsonl', line 2: not UTF-8 text (the byte at offset 13 of the line is 0xe9); "
                               "save the file as UTF-8."]
    assert seen["prompts"][0] == [good, "ok"]
    rows = f"text\n{good}\ncaf\xe9\nok\n".encode("latin-1")
    seen = _everywhere("late.csv", rows, tmp_path)
    assert _problems(seen) == ["'late.csv', row 3: not UTF-8 text (byte 0xe9 in \"text\"); save the file as UTF-8."]


@pytest.mark.parametrize("deep", [200_000, 6], ids=["past-the-parser", "past-the-budget"])
def test_deep_nesting_is_a_sentence_naming_the_record(deep, tmp_path):
    nested = '{"text": "t", "x": ' + "[" * deep + "]" * deep + "}"
    budget = Budget(depth=5)
    seen = _everywhere("deep.jsonl", f"{nested}\n{json.dumps({'text': 'kept'})}\n".encode(), tmp_path, budget=budget)
    assert _problems(seen) == ["'deep.jsonl', line 1: nested too deeply to read."]
    assert seen["prompts"] == (["kept"],
                               ["'deep.jsonl': 1 line(s) skipped, 1 kept. line 1: nested too deeply to read."])
    seen = _everywhere("deep.json", f"[{json.dumps({'text': 'kept'})}, {nested}]".encode(), tmp_path, budget=budget)
    assert [text for text, _ in seen["upload"]] == ["kept", None]
    assert _problems(seen)[0].startswith("'deep.json', item 2: nested too deeply to read")


def test_the_budget_depth_counts_containers():
    fine = json.dumps({"text": "t", "x": [[1]]})  # three levels
    assert [d.text for d in read_upload("d.jsonl", fine.encode(), budget=Budget(depth=3))] == ["t"]
    assert [d.reason for d in read_upload("d.jsonl", fine.encode(), budget=Budget(depth=2))] == [
        "nested too deeply to read"]


@pytest.mark.parametrize("suffix,place", [(".jsonl", "line 2"), (".csv", "row 3"), (".json", "item 2"),
                                          (".parquet", "row 2")])
def test_a_record_over_the_value_budget_costs_that_record(suffix, place, tmp_path):
    records = [{"text": "short"}, {"text": "y" * 5000}, {"text": "after"}]
    seen = _everywhere("big" + suffix, _table(suffix, records), tmp_path, budget=Budget(value_bytes=1000))
    assert [text for text, _ in seen["upload"]] == ["short", None, "after"]
    [problem] = _problems(seen)
    assert problem.startswith(f"'big{suffix}', {place}: ") and "over the 1.0 KB limit for one " in problem
    assert seen["prompts"][0] == ["short", "after"]


def test_a_parquet_row_over_the_value_budget_is_refused_from_the_footer_unread(tmp_path, monkeypatch):
    path = tmp_path / "groups.parquet"
    pq.write_table(pa.table({"text": ["short", "y" * 5000, "after"]}), path, row_group_size=1)
    groups_read = []
    original = pq.ParquetFile.iter_batches

    def spy(self, *args, row_groups=None, **kwargs):
        groups_read.extend(row_groups)
        return original(self, *args, row_groups=row_groups, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    docs = list(read_corpus(path, budget=Budget(value_bytes=1000)))
    assert [d.text for d in docs] == ["short", None, "after"] and groups_read == [0, 2]
    assert docs[1].problem.startswith("'groups.parquet', row 2: \"text\" is 5.")
    assert docs[1].problem.endswith(" KB uncompressed, over the 1.0 KB limit for one value.")


def test_a_text_file_over_the_value_budget_is_refused_whole(tmp_path):
    assert _one(_everywhere("long.txt", b"z" * 2000, tmp_path, budget=Budget(value_bytes=1000))) == (
        "'long.txt' is 2.0 KB, over the 1.0 KB limit for one document.")


@pytest.mark.parametrize("suffix", TABLES + (".txt",))
def test_a_file_over_the_total_budget_is_refused_unread(suffix, tmp_path):
    data = _table(suffix, [{"text": "t" * 3000}]) if suffix != ".txt" else b"t" * 3000
    sentence = _one(_everywhere("all" + suffix, data, tmp_path, budget=Budget(total_bytes=1000)))
    assert sentence.startswith(f"'all{suffix}' is ") and sentence.endswith(" KB, over the 1.0 KB limit for one file.")


def test_parquet_text_is_measured_uncompressed_against_the_total_budget(tmp_path):
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": ["a" * 1_000_000]}), buffer, compression="zstd")
    data = buffer.getvalue()
    assert len(data) < 20_000
    sentence = _one(_everywhere("bomb.parquet", data, tmp_path, budget=Budget(total_bytes=100_000)))
    assert sentence.startswith("'bomb.parquet' holds 1.0 MB of text once uncompressed, over the 100.0 KB limit")


def test_parquet_metadata_nested_200000_levels_deep_is_never_parsed(tmp_path):
    """The reader takes a .parquet's rows with pyarrow alone: its pandas metadata (or any other entry) is not JSON
    it reads, however deep it nests."""
    buffer = io.BytesIO()
    deep = b"[" * 200_000 + b"]" * 200_000
    pq.write_table(pa.table({"text": ["a", "b"]}).replace_schema_metadata({b"pandas": deep, b"other": deep}), buffer)
    seen = _everywhere("deep.parquet", buffer.getvalue(), tmp_path)
    assert seen["upload"] == seen["path"] == seen["corpus"] == [("a", None), ("b", None)]


def crafted_footer(items: int) -> bytes:
    """A .parquet file of about 1 KB whose footer declares a schema list of `items` elements (Thrift compact
    protocol): pyarrow makes room for a list's declared length before reading it."""
    length, size = bytearray(), items
    while size >= 0x80:
        length.append(size & 0x7F | 0x80)
        size >>= 7
    footer = b"\x15\x02" + b"\x19\xfc" + bytes(length) + bytes([size]) + b"\x00" * 1000
    return b"PAR1" + footer + len(footer).to_bytes(4, "little") + b"PAR1"


def test_a_parquet_footer_declaring_a_huge_list_is_refused_before_room_is_made_for_it(tmp_path):
    """900,000 schema elements fit pyarrow's own limit (1,000,000) and cost about 170 MB of room for a 1 KB file;
    the reader's limit (PARQUET_LIST_ITEMS) refuses the list from its declared length."""
    assert reader.PARQUET_LIST_ITEMS < 900_000
    sentence = _one(_everywhere("crafted.parquet", crafted_footer(900_000), tmp_path))
    assert sentence.startswith("'crafted.parquet' is a damaged .parquet file (") and "Exceeded size limit" in sentence


@pytest.mark.parametrize("suffix,place", [(".jsonl", "line 3"), (".csv", "row 4"), (".json", "item 3"),
                                          (".parquet", "row 3")])
def test_too_many_documents_stop_reading_with_a_sentence_naming_the_place(suffix, place, tmp_path):
    records = [{"text": f"t{i}"} for i in range(5)]
    seen = _everywhere("many" + suffix, _table(suffix, records), tmp_path, budget=Budget(documents=2))
    sentence = f"'many{suffix}', {place}: not read, nor anything after it: the limit is 2 documents."
    assert seen["upload"] == [("t0", None), ("t1", None), (None, sentence)]
    assert seen["prompts"] == (["t0", "t1"], [sentence])
    assert list(read_upload("many" + suffix, _table(suffix, records), budget=Budget(documents=2)))[-1].cut


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_table_without_the_text_column_lists_the_columns_found(suffix, tmp_path):
    data = _table(suffix, [{"title": "a", "body": "b"}])
    assert _one(_everywhere("cols" + suffix, data, tmp_path)) == (
        f"'cols{suffix}' has no 'text' column; columns found: 'title', 'body'.")


@pytest.mark.parametrize("suffix,place", [(".jsonl", "line 1"), (".json", "item 1")])
def test_a_json_record_without_the_text_field_names_the_record(suffix, place, tmp_path):
    seen = _everywhere("fields" + suffix, _table(suffix, [{"body": "b"}, {"text": "kept"}]), tmp_path)
    assert _problems(seen) == [f"'fields{suffix}', {place}: no \"text\" field."]


def test_the_text_column_is_found_ignoring_case_after_the_exact_name():
    data = b"Text,text\nupper,lower\n"
    assert [d.text for d in read_upload("c.csv", data)] == ["lower"]
    assert [d.text for d in read_upload("c.csv", b" TEXT ,x\nfound,y\n")] == ["found"]


def test_a_json_file_that_breaks_off_keeps_what_came_before(tmp_path):
    seen = _everywhere("broken.json", b'[{"text": "a"}, {"text": "b"} {"text": "c"}]', tmp_path)
    assert [text for text, _ in seen["upload"]] == ["a", "b", None]
    assert _problems(seen) == ["'broken.json', item 3: not JSON (Expecting ',' delimiter at line 1, column 31); the "
                               "rest of the file was not read."]


def test_a_folder_counts_as_one_budget_of_bytes(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"a" * 600)
    (tmp_path / "b.txt").write_bytes(b"b" * 600)
    with pytest.raises(ReadError, match="holds 1.2 KB in 2 files, over the 1.0 KB limit"):
        read_corpus(tmp_path, budget=Budget(total_bytes=1000))


@pytest.mark.parametrize("field", ["total_bytes", "value_bytes", "documents", "depth"])
def test_a_budget_refuses_limits_below_one(field):
    with pytest.raises(ValueError, match=f"Budget.{field} must be a whole number of at least 1"):
        Budget(**{field: 0})


def test_problem_sentences_are_one_encodable_line():
    data = b'{"text": "a\\ud800"}\n' + b'{"\\ud800": 1}\n'
    for document in read_upload("odd\udcff\nname.jsonl", data):
        assert document.problem.encode() and "\n" not in document.problem
    assert reader.file_label("odd\udcff\nname.jsonl") == "odd\\udcff name.jsonl"
