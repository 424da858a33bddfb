"""Triton kernels with readable torch references: one folder per op, naive.py (fp64 reference) beside the kernel.

Every public function takes q (B, Hq, T, D) and k, v (B, Hkv, S, D) with Hq a multiple of Hkv, and a backend:
"auto" (Triton on CUDA, the chunked torch path elsewhere), "triton" (also under TRITON_INTERPRET=1) or "torch".
Triton itself is imported only when a Triton kernel runs, so everything else works where triton has no wheel.
"""

from attnscope.kernels.attention_stats import AttentionStats, attention_stats
from attnscope.kernels.contributions import contribution_scores
from attnscope.kernels.pooled_map import pool_tiles, pooled_attention_map
from attnscope.kernels.taylor import DENOMINATORS, MAX_ORDER, TaylorSweep, taylor_attention, taylor_error, taylor_sweep

__all__ = [
    "DENOMINATORS",
    "MAX_ORDER",
    "AttentionStats",
    "TaylorSweep",
    "attention_stats",
    "contribution_scores",
    "pool_tiles",
    "pooled_attention_map",
    "taylor_attention",
    "taylor_error",
    "taylor_sweep",
]
