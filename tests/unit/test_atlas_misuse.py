"""Misusing the head atlas is one sentence naming the input and the fix, raised before any model work and before the
atlas folder is made: a missing extra (Ray Data for engine="ray", scikit-learn for a drawn report), a corpus with no
usable document, an --out that is or lies under a file, and a diff against something that is not an atlas."""

import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import attnscope
from attnscope.analyses import atlas as analysis
from attnscope.analyses import fingerprint
from attnscope.studies import atlas as study
from attnscope.studies.atlas import AtlasResult, UnusableCorpus
from tests.unit.tiny_models import handle

INSTALL = 'pip install "attnscope[atlas]"'


@pytest.fixture(scope="module")
def tiny():
    return handle("llama")


@pytest.fixture(autouse=True)
def no_model_work(monkeypatch):
    """Every refusal here comes before the model runs: a forward pass fails the test."""
    def forward(*args, **kwargs):
        raise AssertionError("the model ran before the misuse was refused")

    monkeypatch.setattr(fingerprint, "document_fingerprint", forward)
    monkeypatch.setattr(fingerprint, "induction_scores", forward)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"text": "one usable document"}) + "\n")
    return path


def _hide(monkeypatch, *modules: str) -> None:
    """Make `modules` (and their submodules already imported) fail to import, as when they are not installed."""
    for name in [m for m in sys.modules if any(m == top or m.startswith(f"{top}.") for top in modules)]:
        monkeypatch.delitem(sys.modules, name)
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def _atlas_result(values: np.ndarray) -> AtlasResult:
    """An AtlasResult whose every statistic of fields (entropy, max_weight, ...) is `values` (F, layers, heads)."""
    fields = ("entropy", "max_weight", "sink_mass")[:len(values)]
    summary = analysis.Summary(fields=fields, mean=values, std=values, low=values, high=values, median=values,
                               q25=values, q75=values, count=np.ones(values.shape, dtype=np.int64))
    return AtlasResult(meta={"model": "m", "model_fingerprint": "f", "corpus": "c", "engine": "local",
                             "documents": 1, "settings": {}}, summary=summary)


def test_the_ray_engine_without_ray_names_the_extra_and_makes_no_folder(tiny, corpus, tmp_path, monkeypatch):
    _hide(monkeypatch, "ray")
    out = tmp_path / "new" / "atlas"
    with pytest.raises(analysis.MissingPackage) as raised:
        attnscope.atlas(tiny, corpus, out, engine="ray")
    assert str(raised.value) == f'The Ray engine (engine="ray") needs Ray Data, which is not installed: {INSTALL}.'
    assert isinstance(raised.value, ValueError)  # the CLI prints it as `attnscope atlas: <message>`
    assert not (tmp_path / "new").exists()


def test_a_drawn_report_without_scikit_learn_is_refused_before_the_run(monkeypatch):
    _hide(monkeypatch, "sklearn")
    with pytest.raises(analysis.MissingPackage, match=r"^The report atlas\.html, with its map of every head, needs "
                                                      r"scikit-learn, which is not installed: pip install"):
        study.check_extras("local", "atlas.html")
    for table in ("atlas.csv", "atlas.json", "atlas.parquet", None):  # tables and saved results need no embedding
        study.check_extras("local", table)


def test_figures_without_scikit_learn_say_so_instead_of_dropping_the_embedding(monkeypatch):
    result = _atlas_result(np.random.default_rng(0).normal(size=(2, 3, 4)))
    _hide(monkeypatch, "sklearn")
    with pytest.raises(analysis.MissingPackage, match="^The embedding of every head needs scikit-learn"):
        result.figures()
    with pytest.raises(analysis.MissingPackage, match="^The clusters of heads needs scikit-learn"):
        analysis.clusters(np.zeros((6, 2)))


