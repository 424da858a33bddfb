"""Input checks and backend choice shared by every kernel. Imports only torch: Triton is imported only when a Triton
kernel runs (kernels/tiles.py and each op's fused.py).

Layout everywhere: q (B, Hq, T, D); k and v (B, Hkv, S, D) with Hq a multiple of Hkv (grouped-query attention;
query head h reads key/value head h // (Hq // Hkv), never a repeated copy). Query row i sits at key position
i + S - T (bottom-right alignment, as with a KV cache); under the causal mask it sees keys 0 .. i + S - T.
A sliding window w narrows the causal rule: query row i (key position p = i + S - T) sees keys j with
p - w < j <= p, the w most recent ones (Mistral, Gemma 2/3 local layers; transformers' sliding_window_causal rule).
An explicit mask (bool, True = visible, broadcastable to (B, Hq, T, S)) replaces both rules: only padding needs one.
A logit softcap c maps logits s -> c * tanh(s / c) before the softmax (Gemma 2). Learned sinks (gpt-oss's s_aux) are
one logit per query head that joins every row's normaliser as an extra cell with no value vector: the weights on the
real keys sum to 1 - p_sink (THEORY.md, "Learned sinks"); the sink logit is used as given (no scale, no softcap).
"""

from __future__ import annotations

import contextlib
import math
import os

import torch

BACKENDS = ("auto", "triton", "torch")
POISON_INT = -7777  # fill for integer outputs while poisoning

_poison = False
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def is_interpreter() -> bool:
    """True when Triton kernels run in its CPU interpreter (TRITON_INTERPRET=1, read when @triton.jit runs)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device, *, unsupported: str | None = None) -> str:
    """"auto" -> "triton" on CUDA, "torch" elsewhere; "triton" on CPU only under the interpreter.

    `unsupported` names what the call asks for that its Triton kernel does not take (e.g. "explicit mask"):
    then "auto" is the torch path and "triton" raises ValueError.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    if unsupported:
        if backend == "triton":
            raise ValueError(f"The Triton kernels take no {unsupported} yet; use backend='torch' or 'auto' (which "
                             "runs the torch path for it).")
        return "torch"
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if backend == "triton" and device.type != "cuda" and not is_interpreter():
        raise ValueError(
            f"backend='triton' needs a CUDA tensor or TRITON_INTERPRET=1 (set before importing kernels); got {device}."
        )
    return backend


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None = None, *, causal: bool) -> None:
    """Raise ValueError naming the shapes when q/k/v do not fit the [B, H, T, D] GQA layout."""
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}" + ("" if v is None else f", v {tuple(v.shape)}")
    if q.ndim != 4 or k.ndim != 4 or (v is not None and v.ndim != 4):
        raise ValueError(f"q, k, v must be 4-D [B, H, T, D]; got {shapes}.")
    batch, n_heads, n_queries, head_dim = q.shape
    if k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"k must be [B, Hkv, S, D] with q's B and D; got {shapes}.")
    if k.shape[1] == 0 or n_heads % k.shape[1]:
        raise ValueError(f"the query heads must be a multiple of the key/value heads; got {shapes}.")
    if v is not None and (v.shape[:3] != k.shape[:3]):
        raise ValueError(f"v must be [B, Hkv, S, Dv] with k's B, Hkv and S; got {shapes}.")
    if causal and n_queries > k.shape[2]:
        raise ValueError(f"causal attention needs T <= S (query i sits at key i + S - T); got {shapes}.")
    if k.shape[2] == 0 or n_queries == 0:
        raise ValueError(f"empty sequence; got {shapes}.")
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if tensor is not None and tensor.dtype not in DTYPES:
            raise ValueError(f"{name} must be float32, float16 or bfloat16; got {tensor.dtype}.")
        if tensor is not None and tensor.device != q.device:
            raise ValueError(f"q, k, v must be on one device; {name} is on {tensor.device}, q on {q.device}.")


def check_mask(mask: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    """`mask` as a 4-D bool view (B or 1, Hq or 1, T, S); ValueError naming the shapes when it does not fit."""
    if mask is None:
        return None
    batch, n_heads, n_queries, _ = q.shape
    full = (batch, n_heads, n_queries, k.shape[2])
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = visible); got {mask.dtype}.")
    if mask.device != q.device:
        raise ValueError(f"mask must be on q's device {q.device}; got {mask.device}.")
    if mask.ndim > 4 or any(m not in (1, n) for m, n in zip(mask.shape[::-1], full[::-1])):
        raise ValueError(f"mask must broadcast to (B, Hq, T, S) = {full}; got {tuple(mask.shape)}.")
    mask = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))
    return mask.expand(mask.shape[0], mask.shape[1], n_queries, k.shape[2])


