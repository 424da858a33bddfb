"""The Context-collapse page's default sweep on the packaged SmolLM2, timed, with its peak memory.

Default sweep: the built-in document (pydoc_data.topics), 3 consecutive windows of 2048 tokens, context lengths
32..2048, the last 8 query positions of each window, all 30 layers x 9 heads, value vectors
(core.analyses.collapse.run_sweep). Peak memory is the process's resident-set high-water mark (ru_maxrss) before
and after, and the largest torch allocation peak of one layer's analysis at L = 2048 (profiler events).

    python benchmarks/bench_collapse_page.py            # writes benchmarks/results/collapse-page-cpu.json
    python benchmarks/bench_collapse_page.py --max-length 512 --windows 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.bench_kernels import peak_allocated_bytes  # noqa: E402
from attnscope.analyses import collapse  # noqa: E402
from attnscope.capture import run_with_capture  # noqa: E402
from attnscope.models import ModelSpec, load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--vectors", choices=collapse.VECTORS, default="values")
    args = parser.parse_args()
    settings = collapse.Settings(max_length=args.max_length, windows=args.windows, rows=args.rows,
                                 vectors=args.vectors)
    loaded = load_model(ModelSpec("smollm2-135m"))
    ids = loaded.tokenizer(collapse.builtin_text(), return_tensors="pt").input_ids
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    steps = []

    def progress(done, total, message):
        steps.append((time.perf_counter(), message))
        print(f"  {done}/{total} {message} ({steps[-1][0] - start:.1f} s)", flush=True)

    start = time.perf_counter()
    sweep = collapse.run_sweep(loaded.model, ids, settings, causal=True, progress=progress)
    seconds = time.perf_counter() - start
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    window = collapse.text_windows(ids, settings)[0]
    capture = run_with_capture(loaded.model, window)
    layer_peak = peak_allocated_bytes(lambda: collapse.analyse_layer(capture.layer(15), rows=settings.rows,
                                                                      temperature=True))
    last = sweep.summaries[-1]
    result = {
        "device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                  f"torch {torch.__version__}, {torch.get_num_threads()} threads)",
        "model": "smollm2-135m",
        "settings": vars(args),
        "lengths": sweep.lengths,
        "seconds": seconds,
        "process_peak_rss_bytes": rss_after,
        "process_peak_rss_before_bytes": rss_before,
        "one_layer_peak_allocated_bytes_at_max_length": layer_peak,
        "measured": {
            "mean_max_weight": [float(s.max_weight.mean()) for s in sweep.summaries],
            "mean_entropy": [float(s.entropy.mean()) for s in sweep.summaries],
            "mean_sink_mass": [float(s.sink_mass.mean()) for s in sweep.summaries],
            **{f"critical_n_{reading}_{definition}": sweep.critical(reading, definition)
               for reading in ("d_sum", "d_norm") for definition in ("first", "stable")},
            "theorem1_violations": [s.bound_violations for s in sweep.summaries],
            "theorem1_checked": [s.bound_rows for s in sweep.summaries],
            "median_ratio_at_N16_max_length": float(torch.tensor(last.ratio[..., last.n_values.index(16)]).median())
            if 16 in last.n_values else None,
        },
    }
    print(json.dumps(result, indent=2))
    print(f"\nDefault sweep ({len(sweep.lengths)} lengths up to {sweep.lengths[-1]}, {settings.windows} windows, "
          f"{settings.rows} rows, 30x9 heads): {seconds:.1f} s; peak RSS {rss_after / 2**30:.2f} GiB.")
    out = ROOT / "benchmarks" / "results" / "collapse-page-cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
