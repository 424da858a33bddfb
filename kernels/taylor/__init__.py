from kernels.taylor.fused import MAX_ORDER, taylor_attention, taylor_error
from kernels.taylor.naive import DENOMINATORS

__all__ = ["DENOMINATORS", "MAX_ORDER", "taylor_attention", "taylor_error"]
