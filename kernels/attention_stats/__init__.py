from kernels.attention_stats.fused import attention_stats
from kernels.attention_stats.naive import AttentionStats

__all__ = ["AttentionStats", "attention_stats"]
