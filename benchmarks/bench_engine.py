"""Whole-model head statistics on the packaged SmolLM2: the streaming engine next to the plain forward and the old way.

Four measurements on the same tokens of the built-in document (attnscope.analyses.collapse.builtin_text):
    plain    the model's forward alone (the "attnscope" attention function with nothing active is SDPA), no KV cache
    engine   attnscope.engine.run: every layer's head statistics computed inside the forward, q/k/v dropped
    engine_eager  the same with ATTNSCOPE_CPU_COMPILE=off: the torch path without its compiled tile (no C++ compiler)
    capture  the old way: capture.run_with_capture (every layer's q/k/v) then maps.head_stats per layer
Each runs in a fresh subprocess: load the model, warm up on 128 tokens (which also compiles the CPU path's fused
tile, kernels.compiled; the warm-up's seconds are recorded), read the resident set (VmRSS) as the baseline, then time
one call. "Extra peak" is the process's peak RSS (ru_maxrss) minus that baseline: what the call
adds on top of the loaded model. Rounds run the four in turn, so a slow spell on a shared machine hits them alike;
each figure is the median over rounds (and, as contention only ever slows a run down, the fastest round too), and
ratios are against the plain forward of the same run. With --threads
the whole comparison repeats for each torch thread count: the engine's torch path is many operations per layer, each
a parallel region, so on a machine shared with other work it suffers more from waiting threads than SDPA's single
fused kernel does; one thread shows the work itself. The load average is recorded before every measurement.

    python benchmarks/bench_engine.py                     # 8192 tokens, 3 rounds; writes results/engine-cpu.json
    python benchmarks/bench_engine.py --threads 2 1 --rounds 2
    python benchmarks/bench_engine.py --tokens 2048 --rounds 1   # prints, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import fresh_process  # benchmarks/, beside this script
import torch

ROOT = Path(__file__).resolve().parents[1]
MEASUREMENTS = ("plain", "engine", "engine_eager", "capture")


def resident_bytes() -> int:
    """The process's current resident set (Linux /proc), not its peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def workload(name: str, model, ids):
    from attnscope import engine
    from attnscope.analyses import maps
    from attnscope.capture import run_with_capture

    if name == "plain":
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False).logits
    if name in ("engine", "engine_eager"):
        return engine.run(model, ids).head_stats
    capture = run_with_capture(model, ids)
    return {index: maps.head_stats(capture.layer(index)) for index in range(capture.n_layers)}


def child(name: str, n_tokens: int, threads: int) -> dict:
    """In a fresh process: seconds and extra peak RSS of one measurement."""
    from attnscope.analyses.collapse import builtin_text
    from attnscope.models import ModelSpec, load_model

    torch.set_num_threads(threads)
    loaded = load_model(ModelSpec("smollm2-135m"))
    ids = loaded.tokenizer(builtin_text(), return_tensors="pt").input_ids[:, :n_tokens]
    if ids.shape[1] < n_tokens:
        raise ValueError(f"the built-in text has only {ids.shape[1]} tokens; ask for at most that many.")
    # Warm-up: thread pools, first-call allocations, and the CPU path's torch.compile of its tile (kernels.compiled;
    # forced on here, as 128 tokens are below the size from which it compiles by itself). Its seconds are recorded:
    # every process pays them once, a few seconds with Inductor's on-disk cache warm.
    policy = "off" if name == "engine_eager" else os.environ.get("ATTNSCOPE_CPU_COMPILE", "auto")
    os.environ["ATTNSCOPE_CPU_COMPILE"] = "on" if policy == "auto" else policy
    start = time.perf_counter()
    workload(name, loaded.model, ids[:, :128])
    warm_up = time.perf_counter() - start
    os.environ["ATTNSCOPE_CPU_COMPILE"] = policy
    baseline = resident_bytes()
    start = time.perf_counter()
    workload(name, loaded.model, ids)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "warm_up_seconds": warm_up, "extra_peak_bytes": peak - baseline,
            "baseline_rss_bytes": baseline,
            "peak_rss_bytes": peak, "load_average_before": os.getloadavg()[0]}


def compare(n_tokens: int, rounds: int, threads: int) -> dict:
    """Rounds of the three measurements in turn, each in a fresh process; medians and ratios to the plain forward."""
    runs: dict[str, list[dict]] = {name: [] for name in MEASUREMENTS}
    for round_index in range(rounds):
        for name in MEASUREMENTS:
            command = [sys.executable, __file__, "--child", name, str(n_tokens), str(threads)]
            out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{threads} threads, round {round_index + 1}/{rounds} {name:12s} {runs[name][-1]['seconds']:7.1f} s  "
                  f"extra peak {runs[name][-1]['extra_peak_bytes'] / 2**20:7.0f} MiB  "
                  f"(load {runs[name][-1]['load_average_before']:.1f})", flush=True)
    median = {name: {key: statistics.median(run[key] for run in runs[name]) for key in runs[name][0]}
              for name in MEASUREMENTS}
    fastest = {name: min(run["seconds"] for run in runs[name]) for name in MEASUREMENTS}
    plain = median["plain"]
    rows = []
    print(f"\nSmolLM2-135M, {n_tokens} tokens, CPU, {threads} threads, {rounds} rounds:")
    print(f"{'':13s}{'median':>10s}{'x plain':>9s}{'fastest':>10s}{'x plain':>9s}{'extra peak':>14s}{'x plain':>9s}"
          f"{'warm-up':>10s}")
    for name in MEASUREMENTS:
        result = median[name]
        row = {"measurement": name, **result, "time_vs_plain": result["seconds"] / plain["seconds"],
               "fastest_seconds": fastest[name], "fastest_vs_plain": fastest[name] / fastest["plain"],
               "extra_peak_vs_plain": result["extra_peak_bytes"] / plain["extra_peak_bytes"]}
        rows.append(row)
        print(f"{name:13s}{result['seconds']:9.1f}s{row['time_vs_plain']:8.2f}x{fastest[name]:9.1f}s"
              f"{row['fastest_vs_plain']:8.2f}x{result['extra_peak_bytes'] / 2**20:10.0f} MiB"
              f"{row['extra_peak_vs_plain']:8.2f}x{result['warm_up_seconds']:9.1f}s")
    print()
    return {"threads": threads, "rows": rows, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8192)
    fresh_process.add_options(parser)
    args = parser.parse_args()
    if fresh_process.run_child(args, child):
        return
    results = fresh_process.record(args.rounds, tokens=args.tokens)
    out = ROOT / "benchmarks" / "results" / "engine-cpu.json"
    for threads in args.threads:
        results["comparisons"].append(compare(args.tokens, args.rounds, threads))
        if args.tokens == 8192:  # after every thread count, so a long run that is cut short keeps what it measured
            out.write_text(json.dumps(results, indent=1) + "\n")
            print(f"written to {out.relative_to(ROOT)}")
    if args.tokens != 8192:
        print(json.dumps(results, indent=1))

if __name__ == "__main__":
    main()
