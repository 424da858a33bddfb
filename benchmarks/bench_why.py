"""Why here at long contexts: information-flow contributions and ablation of every head, against the plain forward.

Each measurement runs in a fresh subprocess that loads the packaged SmolLM2, cuts the built-in document
(attnscope.analyses.collapse.builtin_text) to N tokens, resets the process's peak resident memory (VmHWM, through
/proc/self/clear_refs) once the model is loaded, and times one call:
    forward           the model's own forward (no KV cache, logits included)
    contributions_l1  attnscope.contributions(model, text, norm=1, threshold=0.01): every layer, query, key and head
    contributions_l2  the same with norm=2
    ablate            attnscope.ablate(model, text): every head, zero ablation, whole-text loss (at 1,024 tokens:
                      about 135 forward passes' work, which the ratio shows)
    ablate_widest     attnscope.ablate(model, text, heads=layer 0's): the widest pass ablation makes (every head of
                      layer 0 as a sequence of its own through every layer), so its peak memory is that of ablating
                      every head at that length; its time is the costliest of the 30 layers' passes
Extra memory is the peak resident memory during the call minus the resident memory before it (the model, the
tokenizer and the interpreter): what the call itself needs. Ratios are against the forward at the same length, all
measured in one run on this machine (nothing else running, see load_average_before).

    python benchmarks/bench_why.py                          # 1024, 2048, 4096 tokens; writes results/why-cpu.json
    python benchmarks/bench_why.py --tokens 512 --skip ablate   # prints, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import fresh_process  # benchmarks/, beside this script
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOKENS = (1024, 2048, 4096)
MEASUREMENTS = ("forward", "contributions_l1", "contributions_l2", "ablate", "ablate_widest")
MEMORY_GOAL_GIB = 4.0  # the bound on the extra memory of contributions at 4,096 tokens
ABLATE_UP_TO = 1024  # ablating every head is about H * L / 2 = 135 forwards of SmolLM2 (6 minutes at 1,024 tokens)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def child(name: str, n_tokens: int, threads: int) -> dict:
    """In a fresh process: seconds and extra peak memory of one call."""
    import attnscope
    from attnscope.analyses.collapse import builtin_text

    torch.set_num_threads(threads)
    model = attnscope.load("smollm2-135m")
    text = builtin_text()
    tokens = model.tokenize(text, max_tokens=n_tokens)
    if len(tokens) < n_tokens:
        raise ValueError(f"the built-in text has only {len(tokens)} tokens; ask for at most that many.")
    ids = tokens.as_tensor()
    calls = {
        "forward": lambda: model.module(input_ids=ids, use_cache=False).logits,
        "contributions_l1": lambda: attnscope.contributions(model, text, max_tokens=n_tokens, norm=1, threshold=0.01,
                                                            cache=False),
        "contributions_l2": lambda: attnscope.contributions(model, text, max_tokens=n_tokens, norm=2, threshold=0.01,
                                                            cache=False),
        "ablate": lambda: attnscope.ablate(model, text, max_tokens=n_tokens, cache=False),
        "ablate_widest": lambda: attnscope.ablate(model, text, max_tokens=n_tokens, cache=False,
                                                  heads=[(0, head) for head in range(model.n_heads)]),
    }
    load = os.getloadavg()[0]
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    with torch.no_grad():
        result = calls[name]()
    seconds = time.perf_counter() - start
    extra = (_status_kb("VmHWM") - before) * 1024
    record = {"seconds": seconds, "extra_bytes": extra, "load_average_before": load}
    if name.startswith("contributions"):
        record["edges"] = len(result.contribution)
    return record


def run_child(name: str, n_tokens: int, threads: int) -> dict:
    command = [sys.executable, __file__, "--child", name, str(n_tokens), str(threads)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=list(DEFAULT_TOKENS))
    parser.add_argument("--skip", nargs="*", default=[], choices=MEASUREMENTS)
    fresh_process.add_options(parser, rounds=1)
    args = parser.parse_args()
    if fresh_process.run_child(args, child):
        return
    threads = args.threads[0]
    results = fresh_process.record(args.rounds, threads=threads, memory_goal_gib=MEMORY_GOAL_GIB)
    default = tuple(args.tokens) == DEFAULT_TOKENS and not args.skip
    out = ROOT / "benchmarks" / "results" / "why-cpu.json"
    print(f"SmolLM2-135M on the CPU, {threads} threads; extra memory = peak resident memory during the call minus "
          "before it")
    print(f"{'tokens':>7s} {'measurement':18s}{'seconds':>10s}{'x forward':>11s}{'extra memory':>15s}{'edges':>12s}")
    for n_tokens in args.tokens:
        forward = None
        for name in MEASUREMENTS:
            if name in args.skip or (name == "ablate" and n_tokens > ABLATE_UP_TO):
                continue
            runs = [run_child(name, n_tokens, threads) for _ in range(args.rounds)]
            best = min(runs, key=lambda run: run["seconds"])
            forward = best if name == "forward" else forward
            ratio = best["seconds"] / forward["seconds"] if forward else float("nan")
            row = {"tokens": n_tokens, "measurement": name, **best, "vs_forward": ratio, "runs": runs}
            results["comparisons"].append(row)
            edges = f"{best['edges']:,}" if "edges" in best else ""
            print(f"{n_tokens:7d} {name:18s}{best['seconds']:10.1f}{ratio:10.1f}x"
                  f"{best['extra_bytes'] / 2**30:11.2f} GiB{edges:>12s}  (load {best['load_average_before']:.1f})",
                  flush=True)
            if default:  # after each, so a long run that is cut short keeps what it measured
                out.write_text(json.dumps(results, indent=1) + "\n")
    goal = [row for row in results["comparisons"] if row["measurement"].startswith("contributions")
            and row["tokens"] == 4096]
    for row in goal:
        verdict = "met" if row["extra_bytes"] / 2**30 < MEMORY_GOAL_GIB else "NOT met"
        print(f"goal: {row['measurement']} at 4,096 tokens in under {MEMORY_GOAL_GIB:g} GiB of extra memory: "
              f"{verdict} ({row['extra_bytes'] / 2**30:.2f} GiB)")
    if default:
        print(f"written to {out.relative_to(ROOT)}")
    else:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