def check_softcap(softcap: float | None) -> float | None:
    if softcap is None:
        return None
    if not math.isfinite(softcap) or softcap <= 0:
        raise ValueError(f"softcap must be a positive number (or None for no softcap); got {softcap}.")
    return float(softcap)


def check_window(window: int | None, *, causal: bool, mask: torch.Tensor | None) -> int | None:
    """`window` as an int, or ValueError: a positive key count, and only with the causal rule and no explicit mask."""
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive number of keys (or None for no sliding window); got {window!r}.")
    if not causal or mask is not None:
        raise ValueError("A sliding window narrows the causal rule: pass causal=True and no explicit mask with it.")
    return window


def check_sinks(sinks: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor | None:
    """Learned sink logits as an fp32 (Hq,) tensor on q's device, or ValueError naming the shapes."""
    if sinks is None:
        return None
    if not isinstance(sinks, torch.Tensor) or sinks.shape != (q.shape[1],):
        shape = tuple(sinks.shape) if isinstance(sinks, torch.Tensor) else type(sinks).__name__
        raise ValueError(f"sinks must be one logit per query head, shape ({q.shape[1]},); got {shape}.")
    if not sinks.is_floating_point() or not bool(torch.isfinite(sinks).all()):
        raise ValueError("sinks must be finite floating-point logits.")
    if sinks.device != q.device:
        raise ValueError(f"sinks must be on q's device {q.device}; got {sinks.device}.")
    return sinks.float()


def check_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None = None, *, causal: bool, mask, softcap,
               window, sinks) -> dict:
    """Every kernel's check of q/k/v and the rule they run under: mask as a 4-D bool view, softcap as a float, window
    as an int, sinks as fp32 (Hq,), returned as keyword arguments; ValueError naming what does not fit."""
    check_qkv(q, k, v, causal=causal and mask is None)
    mask = check_mask(mask, q, k)
    return dict(mask=mask, softcap=check_softcap(softcap), window=check_window(window, causal=causal, mask=mask),
                sinks=check_sinks(sinks, q))


def unsupported_by_triton(rule: dict) -> str | None:
    """What a checked rule holds that the Triton kernels do not take (resolve_backend's `unsupported`)."""
    return "explicit mask" if rule["mask"] is not None else None


def default_scale(scale: float | None, head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def key_positions_visible(n_queries: int, n_keys: int, rows: slice, causal: bool, device,
                          window: int | None = None) -> torch.Tensor:
    """(t, S) bool: which keys the query rows `rows` see under the rule (bottom-right causal alignment, narrowed to
    the last `window` keys when given, or all)."""
    query_pos = torch.arange(rows.start, rows.stop, device=device) + (n_keys - n_queries)
    key_pos = torch.arange(n_keys, device=device)
    if not causal:
        return torch.ones(len(query_pos), n_keys, dtype=torch.bool, device=device)
    visible = key_pos[None, :] <= query_pos[:, None]
    if window is not None:
        visible &= key_pos[None, :] > query_pos[:, None] - window
    return visible


def visibility(n_queries: int, n_keys: int, *, causal: bool, mask: torch.Tensor | None, device,
               window: int | None = None) -> torch.Tensor:
    """(B or 1, Hq or 1, T, S) bool: the explicit mask when there is one, else the (windowed) causal or full rule."""
    if mask is not None:
        return mask
    return key_positions_visible(n_queries, n_keys, slice(0, n_queries), causal, device, window)[None, None]


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: exact fp32 products for fp32 inputs (TF32 would lose 13 mantissa bits)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def interpreter_dot_upcast(dtype: torch.dtype) -> bool:
    """True when tl.dot operands must be cast to fp32 first: Triton's interpreter multiplies the raw bit patterns of
    bfloat16 operands (triton-lang/triton#11584). Compiled kernels keep bf16 for the tensor cores."""
    return is_interpreter() and dtype == torch.bfloat16


def empty_output(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.empty for kernel outputs; filled with NaN (or POISON_INT) while tests poison, so a missed store shows."""
    out = torch.empty(*shape, dtype=dtype, device=device)
    if _poison:
        out.fill_(float("nan") if dtype.is_floating_point else POISON_INT)
    return out


@contextlib.contextmanager
def poisoned_outputs():
    """Within the block every kernel output starts as NaN / POISON_INT instead of uninitialised memory."""
    global _poison
    previous, _poison = _poison, True
    try:
        yield
    finally:
        _poison = previous
