"""The head atlas on the packaged SmolLM2: in-process and on local Ray the same rows, bit for bit; an interrupted run
resumes without counting a document twice; unusable documents are listed with their reason; the CLI says what went
wrong."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import attnscope
from attnscope.studies import atlas

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model():
    return attnscope.load("smollm2-135m")


@pytest.fixture
def corpus(tmp_path):
    """Fourteen short documents, one empty and one not a string: a JSONL file the test writes."""
    path = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"text": f"Document {i}. The {'cat' if i % 2 else 'dog'} sat on mat number {i}; then it "
                                 f"sat on mat number {i} again."}) for i in range(14)]
    lines[3], lines[8] = json.dumps({"text": ""}), json.dumps({"text": 42})
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def manual(tmp_path_factory):
    """Six of the Python manual's topics (over 1,200 characters each, so 160 tokens of each) as a JSONL corpus."""
    from attnscope.analyses.collapse import builtin_text

    documents = [p for p in builtin_text().split("\n\n") if len(p) > 1200][:6]
    path = tmp_path_factory.mktemp("manual") / "manual.jsonl"
    path.write_text("\n".join(json.dumps({"text": text}) for text in documents))
    return path


MANUAL_SETTINGS = dict(max_tokens=160, taylor_tokens=64)


@pytest.fixture(scope="module")
def manual_atlas(model, manual):
    """The in-process atlas of the manual corpus: (its result, its folder)."""
    out = manual.parent / "local"
    return attnscope.atlas(model, manual, out, **MANUAL_SETTINGS), out


def _reasons(corpus, limit: int | None = None) -> list[str]:
    """The reader's sentence for each unusable document of `corpus`: what the atlas must list, word for word."""
    from attnscope.corpus import read_corpus

    return sorted(d.problem for d in read_corpus(corpus, limit=limit) if d.text is None)


def _rows(folder) -> pd.DataFrame:
    return atlas.read(folder).sort_values(["id", "layer", "head"]).reset_index(drop=True)


def test_local_and_ray_write_the_same_atlas(model, corpus, tmp_path):
    local = attnscope.atlas(model, corpus, tmp_path / "local", max_tokens=48, shard_size=5)
    ray = attnscope.atlas(model, corpus, tmp_path / "ray", engine="ray", workers=2, max_tokens=48, shard_size=5)
    assert local.meta["documents"] == ray.meta["documents"] == 12
    reasons = sorted(local.problems)
    assert reasons == _reasons(corpus) and len(reasons) == 2 and "line 4" in reasons[0] and "line 9" in reasons[1]
    assert sorted(ray.problems) == reasons
    a, b = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert len(a) == 12 * 30 * 9 and a["id"].nunique() == 12
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert np.isfinite(a["entropy"]).all() and a["induction"].max() > 0.5
    pd.testing.assert_frame_equal(local.to_frame(), ray.to_frame(), check_exact=True)


def test_ray_writes_the_in_process_rows_bit_for_bit_on_real_documents(model, manual, manual_atlas, tmp_path):
    """160 tokens of real text: long enough that SmolLM2's down-projections (sums over 1,536 terms) round
    differently at one thread than at two in MKL, which moved float32 fields by up to 2e-5 and N_s/N by 1/128 on one
    row in 1,620 while the actors ran at one thread each (issue 25). Every field of every row must be equal."""
    ray = attnscope.atlas(model, manual, tmp_path / "ray", engine="ray", workers=2, shard_size=3, **MANUAL_SETTINGS)
    local, out = manual_atlas
    a, b = _rows(out), _rows(tmp_path / "ray")
    assert len(a) == 6 * 30 * 9
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    np.testing.assert_array_equal(ray.summary.mean, local.summary.mean)


def test_the_atlas_bounds_and_summary_hold_on_real_documents(manual_atlas):
    """On real text (the Python manual's topics, 160 tokens each): entropy <= log(keys seen) on every document and
    head, N_s/N and the saturated flag in range, Taylor orders in 0..11, slopes finite; the summary's means and
    intervals are those of the rows; the file written reopens equal."""
    from scipy import stats

    result, out = manual_atlas
    rows = atlas.read(out)
    assert rows["id"].nunique() == 6 and (rows["tokens"] == 160).all()
    assert (rows["normalized_entropy"] <= 1 + 1e-5).all() and (rows["normalized_entropy"] >= 0).all()
    assert rows["ns_ratio"].between(0, 1).all() and rows["saturated"].isin([0.0, 1.0]).all()
    assert rows["taylor_order"].between(0, 11).all() and rows["taylor_order"].eq(rows["taylor_order"].round()).all()
    assert np.isfinite(rows[["max_weight_slope", "entropy_slope"]]).all().all()
    head = rows[(rows["layer"] == 18) & (rows["head"] == 6)]
    for field in ("entropy", "max_weight_slope", "ns_ratio"):
        mean, sem = head[field].mean(), stats.sem(head[field])
        low, high = stats.t.interval(0.95, len(head) - 1, loc=mean, scale=sem)
        np.testing.assert_allclose([result.values(field)[18, 6], result.values(field, "low")[18, 6],
                                    result.values(field, "high")[18, 6]], [mean, low, high], rtol=1e-5)
    reopened = attnscope.open(out / "atlas.parquet")
    np.testing.assert_array_equal(reopened.summary.mean, result.summary.mean)
    assert [f.text() for f in reopened.findings()] == [f.text() for f in result.findings()]


