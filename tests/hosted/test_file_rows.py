"""Files a visitor gives in hosted mode (issue 26): the Head atlas page's atlas and corpus uploads, and the Prompts
page's, as a visitor's session meets them (Streamlit's AppTest on the page, the packaged SmolLM2 chosen in the
sidebar). Every case is one sentence that names the file as it was uploaded (never a server path), no model work for
a corpus that is refused, no atlas folder left behind, and what the session already shows stays.

| case | what was tried | what happened before |
|---|---|---|
| random bytes | a corpus of random bytes (.txt, .jsonl, .parquet) | 60 s of model work, then a server path |
| no usable document | a .jsonl of unusable lines (not JSON, no text, blank, 200,000 brackets deep) | the same |
| parquet bomb | a .parquet of a few kB holding one string ten times an upload (corpus, prompts) | read whole |
| made-up module | an atlas .json naming `attnscope.no_such_module` | ModuleNotFoundError: the page crashed |
| attnscope.__main__ | an atlas .json naming `attnscope.__main__` | the server ran the CLI's parser; the session hung |
| deep nesting | an atlas .json of 200,000 nested brackets | RecursionError: "This app has encountered an error" |
"""

import io
import json
import re
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from streamlit.testing.v1 import AppTest

from attnscope.analyses import atlas as analysis
from attnscope.app import state
from attnscope.cache import ResultCache
from attnscope.studies import atlas as study

pytestmark = pytest.mark.slow

ENTRY = str(Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py")
PAGE = "app_pages/head_atlas.py"
DEEP = "[" * 200_000 + "]" * 200_000  # well-formed JSON, only too deep


def _atlas(model: str = "shown-model") -> study.AtlasResult:
    """A small atlas (2 layers x 3 heads, 3 documents) of every fingerprint field, built without a model."""
    rng = np.random.default_rng(0)
    rows = pd.DataFrame([{"id": f"doc{d}", "tokens": 32, "layer": layer, "head": head,
                          **{field: rng.random() for field in study.LABELS}}
                         for d in range(3) for layer in range(2) for head in range(3)])
    settings = {k: v for k, v in asdict(study.Settings(max_tokens=32)).items() if k not in ("shard_size", "limit")}
    meta = {"model": model, "model_fingerprint": "0" * 16, "corpus": "three documents", "engine": "local",
            "documents": 3, "settings": settings}
    return study.AtlasResult(meta=meta, summary=analysis.summarise(rows, 2, 3), sample="A sample document.")


def _saved(result: study.AtlasResult, tmp_path: Path, suffix: str) -> bytes:
    return result.save(tmp_path / f"saved{suffix}").read_bytes()


@pytest.fixture
def page(monkeypatch, tmp_path):
    """The Head atlas page of a hosted session, its result cache (and so its atlas runs' folders) under tmp_path."""
    monkeypatch.setenv("ATTNSCOPE_HOSTED", "1")
    cache = ResultCache(tmp_path / "cache" / "results", size_mb=1)
    monkeypatch.setattr(ResultCache, "default", classmethod(lambda cls: cache))
    at = AppTest.from_file(ENTRY, default_timeout=240).switch_page(PAGE).run()
    assert not at.exception and [t.value for t in at.title] == ["Head atlas"]
    return at


@pytest.fixture
def forward_passes():
    """Every module call in this process while the test runs (the page runs the model in this process)."""
    calls = []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda module, args: calls.append(module))
    yield calls
    handle.remove()


def _errors(at: AppTest) -> list[str]:
    """The page's error sentences as a visitor reads them (Markdown escapes removed); none may show a server path."""
    errors = [re.sub(r"\\(.)", r"\1", e.value) for e in at.error]
    for error in errors:
        assert "/tmp" not in error and "(a server path)" not in error, error
    return errors


def _open(at: AppTest, name: str, data: bytes) -> AppTest:
    at.file_uploader[0].set_value((name, data, "application/octet-stream")).run()
    assert not at.exception
    return at


def _shown_model(at: AppTest) -> str | None:
    return at.session_state[state.ATLAS].meta["model"] if at.session_state[state.ATLAS] is not None else None


def _run_corpus(at: AppTest, files: list[tuple[str, bytes]]) -> AppTest:
    at.file_uploader[1].set_value([(name, data, "application/octet-stream") for name, data in files]).run()
    next(b for b in at.button if b.label == "Run the atlas").click().run()
    assert not at.exception
    return at


def _refused_before_model_work(at: AppTest, forward_passes: list, tmp_path: Path) -> str:
    """The one sentence a refused corpus gets; no forward pass ran and no atlas folder was made."""
    errors = _errors(at)
    assert len(errors) == 1, errors
    assert not forward_passes, f"{len(forward_passes)} module calls for a corpus that was refused"
    atlas_folders = tmp_path / "cache" / "app-atlas"
    assert not atlas_folders.exists() or not any(atlas_folders.iterdir()), list(atlas_folders.iterdir())
    assert _shown_model(at) == "shown-model", "the atlas already shown was lost"
    return errors[0]


