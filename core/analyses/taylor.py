"""Softmax vs its Taylor expansion on a captured run (paper A: Mongaras & Larson, arXiv 2507.23632).

exp(s) = sum_n s^n / n!, and each order is a linear RNN over Kronecker powers of q and k (../shared/THEORY.md). This
module measures, head by head on the captured q/k/v, how far the order-n truncation O_n is from the model's softmax
output O for each denominator, and why:

- `sweep_layer`: one pass per layer through kernels.taylor_sweep (CPU: chunked fp64 torch; CUDA: the Triton
  kernel). A head's error at order n is the Frobenius ratio ||O_n - O||_F / ||O||_F over its query rows (for "l2"
  against the L2-normalised rows of O). The pass also returns the logit histogram, the fraction of negative weights
  and of vanishing or negative sum denominators, and the mean size of each term |s^n / n!|.
- `order_needed`, `spread_over_heads`, `dominant_order`: what the page draws from the stacked layers (the
  layers are run and stacked by attnscope.studies.taylor, one unit per layer).
- `row_weights`: one query's truncated weights beside its softmax weights.
- `recurrent_check`: orders 0-2 run as RNNs with explicit d^n x d_v states, against the parallel form, and order 1
  against linear attention written with a feature map.
- `substitution_loss`: every attention layer replaced (zero-shot: the model was trained with softmax) by Taylor-n,
  by elu(x)+1 linear attention, or by exact softmax written out, through core.capture.substituting; next-token loss
  on the text (attnscope.logprobs, the one place attnscope computes it).

Real softmax-trained models have scaled logits far outside the range where the series converges (deep SmolLM2 heads
sit at -20 and below), so nothing here assumes convergence: errors of order one and above, NaN from a sum denominator
of exactly zero, and infinite losses are reported as they are. Layers with an explicit mask (padding, a sliding
window shorter than the text) or softcapped logits are outside what the kernels take and raise ValueError.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from attnscope import kernels
from attnscope.capture import LayerCapture, input_device, substituting
from attnscope.kernels.taylor import naive as taylor_naive
from attnscope.logprobs import next_token_loss

Clamp = float | tuple[float, float] | None  # a number: clamp logits from above (the paper's code: 5); a pair: both


@dataclass
class LayerSweep:
    """Every order 0..N of one layer, per head. O = N + 1 orders, H query heads, T query rows."""

    error: dict[str, np.ndarray]  # denominator -> (H, O) ||O_n - O||_F / ||O||_F over the head's rows (inf: not finite)
    target_norm: np.ndarray  # (H, T) ||O_t||: the scale an L2 denominator discards
    negative_weights: np.ndarray  # (H, O) fraction of visible truncated weights below zero
    nonpositive_denominator: np.ndarray  # (H, O) fraction of rows whose sum denominator is <= 0
    small_denominator: np.ndarray  # (H, O) ... below 1e-2 of the exact softmax denominator (includes <= 0)
    term_mean: np.ndarray  # (H, O) mean over visible logits of |s^n / n!|
    logit_min: np.ndarray  # (H,) smallest visible scaled logit, before any clamp
    logit_max: np.ndarray  # (H,)
    logit_hist: np.ndarray  # (H, bins) counts on kernels.taylor.logit_bin_edges()


@dataclass
class ModelSweep:
    """LayerSweeps stacked: every array gains a leading layer axis (L, H, ...)."""

    error: dict[str, np.ndarray]  # denominator -> (L, H, O)
    target_norm: np.ndarray  # (L, H, T)
    negative_weights: np.ndarray  # (L, H, O)
    nonpositive_denominator: np.ndarray  # (L, H, O)
    small_denominator: np.ndarray  # (L, H, O)
    term_mean: np.ndarray  # (L, H, O)
    logit_min: np.ndarray  # (L, H)
    logit_max: np.ndarray  # (L, H)
    logit_hist: np.ndarray  # (L, H, bins)

    @property
    def max_order(self) -> int:
        return self.term_mean.shape[-1] - 1

    @classmethod
    def stack(cls, layers: Sequence[LayerSweep]) -> ModelSweep:
        return cls(**{
            name: ({key: np.stack([getattr(layer, name)[key] for layer in layers]) for key in kernels.DENOMINATORS}
                   if name == "error" else np.stack([getattr(layer, name) for layer in layers]))
            for name in cls.__dataclass_fields__
        })


def _check_recurrent(layer: LayerCapture) -> None:
    """The RNN form needs (q.k)^n to factor into Kronecker powers over a growing prefix: no softcap (tanh does not
    factor), no sliding window or explicit mask (keys leave the state), no learned sink (a cell outside the state)."""
    what = ("an explicit mask" if layer.mask is not None else f"a sliding window of {layer.window} keys"
            if layer.window is not None else "soft-capped logits" if layer.softcap is not None
            else "learned sinks" if layer.sinks is not None else None)
    if what:
        raise ValueError(f"This layer has {what}: its Taylor terms do not factor into a growing RNN state, so the "
                         "recurrent form does not apply (the parallel form on the rest of the page does).")


def sweep_layer(layer: LayerCapture, *, max_order: int, clamp: Clamp = None, backend: str = "auto") -> LayerSweep:
    """All orders 0..max_order and all denominators for one captured layer (first sequence of the batch), under the
    layer's own rule: a sliding window, a softcap (the series of the capped logit), learned sinks, a padding mask."""
    sweep = kernels.taylor_sweep(layer.q[:1], layer.k[:1], layer.v[:1], max_order=max_order, clamp=clamp,
                                 scale=layer.scale, backend=backend, **layer.rule(first_sequence=True))
    sweep = sweep.to("cpu")  # (orders, heads, rows) summaries: small next to the layer
    target_norm = sweep.target_norm[0].double()  # (H, T)
    error = {}
    for name, rows in sweep.error.items():
        rows = rows[:, 0].double()  # (O, H, T) per-row relative errors
        weight = torch.ones_like(target_norm) if name == "l2" else target_norm
        frobenius = ((rows * weight) ** 2).sum(-1).sqrt() / (weight**2).sum(-1).sqrt()  # (O, H)
        error[name] = np.nan_to_num(frobenius.T.numpy(), nan=np.inf)
    return LayerSweep(
        error=error,
        target_norm=target_norm.float().numpy(),
        negative_weights=sweep.negative_weights[:, 0].T.numpy(),
        nonpositive_denominator=sweep.nonpositive_denominator[:, 0].T.numpy(),
        small_denominator=sweep.small_denominator[:, 0].T.numpy(),
        term_mean=sweep.term_mean[:, 0].T.numpy(),
        logit_min=sweep.logit_min[0].numpy(),
        logit_max=sweep.logit_max[0].numpy(),
        logit_hist=sweep.logit_hist[0].numpy(),
    )


