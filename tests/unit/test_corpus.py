"""attnscope.corpus: every format the atlas reads, stable ids, unusable documents listed with a reason."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attnscope.corpus import read_corpus


def _docs(path, **kwargs):
    return [(d.id, d.text, d.problem) for d in read_corpus(path, **kwargs)]


def test_a_folder_of_text_files_in_path_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.md").write_text("# Two")
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "bin.txt").write_bytes(b"\x89PNG\x00\x00")
    (tmp_path / "latin.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "skip.json").write_text("{}")
    docs = _docs(tmp_path)
    assert [d[0] for d in docs] == ["a.txt", "b/two.md", "bin.txt", "empty.txt", "latin.txt"]
    assert docs[0][1] == "one" and docs[1][1] == "# Two"
    assert "binary" in docs[2][2] and docs[3][2] == "empty.txt: empty." and "not UTF-8 text (byte 3" in docs[4][2]
    assert [d[0] for d in _docs(tmp_path, limit=2)] == ["a.txt", "b/two.md"]


def test_jsonl_csv_and_parquet_rows(tmp_path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join([json.dumps({"text": "first"}), "{broken", json.dumps({"body": "x"}),
                                json.dumps({"text": 3}), "", json.dumps({"text": "last"})]))
    docs = _docs(jsonl)
    assert [(d[0], d[1]) for d in docs if d[1]] == [("c.jsonl:1", "first"), ("c.jsonl:6", "last")]
    assert [d[2] for d in docs if d[2]] == ["c.jsonl:2: not a JSON object.", 'c.jsonl:3: no "text" field.',
                                            "c.jsonl:4: its text is a int, not a string."]
    table = tmp_path / "t.csv"
    table.write_text('name,body\na,"multi\nline"\nb,\n')
    assert _docs(table, text_column="body") == [("t.csv:1", "multi\nline", None), ("t.csv:2", None, "t.csv:2: empty.")]
    with pytest.raises(ValueError, match="t.csv has no 'text' column \\(columns: name, body\\)"):
        read_corpus(table)
    numbers = tmp_path / "n.csv"
    numbers.write_text("text\n42\n7\n")  # a column that looks numeric is still text
    assert _docs(numbers) == [("n.csv:1", "42", None), ("n.csv:2", "7", None)]
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": [f"doc {i}" for i in range(600)] + [None]}), parquet)
    docs = _docs(parquet)
    assert len(docs) == 601 and docs[599] == ("p.parquet:600", "doc 599", None) and "missing" in docs[600][2]
    with pytest.raises(ValueError, match="no 'body' column"):
        read_corpus(parquet, text_column="body")


def test_a_datasets_folder_streams_rows(tmp_path):
    import datasets
    datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(300)] + [""]}).save_to_disk(tmp_path / "ds")
    docs = _docs(tmp_path / "ds")
    assert len(docs) == 301 and docs[0] == ("0", "row 0", None) and docs[299][1] == "row 299"
    assert docs[300] == ("300", None, "300: empty.")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"]})}).save_to_disk(tmp_path / "dd")
    with pytest.raises(ValueError, match="several splits \\(train\\)"):
        read_corpus(tmp_path / "dd")


def test_bad_paths_are_one_sentence(tmp_path):
    with pytest.raises(ValueError, match="does not exist; give a folder of .txt/.md files"):
        read_corpus(tmp_path / "nothing")
    (tmp_path / "x.pdf").write_bytes(b"%PDF")
    with pytest.raises(ValueError, match="x.pdf: not a corpus attnscope reads"):
        read_corpus(tmp_path / "x.pdf")
