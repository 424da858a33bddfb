"""The API, the CLI and the dashboard's cached units give the same numbers on the packaged model; results survive a
save/open round trip and a restart (the disk cache); bad input gets one sentence and an exit status."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import attnscope
from attnscope import catalog
from attnscope.cache import ResultCache
from attnscope.studies import maps as study

pytestmark = pytest.mark.slow
TEXT = "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is"
FIELDS = tuple(study.STATISTICS)


@pytest.fixture(scope="module")
def model():
    return attnscope.load("smollm2-135m")


def _cli(*args, stdin=None, env=None):
    return subprocess.run([sys.executable, "-m", "attnscope", *args], capture_output=True, text=True, input=stdin,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_cli_api_and_page_units_agree(model, tmp_path):
    api = attnscope.stats(model, TEXT)
    out = tmp_path / "stats.json"
    done = _cli("stats", "--text-file", "-", "--out", str(out), "--no-cache", "--quiet", stdin=TEXT)
    assert done.returncode == 0, done.stderr
    cli = attnscope.open(out)
    # the dashboard's cached unit, called as the page calls it (outside a running app, Streamlit caches in memory)
    from attnscope.app import cached

    cut = model.cut(None)
    page = cached.study_unit(model.spec, "attnscope.studies.maps:model_stats", (TEXT, cut))
    for name in FIELDS:
        np.testing.assert_array_equal(page[name], getattr(api, name))
    # the streamed statistics (one fused pass per layer) against the capture's second pass, which the page used
    for layer in (0, 17, 29):
        captured = cached.study_unit(model.spec, "attnscope.studies.maps:layer_stats", (TEXT, cut, layer))
        for name in FIELDS:
            np.testing.assert_allclose(getattr(api, name)[layer], getattr(captured, name), rtol=1e-5, atol=1e-6)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(cli, name), getattr(api, name))
    assert [f.text() for f in cli.findings()] == [f.text() for f in api.findings()]

    long_text = " ".join([TEXT] * 4)  # 80 tokens: pooled into 3 x 3 tiles under a cell limit of 32
    maps = attnscope.maps(model, long_text, layer=5, heads=[2, 7], cell_limit=32, reduce="max")
    assert maps.block == 3
    done = _cli("maps", "--text", long_text, "--layer", "5", "--heads", "2,7", "--cell-limit", "32", "--reduce", "max",
                "--out", str(tmp_path / "maps.parquet"), "--quiet", "--no-cache")
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(attnscope.open(tmp_path / "maps.parquet").values, maps.values)
    frame = pd.read_parquet(tmp_path / "maps.parquet")
    assert set(frame["head"]) == {2, 7} and len(frame) == maps.values.size


def test_every_format_saves_and_json_and_parquet_reopen(model, tmp_path):
    result = attnscope.stats(model, TEXT)
    for suffix in (".json", ".parquet"):
        again = attnscope.open(result.save(tmp_path / f"r{suffix}"))
        assert type(again) is type(result) and again.meta == result.meta and again.tokens == result.tokens
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(again, name), getattr(result, name))
    frame = pd.read_csv(result.save(tmp_path / "r.csv"))
    assert len(frame) == 30 * 9 and list(frame.columns[:2]) == ["layer", "head"]
    html = result.save(tmp_path / "r.html").read_text()
    assert "Attention sinks" in html and html.count("plotly.js v") <= 2  # plotly.js inlined once
    assert "<h4>" in result._repr_html_()
    with pytest.raises(ValueError, match="reopens .json and .parquet"):
        attnscope.open(tmp_path / "r.csv")
    with pytest.raises(ValueError, match="use one of"):
        result.save(tmp_path / "r.xlsx")
    (tmp_path / "bad.json").write_text(json.dumps({"attnscope": 1, "kind": "x", "result": {
        "__dataclass__": "os:system", "fields": {}}}))
    with pytest.raises(ValueError, match="not a readable attnscope result"):
        attnscope.open(tmp_path / "bad.json")


def test_disk_cache_answers_a_second_run_without_the_model(model, tmp_path, monkeypatch):
    cache = ResultCache(tmp_path / "results", size_mb=64)
    first = attnscope.stats(model, TEXT, cache=cache)
    assert len(cache) == 1  # one unit: every layer's statistics from one streamed pass

    def no_forward(*args, **kwargs):
        raise AssertionError("the model ran although every unit was cached")

    monkeypatch.setattr(model.module, "forward", no_forward)
    again = ResultCache(tmp_path / "results", size_mb=64)  # a new process would open the folder like this
    second = attnscope.stats(model, TEXT, cache=again)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))


def test_cli_errors_are_one_sentence_and_an_exit_status(tmp_path):
    missing = _cli("stats", "--text-file", str(tmp_path / "nope.txt"), "--quiet")
    assert missing.returncode == 1 and missing.stderr.strip().startswith("attnscope stats: Cannot read")
    assert len(missing.stderr.strip().splitlines()) == 1
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    binary = _cli("stats", "--text-file", str(tmp_path / "latin1.txt"), "--quiet")
    assert binary.returncode == 1 and "is not UTF-8 text (byte 3 is 0xe9)" in binary.stderr
    bad_option = _cli("maps", "--text", "x", "--reduce", "median")
    assert bad_option.returncode == 2 and "--reduce: must be one of mean, max" in bad_option.stderr
    bad_out = _cli("stats", "--text", "x", "--out", str(tmp_path / "x.txt"))
    assert bad_out.returncode == 1 and "must end in .json, .csv, .parquet or .html" in bad_out.stderr
    no_text = _cli("stats", "--quiet")
    assert no_text.returncode == 1 and "Give a text" in no_text.stderr
    no_gpu = _cli("stats", "--text", "x", "--device", "cuda", "--quiet")
    assert no_gpu.returncode == 1 and no_gpu.stderr.strip() == (
        "attnscope stats: device cuda needs a CUDA GPU, and torch sees none on this machine: choose cpu (or auto).")
    bad_device = _cli("stats", "--text", "x", "--device", "tpu", "--quiet")
    assert bad_device.returncode == 2 and "--device: must be auto, cpu, cuda, cuda:N or map" in bad_device.stderr
    bad_dtype = _cli("stats", "--text", "x", "--dtype", "fp8")
    assert bad_dtype.returncode == 2 and "--dtype: must be one of auto, float32, bfloat16, float16" in bad_dtype.stderr


def test_cli_taylor_and_collapse_equal_the_api(model, tmp_path):
    taylor = attnscope.taylor(model, TEXT, max_order=3, n_tokens=16)
    done = _cli("taylor", "--text", TEXT, "--max-order", "3", "--n-tokens", "16", "--out",
                str(tmp_path / "taylor.json"), "--quiet", "--no-cache")
    assert done.returncode == 0, done.stderr
    again = attnscope.open(tmp_path / "taylor.json")
    for name, error in taylor.sweep.error.items():
        np.testing.assert_array_equal(again.sweep.error[name], error)
    assert [f.text() for f in again.findings()] == [f.text() for f in taylor.findings()]

    collapse = attnscope.collapse(model, max_length=64, windows=1, rows=4)
    done = _cli("collapse", "--max-length", "64", "--windows", "1", "--rows", "4", "--out",
                str(tmp_path / "collapse.json"), "--quiet", "--no-cache")
    assert done.returncode == 0, done.stderr
    again = attnscope.open(tmp_path / "collapse.json")
    assert list(again.lengths) == list(collapse.lengths)
    for ours, theirs in zip(again.summaries, collapse.summaries):
        np.testing.assert_array_equal(ours.max_weight, theirs.max_weight)
        np.testing.assert_array_equal(ours.d_sum, theirs.d_sum)
    assert [f.text() for f in again.findings()] == [f.text() for f in collapse.findings()]


def _one_line_error(done, command: str) -> str:
    """A run the CLI refused: exit status 1 and one line on stderr, `attnscope <command>: ...`, no traceback."""
    said = done.stderr.strip()
    assert done.returncode == 1, done.stderr
    assert len(said.splitlines()) == 1 and "Traceback" not in said, said
    assert said.startswith(f"attnscope {command}: "), said
    return said


def test_cli_out_under_a_file_is_one_line_for_every_subcommand(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    (tmp_path / "prompts.txt").write_text("a prompt")
    inputs = {"text": ["--text", "x"], "text?": [], "prompt": ["--text", "x"], "pair": ["--text", "x"],
              "prompts": ["--prompts", str(tmp_path / "prompts.txt")], "corpus": ["--corpus", str(blocker)]}
    for entry in catalog.STUDIES.values():
        under = blocker / ("atlas" if entry.inputs == "corpus" else "result.json")
        said = _one_line_error(_cli(entry.name, *inputs[entry.inputs], "--out", str(under), "--quiet"), entry.name)
        assert said.endswith(f"--out {under}: {blocker} is a file, so nothing can be written under it; give a path "
                             "under a folder."), said
    said = _one_line_error(_cli("atlas", "--corpus", str(blocker), "--out", str(blocker), "--quiet"), "atlas")
    assert said.endswith(f"--out {blocker} is a file; give a folder for the atlas.")
    said = _one_line_error(_cli("atlas", "--corpus", str(blocker), "--out", str(tmp_path / "new"), "--report",
                                str(blocker / "report.html"), "--quiet"), "atlas")
    assert f"--report {blocker / 'report.html'}: {blocker} is a file" in said
    said = _one_line_error(_cli("atlas-diff", str(blocker), str(blocker), "--out", str(blocker / "d.html")),
                           "atlas-diff")
    assert f"--out {blocker / 'd.html'}: {blocker} is a file" in said
    assert not (tmp_path / "new").exists() and blocker.read_text() == "in the way"


def test_cli_refuses_an_unreadable_corpus_before_loading_a_model_and_makes_no_folder(tmp_path):
    nested = tmp_path / "deep.jsonl"
    nested.write_text('{"text": ' + "[" * 200_000 + "]" * 200_000 + "}\n")
    corpora = {nested: f"The corpus {nested} has no document the atlas can use: its one document was left out "
                       "('deep.jsonl', line 1: nested too deeply to read)"}
    for suffix in (".txt", ".jsonl", ".parquet"):
        noise = tmp_path / f"corpus{suffix}"
        noise.write_bytes(os.urandom(64 * 1024))
        corpora[noise] = f"'corpus{suffix}' "
    for corpus, says in corpora.items():
        out = tmp_path / "out" / "atlas"
        # A model that cannot load: the corpus is refused first, so its sentence is what the user reads.
        done = _cli("atlas", "--corpus", str(corpus), "--out", str(out), "--model", str(tmp_path / "no-model"),
                    "--quiet")
        assert says in _one_line_error(done, "atlas")
        assert not (tmp_path / "out").exists()


def test_cli_atlas_diff_on_a_file_naming_a_module_is_one_line_and_runs_nothing(tmp_path):
    path = tmp_path / "atlas.json"
    for module in ("attnscope.__main__", "attnscope.cli", "attnscope.made_up"):
        path.write_text(json.dumps({"attnscope": 1, "kind": "atlas", "result": {
            "__dataclass__": f"{module}:main", "fields": {"argv": ["--help"]}}}))
        done = _cli("atlas-diff", str(path), str(path))
        assert _one_line_error(done, "atlas-diff") == (
            f"attnscope atlas-diff: 'atlas.json' is not a readable attnscope result: it names the class "
            f"'{module}:main', which no attnscope result holds; open a .json or .parquet file that attnscope saved "
            "(Result.save).")
        assert done.stdout == ""  # the CLI's parser did not run a second time (it would print usage)
    path.write_text(json.dumps({"attnscope": 1, "kind": "attnscope.__main__", "result": {}}))
    assert "it declares the kind 'attnscope.__main__'" in _one_line_error(_cli("atlas-diff", str(path), str(path)),
                                                                          "atlas-diff")
