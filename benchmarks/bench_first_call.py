"""A fresh process's first `attnscope.stats` call next to the model's forward: what every CLI command pays.

Each measurement runs in a fresh subprocess that loads the packaged SmolLM2 and makes the same call twice on the
built-in document (attnscope.analyses.collapse.builtin_text) cut to N tokens, timing the first call and the second
(warm) one:
    forward     the model's own forward (the "attnscope" attention function with nothing active is SDPA), no KV cache
    stats_cold  attnscope.stats(model, text, max_tokens=N) in a process that finds no compiled package on disk (and an
                empty Inductor cache): its first call builds the CPU tile's package, once per machine (kernels.compiled)
    stats       the same in a later process that finds the packages on disk
The policy is the default (ATTNSCOPE_CPU_COMPILE=auto): at 2,048 tokens only the next-token log-probabilities are
large enough to be compiled, from about 2,700 tokens the attention tile too. The stats runs use a temporary attnscope
cache folder that links to the real one's prepared models, so the user's compiled packages are neither read nor
touched; the cold run builds into it, the later rounds load from it. Rounds run forward and stats in turn (the cold
run once, before them), so a slow spell on a shared machine hits them alike. Each figure is the median over rounds,
also the fastest round (contention only ever slows a run down) and the median CPU seconds (all threads, and the C++
compiler's processes: waiting for a busy core does not add to them). Ratios are against the forward of the same run:
first call / first forward, first call / warm forward, warm call / warm forward. Each child also records whether it
imported Inductor's compiler (torch._inductor.compile_fx): not when the packages load from disk.

    python benchmarks/bench_first_call.py                     # 2048 and 4096 tokens, 3 rounds; writes results/
    python benchmarks/bench_first_call.py --threads 2 1       # the same at each thread count
    python benchmarks/bench_first_call.py --tokens 1024 --rounds 1   # prints, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fresh_process  # benchmarks/, beside this script
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOKENS = (2048, 4096)
MEASUREMENTS = ("forward", "stats")
FIELDS = ("first_seconds", "warm_seconds")


def child(name: str, n_tokens: int, threads: int) -> dict:
    """In a fresh process: the seconds of the first and the second call of one measurement."""
    import attnscope
    from attnscope.analyses.collapse import builtin_text

    torch.set_num_threads(threads)
    model = attnscope.load("smollm2-135m")
    text = builtin_text()
    ids = torch.tensor([model.tokenize(text, max_tokens=n_tokens).ids])
    if ids.shape[1] < n_tokens:
        raise ValueError(f"the built-in text has only {ids.shape[1]} tokens; ask for at most that many.")

    def call():
        if name == "forward":
            with torch.no_grad():
                return model.module(input_ids=ids, use_cache=False).logits
        return attnscope.stats(model, text, max_tokens=n_tokens, cache=False)

    seconds, cpu_seconds = [], []
    load = os.getloadavg()[0]
    for _ in range(2):
        start, cpu_start = time.perf_counter(), cpu_time()
        call()
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(cpu_time() - cpu_start)
    return {"first_seconds": seconds[0], "warm_seconds": seconds[1], "first_cpu_seconds": cpu_seconds[0],
            "warm_cpu_seconds": cpu_seconds[1], "compiler_imported": "torch._inductor.compile_fx" in sys.modules,
            "load_average_before": load}


def cpu_time() -> float:
    """CPU seconds of this process's threads and of the children it waited for (the C++ compiler)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def linked_cache(real: Path) -> Path:
    """A new attnscope cache folder whose prepared models are links into `real`, with no compiled packages."""
    folder = Path(tempfile.mkdtemp(prefix="attnscope-first-call-"))
    for entry in real.iterdir() if real.is_dir() else ():
        if entry.name not in ("compiled", "results"):
            (folder / entry.name).symlink_to(entry)
    return folder


