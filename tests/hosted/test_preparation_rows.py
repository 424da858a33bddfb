"""Rows 10-13 of the hosted-mode issue's table: preparing the packaged SmolLM2 (dequantizing its GGUF file) when
several processes race, one is killed, the prepared copy is damaged, or the cache folder cannot be written.

| # | what was tried | what happened before |
|---|---|---|
| 10 | two first-time preparations at once (processes/threads) | both dequantized; the 2nd replaced the 1st's copy |
| 11 | a preparation killed with SIGKILL | its staging folder (about 517 MB) stayed forever |
| 12 | model.safetensors truncated, marker kept; no config.json | SafetensorError each run, never repaired; path shown |
| 13 | an unwritable cache folder | the 20-40 s dequantization ran again on every rerun |

Each real dequantization takes 20-60 s, so the module prepares once (row 10's race) and copies that folder for the
damage cases; six dequantizations in all.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from attnscope import models, packaged
from attnscope.capture import ATTENTION_NAME, run_with_capture
from attnscope.models import ModelSpec, load_model

pytestmark = pytest.mark.slow

ALIAS = "smollm2-135m"
SPEC = ModelSpec(ALIAS)
ROOT = Path(__file__).resolve().parents[2]
DEQUANTIZING = "Reading and dequantizing"
DAMAGED_NOTE = "The prepared copy of smollm2-135m was damaged; it was moved aside and prepared again."
IN_MEMORY_NOTE = ("The model cache folder cannot be written, so the prepared model is kept in memory and will be "
                  "prepared again after a restart.")
# Prepares in a child process, printing each progress report and then the folder as JSON lines.
PREPARE_SCRIPT = """
import json
from attnscope.models import prepare_packaged_model
folder = prepare_packaged_model("smollm2-135m", progress=lambda f, m: print(json.dumps(m), flush=True))
print(json.dumps(["folder", str(folder)]), flush=True)
"""


def _start_preparing(cache: Path, stderr: Path) -> subprocess.Popen:
    """Stderr goes to a file: progress bars could fill a pipe nobody reads until the process ends."""
    env = {**os.environ, "ATTNSCOPE_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    with open(stderr, "w") as errors:
        return subprocess.Popen([sys.executable, "-c", PREPARE_SCRIPT], cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=errors)


def _logits(loaded: models.Model) -> torch.Tensor:
    ids = loaded.tokenizer("Attention is all you need", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return loaded.model(input_ids=ids).logits


def _leftovers(cache: Path) -> list[str]:
    return sorted(path.name for path in cache.glob(f".{ALIAS}.staging-*"))


@pytest.fixture(scope="module")
def first_time(tmp_path_factory):
    """Row 10's race: two processes and two threads of this one prepare into the same empty cache at once.

    Returns (cache folder, {contender: (progress messages, returned folder)}).
    """
    logs = tmp_path_factory.mktemp("race")
    cache = logs / "cache"
    outcomes = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ATTNSCOPE_CACHE", str(cache))
        processes = {f"process {i}": _start_preparing(cache, logs / f"process-{i}.err") for i in (1, 2)}

        def prepare(name):
            messages = []
            folder = models.prepare_packaged_model(ALIAS, progress=lambda f, message: messages.append(message))
            outcomes[name] = (messages, str(folder))

        threads = [threading.Thread(target=prepare, args=(f"thread {i}",)) for i in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
        for name, process in processes.items():
            stdout, _ = process.communicate(timeout=600)
            assert process.returncode == 0, (logs / f"{name.replace(' ', '-')}.err").read_text()[-2000:]
            lines = [json.loads(line) for line in stdout.splitlines()]
            outcomes[name] = ([line for line in lines if isinstance(line, str)], lines[-1][1])
    return cache, outcomes


@pytest.fixture(scope="module")
def good_logits(first_time):
    cache, _ = first_time
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ATTNSCOPE_CACHE", str(cache))
        return _logits(load_model(SPEC))


def test_row10_two_first_time_preparations_dequantize_once(first_time, good_logits, monkeypatch):
    cache, outcomes = first_time
    assert sorted(outcomes) == ["process 1", "process 2", "thread 1", "thread 2"]
    dequantized = [name for name, (messages, _) in outcomes.items() if any(DEQUANTIZING in m for m in messages)]
    assert len(dequantized) == 1, outcomes
    waited = [name for name, (messages, _) in outcomes.items() if any("Another process is preparing" in m
                                                                       for m in messages)]
    assert waited, "no contender had to wait, so the preparations did not overlap"
    assert {folder for _, folder in outcomes.values()} == {str(cache / ALIAS)}
    assert not any(str(cache) in message for messages, _ in outcomes.values() for message in messages)
    assert _leftovers(cache) == [] and not list(cache.glob(f".{ALIAS}.broken-*"))
    monkeypatch.setenv("ATTNSCOPE_CACHE", str(cache))
    assert not models.needs_preparation(SPEC)
    assert torch.isfinite(good_logits).all() and load_model(SPEC).notes == ()


def test_row11_staging_left_by_sigkill_is_removed(first_time, good_logits, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    process = _start_preparing(cache, tmp_path / "killed.err")
    deadline = time.monotonic() + 120
    while not _leftovers(cache) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    stale = _leftovers(cache)
    assert len(stale) == 1 and not (cache / ALIAS).exists()

    monkeypatch.setenv("ATTNSCOPE_CACHE", str(cache))
    assert models.needs_preparation(SPEC)
    messages = []
    loaded = load_model(SPEC, progress=lambda f, message: messages.append(message))
    assert any(DEQUANTIZING in message for message in messages)
    assert _leftovers(cache) == []
    assert not models.needs_preparation(SPEC)
    torch.testing.assert_close(_logits(loaded), good_logits, rtol=0, atol=0)


def test_row12_truncated_weights_or_missing_config_are_prepared_again(first_time, good_logits, tmp_path,
                                                                      monkeypatch):
    good_copy = first_time[0] / ALIAS

    def damaged_cache(name: str) -> Path:
        cache = tmp_path / name
        shutil.copytree(good_copy, cache / ALIAS)
        monkeypatch.setenv("ATTNSCOPE_CACHE", str(cache))
        return cache

    # Truncated weights, marker kept: needs_preparation notices, and the app's preparation path repairs it.
    cache = damaged_cache("truncated")
    weights = cache / ALIAS / "model.safetensors"
    with open(weights, "r+b") as file:
        file.truncate(weights.stat().st_size // 2)
    assert models.needs_preparation(SPEC)
    messages = []
    assert models.prepare_packaged_model(ALIAS, progress=lambda f, message: messages.append(message)) == cache / ALIAS
    assert not models.needs_preparation(SPEC)
    loaded = load_model(SPEC)
    assert loaded.notes == (DAMAGED_NOTE,)
    torch.testing.assert_close(_logits(loaded), good_logits, rtol=0, atol=0)
    assert len(list(cache.glob(f".{ALIAS}.broken-*"))) == 1
    assert not any(str(cache) in message for message in messages)

    # A missing config.json (which used to give a message naming the prepared folder): load_model alone repairs it.
    cache = damaged_cache("no-config")
    (cache / ALIAS / "config.json").unlink()
    assert models.needs_preparation(SPEC)
    messages = []
    loaded = load_model(SPEC, progress=lambda f, message: messages.append(message))
    assert loaded.notes == (DAMAGED_NOTE,) and (cache / ALIAS / "config.json").exists()
    torch.testing.assert_close(_logits(loaded), good_logits, rtol=0, atol=0)
    assert not any(str(cache) in message for message in messages)

    # Bytes corrupted in place keep every size, so only loading notices: load_model moves the copy aside and
    # prepares it again, once.
    cache = damaged_cache("corrupted")
    with open(cache / ALIAS / "model.safetensors", "r+b") as file:
        file.write(b"\xff" * 8)  # the header length: safetensors refuses the file
    assert not models.needs_preparation(SPEC)
    messages = []
    loaded = load_model(SPEC, progress=lambda f, message: messages.append(message))
    assert loaded.notes == (DAMAGED_NOTE,)
    assert sum(DEQUANTIZING in message for message in messages) == 1
    torch.testing.assert_close(_logits(loaded), good_logits, rtol=0, atol=0)
    assert len(list(cache.glob(f".{ALIAS}.broken-*"))) == 1 and _leftovers(cache) == []
    assert not any(str(cache) in text for text in [*messages, *loaded.notes])


@pytest.fixture
def unwritable_cache(tmp_path, monkeypatch):
    """A cache folder that cannot be created. Root ignores permissions, so there it lies under a regular file."""
    if os.geteuid() == 0:
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        cache, read_only = blocker / "cache", None
    else:
        read_only = tmp_path / "read-only"
        read_only.mkdir()
        read_only.chmod(0o555)
        cache = read_only / "cache"
    monkeypatch.setenv("ATTNSCOPE_CACHE", str(cache))
    yield cache
    if read_only is not None:
        read_only.chmod(0o755)
    packaged._IN_MEMORY.pop((ALIAS, str(cache)), None)  # frees the 540 MB model for the rest of the session


def test_row13_unwritable_cache_prepares_once_and_keeps_the_model_in_memory(unwritable_cache, good_logits, caplog):
    assert models.needs_preparation(SPEC)
    loaded, messages = {}, {}

    def load(name):
        messages[name] = []
        loaded[name] = load_model(SPEC, progress=lambda f, message: messages[name].append(message))

    with caplog.at_level("WARNING", logger="attnscope.models"):
        threads = [threading.Thread(target=load, args=(name,)) for name in ("first", "second")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
    assert sum(DEQUANTIZING in message for texts in messages.values() for message in texts) == 1
    assert loaded["first"].model is loaded["second"].model
    assert sorted(note for result in loaded.values() for note in result.notes) == [IN_MEMORY_NOTE]
    assert str(unwritable_cache) in caplog.text  # the operator learns which folder
    assert not any(str(unwritable_cache) in message for texts in messages.values() for message in texts)
    assert not models.needs_preparation(SPEC)

    start = time.monotonic()
    again = load_model(SPEC)
    assert time.monotonic() - start < 2
    assert again.model is loaded["first"].model and again.notes == ()
    assert [key for key in packaged._IN_MEMORY if key[1] == str(unwritable_cache)] == [(ALIAS, str(unwritable_cache))]
    assert again.model.config._attn_implementation == ATTENTION_NAME and not again.model.training
    assert again.info == {"n_layers": 30, "n_heads": 9, "n_kv_heads": 3, "head_dim": 64, "max_positions": 8192,
                          "device": "cpu", "dtype": "float32", "quantize": "none"}
    torch.testing.assert_close(_logits(again), good_logits, rtol=0, atol=0)
    ids = again.tokenizer("Attention is all you need", return_tensors="pt")["input_ids"]
    assert run_with_capture(again.model, ids).n_layers == 30
    # Another precision is a copy of the kept model: the kept one stays as every other session uses it.
    half = load_model(ModelSpec(ALIAS, dtype="bfloat16"))
    assert half.model is not again.model and half.info["dtype"] == "bfloat16" and again.model.dtype == torch.float32