def test_an_empty_corpus_is_refused_naming_it_and_makes_no_folder(tiny, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "atlas"
    with pytest.raises(UnusableCorpus) as raised:
        attnscope.atlas(tiny, empty, out)
    assert str(raised.value) == (f"The corpus {empty} holds no documents, so there is nothing to fingerprint; give a "
                                 "corpus with at least one text.")
    assert not out.exists()
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    with pytest.raises(ValueError, match="blank.jsonl"):  # the reader's own sentence for an empty file
        attnscope.atlas(tiny, blank, out)
    assert not out.exists()


def test_a_corpus_of_unusable_documents_lists_the_first_reasons_and_makes_no_folder(tiny, tmp_path):
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"text": ""}\n{"text": 42}\nnot json\n{"body": "x"}\n{"text": "   "}\n')
    out = tmp_path / "deep" / "atlas"
    with pytest.raises(UnusableCorpus) as raised:
        attnscope.atlas(tiny, corpus, out)
    message = str(raised.value)
    assert message.startswith(f"The corpus {corpus} has no document the atlas can use: all 5 documents read were "
                              "left out (")
    assert message.endswith("; and 2 more); give documents with text in their 'text' field or column.")
    assert "line 1" in message and "line 3" in message and "line 4" not in message  # the first three, in order
    assert raised.value.read == 5 and len(raised.value.reasons) == 5
    assert [reason.split(":")[0] for reason in raised.value.reasons] == [
        f"'bad.jsonl', line {n}" for n in range(1, 6)]
    assert not (tmp_path / "deep").exists()
    with pytest.raises(UnusableCorpus, match=r"all of its first 2 documents \(limit 2\) were left out"):
        attnscope.atlas(tiny, corpus, out, limit=2)


def test_an_unusable_corpus_leaves_an_existing_atlas_folder_as_it_was(tiny, tmp_path):
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"text": ""}\n')
    out = tmp_path / "atlas"
    out.mkdir()
    (out / "kept.txt").write_text("x")
    with pytest.raises(UnusableCorpus):
        attnscope.atlas(tiny, corpus, out)
    assert sorted(p.name for p in out.iterdir()) == ["kept.txt"]


@pytest.mark.parametrize("place", ["file", "under-file", "deep-under-file"])
def test_an_out_folder_that_is_or_lies_under_a_file_is_one_sentence(tiny, corpus, tmp_path, place):
    blocker = tmp_path / "some_file.txt"
    blocker.write_text("not a folder")
    out = {"file": blocker, "under-file": blocker / "atlas", "deep-under-file": blocker / "a" / "b"}[place]
    with pytest.raises(ValueError) as raised:
        attnscope.atlas(tiny, corpus, out)
    where = "is a file" if place == "file" else f"cannot be made: {blocker} is a file"
    assert str(raised.value) == (f"The atlas folder {out} {where}; give a folder path (new, or an atlas folder to "
                                 "resume) that no file is in the way of.")
    assert blocker.read_text() == "not a folder"


