from kernels.taylor.fused import MAX_ORDER, taylor_attention, taylor_error, taylor_sweep
from kernels.taylor.naive import DENOMINATORS, LOGIT_BINS, LOGIT_RANGE, TaylorSweep, logit_bin_edges

__all__ = [
    "DENOMINATORS",
    "LOGIT_BINS",
    "LOGIT_RANGE",
    "MAX_ORDER",
    "TaylorSweep",
    "logit_bin_edges",
    "taylor_attention",
    "taylor_error",
    "taylor_sweep",
]
