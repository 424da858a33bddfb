"""On paper, what "good" is on an H100 (issue 27): each kernel's work at a model's attention shape and the time it
cannot beat there, beside a FlashAttention forward of the same shape.

Work per call, counted from each kernel's source, for B sequences of T queries against T keys with Hq query heads and
Hkv key/value heads of dim D under the causal rule (T^2 / 2 cells per head; the diagonal tiles' extra half is left
out):
    tensor_flops  bf16 tensor-core FLOPs, 2 per multiply-add: q.k^T and p @ V
    fp32_flops    FLOPs on the FP32 (non-tensor) units: Taylor's weights @ V, kept in exact fp32 (an "ieee" tl.dot is
                  fused multiply-adds, no tensor cores), and its Horner steps
    exps          exponentials, on the special-function units
    alu_ops       the other per-cell instructions (masks, running max, sums, conversions), counted from the source
                  and rounded: the least certain figure, within about a third
    bytes         the fewest bytes through HBM: each input read once (K and V once per key/value head: the query
                  heads of a group reread them from L2), each output written once
The floor is the largest of work / rate over the H100 SXM5's rates (RATES: NVIDIA's H100 datasheet, dense, without
sparsity; the exp rate from FlashAttention-3, Shah et al. 2024, section 3.1: 3.9 TFLOPS of special functions against
989 of matmul), and `bound` names which. A kernel's expected ratio to FlashAttention is floor / flash floor; measured
kernels reach a fraction of their floor (FlashAttention-2 about 35-50% of the tensor peak on an H100, FlashAttention-3
about 75%), so benchmarks/gpu_check.py reports measured time / floor for each kernel it times.

    python benchmarks/h100_estimates.py      # the README's table: the 8B shape at 8k / 32k / 128k tokens
"""

from __future__ import annotations

import dataclasses

RATES = {  # H100 SXM5, per second
    "tensor_flops": 989.4e12,  # bf16 dense tensor cores
    "fp32_flops": 66.9e12,  # FP32 non-tensor
    "exps": 3.9e12,  # special-function unit (FlashAttention-3)
    "alu_ops": 33.5e12,  # one FP32-lane instruction per clock: 128 lanes x 132 SMs x 1.98 GHz
    "bytes": 3.35e12,  # HBM3
}
SHAPE_8B = dict(heads=32, kv_heads=8, head_dim=128, batch=1)  # Llama-3.1-8B's attention
TOKENS = (8192, 32768, 131072)
# Instructions per cell besides the dot products and exp, read off each kernel's key loop (see the module docstring):
ALU_PER_CELL = {
    "flash": 4,  # scale and subtract the max (one FMA), row max, row sum, bf16 conversion
    "attention_stats": 20,  # flash's, the causal mask, argmax, entropy (p s), distance (|i - j| p), their sums
    "attention_stats_no_v": 19,
    "pooled_pass": 9,  # mask, s - lse, the tile's sum, count and max
    "taylor": 8,  # mask, scale, denominator sum, per order a multiply and add (counted in fp32_flops) ...
    "topk_pass": 47,  # logits to ordered keys, prefix test, digit, 16 bucket compares and adds
    "topk_gather": 15,
}


@dataclasses.dataclass(frozen=True)
class Estimate:
    op: str
    tokens: int
    work: dict  # resource -> amount (RATES' keys)
    floor_s: float  # the largest work / rate
    bound: str  # the resource that sets it
    flash_floor_s: float  # FlashAttention's forward on the same shape

    @property
    def ratio_to_flash(self) -> float:
        return self.floor_s / self.flash_floor_s

    def seconds(self, resource: str) -> float:
        return self.work.get(resource, 0.0) / RATES[resource]


def _floor(work: dict) -> tuple[float, str]:
    times = {resource: amount / RATES[resource] for resource, amount in work.items()}
    bound = max(times, key=times.get)
    return times[bound], bound


