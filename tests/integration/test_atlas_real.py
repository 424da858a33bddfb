"""The head atlas on the packaged SmolLM2: in-process and on local Ray the same rows; an interrupted run resumes
without counting a document twice; unusable documents are listed with their reason; the CLI says what went wrong."""

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


def _rows(folder) -> pd.DataFrame:
    return atlas.read(folder).sort_values(["id", "layer", "head"]).reset_index(drop=True)


def test_local_and_ray_write_the_same_atlas(model, corpus, tmp_path):
    local = attnscope.atlas(model, corpus, tmp_path / "local", max_tokens=48, shard_size=5)
    ray = attnscope.atlas(model, corpus, tmp_path / "ray", engine="ray", workers=2, max_tokens=48, shard_size=5)
    assert local.meta["documents"] == ray.meta["documents"] == 12
    reasons = sorted(local.problems)
    assert reasons == ["corpus.jsonl:4: empty.", "corpus.jsonl:9: its text is a int, not a string."]
    assert sorted(ray.problems) == reasons
    a, b = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert len(a) == 12 * 30 * 9 and a["id"].nunique() == 12
    pd.testing.assert_frame_equal(a, b)
    assert np.isfinite(a["entropy"]).all() and a["induction"].max() > 0.5
    pd.testing.assert_frame_equal(local.to_frame(), ray.to_frame())


def test_the_atlas_bounds_and_summary_hold_on_real_documents(model, tmp_path):
    """On real text (the Python manual's topics, 160 tokens each): entropy <= log(keys seen) on every document and
    head, N_s/N and the saturated flag in range, Taylor orders in 0..11, slopes finite; the summary's means and
    intervals are those of the rows; the file written reopens equal."""
    from scipy import stats

    from attnscope.analyses.collapse import builtin_text

    documents = [p for p in builtin_text().split("\n\n") if len(p) > 1200][:6]
    corpus = tmp_path / "manual.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": text}) for text in documents))
    result = attnscope.atlas(model, corpus, tmp_path / "atlas", max_tokens=160, taylor_tokens=64)
    rows = atlas.read(tmp_path / "atlas")
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
    reopened = attnscope.open(tmp_path / "atlas" / "atlas.parquet")
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
    assert "3 documents under" in done.stderr and "left out: corpus.jsonl:4: empty." in done.stderr
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
    assert zero.returncode == 1 and "max_tokens must be a whole number of at least 2; got 0." in zero.stderr
    missing = cli("--corpus", str(tmp_path / "none"), "--out", str(tmp_path / "x"), "--quiet")
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
