"""Launch configurations of the Triton kernels: one table that every fused.py launcher reads when it launches.

Keyed by (kernel, arch family, head-dim bucket, precision, variant) -> LaunchConfig(block_m, block_n, num_warps,
num_stages). The values were chosen with benchmarks/gpu_compile.py, which compiles each kernel for sm_80 and sm_90a
on a machine without a GPU (Triton's own ptxas reports registers and spills, Triton the shared memory) and fails when
a configuration in this table spills a register or needs more shared memory per block than the architecture has
(sm_80: 163 KB, sm_90: 227 KB). The README's "Kernels" section shows the measured table and how to rerun it.

Keys:
    kernel     "attention_stats", "attention_topk" (its top-k pass), "pooled_map_packed" (pooled blocks that fit
               its dot, see below), "pooled_map" (larger blocks, in block_m x block_n sub-tiles),
               "taylor_attention", "contribution_l1" (block_m queries x block_n keys of one head)
    arch       "sm80" for compute capability 8.x, "sm90" for 9.0 and later. Under TRITON_INTERPRET=1 (no GPU) the
               "sm90" entry: the interpreter tests then run the configurations a Hopper GPU launches. Cards of
               capability 8.6 / 8.9 have 99 KB of shared memory per block, which every "sm80" entry also fits
               (gpu_compile.py checks it); later architectures take the "sm90" entry unchecked.
    head_dim   64, 128 or 256: the kernels' BLOCK_D, the head dim rounded up to a power of two (at least 16); head
               dims over 256 take the 256 entry (not compile-checked). ANY_HEAD_DIM (0) for the kernels in
               HEAD_DIMS_OF that loop over their width in fixed chunks: contribution_l1's d is d_model (384 for
               MiniLM, 576 SmolLM2, 640 Gemma 3 270M, 4096 at 8B), walked BLOCK_D at a time, so its registers and
               shared memory do not depend on it and one entry per arch and precision serves every width.
    precision  "16-bit" (bf16 and fp16 compile alike) or "fp32" (exact fp32 dot products, no tensor cores).
    variant    attention_stats: "with_v" (the output accumulator as well) or "no_v"; "" for the other kernels.

For pooled_map_packed, block_m x block_n is the packed dot: block_m // BP pooled rows against block_n // BP pooled
columns, BP the pooled block padded to a power of two; blocks with BP up to min(block_m, block_n) take it.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from attnscope.kernels.utils import is_interpreter

KERNELS = ("attention_stats", "attention_topk", "pooled_map", "pooled_map_packed", "taylor_attention",
           "contribution_l1")
ARCHS = ("sm80", "sm90")
HEAD_DIMS = (64, 128, 256)
ANY_HEAD_DIM = 0
HEAD_DIMS_OF = {"contribution_l1": (ANY_HEAD_DIM,)}  # the other kernels: HEAD_DIMS
PRECISIONS = ("16-bit", "fp32")
VARIANTS = {"attention_stats": ("with_v", "no_v")}  # the other kernels: ("",)
INTERPRETER_ARCH = "sm90"


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    block_m: int  # query rows per program
    block_n: int  # keys per step of the key loop
    num_warps: int  # warps per program
    num_stages: int  # software-pipelining depth of the key loop (Triton's num_stages)


_C = LaunchConfig
# (kernel, arch, head_dim, precision, variant): LaunchConfig(block_m, block_n, num_warps, num_stages). Registers per
# thread and shared memory of each entry are in the README ("Kernels") and benchmarks/results/gpu-compile.json.
# The rules behind them: 8 warps (at 4, the old default, the flash-style kernels spill from head dim 128 up); the
# largest tiles that spill in no variant, 128 query rows where they fit (twice the reuse of each key and value tile
# that 64 rows get), fewer keys per step or one stage at head dim 256; fp32 runs its dot products on the FMA units
# (exact fp32, no tensor cores), which hold whole operand tiles in registers, so its tiles are 2-8x smaller; every
# sm80 entry also fits the 99 KB of shared memory of capability 8.6 / 8.9 cards.
TABLE: dict[tuple[str, str, int, str, str], LaunchConfig] = {
    ("attention_stats", "sm90", 64, "16-bit", "with_v"):     _C(128, 64, 8, 2),
    ("attention_stats", "sm90", 128, "16-bit", "with_v"):    _C(128, 64, 8, 2),
    ("attention_stats", "sm90", 256, "16-bit", "with_v"):    _C(128, 32, 8, 2),
    ("attention_stats", "sm80", 64, "16-bit", "with_v"):     _C(128, 64, 8, 2),
    ("attention_stats", "sm80", 128, "16-bit", "with_v"):    _C(128, 64, 8, 2),
    ("attention_stats", "sm80", 256, "16-bit", "with_v"):    _C(64, 32, 8, 2),
    ("attention_stats", "sm90", 64, "16-bit", "no_v"):       _C(128, 64, 8, 2),
    ("attention_stats", "sm90", 128, "16-bit", "no_v"):      _C(128, 64, 8, 2),
    ("attention_stats", "sm90", 256, "16-bit", "no_v"):      _C(128, 64, 8, 2),
    ("attention_stats", "sm80", 64, "16-bit", "no_v"):       _C(128, 64, 8, 2),
    ("attention_stats", "sm80", 128, "16-bit", "no_v"):      _C(128, 64, 8, 2),
    ("attention_stats", "sm80", 256, "16-bit", "no_v"):      _C(128, 64, 8, 2),
    ("attention_stats", "sm90", 64, "fp32", "with_v"):       _C(64, 32, 8, 2),
    ("attention_stats", "sm90", 128, "fp32", "with_v"):      _C(32, 32, 8, 2),
    ("attention_stats", "sm90", 256, "fp32", "with_v"):      _C(32, 32, 8, 2),
    ("attention_stats", "sm80", 64, "fp32", "with_v"):       _C(64, 32, 8, 2),
    ("attention_stats", "sm80", 128, "fp32", "with_v"):      _C(32, 32, 8, 2),
    ("attention_stats", "sm80", 256, "fp32", "with_v"):      _C(16, 32, 8, 2),
    ("attention_stats", "sm90", 64, "fp32", "no_v"):         _C(64, 32, 8, 2),
    ("attention_stats", "sm90", 128, "fp32", "no_v"):        _C(64, 32, 8, 2),
    ("attention_stats", "sm90", 256, "fp32", "no_v"):        _C(64, 32, 8, 2),
    ("attention_stats", "sm80", 64, "fp32", "no_v"):         _C(64, 32, 8, 2),
    ("attention_stats", "sm80", 128, "fp32", "no_v"):        _C(64, 32, 8, 2),
    ("attention_stats", "sm80", 256, "fp32", "no_v"):        _C(64, 32, 8, 2),
    ("attention_topk", "sm90", 64, "16-bit", ""):            _C(64, 64, 8, 2),
    ("attention_topk", "sm90", 128, "16-bit", ""):           _C(64, 64, 8, 2),
    ("attention_topk", "sm90", 256, "16-bit", ""):           _C(64, 64, 8, 2),
    ("attention_topk", "sm80", 64, "16-bit", ""):            _C(64, 64, 8, 2),
    ("attention_topk", "sm80", 128, "16-bit", ""):           _C(64, 64, 8, 2),
    ("attention_topk", "sm80", 256, "16-bit", ""):           _C(64, 64, 8, 2),
    ("attention_topk", "sm90", 64, "fp32", ""):              _C(64, 32, 8, 2),
    ("attention_topk", "sm90", 128, "fp32", ""):             _C(64, 32, 8, 2),
    ("attention_topk", "sm90", 256, "fp32", ""):             _C(64, 32, 8, 2),
    ("attention_topk", "sm80", 64, "fp32", ""):              _C(64, 32, 8, 2),
    ("attention_topk", "sm80", 128, "fp32", ""):             _C(64, 32, 8, 2),
    ("attention_topk", "sm80", 256, "fp32", ""):             _C(32, 32, 8, 2),
    ("pooled_map", "sm90", 64, "16-bit", ""):                _C(128, 64, 8, 2),
    ("pooled_map", "sm90", 128, "16-bit", ""):               _C(128, 64, 8, 2),
    ("pooled_map", "sm90", 256, "16-bit", ""):               _C(128, 64, 8, 2),
    ("pooled_map", "sm80", 64, "16-bit", ""):                _C(128, 64, 8, 2),
    ("pooled_map", "sm80", 128, "16-bit", ""):               _C(128, 64, 8, 2),
    ("pooled_map", "sm80", 256, "16-bit", ""):               _C(64, 64, 8, 2),
    ("pooled_map", "sm90", 64, "fp32", ""):                  _C(64, 32, 8, 2),
    ("pooled_map", "sm90", 128, "fp32", ""):                 _C(64, 32, 8, 2),
    ("pooled_map", "sm90", 256, "fp32", ""):                 _C(64, 32, 8, 2),
    ("pooled_map", "sm80", 64, "fp32", ""):                  _C(64, 32, 8, 2),
    ("pooled_map", "sm80", 128, "fp32", ""):                 _C(64, 32, 8, 2),
    ("pooled_map", "sm80", 256, "fp32", ""):                 _C(64, 32, 8, 2),
    # Blocks up to min(block_m, block_n) take the packed kernel, larger ones pooled_map's: 64 for 16-bit inputs, 32 for
    # fp32 (a 64-lane fp32 dot spills on sm80).
    ("pooled_map_packed", "sm90", 64, "16-bit", ""):         _C(128, 64, 8, 2),
    ("pooled_map_packed", "sm90", 128, "16-bit", ""):        _C(128, 64, 8, 2),
    ("pooled_map_packed", "sm90", 256, "16-bit", ""):        _C(128, 64, 8, 2),
    ("pooled_map_packed", "sm80", 64, "16-bit", ""):         _C(64, 64, 8, 2),
    ("pooled_map_packed", "sm80", 128, "16-bit", ""):        _C(64, 64, 8, 2),
    ("pooled_map_packed", "sm80", 256, "16-bit", ""):        _C(64, 64, 8, 2),
    ("pooled_map_packed", "sm90", 64, "fp32", ""):           _C(32, 32, 8, 2),
    ("pooled_map_packed", "sm90", 128, "fp32", ""):          _C(32, 32, 8, 2),
    ("pooled_map_packed", "sm90", 256, "fp32", ""):          _C(32, 32, 8, 2),
    ("pooled_map_packed", "sm80", 64, "fp32", ""):           _C(32, 32, 8, 2),
    ("pooled_map_packed", "sm80", 128, "fp32", ""):          _C(32, 32, 8, 2),
    ("pooled_map_packed", "sm80", 256, "fp32", ""):          _C(32, 32, 8, 2),
    # The weights meet V in an fp32 dot product whatever the input dtype (they can be large and of either sign).
    ("taylor_attention", "sm90", 64, "16-bit", ""):          _C(64, 32, 8, 2),
    ("taylor_attention", "sm90", 128, "16-bit", ""):         _C(64, 32, 8, 2),
    ("taylor_attention", "sm90", 256, "16-bit", ""):         _C(64, 32, 8, 1),
    ("taylor_attention", "sm80", 64, "16-bit", ""):          _C(64, 32, 8, 2),
    ("taylor_attention", "sm80", 128, "16-bit", ""):         _C(64, 32, 8, 2),
    ("taylor_attention", "sm80", 256, "16-bit", ""):         _C(32, 32, 8, 2),
    ("taylor_attention", "sm90", 64, "fp32", ""):            _C(64, 32, 8, 2),
    ("taylor_attention", "sm90", 128, "fp32", ""):           _C(64, 32, 8, 2),
    ("taylor_attention", "sm90", 256, "fp32", ""):           _C(32, 32, 8, 2),
    ("taylor_attention", "sm80", 64, "fp32", ""):            _C(64, 32, 8, 2),
    ("taylor_attention", "sm80", 128, "fp32", ""):           _C(32, 32, 8, 2),
    ("taylor_attention", "sm80", 256, "fp32", ""):           _C(16, 32, 8, 2),
    # No dot product: a [BLOCK_D, block_m, block_n] block of fp32 elementwise work per step of d whatever the input
    # dtype (16-bit inputs load fewer bytes), 32 elements a thread; these tiles on 8 warps spill on sm90 (bf16).
    ("contribution_l1", "sm90", ANY_HEAD_DIM, "16-bit", ""): _C(32, 32, 4, 2),
    ("contribution_l1", "sm80", ANY_HEAD_DIM, "16-bit", ""): _C(32, 32, 4, 2),
    ("contribution_l1", "sm90", ANY_HEAD_DIM, "fp32", ""):   _C(32, 32, 4, 2),
    ("contribution_l1", "sm80", ANY_HEAD_DIM, "fp32", ""):   _C(32, 32, 4, 2),
}


def arch_family(device: torch.device) -> str:
    """"sm80" or "sm90" for a CUDA device (capability 9.0 and later: "sm90"); INTERPRETER_ARCH under the
    interpreter."""
    if device.type != "cuda":
        if is_interpreter():
            return INTERPRETER_ARCH
        raise ValueError(f"Triton kernels launch on CUDA devices (or under TRITON_INTERPRET=1); got {device}.")
    return _capability_family(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _capability_family(index: int) -> str:
    major, _ = torch.cuda.get_device_capability(index)
    return "sm90" if major >= 9 else "sm80"


def block_dim(size: int) -> int:
    """The block a head (or value) dim of `size` is padded to: the next power of two, at least 16 (tl.dot's least)."""
    return max(16, 1 << (size - 1).bit_length())


def head_dim_bucket(head_dim: int) -> int:
    """The table's head-dim key: block_dim(head_dim), at least 64 and at most 256."""
    return min(max(64, block_dim(head_dim)), 256)


def precision(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "16-bit"


def head_dims(kernel: str) -> tuple[int, ...]:
    """The head-dim keys of a kernel's table entries: (ANY_HEAD_DIM,) for the kernels in HEAD_DIMS_OF, else
    HEAD_DIMS."""
    return HEAD_DIMS_OF.get(kernel, HEAD_DIMS)


def table_key(kernel: str, *, arch: str, dtype: torch.dtype, head_dim: int | None = None,
              variant: str = "") -> tuple[str, str, int, str, str]:
    """The table's key for one launch on an arch family; head_dim is ignored (and may be None) for the kernels
    keyed by ANY_HEAD_DIM."""
    if head_dims(kernel) == (ANY_HEAD_DIM,):
        width = ANY_HEAD_DIM
    elif head_dim is None:
        raise ValueError(f"{kernel}'s launch configuration depends on the head dim; pass head_dim.")
    else:
        width = head_dim_bucket(head_dim)
    return (kernel, arch, width, precision(dtype), variant)


def launch_config(kernel: str, *, device: torch.device, dtype: torch.dtype, head_dim: int | None = None,
                  variant: str = "") -> LaunchConfig:
    """The table's configuration for one launch; ValueError naming the key when the table has none."""
    key = table_key(kernel, arch=arch_family(device), dtype=dtype, head_dim=head_dim, variant=variant)
    if key not in TABLE:
        raise ValueError(f"kernels/launch.py has no launch configuration for {key}; add one (and check it with "
                         "benchmarks/gpu_compile.py).")
    return TABLE[key]
