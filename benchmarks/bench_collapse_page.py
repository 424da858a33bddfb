"""The Context-collapse page's default sweep on the packaged SmolLM2: forward passes and analysis timed side by side.

What the page runs is attnscope.studies.collapse.run through the dashboard's Source; here the same run goes through a
Source that times each forward pass (run_ids) and each unit, so one run gives both numbers on the same machine at the
same moment. On a shared machine other work slows both, the analysis (many medium-sized operations) more than the
forward passes; the load average before and after is recorded. Default sweep: the built-in document (pydoc_data.topics),
3 consecutive windows of 2048 tokens, context lengths 32..2048, the last 8 query positions of each window, all
30 layers x 9 heads, value vectors; one forward pass per window, then every length's analysis from its prefixes.
The target is analysis time <= 2x the forward time.

Peak memory is the process's resident-set high-water mark (ru_maxrss) before and after, and the largest torch
allocation peak of one unit's analysis (all layers) at the longest length (profiler events).

    python benchmarks/bench_collapse_page.py            # writes benchmarks/results/collapse-page-cpu.json
    python benchmarks/bench_collapse_page.py --max-length 512 --windows 1 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import attnscope  # noqa: E402
from attnscope import settings as S  # noqa: E402
from attnscope.analyses import collapse as analysis  # noqa: E402
from attnscope.studies import collapse as study  # noqa: E402
from attnscope.studies.base import Source  # noqa: E402
from benchmarks.bench_kernels import peak_allocated_bytes  # noqa: E402


class TimedSource(Source):
    """The library's Source, with the seconds of every forward pass, and of each unit's analysis (the unit's time less
    the forward passes it ran) per window and per context length."""

    def __init__(self, model):
        super().__init__(model)
        self.forward_seconds: list[float] = []  # one per forward pass: per window for a decoder
        self.analysis_seconds = defaultdict(float)  # (window, context length) -> seconds

    def run_ids(self, ids, *, hidden_states=False):
        start = time.perf_counter()
        capture = super().run_ids(ids, hidden_states=hidden_states)
        self.forward_seconds.append(time.perf_counter() - start)
        return capture

    def unit(self, fn, *args):
        forward_before, start = sum(self.forward_seconds), time.perf_counter()
        value = super().unit(fn, *args)
        elapsed = time.perf_counter() - start - (sum(self.forward_seconds) - forward_before)
        self.analysis_seconds[args[0], args[1]] += elapsed
        return value

    def per_window(self) -> list[float]:
        windows = list(dict.fromkeys(window for window, _ in self.analysis_seconds))
        return [sum(v for (w, _), v in self.analysis_seconds.items() if w == window) for window in windows]

    def per_length(self, lengths) -> dict[str, float]:
        return {str(length): sum(v for (_, n), v in self.analysis_seconds.items() if n == length)
                for length in lengths}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-length", type=int, default=S.default("max_length"))
    parser.add_argument("--windows", type=int, default=S.default("windows"))
    parser.add_argument("--rows", type=int, default=S.default("rows"))
    parser.add_argument("--vectors", choices=analysis.VECTORS, default=S.default("vectors"))
    parser.add_argument("--no-write", action="store_true", help="print the results without writing the json")
    args = parser.parse_args()
    model = attnscope.load("smollm2-135m")
    source = TimedSource(model)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def progress(fraction, message):
        print(f"  {fraction:5.1%} {message} ({time.perf_counter() - start:.1f} s)", flush=True)

    load_before = os.getloadavg()
    start = time.perf_counter()
    result = study.run(source, None, max_length=args.max_length, windows=args.windows, rows=args.rows,
                       vectors=args.vectors, progress=progress)
    seconds = time.perf_counter() - start
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    load_after = os.getloadavg()
    forward, passes = sum(source.forward_seconds), len(source.forward_seconds)
    analysis_seconds = sum(source.analysis_seconds.values())
    per_window = [round(a / f, 2) for f, a in zip(source.forward_seconds, source.per_window())]

    window = source.tokens(analysis.builtin_text(), study.Cut(result.window_tokens)).ids
    capture = source.run_ids(window, hidden_states=args.vectors == "hidden")
    settings = analysis.Settings(max_length=result.window_tokens, windows=1, rows=args.rows, vectors=args.vectors)
    unit_peak = peak_allocated_bytes(lambda: analysis.analyse_capture(capture, result.lengths[-1], settings,
                                                                      temperature=True))
    last = result.summaries[-1]
    record = {
        "device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                  f"torch {torch.__version__}, {torch.get_num_threads()} threads)",
        "model": "smollm2-135m",
        "load_average_before_after": [load_before, load_after],  # the machine is shared: other work slows both
        "settings": {key: getattr(args, key) for key in ("max_length", "windows", "rows", "vectors")},
        "lengths": list(result.lengths),
        "seconds": seconds,
        "forward_seconds": forward,
        "forward_passes": passes,
        "analysis_seconds": analysis_seconds,
        "analysis_over_forward": analysis_seconds / forward,
        "analysis_seconds_per_length": source.per_length(result.lengths),
        "per_window": [{"forward_seconds": f, "analysis_seconds": a, "analysis_over_forward": a / f}
                       for f, a in zip(source.forward_seconds, source.per_window())],
        "process_peak_rss_bytes": rss_after,
        "process_peak_rss_before_bytes": rss_before,
        "one_unit_analysis_peak_allocated_bytes_at_max_length": unit_peak,
        "measured": {
            "mean_max_weight": [float(s.max_weight.mean()) for s in result.summaries],
            "mean_entropy": [float(s.entropy.mean()) for s in result.summaries],
            "mean_sink_mass": [float(s.sink_mass.mean()) for s in result.summaries],
            **{f"critical_n_{reading}_{definition}": list(getattr(result.critical[reading], definition))
               for reading in study.READINGS for definition in study.DEFINITIONS},
            "theorem1_violations": [s.bound_violations for s in result.summaries],
            "theorem1_checked": [s.bound_rows for s in result.summaries],
            "median_ratio_at_N16_max_length": float(np.median(last.ratio[..., last.n_values.index(16)]))
            if 16 in last.n_values else None,
        },
    }
    print(json.dumps(record, indent=2))
    print(f"\n{len(result.lengths)} lengths up to {result.lengths[-1]}, {result.windows} windows, {args.rows} rows, "
          f"{result.n_layers}x{result.n_heads} heads: {seconds:.1f} s in all; forward passes {forward:.1f} s, "
          f"analysis {analysis_seconds:.1f} s ({analysis_seconds / forward:.2f}x the forward time; per window "
          f"{per_window}); peak RSS "
          f"{rss_after / 2**30:.2f} GiB.")
    if not args.no_write:
        out = ROOT / "benchmarks" / "results" / "collapse-page-cpu.json"
        out.write_text(json.dumps(record, indent=2) + "\n")
        print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
