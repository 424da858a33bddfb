"""Triton kernels with readable torch references (one folder per op, naive.py beside each kernel).

Empty until the kernels issue: attention statistics, pooled maps and Taylor-order attention land here.
"""

__all__: list[str] = []
