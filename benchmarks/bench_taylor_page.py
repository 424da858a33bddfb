"""The Softmax-vs-Taylor page's computation on the packaged SmolLM2, timed as the page runs it, with what it replaces.

What the page runs is attnscope.studies.taylor.run through the dashboard's Source, which keeps the text's capture as a
resource and each unit's result in st.cache_data. Here the same run goes through a Source that does the same without
Streamlit (one capture per text, units memoised) and times each unit:

- capture: the sidebar's default cut of a long text (2048 tokens), computed once before the page's study runs;
- the page's first view: run() with its defaults (the first 512 tokens, all 30 layers x 9 heads, orders 0-10, every
  denominator: one kernels.taylor_sweep pass per layer; then the one-query probe and the recurrent check);
- "Measure the loss": run() again with losses=("l2",), the layer units read back from the memo as the page's cache
  does, so what is timed is the 13 forward passes (model as trained, exact softmax, elu+1, Taylor n = 1..10).

Side by side, on a few of the same layers: the same errors from separate kernels.taylor_error calls (one per
denominator, orders 0-10 each), as a page without the sweep would call them.

    python benchmarks/bench_taylor_page.py              # writes benchmarks/results/taylor-page-<device>.json
    python benchmarks/bench_taylor_page.py --tokens 1024
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import attnscope  # noqa: E402
from attnscope import settings as S  # noqa: E402
from attnscope.kernels import DENOMINATORS, taylor_error  # noqa: E402
from attnscope.studies import taylor as study  # noqa: E402
from attnscope.studies.base import Source  # noqa: E402
from benchmarks.bench_kernels import peak_allocated_bytes  # noqa: E402

MAX_ORDER = S.default("max_order")
COMPARED_LAYERS = 3  # layers on which the separate-calls baseline runs (it is slow); the ratio is per layer


class PageSource(Source):
    """The dashboard's Source without Streamlit: one capture per text and cut, each unit memoised, and timed."""

    def __init__(self, model):
        super().__init__(model)
        self.captures = {}
        self.memo = {}
        self.seconds = defaultdict(list)  # unit name -> seconds of each call that computed

    def capture(self, text, cut):
        if (text, cut) not in self.captures:
            self.captures[text, cut] = super().capture(text, cut)
        return self.captures[text, cut]

    def unit(self, fn, *args):
        if (fn, args) not in self.memo:
            start = time.perf_counter()
            self.memo[fn, args] = fn(self, *args)
            self.seconds[fn.__name__].append(time.perf_counter() - start)
        return self.memo[fn, args]


def long_text() -> str:
    """Text that ships with Python (the reference manual's topics), so the benchmark needs nothing else."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=S.default("n_tokens"), help="tokens the page analyses")
    parser.add_argument("--skip-loss", action="store_true", help="leave out the 13 substituted forward passes")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = attnscope.load("smollm2-135m")
    source, text = PageSource(model), long_text()
    cut = model.cut(S.default("max_tokens"))
    capture, capture_s = timed(lambda: source.capture(text, cut))
    settings = dict(max_tokens=cut.max_tokens, n_tokens=args.tokens, max_order=MAX_ORDER)

    page, page_s = timed(lambda: study.run(source, text, **settings))
    per_layer_s = source.seconds["layer_sweep"]
    n_tokens = page.n_tokens
    sweep_peak = peak_allocated_bytes(
        lambda: study.layer_sweep(source, text, cut, capture.n_layers - 1, n_tokens, MAX_ORDER, None))

    layers = [capture.layer(i).prefix(n_tokens) for i in range(capture.n_layers)]
    compared = list(range(0, len(layers), max(1, len(layers) // COMPARED_LAYERS)))[:COMPARED_LAYERS]

    def separate_calls(layer):
        return {name: taylor_error(layer.q, layer.k, layer.v, orders=range(MAX_ORDER + 1), denominator=name,
                                   causal=layer.causal, scale=layer.scale, backend="torch")
                for name in DENOMINATORS}

    _, separate_s = timed(lambda: [separate_calls(layers[i]) for i in compared])
    same_layers_sweep_s = sum(per_layer_s[i] for i in compared)

    loss = None
    if not args.skip_loss:
        with_loss, loss_s = timed(lambda: study.run(source, text, **settings, losses=("l2",)))
        losses = {**with_loss.losses.references, **{f"Taylor n={n}": float(value) for n, value in
                                                    zip(with_loss.losses.orders, with_loss.losses.taylor[0])}}
        loss = {"seconds": loss_s, "forward_passes": len(source.seconds["loss"]), "losses_nats": losses}

    result = {
        "device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                  f"torch {torch.__version__}, {torch.get_num_threads()} threads)",
        "model": "smollm2-135m",
        "captured_tokens": len(source.tokens(text, cut)),
        "tokens": n_tokens,
        "layers_x_heads": [capture.n_layers, capture.n_heads],
        "orders": [0, MAX_ORDER],
        "capture_seconds": capture_s,
        "page_run_seconds": page_s,
        "sweep_seconds": sum(per_layer_s),
        "sweep_seconds_per_layer_median": sorted(per_layer_s)[len(per_layer_s) // 2],
        "probe_seconds": {"query_weights": sum(source.seconds["query_weights"]),
                          "recurrent": sum(source.seconds["recurrent"])},
        "sweep_peak_bytes_one_layer": sweep_peak,
        "target_seconds": 20.0,
        "separate_calls_vs_sweep": {
            "layers": len(compared),
            "separate_taylor_error_seconds": separate_s,
            "sweep_seconds": same_layers_sweep_s,
            "ratio": separate_s / same_layers_sweep_s,
        },
        "median_error_at_order_10": {name: float(torch.tensor(page.sweep.error[name][..., -1]).median())
                                     for name in DENOMINATORS},
        "zero_shot_loss": loss,
    }
    print(json.dumps(result, indent=2))
    print(f"\nPage's study ({n_tokens} tokens, {capture.n_layers}x{capture.n_heads} heads, orders 0-{MAX_ORDER}, "
          f"all denominators, probes): {page_s:.1f} s (target < 20 s), of which the sweep {sum(per_layer_s):.1f} s; "
          f"capture of {result['captured_tokens']} tokens {capture_s:.1f} s.")
    print(f"Separate taylor_error calls vs the sweep on {len(compared)} layers: {separate_s:.2f} s vs "
          f"{same_layers_sweep_s:.2f} s = {separate_s / same_layers_sweep_s:.1f}x (sweep fp64, calls fp32).")
    device = "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name().replace(" ", "-").lower()
    out = ROOT / "benchmarks" / "results" / f"taylor-page-{device}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
