from kernels.pooled_map.fused import REDUCTIONS, pooled_attention_map

__all__ = ["REDUCTIONS", "pooled_attention_map"]