def run_child(name: str, n_tokens: int, threads: int, env: dict) -> dict:
    command = [sys.executable, __file__, "--child", name, str(n_tokens), str(threads)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(n_tokens: int, rounds: int, threads: int, cache: Path, inductor: Path) -> dict:
    """The cold run, then rounds of forward and stats in turn, each in a fresh process; medians and ratios."""
    stats_env = {**os.environ, "ATTNSCOPE_CACHE": str(cache), "TORCHINDUCTOR_CACHE_DIR": str(inductor)}
    cold = run_child("stats", n_tokens, threads, stats_env)
    print(f"{n_tokens} tokens, cold   stats    first {cold['first_seconds']:7.1f} s  warm {cold['warm_seconds']:7.1f} s"
          f"  (load {cold['load_average_before']:.1f})", flush=True)
    runs: dict[str, list[dict]] = {name: [] for name in MEASUREMENTS}
    for round_index in range(rounds):
        for name in MEASUREMENTS:
            runs[name].append(run_child(name, n_tokens, threads, stats_env if name == "stats" else dict(os.environ)))
            run = runs[name][-1]
            compiler = "yes" if run["compiler_imported"] else "no"
            print(f"{n_tokens} tokens, round {round_index + 1}/{rounds} {name:8s} first {run['first_seconds']:7.1f} s  "
                  f"warm {run['warm_seconds']:7.1f} s  compiler imported: {compiler}  "
                  f"(load {run['load_average_before']:.1f})", flush=True)
    runs["stats_cold"] = [cold]
    summary = {
        "median": {name: {key: statistics.median(run[key] for run in runs[name]) for key in FIELDS} for name in runs},
        "fastest": {name: {key: min(run[key] for run in runs[name]) for key in FIELDS} for name in runs},
        "cpu": {name: {key: statistics.median(run[key.replace("_seconds", "_cpu_seconds")] for run in runs[name])
                       for key in FIELDS} for name in runs},
    }
    rows = []
    print(f"\nSmolLM2-135M, {n_tokens} tokens, CPU, {threads} threads, {rounds} rounds "
          "(stats_cold: one run); median and fastest wall-clock seconds, median CPU seconds (all threads):")
    print(f"{'':22s}{'first call':>12s}{'x first fwd':>13s}{'x warm fwd':>12s}{'warm call':>11s}{'x warm fwd':>12s}")
    for basis, figures in summary.items():
        forward = figures["forward"]
        for name in ("forward", "stats_cold", "stats"):
            result = figures[name]
            row = {"measurement": name, "basis": basis, **result,
                   "first_vs_first_forward": result["first_seconds"] / forward["first_seconds"],
                   "first_vs_warm_forward": result["first_seconds"] / forward["warm_seconds"],
                   "warm_vs_warm_forward": result["warm_seconds"] / forward["warm_seconds"]}
            rows.append(row)
            print(f"{name + ' (' + basis + ')':22s}{result['first_seconds']:10.1f} s"
                  f"{row['first_vs_first_forward']:12.2f}x{row['first_vs_warm_forward']:11.2f}x"
                  f"{result['warm_seconds']:9.1f} s{row['warm_vs_warm_forward']:11.2f}x")
    print()
    return {"tokens": n_tokens, "rows": rows, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=list(DEFAULT_TOKENS))
    fresh_process.add_options(parser)
    args = parser.parse_args()
    if fresh_process.run_child(args, child):
        return
    from attnscope.models import cache_dir

    results = fresh_process.record(args.rounds)
    default = tuple(args.tokens) == DEFAULT_TOKENS
    out = ROOT / "benchmarks" / "results" / "first-call-cpu.json"
    for threads in args.threads:
        for n_tokens in args.tokens:
            # a cold cache for each: the first process at a length and thread count builds its packages
            cache, inductor = linked_cache(cache_dir()), Path(tempfile.mkdtemp(prefix="attnscope-inductor-"))
            try:
                results["comparisons"].append({"threads": threads,
                                               **compare(n_tokens, args.rounds, threads, cache, inductor)})
            finally:
                shutil.rmtree(cache, ignore_errors=True)
                shutil.rmtree(inductor, ignore_errors=True)
            if default:  # after each, so a long run that is cut short keeps what it measured
                out.write_text(json.dumps(results, indent=1) + "\n")
                print(f"written to {out.relative_to(ROOT)}")
    if not default:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
