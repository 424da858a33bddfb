"""The Softmax-vs-Taylor page's default computation on the packaged SmolLM2, timed, with what it replaces beside it.

Default computation: 512 tokens, all 30 layers x 9 heads, orders 0-10, every denominator (core.analyses.taylor
.sweep_model: one kernels.taylor_sweep pass per layer). Side by side in the same run, on the same layers: the same
errors from separate kernels.taylor_error calls (one per denominator, orders 0-10 each, as a page without the sweep
would call them). Also timed, for the record: the capture itself, and the zero-shot loss section (model as trained,
exact softmax, elu+1 and Taylor n = 1..10 in every layer: 13 forward passes), which runs only when the user asks.

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
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.bench_kernels import peak_allocated_bytes  # noqa: E402
from attnscope.analyses import taylor  # noqa: E402
from attnscope.capture import run_with_capture  # noqa: E402
from attnscope.models import ModelSpec, load_model  # noqa: E402
from attnscope.tokens import tokenize  # noqa: E402
from attnscope.kernels import DENOMINATORS, taylor_error  # noqa: E402

MAX_ORDER = 10
COMPARED_LAYERS = 3  # layers on which the separate-calls baseline runs (it is slow); the ratio is per layer


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
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--skip-loss", action="store_true", help="leave out the 13 substituted forward passes")
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = load_model(ModelSpec("smollm2-135m"))
    tokens = tokenize(loaded.tokenizer, long_text(), max_tokens=args.tokens)
    ids = tokens.as_tensor()
    capture, capture_s = timed(lambda: run_with_capture(loaded.model, ids))
    layers = [capture.layer(i) for i in range(capture.n_layers)]

    per_layer_s = []

    def sweep_all():
        done = []
        for layer in layers:
            start = time.perf_counter()
            done.append(taylor.sweep_layer(layer, max_order=MAX_ORDER))
            per_layer_s.append(time.perf_counter() - start)
        return taylor.ModelSweep.stack(done)

    sweep, sweep_s = timed(sweep_all)
    sweep_peak = peak_allocated_bytes(lambda: taylor.sweep_layer(layers[-1], max_order=MAX_ORDER))

    def separate_calls(layer):
        return {name: taylor_error(layer.q, layer.k, layer.v, orders=range(MAX_ORDER + 1), denominator=name,
                                   causal=layer.causal, scale=layer.scale, backend="torch")
                for name in DENOMINATORS}

    compared = layers[:: max(1, len(layers) // COMPARED_LAYERS)][:COMPARED_LAYERS]
    _, separate_s = timed(lambda: [separate_calls(layer) for layer in compared])
    _, same_layers_sweep_s = timed(lambda: [taylor.sweep_layer(layer, max_order=MAX_ORDER) for layer in compared])

    loss = None
    if not args.skip_loss:
        substitutes = [taylor.Substitute("model"), taylor.Substitute("softmax"), taylor.Substitute("elu+1")] + [
            taylor.Substitute("taylor", order=n, denominator="l2") for n in range(1, MAX_ORDER + 1)]
        losses, loss_s = timed(lambda: {s.label: taylor.substitution_loss(loaded.model, ids, s) for s in substitutes})
        loss = {"seconds": loss_s, "forward_passes": len(substitutes), "losses_nats": losses}

    result = {
        "device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                  f"torch {torch.__version__}, {torch.get_num_threads()} threads)",
        "model": "smollm2-135m",
        "tokens": len(tokens),
        "layers_x_heads": [capture.n_layers, capture.n_heads],
        "orders": [0, MAX_ORDER],
        "capture_seconds": capture_s,
        "sweep_seconds": sweep_s,
        "sweep_seconds_per_layer_median": sorted(per_layer_s)[len(per_layer_s) // 2],
        "sweep_peak_bytes_one_layer": sweep_peak,
        "target_seconds": 20.0,
        "separate_calls_vs_sweep": {
            "layers": len(compared),
            "separate_taylor_error_seconds": separate_s,
            "sweep_seconds": same_layers_sweep_s,
            "ratio": separate_s / same_layers_sweep_s,
        },
        "median_error_at_order_10": {name: float(torch.tensor(sweep.error[name][..., -1]).median())
                                     for name in DENOMINATORS},
        "zero_shot_loss": loss,
    }
    print(json.dumps(result, indent=2))
    print(f"\nPage default ({len(tokens)} tokens, {capture.n_layers}x{capture.n_heads} heads, orders 0-{MAX_ORDER}, "
          f"all denominators): {sweep_s:.1f} s (target < 20 s); capture {capture_s:.1f} s.")
    print(f"Separate taylor_error calls vs the sweep on {len(compared)} layers: {separate_s:.2f} s vs "
          f"{same_layers_sweep_s:.2f} s = {separate_s / same_layers_sweep_s:.1f}x (sweep fp64, calls fp32).")
    device = "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name().replace(" ", "-").lower()
    out = ROOT / "benchmarks" / "results" / f"taylor-page-{device}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
