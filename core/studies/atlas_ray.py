"""The head atlas on Ray: Ray Data hands batches of documents to actors that each load the model once.

The driver reads the corpus (only what no shard holds yet), Ray Data maps batches of `shard_size` documents through
`workers` actors (a GPU each when the cluster has GPUs, else a fractional CPU each, so Ray Data's own tasks always
find one on a small machine), and the driver writes each batch that comes back as one shard, as the local engine
does. A worker that dies has its batch run again by Ray: Ray Data creates its map actors with max_restarts=-1 and
max_task_retries=-1 unless told otherwise, so the actor restarts (loading the model again) and the batch it held is
retried (tests/integration/test_atlas_fault.py kills one mid-run). A batch is written once, when it arrives, so no
document is counted twice. `address` joins an existing cluster ("auto" or "ray://host:10001"); without it a local Ray
instance starts and is shut down at the end.

Same rows as the in-process engine: each actor runs one document per forward pass, as the local engine does (no
batching of documents into one padded pass), in the same dtype on the same kind of device, and torch at the driver's
thread count, the count the local engine runs at. The count matters: MKL splits the inner sum of a matrix product
across its threads, so SmolLM2's down-projection (a sum over 1,536 terms) rounds differently at one thread than at
two: on 6 documents of 160 tokens, 1,566 of 1,620 rows differ, by up to 2.3e-5, and a count such as N_s/N, which
compares weights, can change by one (issue 25: 0.4375 against 0.4297). On a machine with fewer cores than actors times
threads the actors share the cores, so their OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE unless the
environment sets it): spinning threads that share a core burn it. The fault test's 24 documents, 2 actors on 2 cores
(each pair measured back to back): 2 threads each spinning 246-290 s against 53-63 s at one thread (a busy machine);
waiting passively 58-72 s against 52-54 s (a quiet one). On another kind of CPU or GPU the rounding differs anyway and
the rows agree only to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa

from attnscope.corpus import Document
from attnscope.studies import atlas_shards as atlas

WORKER_CPUS = 0.5  # per actor: leaves room for Ray Data's read and split tasks on a 2-core machine


def placement(spec, workers: int, cluster: dict[str, float]):
    """(the spec each actor loads, actors, their resources): one GPU per actor when the cluster has GPUs and the
    model may run on one (device auto, cuda or cuda:N; Ray gives each actor its own GPU as cuda:0), as many actors as
    there are GPUs at most (more would wait for one forever); else a fractional CPU each."""
    from dataclasses import replace

    gpus = int(cluster.get("GPU", 0))
    if gpus and (spec.device == "auto" or spec.device.startswith("cuda")):
        return replace(spec, device="cuda"), min(workers, gpus), {"num_gpus": 1}
    return spec, workers, {"num_cpus": WORKER_CPUS}


class _Fingerprinter:
    """A Ray Data actor: the model, loaded once, fingerprints each batch of documents."""

    def __init__(self, spec, settings, threads: int):
        import torch

        from attnscope.models import load_model

        torch.set_num_threads(threads)
        self.model = load_model(spec)
        self.settings = settings

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        documents = [Document(row.id, None if isinstance(row.problem, str) else row.text,
                              row.problem if isinstance(row.problem, str) else None) for row in batch.itertuples()]
        rows, problems = atlas.fingerprint_rows(self.model, documents, self.settings)
        # One frame per batch whatever it holds: problem documents as rows with layer -1 and their reason.
        problems = problems.assign(layer=-1, head=-1, tokens=0)
        rows = rows.assign(reason=None) if len(rows) else rows
        # Returned as Arrow with the frame's own types: from a pandas frame Ray Data infers them, and a field that is
        # NaN for a whole batch (a slope of documents too short for one) would come back as a column of None.
        return pa.Table.from_pandas(pd.concat([rows, problems], ignore_index=True), preserve_index=False)


def run(spec, documents: Iterable[Document], out: Path, settings, *, address: str | None, workers: int,
        progress: Callable[[float, str], None] | None) -> None:
    import logging
    import os

    import ray
    import torch

    items = [{"id": d.id, "text": d.text or "", "problem": d.problem} for d in documents]
    if not items:
        return
    quiet = bool(os.environ.get("ATTNSCOPE_RAY_QUIET"))  # the CLI draws its own progress bar and says what went wrong
    started_here = not ray.is_initialized()
    if started_here:
        options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR if quiet else
                       logging.INFO)
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=max(1, os.cpu_count() or 1), **options)
    try:
        spec, workers, resources = placement(spec, workers, ray.cluster_resources())
        if quiet:
            ray.data.DataContext.get_current().enable_progress_bars = False
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        threads = torch.get_num_threads()  # the local engine's: the same rounding (see the module's docstring)
        waiting = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}  # read as a worker starts
        results = ray.data.from_items(items).map_batches(
            _Fingerprinter, fn_constructor_args=(spec, settings, threads), batch_size=settings.shard_size,
            batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=workers),
            runtime_env={"env_vars": waiting}, **resources)
        done = 0
        for table in results.iter_batches(batch_format="pyarrow", batch_size=None):
            batch = table.to_pandas()  # the local engine's numpy dtypes, NaN where Arrow holds a null
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
