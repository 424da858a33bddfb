"""Head-type scores on the packaged SmolLM2: what the detectors add to the streamed pass of attnscope.stats.

In one process, on the same tokens of the built-in document (attnscope.analyses.collapse.builtin_text), for each
length (default 2,048 and 8,192 tokens):
    engine     attnscope.engine.run alone: every layer's head statistics, the pass attnscope.stats ran before
    detectors  the same call with attnscope.analyses.detectors' on_layer hooks, as studies.maps.model_stats runs it:
               the previous-token score (fingerprint.offset_weights) and the grouped duplicate-token and induction
               scores, each hook timed on its own (perf_counter around every call)
After a warm-up on 128 tokens (thread pools; the CPU path's compiled tile, kernels.compiled, forced on as
bench_engine.py does), rounds alternate the two, so a slow spell on a machine shared with other work hits both alike.
Reported per length: the median and fastest seconds of each, their ratio, and the seconds spent inside the hooks
(median over rounds) as a share of the engine's median: the hooks' time is the detectors' own cost, the ratio of two
whole passes also carries the machine's noise. The load average is recorded before every measurement. Text long
enough to repeat its tokens makes no second pass (the repeated copy for induction), so none is timed here.

    python benchmarks/bench_detectors.py                        # 2048 and 8192 tokens, 2 rounds; writes
                                                                # results/detectors-cpu.json
    python benchmarks/bench_detectors.py --tokens 2048 --rounds 1   # prints, writes nothing
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOKENS = (2048, 8192)


class Timed:
    """An on_layer hook that adds up the seconds its inner hook takes."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def __call__(self, index, layer, stats) -> None:
        start = time.perf_counter()
        self.inner(index, layer, stats)
        self.seconds += time.perf_counter() - start


def one_pass(model, ids, with_detectors: bool) -> dict:
    from attnscope import engine
    from attnscope.analyses import detectors

    hooks = {}
    if with_detectors:
        hooks = {"previous_token": Timed(detectors.Collector(ids[0], detectors=(detectors.PREVIOUS_TOKEN,))),
                 "grouped": Timed(detectors.Collector(ids[0], detectors=detectors.GROUPED))}

    def on_layer(index, layer, stats) -> None:
        for hook in hooks.values():
            hook(index, layer, stats)

    load = os.getloadavg()[0]
    start = time.perf_counter()
    engine.run(model, ids, on_layer=on_layer if hooks else None)
    return {"seconds": time.perf_counter() - start, "load_average_before": load,
            **{f"{name}_hook_seconds": hook.seconds for name, hook in hooks.items()}}


def measure(model, ids, rounds: int) -> dict:
    n_tokens = ids.shape[1]
    runs = {"engine": [], "detectors": []}
    for round_index in range(rounds):
        for name in runs:
            runs[name].append(one_pass(model, ids, name == "detectors"))
            run = runs[name][-1]
            hooks = "".join(f"  {key.removesuffix('_seconds')} {value:6.2f} s" for key, value in run.items()
                            if key.endswith("hook_seconds"))
            print(f"{n_tokens} tokens, round {round_index + 1}/{rounds} {name:10s} {run['seconds']:7.1f} s{hooks}  "
                  f"(load {run['load_average_before']:.1f})", flush=True)
    median = {name: statistics.median(run["seconds"] for run in runs[name]) for name in runs}
    fastest = {name: min(run["seconds"] for run in runs[name]) for name in runs}
    hooks = {key: statistics.median(run[key] for run in runs["detectors"])
             for key in runs["detectors"][0] if key.endswith("hook_seconds")}
    summary = {"tokens": n_tokens, "median_seconds": median, "fastest_seconds": fastest,
               "median_ratio": median["detectors"] / median["engine"],
               "fastest_ratio": fastest["detectors"] / fastest["engine"],
               "hook_seconds": hooks, "hook_share_of_engine": sum(hooks.values()) / median["engine"], "runs": runs}
    print(f"\nSmolLM2-135M, {n_tokens} tokens, CPU, {torch.get_num_threads()} threads, {rounds} rounds: engine "
          f"{median['engine']:.1f} s, with detectors {median['detectors']:.1f} s (median "
          f"{summary['median_ratio']:.3f}x, fastest {summary['fastest_ratio']:.3f}x); inside the hooks "
          + ", ".join(f"{key.removesuffix('_hook_seconds')} {value:.2f} s" for key, value in hooks.items())
          + f" = {summary['hook_share_of_engine']:.1%} of the engine's time\n", flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=list(DEFAULT_TOKENS))
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import transformers

    from attnscope.analyses.collapse import builtin_text
    from attnscope.models import ModelSpec, load_model

    loaded = load_model(ModelSpec("smollm2-135m"))
    all_ids = loaded.tokenizer(builtin_text(), return_tensors="pt").input_ids
    if all_ids.shape[1] < max(args.tokens):
        raise ValueError(f"the built-in text has only {all_ids.shape[1]} tokens; ask for at most that many.")
    policy = os.environ.get("ATTNSCOPE_CPU_COMPILE", "auto")
    os.environ["ATTNSCOPE_CPU_COMPILE"] = "on" if policy == "auto" else policy
    for with_detectors in (False, True):
        one_pass(loaded.model, all_ids[:, :128], with_detectors)
    os.environ["ATTNSCOPE_CPU_COMPILE"] = policy
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
                   f"({platform.platform()}); shared with other work while measured, see load_average_before",
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "threads": torch.get_num_threads(), "date": datetime.date.today().isoformat(), "model": "smollm2-135m",
        "rounds": args.rounds, "lengths": [],
    }
    out = ROOT / "benchmarks" / "results" / "detectors-cpu.json"
    for n_tokens in args.tokens:
        results["lengths"].append(measure(loaded.model, all_ids[:, :n_tokens], args.rounds))
        if tuple(args.tokens) == DEFAULT_TOKENS:  # after every length, so a run cut short keeps what it measured
            out.write_text(json.dumps(results, indent=1) + "\n")
            print(f"written to {out.relative_to(ROOT)}")
    if tuple(args.tokens) != DEFAULT_TOKENS:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
