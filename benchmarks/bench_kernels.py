"""Speed and memory of attnscope's kernels next to what they replace, measured side by side in one run.

Baselines: torch SDPA forward (the floor: the attention output alone, flash/efficient kernels) and HF eager
attention with the probabilities materialised (transformers' eager_attention_forward, what output_attentions costs
per layer today). Shapes are SmolLM2-135M's attention: 9 query heads, 3 key/value heads, head_dim 64, one layer.

CPU: every op runs in a fresh subprocess; peak memory is the most bytes its torch tensors hold at once (profiler
allocation events), time the median of repeated calls after a warm-up. GPU (when CUDA is available):
triton.testing.do_bench with quantiles after a warm-up of every shape, torch.cuda.max_memory_allocated, TFLOP/s of
the QK^T (and PV) work.
Ratios are against SDPA measured in the same run. Results go to benchmarks/results/<device>.json.

    python benchmarks/bench_kernels.py            # CPU, T in 1024 2048 4096 8192
    python benchmarks/bench_kernels.py --quick    # CPU, T in 512 1024
    python benchmarks/bench_kernels.py --lengths 8192 --ops attention_stats   # one comparison
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64
OPS = ("sdpa", "eager_probs", "attention_stats", "attention_stats_topk8", "pooled_map_b64", "taylor_order10")


def make_inputs(n_tokens: int, dtype: torch.dtype, device: str):
    generator = torch.Generator(device="cpu").manual_seed(0)
    shape_q, shape_kv = (1, HEADS, n_tokens, HEAD_DIM), (1, KV_HEADS, n_tokens, HEAD_DIM)
    q, k, v = (torch.randn(s, generator=generator).to(device=device, dtype=dtype)
               for s in (shape_q, shape_kv, shape_kv))
    return q, k, v


def op_function(name: str, q, k, v, backend: str):
    from attnscope import kernels
    from transformers.models.llama.modeling_llama import eager_attention_forward

    class _Module(torch.nn.Module):  # what eager_attention_forward reads from a Llama attention layer
        num_key_value_groups = HEADS // KV_HEADS
        training = False

    n = q.shape[2]
    causal_mask = torch.full((n, n), float("-inf"), device=q.device, dtype=q.dtype).triu(1)[None, None]
    table = {
        "sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        "eager_probs": lambda: eager_attention_forward(_Module(), q, k, v, causal_mask, scaling=HEAD_DIM**-0.5),
        "attention_stats": lambda: kernels.attention_stats(q, k, backend=backend),
        "attention_stats_topk8": lambda: kernels.attention_stats(q, k, topk=8, backend=backend),
        "pooled_map_b64": lambda: kernels.pooled_attention_map(q, k, block=64, backend=backend),
        "taylor_order10": lambda: kernels.taylor_attention(q, k, v, order=10, backend=backend),
    }
    return table[name]


def peak_allocated_bytes(fn) -> int:
    """Peak of the bytes the call holds in torch CPU tensors at once (inputs excluded, outputs included).

    From the profiler's allocation events in time order (self memory of each op, so nothing is counted twice).
    Resident-set readings are no use here: after a warm-up, freed pages are reused without raising the high-water
    mark, and before it, library initialisation dominates.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    current = peak = 0
    for event in events:
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def cpu_child(name: str, n_tokens: int, repeats: int) -> dict:
    """Run in a fresh process: time and peak memory of one op."""
    q, k, v = make_inputs(n_tokens, torch.float32, "cpu")
    fn = op_function(name, q, k, v, backend="torch")
    fn()  # warm-up
    peak = peak_allocated_bytes(fn)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return {"median_s": times[len(times) // 2], "min_s": times[0], "peak_extra_bytes": peak}


def run_cpu(lengths, ops, repeats: int) -> list[dict]:
    rows = []
    for n_tokens in lengths:
        measured = {}
        for name in ops:
            if name == "eager_probs" and n_tokens > 8192:
                continue
            command = [sys.executable, __file__, "--child", name, str(n_tokens), str(repeats)]
            out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
            measured[name] = json.loads(out.stdout.strip().splitlines()[-1])
        base = measured["sdpa"]
        for name, result in measured.items():
            rows.append({
                "device": "cpu", "T": n_tokens, "op": name, **result,
                "time_vs_sdpa": result["median_s"] / base["median_s"],
                "memory_vs_sdpa": result["peak_extra_bytes"] / max(base["peak_extra_bytes"], 1),
            })
            print(f"cpu T={n_tokens:6d} {name:22s} {result['median_s'] * 1e3:9.1f} ms  "
                  f"x{rows[-1]['time_vs_sdpa']:5.2f} sdpa   peak +{result['peak_extra_bytes'] / 2**20:8.1f} MiB  "
                  f"x{rows[-1]['memory_vs_sdpa']:5.2f} sdpa",
                  flush=True)
    return rows


def run_gpu(lengths) -> list[dict]:
    import triton.testing

    rows = []
    device_name = torch.cuda.get_device_name()
    for n_tokens in lengths:
        q, k, v = make_inputs(n_tokens, torch.bfloat16, "cuda")
        flops_qk = 2 * HEADS * n_tokens * n_tokens * HEAD_DIM / 2  # causal half of QK^T
        measured = {}
        for name in OPS:
            if name == "eager_probs" and n_tokens > 16384:
                continue
            fn = op_function(name, q, k, v, backend="triton")
            fn()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base_memory = torch.cuda.memory_allocated()
            median, low, high = triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
            flops = flops_qk * (2 if name in ("sdpa", "eager_probs", "taylor_order10") else 1)
            measured[name] = {"median_ms": median, "p20_ms": low, "p80_ms": high,
                              "peak_extra_bytes": torch.cuda.max_memory_allocated() - base_memory,
                              "tflops": flops / (median * 1e-3) / 1e12}
        base = measured["sdpa"]
        for name, result in measured.items():
            rows.append({"device": device_name, "T": n_tokens, "op": name, **result,
                         "time_vs_sdpa": result["median_ms"] / base["median_ms"],
                         "memory_vs_sdpa": result["peak_extra_bytes"] / max(base["peak_extra_bytes"], 1)})
            print(f"{device_name} T={n_tokens:6d} {name:22s} {result['median_ms']:8.3f} ms  "
                  f"x{rows[-1]['time_vs_sdpa']:5.2f} sdpa  {result['tflops']:6.1f} TFLOP/s  "
                  f"peak +{result['peak_extra_bytes'] / 2**20:8.1f} MiB", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short lengths, for a smoke run")
    parser.add_argument("--lengths", type=int, nargs="+", help="CPU sequence lengths (default 1024 2048 4096 8192)")
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS), help="ops to run; sdpa is always run")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, n_tokens, repeats = args.child
        print(json.dumps(cpu_child(name, int(n_tokens), int(repeats))))
        return
    results = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "rows": []}
    lengths = args.lengths or ([512, 1024] if args.quick else [1024, 2048, 4096, 8192])
    ops = ["sdpa", *[name for name in args.ops if name != "sdpa"]]
    results["rows"] += run_cpu(lengths, ops, repeats=3)
    device = "cpu"
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name().replace(" ", "_")
        results["rows"] += run_gpu([4096, 16384] if not args.quick else [1024])
    partial = args.quick or args.lengths or len(ops) < len(OPS)
    out = ROOT / "benchmarks" / "results" / f"{device}{'-partial' if partial else ''}.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
