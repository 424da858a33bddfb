"""The head atlas's throughput on the packaged SmolLM2: in-process next to Ray Data with one and two workers.

Three engines fingerprint the same corpus (attnscope.atlas, each into a fresh out folder):
    in-process  engine="local": batches one after another in the calling process, torch's default thread count
    ray-1       engine="ray", workers=1: a local Ray instance, one actor holding the model, all cores' threads
    ray-2       engine="ray", workers=2: two actors, each with cores / 2 threads
The corpus is the built-in document (attnscope.analyses.collapse.builtin_text, the Python reference manual's topics)
cut at paragraph breaks into documents of at least TOKENS_TO_CHARS x --tokens characters, so every document is cut to
--tokens tokens and each one is the same work; it is written once as a .jsonl file in a temporary folder.

Each measurement runs in a fresh subprocess: load the model (not timed), then time one attnscope.atlas call, which is
what a user waits for: for Ray that includes ray.init, the actors' start and their own model loads, and ray.shutdown;
for every engine the induction scores and the summary the runner computes once at the end. Ray's start-up is not
timed on its own: the time to the first batch written (the runner's progress callback) stands for it, as it holds
ray.init, the actors' start and model loads and one batch's work (the in-process engine's first batch is that work
alone). The time to the last batch written is recorded too; what follows it is the same for every engine (induction
scores, summary) but for Ray's shutdown. No throughput is derived from the batches' arrival times: Ray Data hands the
last batches over together, which would flatter Ray on a short run. Rounds run the three engines in turn, so a slow
spell on a shared machine hits them alike; each figure is the median over rounds, with the fastest round beside it,
and ratios are to the in-process engine of the same run. The load average is recorded before every measurement: a run
whose torch threads cover every core can slow down many times over while other work holds the cores (6 documents
in-process: 4 s on a quiet machine here, 40-75 s beside another test run), so the real figures want a quiet machine.

    python benchmarks/bench_atlas.py                       # 48 documents of 256 tokens; writes results/atlas-cpu.json
    python benchmarks/bench_atlas.py --documents 6 --tokens 64 --rounds 1 --out /tmp/atlas-smoke.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINES = {"in-process": ("local", 1), "ray-1": ("ray", 1), "ray-2": ("ray", 2)}  # name -> (engine, workers)
TOKENS_TO_CHARS = 8  # characters per requested token when cutting documents: the manual averages about 4 per token


def write_corpus(folder: Path, n_documents: int, n_tokens: int) -> Path:
    """n_documents consecutive stretches of the built-in text, whole paragraphs each, as corpus.jsonl in `folder`."""
    from attnscope.analyses.collapse import builtin_text

    documents, current = [], []
    for paragraph in builtin_text().split("\n\n"):
        current.append(paragraph)
        if sum(map(len, current)) >= TOKENS_TO_CHARS * n_tokens:
            documents.append("\n\n".join(current))
            current = []
        if len(documents) == n_documents:
            break
    else:
        raise ValueError(f"the built-in text holds only {len(documents)} documents of {n_tokens} tokens; ask for "
                         "fewer documents or tokens.")
    path = folder / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in documents))
    return path


def child(name: str, corpus: str, out: str, model_name: str, n_tokens: int, shard_size: int) -> dict:
    """In a fresh process: one atlas run of engine `name` into `out`, timed from the call to its return."""
    import pandas as pd

    import attnscope

    engine, workers = ENGINES[name]
    model = attnscope.load(model_name)
    batches: list[float] = []
    start = time.perf_counter()
    attnscope.atlas(model, corpus, out, engine=engine, workers=workers, max_tokens=n_tokens, shard_size=shard_size,
                    progress=lambda fraction, message: batches.append(time.perf_counter()))
    seconds = time.perf_counter() - start
    shards = sorted(Path(out).glob("shard-*.parquet"))
    tokens = pd.concat([pd.read_parquet(path, columns=["id", "tokens"]) for path in shards]).groupby("id")["tokens"]
    return {"seconds": seconds, "documents": tokens.ngroups, "mean_tokens": float(tokens.first().mean()),
            "first_batch_seconds": batches[0] - start, "last_batch_seconds": batches[-1] - start,
            "docs_per_minute": 60 * tokens.ngroups / seconds}


def compare(corpus: Path, folder: Path, args) -> dict:
    """Rounds of the three engines in turn, each in a fresh process and out folder; medians and ratios."""
    runs: dict[str, list[dict]] = {name: [] for name in ENGINES}
    for round_index in range(args.rounds):
        for name in ENGINES:
            out = folder / f"{name}-{round_index}"
            load = os.getloadavg()[0]
            command = [sys.executable, __file__, "--child", name, str(corpus), str(out), args.model, str(args.tokens),
                       str(args.shard_size)]
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
            run = {**json.loads(done.stdout.strip().splitlines()[-1]), "load_average_before": load}
            if run["documents"] != args.documents:
                raise RuntimeError(f"{name} fingerprinted {run['documents']} of {args.documents} documents.")
            runs[name].append(run)
            print(f"round {round_index + 1}/{args.rounds} {name:11s}{run['seconds']:8.1f} s "
                  f"{run['docs_per_minute']:8.1f} docs/min  first batch {run['first_batch_seconds']:6.1f} s  "
                  f"(load {load:.1f})", flush=True)
    median = {name: {key: statistics.median(run[key] for run in runs[name]) for key in runs[name][0]}
              for name in ENGINES}
    fastest = {name: min(run["seconds"] for run in runs[name]) for name in ENGINES}
    base = median["in-process"]
    rows = []
    print(f"\n{args.model}, {args.documents} documents of {args.tokens} tokens (mean {base['mean_tokens']:.0f}), "
          f"shards of {args.shard_size}, {os.cpu_count()} cores, {args.rounds} round(s), medians:")
    print(f"{'':12s}{'seconds':>9s}{'docs/min':>10s}{'x in-proc':>11s}{'fastest':>9s}{'first batch':>13s}"
          f"{'last batch':>12s}")
    for name in ENGINES:
        result = median[name]
        row = {"engine": name, "workers": ENGINES[name][1], **result, "fastest_seconds": fastest[name],
               "docs_per_minute_vs_in_process": result["docs_per_minute"] / base["docs_per_minute"]}
        rows.append(row)
        print(f"{name:12s}{result['seconds']:8.1f}s{result['docs_per_minute']:10.1f}"
              f"{row['docs_per_minute_vs_in_process']:10.2f}x{fastest[name]:8.1f}s"
              f"{result['first_batch_seconds']:12.1f}s{result['last_batch_seconds']:11.1f}s")
    print()
    return {"rows": rows, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--documents", type=int, default=48)
    parser.add_argument("--tokens", type=int, default=256, help="tokens fingerprinted per document (max_tokens)")
    parser.add_argument("--shard-size", type=int, default=4, help="documents per batch and shard")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "atlas-cpu.json")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, corpus, out, model_name, n_tokens, shard_size = args.child
        print(json.dumps(child(name, corpus, out, model_name, int(n_tokens), int(shard_size))))
        return
    import ray
    import torch
    import transformers

    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
                   f"({platform.platform()}); load_average_before: the machine's load (this benchmark's own "
                   "children included) before each measurement",
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "ray": ray.__version__,
        "date": datetime.date.today().isoformat(),
        "settings": {"model": args.model, "documents": args.documents, "tokens": args.tokens,
                     "shard_size": args.shard_size, "rounds": args.rounds,
                     "engines": {name: {"engine": engine, "workers": workers}
                                 for name, (engine, workers) in ENGINES.items()}},
        "timing": "seconds: one attnscope.atlas call (Ray's start, the actors' model loads and Ray's shutdown "
                  "included, the driver's model load not); first_batch_seconds, last_batch_seconds: from the call to "
                  "the first and the last batch written (Ray's start-up is not timed on its own)",
    }
    with tempfile.TemporaryDirectory(prefix="bench-atlas-") as folder:
        corpus = write_corpus(Path(folder), args.documents, args.tokens)
        results.update(compare(corpus, Path(folder), args))
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