def work(op: str, *, heads: int, kv_heads: int, head_dim: int, tokens: int, batch: int = 1, order: int = 10,
         passes: int = 8, tiles: int = 256) -> dict:
    """The work of one call of `op` (module docstring): "flash", "attention_stats" (with V, the engine's call),
    "attention_stats_no_v", "pooled_map" (both passes, tiles x tiles pooled cells), "taylor" (order `order`) or
    "attention_topk" (its top-k pass alone with `passes` radix passes, k = 256: at most 8, fewer once every row of a
    tile has its threshold)."""
    cells = batch * heads * tokens * tokens / 2  # visible (query, key) cells, causal
    qk = 2 * cells * head_dim  # FLOPs of q.k^T over the visible cells; p @ V costs the same
    q_bytes = batch * heads * tokens * head_dim * 2  # bf16
    kv_bytes = batch * kv_heads * tokens * head_dim * 2
    rows = batch * heads * tokens
    stats_bytes = rows * (5 * 4 + 8)  # lse, entropy, max weight, sink mass, mean distance (fp32), argmax (int64)
    if op == "flash":
        return {"tensor_flops": 2 * qk, "exps": cells, "alu_ops": ALU_PER_CELL["flash"] * cells,
                "bytes": 2 * q_bytes + 2 * kv_bytes}
    if op == "attention_stats":
        return {"tensor_flops": 2 * qk, "exps": cells, "alu_ops": ALU_PER_CELL["attention_stats"] * cells,
                "bytes": 2 * q_bytes + 2 * kv_bytes + stats_bytes}
    if op == "attention_stats_no_v":
        return {"tensor_flops": qk, "exps": cells, "alu_ops": ALU_PER_CELL["attention_stats_no_v"] * cells,
                "bytes": q_bytes + kv_bytes + stats_bytes}
    if op == "pooled_map":
        first = work("attention_stats_no_v", heads=heads, kv_heads=kv_heads, head_dim=head_dim, tokens=tokens,
                     batch=batch)
        return {"tensor_flops": first["tensor_flops"] + qk, "exps": first["exps"] + cells,
                "alu_ops": first["alu_ops"] + ALU_PER_CELL["pooled_pass"] * cells,
                "bytes": first["bytes"] + q_bytes + kv_bytes + rows * 4 + batch * heads * tiles * tiles * 4}
    if op == "taylor":
        return {"tensor_flops": qk, "fp32_flops": qk + 2 * order * cells, "alu_ops": ALU_PER_CELL["taylor"] * cells,
                "bytes": q_bytes + 2 * kv_bytes + rows * head_dim * 4}  # fp32 output
    if op == "attention_topk":
        return {"tensor_flops": (passes + 1) * qk, "exps": cells,
                "alu_ops": (passes * ALU_PER_CELL["topk_pass"] + ALU_PER_CELL["topk_gather"]) * cells,
                "bytes": q_bytes + kv_bytes + rows * 4 + rows * 256 * 12}  # lse in; k = 256 weights and indices out
    raise ValueError(f"no estimate for {op!r}")


def estimate(op: str, *, tokens: int, **shape) -> Estimate:
    """op's work and floor at `tokens` on `shape` (heads, kv_heads, head_dim, batch; default the 8B model's), with
    FlashAttention's floor on the same shape."""
    shape = {**SHAPE_8B, **shape}
    amounts = work(op, tokens=tokens, **shape)
    floor, bound = _floor(amounts)
    flash_floor, _ = _floor(work("flash", tokens=tokens, **shape))
    return Estimate(op=op, tokens=tokens, work=amounts, floor_s=floor, bound=bound, flash_floor_s=flash_floor)


OPS = ("flash", "attention_stats", "attention_stats_no_v", "pooled_map", "taylor", "attention_topk")
LABELS = {"flash": "FlashAttention forward", "attention_stats": "attention_stats with V",
          "attention_stats_no_v": "attention_stats without V", "pooled_map": "pooled map, 256 x 256 tiles (2 passes)",
          "taylor": "Taylor order 10, sum denominator", "attention_topk": "top-k pass alone, k = 256, 8 radix passes"}


def table() -> list[Estimate]:
    """Every op at the 8B shape and each of TOKENS."""
    return [estimate(op, tokens=tokens) for op in OPS for tokens in TOKENS]


def markdown(estimates: list[Estimate]) -> str:
    lines = ["| kernel | tokens | tensor TFLOP | FP32 TFLOP | G exp | G other ops | GB moved | at 989 TFLOP/s | "
             "at 3.35 TB/s | floor (bound) | vs flash |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in estimates:
        w = e.work
        lines.append(
            f"| {LABELS[e.op]} | {e.tokens // 1024}k | {w.get('tensor_flops', 0) / 1e12:.2f} | "
            f"{w.get('fp32_flops', 0) / 1e12:.2f} | {w.get('exps', 0) / 1e9:.1f} | {w.get('alu_ops', 0) / 1e9:.0f} | "
            f"{w['bytes'] / 1e9:.2f} | {e.seconds('tensor_flops') * 1e3:.2f} ms | {e.seconds('bytes') * 1e3:.3f} ms | "
            f"{e.floor_s * 1e3:.2f} ms ({e.bound.split('_')[0]}) | {e.ratio_to_flash:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(table()))
