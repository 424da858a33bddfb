"""attnscope.corpus: every format the atlas reads, stable ids, unusable documents listed with a reason."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnscope.corpus import Budget, ReadError, read_corpus


def _docs(path, **kwargs):
    return [(d.id, d.text, d.problem) for d in read_corpus(path, **kwargs)]


def test_a_folder_of_files_in_path_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.md").write_text("# Two")
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "bin.txt").write_bytes(b"\x89PNG\x00\x00")
    (tmp_path / "latin.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "rows.jsonl").write_text(json.dumps({"text": "from a table"}))
    (tmp_path / "skip.pdf").write_bytes(b"%PDF")
    (tmp_path / ".hidden.txt").write_text("not read")
    docs = _docs(tmp_path)
    assert [d[0] for d in docs] == ["a.txt", "b/two.md", "bin.txt", "empty.txt", "latin.txt", "rows.jsonl:1"]
    assert docs[0][1] == "one" and docs[1][1] == "# Two" and docs[5][1] == "from a table"
    assert docs[2][2].startswith("'bin.txt' looks like a binary file, not text")
    assert docs[3][2] == "'empty.txt' is empty."
    assert docs[4][2] == ("'latin.txt' is not valid UTF-8 text (the byte at offset 3, on line 1, is 0xe9); save it as "
                          "UTF-8.")
    assert [d[0] for d in _docs(tmp_path, limit=2)] == ["a.txt", "b/two.md"]


def test_jsonl_csv_and_parquet_rows(tmp_path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join([json.dumps({"text": "first"}), "{broken", json.dumps({"body": "x"}),
                                json.dumps({"text": 3}), "", json.dumps({"text": "last"})]))
    docs = _docs(jsonl)
    assert [(d[0], d[1]) for d in docs if d[1]] == [("c.jsonl:1", "first"), ("c.jsonl:6", "last")]
    assert [d[2] for d in docs if d[2]] == [
        "'c.jsonl', line 2: not JSON (Expecting property name enclosed in double quotes).",
        "'c.jsonl', line 3: no \"text\" field.", "'c.jsonl', line 4: \"text\" is a number, not a string."]
    table = tmp_path / "t.csv"
    table.write_text('name,body\na,"multi\nline"\nb,\n')  # rows as a spreadsheet numbers them: the header is row 1
    assert _docs(table, text_column="body") == [("t.csv:2", "multi\nline", None),
                                                ("t.csv:3", None, "'t.csv', row 3: empty \"body\".")]
    with pytest.raises(ReadError, match="'t.csv' has no 'text' column; columns found: 'name', 'body'."):
        read_corpus(table)
    numbers = tmp_path / "n.csv"
    numbers.write_text("text\n42\n7\n")  # a column that looks numeric is still text
    assert _docs(numbers) == [("n.csv:2", "42", None), ("n.csv:3", "7", None)]
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": [f"doc {i}" for i in range(600)] + [None]}), parquet)
    docs = _docs(parquet)
    assert len(docs) == 601 and docs[599] == ("p.parquet:600", "doc 599", None)
    assert docs[600] == ("p.parquet:601", None, "'p.parquet', row 601: \"text\" is null.")
    with pytest.raises(ReadError, match="no 'body' column"):
        read_corpus(parquet, text_column="body")


def test_a_datasets_folder_streams_rows(tmp_path):
    import datasets
    datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(300)] + [""]}).save_to_disk(tmp_path / "ds")
    docs = _docs(tmp_path / "ds")
    assert len(docs) == 301 and docs[0] == ("0", "row 0", None) and docs[299][1] == "row 299"
    assert docs[300] == ("300", None, "'ds', row 300: empty \"text\".")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]})}).save_to_disk(tmp_path / "dd")
    with pytest.raises(ReadError, match="several splits \\(train\\)"):
        read_corpus(tmp_path / "dd")


def test_bad_paths_are_one_sentence(tmp_path):
    with pytest.raises(ValueError, match="does not exist; give a .txt, .md, .jsonl, .json, .csv or .parquet file"):
        read_corpus(tmp_path / "nothing")
    (tmp_path / "x.pdf").write_bytes(b"%PDF")
    with pytest.raises(ReadError, match="'x.pdf' is not a file type attnscope reads \\('.pdf'\\)"):
        read_corpus(tmp_path / "x.pdf")


def test_a_file_of_a_folder_that_cannot_be_read_costs_only_that_file(tmp_path):
    (tmp_path / "a.csv").write_text("title\nx\n")
    (tmp_path / "b.txt").write_text("kept")
    docs = list(read_corpus(tmp_path))
    assert [(d.id, d.text) for d in docs] == [("a.csv", None), ("b.txt", "kept")]
    assert docs[0].problem == "'a.csv' has no 'text' column; columns found: 'title'."


def test_the_document_budget_counts_across_a_folder_and_names_where_it_stopped(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": f"t{i}"}) for i in range(3)))
    (tmp_path / "b.txt").write_text("never read")
    docs = list(read_corpus(tmp_path, budget=Budget(documents=2)))
    assert [d.text for d in docs] == ["t0", "t1", None] and docs[-1].cut
    assert docs[-1].problem == "'a.jsonl', line 3: not read, nor anything after it: the limit is 2 documents."
    assert [d.text for d in read_corpus(tmp_path, budget=Budget(documents=2), limit=2)] == ["t0", "t1"]