def test_an_interrupted_run_resumes_and_counts_each_document_once(model, corpus, tmp_path):
    out = tmp_path / "atlas"
    first = attnscope.atlas(model, corpus, out, max_tokens=48, shard_size=3, limit=7)
    assert first.meta["documents"] == 6  # 7 read, one of them empty
    kept = {path.name: path.stat().st_mtime_ns for path in out.glob("shard-*.parquet")}
    final = attnscope.atlas(model, corpus, out, max_tokens=48, shard_size=3)
    assert final.meta["documents"] == 12
    assert all(path.stat().st_mtime_ns == kept[path.name] for path in out.glob("shard-*.parquet")
               if path.name in kept)  # the first run's shards were not written again
    rows = atlas.read(out)
    assert rows.groupby("id").size().eq(30 * 9).all() and rows["id"].nunique() == 12
    assert sorted(atlas.done_ids(out)) == sorted(f"corpus.jsonl:{i}" for i in range(1, 15))
    with pytest.raises(ValueError, match="holds an atlas of smollm2-135m with other settings"):
        attnscope.atlas(model, corpus, out, max_tokens=64)


def test_cli_atlas_and_its_errors(corpus, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "attnscope", "atlas", *args], capture_output=True, text=True,
                              timeout=600)

    done = cli("--corpus", str(corpus), "--out", str(tmp_path / "cli"), "--tokens", "48", "--limit", "4", "--quiet")
    assert done.returncode == 0, done.stderr
    assert "3 documents under" in done.stderr and f"left out: {_reasons(corpus, 4)[0]}" in done.stderr
    assert "Induction heads. Paper:" in done.stdout and (tmp_path / "cli" / "atlas.parquet").is_file()
    diff = subprocess.run([sys.executable, "-m", "attnscope", "atlas-diff", str(tmp_path / "cli"),
                           str(tmp_path / "cli" / "atlas.parquet"), "--out", str(tmp_path / "diff.csv")],
                          capture_output=True, text=True, timeout=600)
    assert diff.returncode == 0, diff.stderr
    table = pd.read_csv(tmp_path / "diff.csv")
    assert len(table) == 12 * 30 * 9 and table["delta"].dropna().eq(0).all() and not table["significant"].any()
    grid = cli("--corpus", str(corpus), "--out", str(tmp_path / "grid"), "--tokens", "24", "40", "--limit", "2",
               "--quiet")
    assert grid.returncode == 0, grid.stderr
    assert [attnscope.open(tmp_path / "grid" / f"smollm2_135m-{n}tok").meta["settings"]["max_tokens"]
            for n in (24, 40)] == [24, 40]
    zero = cli("--corpus", str(corpus), "--out", str(tmp_path / "z"), "--tokens", "0", "--quiet")
    assert zero.returncode != 0 and "--tokens" in zero.stderr and "Traceback" not in zero.stderr
    missing = cli("--corpus", str(tmp_path / "none"), "--out", str(tmp_path / "x"), "--quiet")
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "z").exists() and not (tmp_path / "x").exists()


def test_cli_refuses_an_unusable_corpus_or_out_in_one_line_and_makes_no_folder(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": ""}\n{"body": "no text field"}\n')
    blocker = tmp_path / "some_file.txt"
    blocker.write_text("x")
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"text": "A usable document."}) + "\n")
    for corpus, out, says in ((bad, tmp_path / "new" / "atlas", f"The corpus {bad} has no document the atlas can use"),
                              (good, blocker / "atlas", str(blocker))):
        done = subprocess.run([sys.executable, "-m", "attnscope", "atlas", "--corpus", str(corpus), "--out", str(out),
                               "--quiet"], capture_output=True, text=True, timeout=600)
        lines = [line for line in done.stderr.splitlines() if line.startswith("attnscope atlas: ")]
        assert done.returncode == 1 and len(lines) == 1 and says in lines[0], done.stderr
        assert "Traceback" not in done.stderr and not (tmp_path / "new").exists() and blocker.read_text() == "x"