def test_a_run_that_fails_after_the_checks_removes_the_folders_it_made(tiny, corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(study, "check_corpus", lambda *args: "sample")

    def fail(*args, **kwargs):
        raise RuntimeError("the run broke")

    monkeypatch.setattr(study, "_run", fail)
    with pytest.raises(RuntimeError, match="the run broke"):
        attnscope.atlas(tiny, corpus, tmp_path / "new" / "atlas")
    assert sorted(tmp_path.iterdir()) == [corpus]


def test_a_diff_against_another_kind_of_result_is_one_sentence(tmp_path):
    stats = attnscope.stats(handle("llama"), list(range(3, 30)), cache=False)
    path = stats.save(tmp_path / "stats.json")
    with pytest.raises(ValueError) as raised:
        study.open_atlas(path)
    assert str(raised.value) == ("stats.json holds a stats result, not a head atlas; give an atlas folder or the "
                                 "atlas.parquet that `attnscope atlas` wrote.")
    with pytest.raises(ValueError) as raised:
        _atlas_result(np.zeros((1, 2, 2))).diff(attnscope.open(path))
    assert str(raised.value) == ("The other side is a stats result, not a head atlas; compare two atlases (an atlas "
                                 "folder or the atlas.parquet that `attnscope atlas` wrote, opened with "
                                 "attnscope.open).")


# ---- corpora that cannot be read: refused before any model work, naming the corpus, leaving no folder ---------------

RANDOM_BYTES = bytes(np.random.default_rng(26).integers(0, 256, 64 * 1024, dtype=np.uint8))  # as os.urandom gives
DEEP = 200_000  # brackets: past what json.loads can nest


@pytest.mark.parametrize("suffix, says", [
    (".txt", "'corpus.txt' looks like a binary file, not text (it holds NUL or other control bytes, as UTF-16 text "
             "does too); save it as UTF-8 text."),
    (".jsonl", "'corpus.jsonl' looks like a binary file, not text (it holds NUL or other control bytes, as UTF-16 "
               "text does too); save it as UTF-8 text."),
    (".parquet", "'corpus.parquet' is not a .parquet file (a Parquet file starts and ends with the bytes PAR1); write "
                 "it with pandas' DataFrame.to_parquet or pyarrow.parquet.write_table."),
])
def test_a_corpus_of_random_bytes_is_refused_naming_it_before_any_model_work(tiny, tmp_path, suffix, says):
    corpus = tmp_path / f"corpus{suffix}"
    corpus.write_bytes(RANDOM_BYTES)
    out = tmp_path / "deep" / "atlas"
    with pytest.raises(ValueError) as raised:
        attnscope.atlas(tiny, corpus, out)
    assert str(raised.value) == says
    assert not (tmp_path / "deep").exists()
    with pytest.raises(ValueError, match=f"^'corpus{suffix}' "):  # the CLI's check, before it loads a model
        study.check_documents(corpus, study.Settings())


def test_a_folder_of_random_bytes_names_the_folder_as_given_and_each_file(tiny, tmp_path):
    """The page writes text uploads to a folder: the sentence names the corpus as the caller gave it, and each file
    by its name inside it."""
    corpus = tmp_path / "uploads"
    corpus.mkdir()
    for suffix in (".txt", ".jsonl", ".parquet"):
        (corpus / f"corpus{suffix}").write_bytes(RANDOM_BYTES)
    out = tmp_path / "atlas"
    with pytest.raises(UnusableCorpus) as raised:
        attnscope.atlas(tiny, corpus, out)
    assert str(raised.value).startswith(f"The corpus {corpus} has no document the atlas can use: all 3 documents "
                                        "read were left out ('corpus.jsonl' looks like a binary file")
    assert [reason.split("'")[1] for reason in raised.value.reasons] == [
        "corpus.jsonl", "corpus.parquet", "corpus.txt"]
    assert not out.exists()
    with pytest.raises(UnusableCorpus):
        study.check_documents(corpus, study.Settings())


@pytest.mark.parametrize("name, place", [("deep.jsonl", "line 1"), ("deep.json", "item 1")])
def test_a_deeply_nested_corpus_is_one_sentence_not_a_recursion_error(tiny, tmp_path, name, place):
    nested = '{"text": "t", "x": ' + "[" * DEEP + "]" * DEEP + "}"
    corpus = tmp_path / name
    corpus.write_text(nested + "\n" if name.endswith(".jsonl") else f"[{nested}]")
    with pytest.raises(UnusableCorpus) as raised:
        attnscope.atlas(tiny, corpus, tmp_path / "atlas")
    assert f"its one document was left out ('{name}', {place}: nested too deeply to read" in str(raised.value)
    assert not (tmp_path / "atlas").exists()


def test_a_parquet_bomb_is_refused_from_its_footer_under_the_hosted_budget(tiny, tmp_path):
    """What the Head atlas page passes in hosted mode (Policy.file_budget): a small .parquet whose text is larger
    than an upload once uncompressed is refused before a value is read and before any model work."""
    from attnscope.hosting import policy_from_env

    corpus = tmp_path / "bomb.parquet"
    pq.write_table(pa.table({"text": ["a" * 3_000_000, "b"]}), corpus, compression="zstd")
    assert corpus.stat().st_size < 20_000
    hosted = policy_from_env({"ATTNSCOPE_HOSTED": "1"})
    with pytest.raises(ValueError) as raised:
        attnscope.run("atlas", tiny, corpus, tmp_path / "atlas", budget=hosted.file_budget)
    assert str(raised.value) == ("'bomb.parquet' holds 3.0 MB of text once uncompressed, over the 2.0 MB limit for "
                                 "one file.")
    assert not (tmp_path / "atlas").exists()
