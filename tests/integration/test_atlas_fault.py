"""The head atlas on local Ray outlives a worker that dies mid-run: a Ray Data actor holding the model is killed with
SIGKILL while it fingerprints a batch, and the run still ends, in bounded time, with every document in exactly one
shard and the same rows as the in-process engine.

The Ray run is a subprocess (its own driver and local Ray instance), so a Ray that never recovers fails the test at
RUN_SECONDS instead of hanging it, and everything it started can be killed. The worker is found without hooks in the
library: Ray titles an actor's process `ray::<actor class>` and, while a method runs, `ray::<actor class>.<method>`;
Ray Data's map actors are MapWorker(MapBatches(<callable>)) and take their batches through `submit`. Only processes
descended from the test's own driver are looked at, so Ray instances of other runs on the machine are left alone.
"""

import json
import signal
import subprocess
import sys
import time
from collections import Counter

import pandas as pd
import psutil
import pytest

import attnscope
from attnscope.studies import atlas

pytestmark = pytest.mark.slow

WORKER_TITLE = "ray::MapWorker(MapBatches(_Fingerprinter))"
BUSY_TITLE = f"{WORKER_TITLE}.submit"  # the actor is running a batch
N_DOCUMENTS, MAX_TOKENS, SHARD_SIZE, WORKERS = 24, 48, 3, 2
ROWS_PER_DOCUMENT = 30 * 9  # SmolLM2-135M: layers x heads
RUN_SECONDS = 240  # the Ray run takes 30-60 s on two shared cores, the worker's restart included
RAY_RUN = ("import sys, attnscope; attnscope.atlas(attnscope.load('smollm2-135m'), sys.argv[1], sys.argv[2], "
           f"engine='ray', workers={WORKERS}, max_tokens={MAX_TOKENS}, shard_size={SHARD_SIZE})")


@pytest.fixture(scope="module")
def model():
    return attnscope.load("smollm2-135m")


@pytest.fixture
def corpus(tmp_path):
    """N_DOCUMENTS documents, short (~13 tokens) and long (cut at MAX_TOKENS) by turns of SHARD_SIZE: a batch of short
    ones has no slope at all (NaN in every row), which Ray must bring back as NaN, not as None."""
    animals = ("cat", "dog", "heron", "otter", "fox", "owl")
    lines = []
    for i in range(N_DOCUMENTS):
        walk = f" Then it walked to door {i * 7 % 11} and back, twice, before the {animals[(i + 1) % 6]} woke."
        text = f"Document {i}. The {animals[i % 6]} sat on mat number {i}." + walk * 2 * (i // SHARD_SIZE % 2)
        lines.append(json.dumps({"text": text}))
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _titles(root: psutil.Process) -> dict[int, str]:
    """pid -> process title of every live process below `root`."""
    titles = {}
    for process in root.children(recursive=True):
        try:
            titles[process.pid] = " ".join(process.cmdline()).strip()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return titles


def _kill_a_busy_worker(driver: subprocess.Popen, out, deadline: float) -> int:
    """Once a shard is written, SIGKILL a map actor that is running a batch; its pid."""
    root = psutil.Process(driver.pid)
    while time.monotonic() < deadline and driver.poll() is None:
        if any(out.glob("shard-*.parquet")):
            busy = [pid for pid, title in _titles(root).items() if title == BUSY_TITLE]
            if busy:
                victim = psutil.Process(busy[0])
                victim.send_signal(signal.SIGKILL)
                victim.wait(timeout=10)
                return busy[0]
        time.sleep(0.05)
    raise AssertionError("no map actor was seen running a batch after the first shard: nothing was killed")


def _stop(driver: subprocess.Popen) -> None:
    """Kill the driver and everything it started (its local Ray: GCS, raylet, workers), if still running."""
    if driver.poll() is not None:
        return
    try:
        family = psutil.Process(driver.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    driver.kill()
    for process in family:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    driver.wait(timeout=30)


def test_ray_atlas_recovers_from_a_killed_worker(model, corpus, tmp_path):
    out, log_path = tmp_path / "ray", tmp_path / "ray.log"
    out.mkdir()
    started = time.monotonic()
    with log_path.open("w") as log:
        driver = subprocess.Popen([sys.executable, "-c", RAY_RUN, str(corpus), str(out)], stdout=log,
                                  stderr=subprocess.STDOUT)
        try:
            killed = _kill_a_busy_worker(driver, out, started + RUN_SECONDS)
            shards_at_kill = len(list(out.glob("shard-*.parquet")))
            try:
                driver.wait(timeout=max(1.0, started + RUN_SECONDS - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"the Ray atlas did not finish within {RUN_SECONDS} s of start after worker {killed} was "
                            f"killed; its log ends:\n{log_path.read_text()[-3000:]}")
        finally:
            _stop(driver)
    assert driver.returncode == 0, log_path.read_text()[-3000:]
    assert shards_at_kill < N_DOCUMENTS // SHARD_SIZE, "the worker was killed after every batch was written"

    ids = [f"corpus.jsonl:{i}" for i in range(1, N_DOCUMENTS + 1)]
    holders = Counter(doc_id for path in out.glob("shard-*.parquet")
                      for doc_id in set(pd.read_parquet(path, columns=["id"])["id"]))
    assert holders == Counter(ids), "a document is missing or in more than one shard"
    manifest = json.loads((out / atlas.MANIFEST).read_text())
    assert manifest["documents"] == N_DOCUMENTS and manifest["problems"] == []
    ray_rows = atlas.read(out)
    assert ray_rows.groupby("id").size().eq(ROWS_PER_DOCUMENT).all()

    attnscope.atlas(model, corpus, tmp_path / "local", max_tokens=MAX_TOKENS, shard_size=SHARD_SIZE)
    local_rows = atlas.read(tmp_path / "local")
    order = ["id", "layer", "head"]
    pd.testing.assert_frame_equal(ray_rows.sort_values(order).reset_index(drop=True),
                                  local_rows.sort_values(order).reset_index(drop=True), check_exact=True)
