"""The head atlas on Ray: Ray Data hands batches of documents to actors that each load the model once.

The driver reads the corpus (only what no shard holds yet), Ray Data maps batches of `shard_size` documents through
`workers` actors (a fractional CPU each, so Ray Data's own tasks always find one on a small machine), and the driver
writes each batch that comes back as one shard, as the local engine does. A worker that dies has its batch run again
by Ray (actor restarts and task retries), and a batch is written once, when it arrives, so no document is counted
twice. `address` joins an existing cluster ("auto" or "ray://host:10001"); without it a local Ray instance starts and
is shut down at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from attnscope.corpus import Document
from attnscope.studies import atlas

WORKER_CPUS = 0.5  # per actor: leaves room for Ray Data's read and split tasks on a 2-core machine


class _Fingerprinter:
    """A Ray Data actor: the model, loaded once, fingerprints each batch of documents."""

    def __init__(self, spec, settings, threads: int):
        import torch

        from attnscope.api import Model
        from attnscope.models import load_model

        torch.set_num_threads(threads)
        self.model = Model(load_model(spec))
        self.settings = settings

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        documents = [Document(row.id, None if isinstance(row.problem, str) else row.text,
                              row.problem if isinstance(row.problem, str) else None) for row in batch.itertuples()]
        rows, problems = atlas.fingerprint_rows(self.model, documents, self.settings)
        # One frame per batch whatever it holds: problem documents as rows with layer -1 and their reason.
        problems = problems.assign(layer=-1, head=-1, tokens=0)
        rows = rows.assign(reason=None) if len(rows) else rows
        return pd.concat([rows, problems], ignore_index=True)


def _numpy_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """Ray Data's pandas batches hold pyarrow-backed columns; the shards keep the local engine's numpy dtypes."""
    converted = {name: frame[name].astype(frame[name].dtype.numpy_dtype) for name in frame.columns
                 if isinstance(frame[name].dtype, pd.ArrowDtype) and frame[name].dtype.kind in "iuf"}
    return frame.assign(**converted) if converted else frame


def run(spec, documents: Iterable[Document], out: Path, settings, *, address: str | None, workers: int,
        progress: Callable[[float, str], None] | None) -> None:
    import os

    import ray

    items = [{"id": d.id, "text": d.text or "", "problem": d.problem} for d in documents]
    if not items:
        return
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=max(1, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    try:
        threads = max(1, int((os.cpu_count() or 1) // max(1, workers)))
        results = ray.data.from_items(items).map_batches(
            _Fingerprinter, fn_constructor_args=(spec, settings, threads), batch_size=settings.shard_size,
            batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=WORKER_CPUS,
            max_restarts=-1, max_task_retries=-1)  # (ray_remote_args: deprecated in Ray 2.60, still honoured)
        done = 0
        for batch in results.iter_batches(batch_format="pandas", batch_size=None):
            batch = _numpy_dtypes(batch)
            problems = batch[batch["layer"] == -1][["id", "reason"]]
            rows = batch[batch["layer"] != -1].drop(columns=["reason"])
            first = atlas.safe_label(str(batch["id"].iloc[0]))
            atlas.write_batch(out, rows.reset_index(drop=True), problems.reset_index(drop=True), first)
            done += batch["id"].nunique()
            if progress is not None:
                progress(min(0.99, done / len(items)), f"{done} of {len(items)} documents fingerprinted on Ray")
    finally:
        if started_here:
            ray.shutdown()