def order_needed(error: np.ndarray, tolerance: float) -> np.ndarray:
    """Smallest order whose error is below `tolerance`, per head: error (..., O) -> (...) int, -1 where none is."""
    below = error < tolerance
    return np.where(below.any(-1), below.argmax(-1), -1)


def spread_over_heads(error: np.ndarray) -> dict[str, np.ndarray]:
    """Median and quartiles over every axis but the last: (..., O) -> {"median", "q25", "q75"} each (O,)."""
    flat = error.reshape(-1, error.shape[-1])
    return {name: np.quantile(flat, q, axis=0) for name, q in (("median", 0.5), ("q25", 0.25), ("q75", 0.75))}


def dominant_order(term_mean: np.ndarray) -> np.ndarray:
    """Per layer, the order whose term |s^n/n!| is largest on average over heads: (L, H, O) -> (L,) int."""
    return term_mean.mean(1).argmax(-1)


def logit_quantiles(hist: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """Quantiles of the scaled logits read from histograms (..., bins) at bin centres -> (..., len(quantiles))."""
    edges = kernels.taylor.logit_bin_edges().numpy()
    centres = (edges[:-1] + edges[1:]) / 2
    cumulative = np.cumsum(hist, -1) / np.maximum(hist.sum(-1, keepdims=True), 1)
    return np.stack([centres[np.argmax(cumulative >= q, axis=-1)] for q in quantiles], -1)


def exp_truncation_error(x: np.ndarray, order: int) -> np.ndarray:
    """|P_n(x) - e^x| / e^x with P_n the order-n Taylor polynomial of exp about 0, in fp64."""
    x = np.asarray(x, dtype=np.float64)
    poly = sum(x**n / math.factorial(n) for n in range(order + 1))
    return np.abs(poly * np.exp(-x) - 1.0)


@dataclass
class RowWeights:
    logits: np.ndarray  # (S,) scaled logits of the query row, before any clamp; NaN where hidden
    softmax: np.ndarray  # (S,) the model's attention weights; NaN where hidden
    truncated: np.ndarray  # (S,) P_n(s) / denominator; NaN where hidden
    denominator: float  # what P_n(s) was divided by


def row_weights(layer: LayerCapture, *, head: int, query: int, order: int, denominator: str,
                clamp: Clamp = None) -> RowWeights:
    """One query row in fp64: softmax weights and the order-`order` weights P_n(s) / denominator.

    "taylor" divides by sum P_n(s), "softmax" by sum exp(s), "none" by the number of visible keys; "l2" normalises
    the output, not the weights, so its weights are shown over sum exp(s) like "softmax".
    """
    scores = layer.logits(heads=[head], rows=slice(query, query + 1), dtype=torch.float64)[0, 0, 0].cpu()  # (S,)
    visible = torch.isfinite(scores)
    scores = scores.masked_fill(~visible, 0.0)  # hidden keys get no weight below; a finite stand-in keeps sums clean
    clamped = taylor_naive.clamp_logits(scores, clamp)
    weights = torch.where(visible, taylor_naive.taylor_weights(clamped, order), torch.zeros_like(scores))
    sink = None if layer.sinks is None else layer.sinks[head].double().cpu()  # a learned sink cell: no value
    if denominator == "taylor":
        norm = float(weights.sum() + (0 if sink is None else taylor_naive.taylor_weights(sink, order)))
    elif denominator == "none":
        norm = float(visible.sum())
    else:
        norm = float(torch.exp(clamped)[visible].sum() + (0 if sink is None else torch.exp(sink)))
    softmax = layer.probs([head], slice(query, query + 1))[0, 0, 0].double().cpu().numpy()  # the sink's share too
    hidden = (~visible).numpy()
    logits, truncated = scores.numpy().copy(), (weights / norm).numpy()
    for values in (logits, softmax, truncated):
        values[hidden] = np.nan
    return RowWeights(logits=logits, softmax=softmax, truncated=truncated, denominator=norm)


@dataclass
class RecurrentCheck:
    n_tokens: int  # query positions run through the recurrence (the first n_tokens of the text)
    state_entries: list[int]  # per order n = 0, 1, 2: d^n x d_v numbers in S^(n)
    max_difference: list[float]  # per order: max |recurrent - parallel| over rows and value dims
    output_scale: list[float]  # per order: max |parallel| (what the difference is relative to)
    linear_difference: float  # max |order 1 (recurrent) - linear attention with phi(x) = [1, sqrt(scale) x]|


def recurrent_check(layer: LayerCapture, *, head: int, n_tokens: int) -> RecurrentCheck:
    """Run orders 0-2 of one causal head as RNNs with explicit Kronecker-power states (fp64, Taylor denominator)."""
    _check_recurrent(layer)
    if not layer.causal:
        raise ValueError("The recurrent form runs left to right: it needs a causal (decoder) layer.")
    n_tokens = min(n_tokens, layer.q.shape[2], layer.k.shape[2])
    kv = layer.kv_head(head)
    q = layer.q[:1, head:head + 1, :n_tokens]
    k, v = layer.k[:1, kv:kv + 1, :n_tokens], layer.v[:1, kv:kv + 1, :n_tokens]
    head_dim, value_dim = q.shape[-1], v.shape[-1]
    differences, scales, recurrent_first = [], [], None
    for order in range(3):
        recurrent = taylor_naive.taylor_attention_recurrent(q, k, v, order=order, scale=layer.scale)
        parallel = taylor_naive.taylor_attention(q, k, v, order=order, scale=layer.scale)
        differences.append(float((recurrent - parallel).abs().max()))
        scales.append(float(parallel.abs().max()))
        if order == 1:
            recurrent_first = recurrent
    linear = taylor_naive.linear_attention(q, k, v, feature_map=taylor_naive.identity_plus_one, scale=layer.scale)
    return RecurrentCheck(
        n_tokens=n_tokens,
        state_entries=[head_dim**order * value_dim for order in range(3)],
        max_difference=differences,
        output_scale=scales,
        linear_difference=float((recurrent_first - linear).abs().max()),
    )


# ---- what the model loses: every layer's attention replaced, zero-shot --------------------------------------------


@dataclass(frozen=True)
class Substitute:
    """One replacement attention. kind: "model" (no replacement: the model's own attention), "softmax" (exact,
    written out: the control), "taylor" or "elu+1" (linear attention with a sum denominator)."""

    kind: str
    order: int = 0  # Taylor order (kind "taylor")
    denominator: str = "taylor"  # kind "taylor"
    clamp: Clamp = None  # kind "taylor"

    @property
    def label(self) -> str:
        if self.kind == "taylor":
            return f"Taylor n={self.order}"
        return {"model": "the model as trained", "softmax": "exact softmax (written out)",
                "elu+1": "linear attention, elu(x)+1"}[self.kind]


def _softmax_attention(layer: LayerCapture) -> torch.Tensor:
    """Exact softmax attention in fp32 applying the layer's mask (the substitution's control)."""
    values = layer.v.float().repeat_interleave(layer.groups, 1)
    return torch.matmul(layer.probs(), values)  # masked cells 0, the learned sink's share left out


def _elu_linear_attention(layer: LayerCapture) -> torch.Tensor:
    """phi(x) = elu(x) + 1 on q and k, sum denominator, in the parallel (masked matrix) form, fp32."""
    phi_q = torch.nn.functional.elu(layer.q.float()) + 1
    phi_k = (torch.nn.functional.elu(layer.k.float()) + 1).repeat_interleave(layer.groups, 1)
    weights = torch.matmul(phi_q, phi_k.transpose(-1, -2)) * layer.visible()  # rule or explicit mask
    values = layer.v.float().repeat_interleave(layer.groups, 1)
    return torch.matmul(weights, values) / weights.sum(-1, keepdim=True)


def attention_function(substitute: Substitute) -> Callable[[LayerCapture], torch.Tensor] | None:
    """The replacement core.capture.substituting runs in every layer: LayerCapture -> (B, Hq, T, Dv); None for
    kind "model"."""
    if substitute.kind == "model":
        return None
    if substitute.kind == "softmax":
        return _softmax_attention
    if substitute.kind == "elu+1":
        return _elu_linear_attention
    if substitute.kind != "taylor":
        raise ValueError(f"Unknown substitute {substitute.kind!r}; use 'model', 'softmax', 'taylor' or 'elu+1'.")

    def taylor(layer: LayerCapture) -> torch.Tensor:
        return kernels.taylor_attention(layer.q, layer.k, layer.v, order=substitute.order,
                                        denominator=substitute.denominator, clamp=substitute.clamp,
                                        scale=layer.scale, **layer.rule())

    return taylor


@torch.no_grad()
def substitution_loss(model: torch.nn.Module, input_ids: torch.Tensor, substitute: Substitute) -> float:
    """Mean next-token loss (nats) of `model` on `input_ids` (1, T) with every attention layer replaced.

    Non-finite when the replacement's output is (a sum denominator of zero gives inf / NaN): reported, not hidden.
    """
    if input_ids.shape[1] < 2:
        raise ValueError("Next-token loss needs at least two tokens.")
    attention = attention_function(substitute)
    with contextlib.nullcontext() if attention is None else substituting(attention):
        logits = model(input_ids=input_ids.to(input_device(model))).logits
    return next_token_loss(logits, input_ids)
