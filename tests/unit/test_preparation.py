"""Preparation of the packaged GGUF model without dequantizing: the lock, stale staging folders, the ready manifest.

A fake prepared folder (a few small files and a ready marker) stands in for the 540 MB checkpoint, so these tests
take milliseconds; tests/hosted/test_preparation_rows.py does the same things with the real model.
"""

import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock, Timeout

from attnscope import packaged as models
from attnscope.models import ModelSpec

ALIAS = "smollm2-135m"
SPEC = ModelSpec(ALIAS)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("ATTNSCOPE_CACHE", str(folder))
    return folder


def fake_prepared(cache: Path) -> Path:
    """A prepared folder as prepare_packaged_model leaves it, with small stand-ins for the real files."""
    folder = cache / ALIAS
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(bytes(1000))
    (folder / "tokenizer.json").write_text("{}")
    models._write_ready_marker(folder, models.PACKAGED_MODELS[ALIAS])
    return folder


def test_two_file_locks_on_one_path_exclude_each_other_across_threads(tmp_path):
    """The preparation lock relies on flock excluding two FileLock objects of one process, not only two processes."""
    path = tmp_path / "model.lock"
    held, release = threading.Event(), threading.Event()

    def hold():
        with FileLock(path):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    other = FileLock(path)
    with pytest.raises(Timeout):
        other.acquire(timeout=0.3)
    release.set()
    holder.join(10)
    other.acquire(timeout=1)
    other.release()


def test_a_waiter_reports_progress_removes_stale_staging_and_returns_the_copy_prepared_meanwhile(cache):
    cache.mkdir()
    stale = cache / f".{ALIAS}.staging-abc12345"
    legacy_stale = cache / f".{ALIAS}-k2j4h5g6"  # tempfile.mkdtemp name used by older attnscope
    broken = cache / f".{ALIAS}.broken-20250101-000000"
    other_alias = cache / ".minilm-l6.staging-abc12345"
    for folder in (stale, legacy_stale, broken, other_alias):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(bytes(100))
    messages, results = [], []

    def prepare():
        results.append(models.prepare_packaged_model(ALIAS, progress=lambda f, message: messages.append((f, message))))

    lock = FileLock(models._lock_file(ALIAS))  # as another thread or process preparing right now holds it
    lock.acquire()
    try:
        waiter = threading.Thread(target=prepare)
        waiter.start()
        deadline = time.monotonic() + 10
        while not messages and time.monotonic() < deadline:
            time.sleep(0.05)
        assert waiter.is_alive() and stale.exists()
        fake_prepared(cache)
    finally:
        lock.release()
    waiter.join(30)

    assert results == [cache / ALIAS]
    texts = [message for _, message in messages]
    assert texts[0].startswith("Another process is preparing smollm2-135m; waiting for it (")
    assert texts[-1] == "smollm2-135m was prepared by another process"
    assert not any("dequantizing" in text for text in texts)
    assert [fraction for fraction, _ in messages] == sorted(fraction for fraction, _ in messages)
    assert not any(str(cache.parent) in text for text in texts)
    assert not stale.exists() and not legacy_stale.exists()
    assert broken.exists() and other_alias.exists()


@pytest.mark.parametrize("damage", ["truncated weights", "missing config", "missing tokenizer", "grown weights"])
def test_the_manifest_notices_a_truncated_or_missing_file(cache, damage):
    folder = fake_prepared(cache)
    assert not models.needs_preparation(SPEC)
    if damage == "truncated weights":
        with open(folder / "model.safetensors", "r+b") as weights:
            weights.truncate(500)
    elif damage == "grown weights":
        with open(folder / "model.safetensors", "ab") as weights:
            weights.write(b"x")
    else:
        (folder / ("config.json" if damage == "missing config" else "tokenizer.json")).unlink()
    assert models._readiness(folder) == models._DAMAGED
    assert models.needs_preparation(SPEC)


def test_a_plain_text_marker_from_older_versions_is_accepted_when_the_checkpoint_files_exist(cache):
    folder = fake_prepared(cache)
    (folder / models._READY_MARKER).write_text("dequantized from /somewhere/SmolLM2-135M-Instruct.Q4_1.gguf\n")
    assert not models.needs_preparation(SPEC)
    (folder / "tokenizer.json").unlink()  # an old marker lists nothing else, so this goes unnoticed
    assert not models.needs_preparation(SPEC)
    (folder / "config.json").unlink()
    assert models.needs_preparation(SPEC)


def test_no_marker_or_no_cache_folder_needs_preparation(cache, tmp_path, monkeypatch):
    assert models.needs_preparation(SPEC)
    fake_prepared(cache)
    (cache / ALIAS / models._READY_MARKER).unlink()
    assert models.needs_preparation(SPEC)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("ATTNSCOPE_CACHE", str(blocker / "cache"))
    assert models.needs_preparation(SPEC)
    assert not models.needs_preparation(ModelSpec("minilm-l6"))  # shipped as safetensors: nothing to prepare


def test_moving_a_damaged_copy_aside_keeps_only_the_newest_broken_copy(cache):
    folder = fake_prepared(cache)
    for stamp in ("20240101-000000", "20250101-000000"):
        (cache / f".{ALIAS}.broken-{stamp}").mkdir()
    models._move_aside(folder, ALIAS)
    broken = list(cache.glob(f".{ALIAS}.broken-*"))
    assert not folder.exists()
    assert len(broken) == 1 and (broken[0] / "config.json").exists()


def test_visitor_facing_sentences_name_no_path():
    for note in (models._DAMAGED_NOTE.format(alias=ALIAS), models._IN_MEMORY_NOTE):
        assert "/" not in note and note.endswith(".") and note.count(". ") == 0