@pytest.mark.parametrize("name", ["noise.txt", "noise.jsonl", "noise.parquet"])
def test_a_corpus_of_random_bytes_is_one_sentence_naming_the_upload_before_any_model_work(page, forward_passes,
                                                                                         tmp_path, name):
    _open(page, "shown.parquet", _saved(_atlas(), tmp_path, ".parquet"))
    noise = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    error = _refused_before_model_work(_run_corpus(page, [(name, noise)]), forward_passes, tmp_path)
    assert f"'{name}'" in error, error


def test_a_corpus_with_no_usable_document_names_it_as_uploaded_with_the_first_reasons(page, forward_passes, tmp_path):
    _open(page, "shown.parquet", _saved(_atlas(), tmp_path, ".parquet"))
    lines = ["{not json", json.dumps({"title": "no text field"}), json.dumps({"text": "   "}), '{"text": ' + DEEP + "}"]
    error = _refused_before_model_work(_run_corpus(page, [("unusable.jsonl", "\n".join(lines).encode())]),
                                       forward_passes, tmp_path)
    assert error.startswith("The corpus 'unusable.jsonl' has no document the atlas can use: all 4 documents read "
                            "were left out ('unusable.jsonl', line 1: not JSON"), error
    assert "line 2: " in error and "line 3: " in error and "and 1 more" in error, error


def test_a_corpus_file_with_a_300_character_name_is_written_under_a_name_the_disk_takes(page, forward_passes,
                                                                                       tmp_path):
    _open(page, "shown.parquet", _saved(_atlas(), tmp_path, ".parquet"))
    name = "n" * 300 + ".txt"  # over the 255 bytes a file name may have: writing it as it is raised OSError
    error = _refused_before_model_work(_run_corpus(page, [(name, b"\x00" * 64)]), forward_passes, tmp_path)
    assert error.startswith("The corpus 'nnnn") and "looks like a binary file" in error, error


def test_several_uploaded_files_with_no_usable_document_are_named_as_uploaded(page, forward_passes, tmp_path):
    _open(page, "shown.parquet", _saved(_atlas(), tmp_path, ".parquet"))
    error = _refused_before_model_work(_run_corpus(page, [("a.txt", b""), ("b.txt", b"\x00\x01\x02" * 100)]),
                                       forward_passes, tmp_path)
    assert error.startswith("The corpus of 2 uploaded files ('a.txt', 'b.txt') has no document the atlas can use"), \
        error


def _bomb() -> bytes:
    """A .parquet of a few kB holding one string of 20 MB, ten times the hosted upload (the 2,010 MiB case read
    400 MB the same way)."""
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": ["a" * (20 * 10**6)]}), buffer, compression="zstd", compression_level=19)
    assert len(buffer.getvalue()) < 64 * 1024
    return buffer.getvalue()


def test_a_parquet_bomb_corpus_is_refused_from_its_footer_before_any_model_work(page, forward_passes, tmp_path):
    _open(page, "shown.parquet", _saved(_atlas(), tmp_path, ".parquet"))
    error = _refused_before_model_work(_run_corpus(page, [("bomb.parquet", _bomb())]), forward_passes, tmp_path)
    assert "'bomb.parquet'" in error and "limit" in error, error


def test_a_parquet_bomb_of_prompts_is_one_sentence_and_adds_nothing(monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_HOSTED", "1")
    at = AppTest.from_file(ENTRY, default_timeout=240).switch_page("app_pages/prompts.py").run()
    at.file_uploader[0].set_value([("bomb.parquet", _bomb(), "application/octet-stream")]).run()
    assert not at.exception
    errors = _errors(at)
    assert len(errors) == 1 and errors[0].startswith("'bomb.parquet'") and "limit" in errors[0], errors
    assert at.session_state[state.LIBRARY] == []


@pytest.mark.parametrize("module", ["attnscope.no_such_module", "attnscope.__main__"])
def test_an_atlas_naming_a_module_is_one_sentence_imports_nothing_and_keeps_the_open_atlas(page, tmp_path, module):
    _open(page, "shown.json", _saved(_atlas(), tmp_path, ".json"))
    assert _shown_model(page) == "shown-model" and not page.error
    forged = _saved(_atlas("forged-model"), tmp_path, ".json").decode().replace("attnscope.studies.atlas:AtlasResult",
                                                                               f"{module}:AtlasResult")
    _open(page, "forged.json", forged.encode())
    errors = _errors(page)
    assert len(errors) == 1 and "forged.json" in errors[0], errors
    assert _shown_model(page) == "shown-model"
    assert not any(name.startswith(module) for name in sys.modules), f"{module} was imported"


@pytest.mark.parametrize("side", ["A", "B"])
def test_an_atlas_nested_200000_levels_deep_is_one_sentence_and_keeps_the_open_atlases(page, tmp_path, side):
    _open(page, "shown.parquet", _saved(_atlas(), tmp_path, ".parquet"))
    uploader = page.file_uploader[0] if side == "A" else page.file_uploader[-1]
    uploader.set_value(("deep.json", DEEP.encode(), "application/json")).run()
    assert not page.exception
    errors = _errors(page)
    assert len(errors) == 1 and "deep.json" in errors[0], errors
    assert _shown_model(page) == "shown-model" and page.session_state[state.ATLAS_B] is None
