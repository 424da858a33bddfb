"""What real models add to the kernels' inputs (kernels/utils.py): sliding windows, learned sinks, softcaps, and the
shapes the tests of pooled_map and taylor run them on. Small shapes: the Triton kernels run in the interpreter."""

import torch

from tests.kernels.helpers import DEVICE, shape_id

# (B, Hq, Hkv, T, S, D, causal): one 64-row tile, a prefix in the cache (T < S), batch 2 with GQA 2:1 past one tile,
# and a bidirectional one (no window there: a window narrows the causal rule).
SHAPES = [
    (1, 3, 1, 63, 63, 64, True),
    (1, 2, 1, 30, 50, 64, True),
    (2, 2, 1, 70, 70, 16, True),
    (1, 3, 1, 40, 75, 64, False),
]

# name -> keyword arguments; "sinks" names a make_sinks kind. Windows of 1 key, a few keys, most of the sequence and
# more than every sequence above; sink logits far above and far below the real logits (about +-3 here).
EXTRAS = {
    "window1": dict(window=1),
    "window7": dict(window=7),
    "window40": dict(window=40),
    "window_over_S": dict(window=10_000),
    "sinks_high": dict(sinks="high"),
    "sinks_low": dict(sinks="low"),
    "softcap2": dict(softcap=2.0),
    "window1-sinks_high": dict(window=1, sinks="high"),
    "window7-sinks_mixed-softcap2": dict(window=7, sinks="mixed", softcap=2.0),
}


def make_sinks(kind: str, n_heads: int) -> torch.Tensor:
    """(Hq,) fp32 sink logits: "high" 4 .. 9 (the sink takes most of every row), "low" -30 .. -8 (almost nothing),
    "mixed" 6, -25, 0.5, 3 in turn (no order's polynomial of them is near zero, so no sum denominator is either)."""
    if kind == "high":
        sinks = torch.linspace(4.0, 9.0, n_heads)
    elif kind == "low":
        sinks = torch.linspace(-30.0, -8.0, n_heads)
    elif kind == "mixed":
        sinks = torch.tensor([6.0, -25.0, 0.5, 3.0])[torch.arange(n_heads) % 4]
    else:
        raise ValueError(f"unknown sink kind {kind!r}")
    return sinks.to(DEVICE)


def model_arguments(name: str, shape) -> dict:
    """EXTRAS[name] with its sink kind made into a tensor for this shape's heads."""
    arguments = dict(EXTRAS[name])
    if "sinks" in arguments:
        arguments["sinks"] = make_sinks(arguments["sinks"], shape[1])
    return arguments


def cases(names=tuple(EXTRAS), shapes=SHAPES, dtypes=("fp32",)):
    """(shape, dtype name, extras name) triples, windows only on causal shapes, and their ids."""
    triples = [(shape, dtype, name) for shape in shapes for dtype in dtypes for name in names
               if shape[-1] or "window" not in EXTRAS[name]]
    return triples, [f"{shape_id(shape, dtype)}-{name}" for shape, dtype, name in triples]


def taylor_rounding_scale(q, k, v, *, order: int, causal: bool, clamp=None, mask=None, softcap=None, window=None,
                          sinks=None) -> torch.Tensor:
    """(B, Hq, T, 1) fp64 scale of the rounding error of a "taylor"-denominator output, per unit roundoff.

    With W_j = sum_n |s_j|^n / n! (the size of weight j's terms), D = sum_j w_j + w_sink and o the output:
        (max_d sum_j W_j |v_jd| + max_d |o_d| (sum_j W_j + W_sink)) / |D|,
    the first-order bound on any fp32 evaluation of numerator / D, whatever its order of summation. Both kinds of
    cancellation show in it: within a weight (an alternating series: negative logits) and between weights (mixed
    signs: odd orders, a very negative sink). NaN or 0 for a row that sees no key.
    """
    from attnscope.kernels.taylor import naive

    scores = naive.model_scores(q, k, causal=causal, scale=None, mask=mask, softcap=softcap, window=window)
    visible = torch.isfinite(scores)
    clamped = naive.clamp_logits(scores, clamp)
    weights = torch.where(visible, naive.taylor_weights(clamped, order), 0.0)
    sizes = torch.where(visible, naive.taylor_weights(clamped.abs(), order), 0.0)
    total, size = weights.sum(-1, keepdim=True), sizes.sum(-1, keepdim=True)
    if sinks is not None:
        sink = naive.sink_column(sinks, torch.float64)
        total, size = total + naive.taylor_weights(sink, order), size + naive.taylor_weights(sink.abs(), order)
    values = v.double().repeat_interleave(q.shape[1] // k.shape[1], 1)
    output = torch.matmul(weights, values) / total
    numerator_size = torch.matmul(sizes, values.abs()).amax(-1, keepdim=True)
    return (numerator_size + output.abs().amax(-1, keepdim=True) * size) / total.abs()
