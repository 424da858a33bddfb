"""Readable fp64 references for Taylor-order attention (Mongaras & Larson, arXiv 2507.23632; ../shared/THEORY.md).

exp(s) = sum_n s^n / n!. Truncating at order N gives weights w(s) = sum_{n<=N} s^n / n! and the attention
    O_N = (sum_j w(s_ij) v_j) / denominator_i
with denominator "taylor" (sum_j w(s_ij)), "softmax" (sum_j exp(s_ij), exact), "l2" (the numerator's L2 norm over the
value dimension) or "none" (the number of visible keys). Odd orders give negative weights for negative logits and
the sum denominator can reach zero or flip sign: nothing here clamps that away. An optional clamp of the scaled
logits (a number: from above only, as the paper's code does at 5; a pair: both sides) applies before the series and
before the exact exp.

What real models add (kernels/utils.py; THEORY.md, "Beyond the papers"):
- softcap c: s -> c tanh(s / c) first, so the series is taken of the capped logit (then the clamp, if any);
- sliding window w: the visible keys are the w most recent ones; an explicit mask replaces the rule;
- learned sinks (Hq,): one more cell of each row's normaliser with no value vector, used as given (no scale, no
  softcap, no clamp). "taylor" adds its order-N polynomial w(sink_h) to the sum, "softmax" the exact exp(sink_h);
  "l2" and "none" leave it out (a positive per-row scale cancels in "l2"; "none" counts keys). The target, exact
  softmax attention, includes the sink: p_j = exp(s_j) / (sum_k exp(s_k) + exp(sink_h)), so its rows are
  (1 - p_sink) times the sink-free output.
A row that sees no key (explicit masks only) has a zero numerator: its output is 0 / 0 = NaN except where a sink
gives the denominator a term, and its relative errors are NaN (its target is 0).

Because (q.k)^n = (q^{(x)n}).(k^{(x)n}) (Kronecker powers), each order is a linear RNN with state
S_t^(n) = S_{t-1}^(n) + k_t^{(x)n} v_t^T (d^n x d_v entries) and z_t^(n) = z_{t-1}^(n) + k_t^{(x)n};
`taylor_attention_recurrent` runs that form for orders 0-2, and `linear_attention` is the n = 1 case written with a
feature map.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from attnscope.kernels.attention_stats.naive import masked_scores
from attnscope.kernels.pooled_map.naive import attention_probs
from attnscope.kernels.utils import default_scale, visibility

DENOMINATORS = ("taylor", "softmax", "l2", "none")


def clamp_logits(scores: torch.Tensor, clamp: float | tuple[float, float] | None) -> torch.Tensor:
    if clamp is None:
        return scores
    if isinstance(clamp, (tuple, list)):
        low, high = clamp
        return scores.clamp(min=low, max=high)
    return scores.clamp(max=clamp)


def taylor_weights(scores: torch.Tensor, order: int) -> torch.Tensor:
    """sum_{n=0..order} s^n / n!, term by term."""
    return sum(scores**n / math.factorial(n) for n in range(order + 1))


def model_scores(q, k, *, causal: bool, scale: float | None, mask: torch.Tensor | None = None,
                 softcap: float | None = None, window: int | None = None,
                 dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(B, Hq, T, S) scaled (softcapped) logits in `dtype`, -inf where the rule, its window or the mask hides a key."""
    if window is not None:
        mask = visibility(q.shape[2], k.shape[2], causal=causal, mask=None, device=q.device, window=window)
    return masked_scores(q, k, causal=causal, scale=scale, mask=mask, softcap=softcap, dtype=dtype)


def sink_column(sinks: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(1, Hq, 1, 1) sink logits in `dtype`, broadcastable to per-row quantities (B, Hq, T, 1); None without."""
    return None if sinks is None else sinks.to(dtype).view(1, -1, 1, 1)


def taylor_attention(q, k, v, *, order: int, denominator: str = "taylor", clamp=None, causal: bool = True,
                     scale: float | None = None, mask: torch.Tensor | None = None, softcap: float | None = None,
                     window: int | None = None, sinks: torch.Tensor | None = None,
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(B, Hq, T, Dv) Taylor-order attention from the full (T, S) matrix, computed in `dtype`."""
    scores = model_scores(q, k, causal=causal, scale=scale, mask=mask, softcap=softcap, window=window, dtype=dtype)
    visible = torch.isfinite(scores)  # before the clamp, which would make hidden logits finite
    scores = clamp_logits(scores, clamp)
    weights = torch.where(visible, taylor_weights(scores, order), torch.zeros_like(scores))
    values = v.to(dtype).repeat_interleave(q.shape[1] // k.shape[1], 1)
    numerator = torch.matmul(weights, values)
    sink = sink_column(sinks, dtype)
    if denominator == "taylor":
        total = weights.sum(-1, keepdim=True)
        return numerator / (total if sink is None else total + taylor_weights(sink, order))
    if denominator == "softmax":
        total = torch.where(visible, torch.exp(scores), torch.zeros_like(scores)).sum(-1, keepdim=True)
        return numerator / (total if sink is None else total + torch.exp(sink))
    if denominator == "l2":
        return numerator / numerator.norm(dim=-1, keepdim=True)
    if denominator == "none":
        return numerator / visible.sum(-1, keepdim=True)
    raise ValueError(f"denominator must be one of {DENOMINATORS}; got {denominator!r}.")


def softmax_attention(q, k, v, *, causal: bool = True, scale: float | None = None, mask: torch.Tensor | None = None,
                      softcap: float | None = None, window: int | None = None,
                      sinks: torch.Tensor | None = None) -> torch.Tensor:
    """(B, Hq, T, Dv) fp64 exact softmax attention (with the sink in the normaliser; 0 for a row that sees nothing)."""
    probs = attention_probs(q, k, causal=causal, scale=scale, mask=mask, softcap=softcap, window=window, sinks=sinks)
    return torch.matmul(probs, v.double().repeat_interleave(q.shape[1] // k.shape[1], 1))


def taylor_error(q, k, v, *, orders, denominator: str = "taylor", clamp=None, causal: bool = True,
                 scale: float | None = None, mask: torch.Tensor | None = None, softcap: float | None = None,
                 window: int | None = None, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """(len(orders), B, Hq, T) ||O_n - O_softmax|| / ||O_softmax|| per row; for "l2" the target is the
    L2-normalised softmax output (a positive per-row scale cancels in the normalisation)."""
    model = dict(causal=causal, scale=scale, mask=mask, softcap=softcap, window=window, sinks=sinks)
    target = softmax_attention(q, k, v, **model)
    if denominator == "l2":
        target = target / target.norm(dim=-1, keepdim=True)
    errors = [
        (taylor_attention(q, k, v, order=n, denominator=denominator, clamp=clamp, **model) - target)
        .norm(dim=-1) / target.norm(dim=-1)
        for n in orders
    ]
    return torch.stack(errors).float()


def kronecker_power(x: torch.Tensor, n: int) -> torch.Tensor:
    """x^{(x)n} of a vector x (d,): a (d^n,) vector; n = 0 gives [1]."""
    out = torch.ones(1, dtype=x.dtype, device=x.device)
    for _ in range(n):
        out = torch.outer(out, x).flatten()
    return out


def taylor_attention_recurrent(q, k, v, *, order: int, denominator: str = "taylor",
                               scale: float | None = None) -> torch.Tensor:
    """Causal Taylor attention (T == S) as a sum of order+1 linear RNNs with explicit Kronecker-power states.

    State of order n: S^(n) (d^n, d_v) and z^(n) (d^n,); at step t both absorb k_t^{(x)n}; the readout is
    N_t = sum_n q_t^{(x)n} . S_t^(n) * scale^n / n!, G_t likewise with z. Orders 0-2 only: the state of order n has
    d^n x d_v entries, which is why larger orders are computed in the parallel form.
    """
    if order > 2:
        raise ValueError(f"the recurrent form is for orders 0-2 (state d^n x d_v); got order {order}.")
    if denominator not in ("taylor", "none"):
        raise ValueError(f"the recurrent form carries the 'taylor' or 'none' denominator; got {denominator!r}.")
    scale = default_scale(scale, q.shape[-1])
    groups = q.shape[1] // k.shape[1]
    batch, n_heads, n_steps, head_dim = q.shape
    out = torch.empty(batch, n_heads, n_steps, v.shape[-1], dtype=torch.float64)
    for b in range(batch):
        for h in range(n_heads):
            qh, kh, vh = q[b, h].double(), k[b, h // groups].double(), v[b, h // groups].double()
            states = [torch.zeros(head_dim**n, v.shape[-1], dtype=torch.float64) for n in range(order + 1)]
            sums = [torch.zeros(head_dim**n, dtype=torch.float64) for n in range(order + 1)]
            for t in range(n_steps):
                numerator = torch.zeros(v.shape[-1], dtype=torch.float64)
                normaliser = torch.zeros((), dtype=torch.float64)
                for n in range(order + 1):
                    k_power = kronecker_power(kh[t], n)
                    states[n] += torch.outer(k_power, vh[t])
                    sums[n] += k_power
                    q_power = kronecker_power(qh[t], n) * scale**n / math.factorial(n)
                    numerator += q_power @ states[n]
                    normaliser += q_power @ sums[n]
                out[b, h, t] = numerator / (normaliser if denominator == "taylor" else t + 1)
    return out


def identity_plus_one(x: torch.Tensor, scale: float) -> torch.Tensor:
    """phi(x) = [1, sqrt(scale) x], so phi(q).phi(k) = 1 + scale q.k: the first-order Taylor weight."""
    return torch.cat([torch.ones_like(x[..., :1]), x * math.sqrt(scale)], dim=-1)


def elu_plus_one(x: torch.Tensor, scale: float) -> torch.Tensor:
    """phi(x) = elu(x) + 1 (Katharopoulos et al. 2020), the classic positive linear-attention feature map."""
    return torch.nn.functional.elu(x) + 1


def linear_attention(q, k, v, *, feature_map: Callable[[torch.Tensor, float], torch.Tensor],
                     scale: float | None = None) -> torch.Tensor:
    """Causal linear attention with a sum denominator, as running sums: o_t = phi(q_t).S_t / phi(q_t).z_t."""
    scale = default_scale(scale, q.shape[-1])
    groups = q.shape[1] // k.shape[1]
    phi_q = feature_map(q.double(), scale)  # (B, Hq, T, F)
    phi_k = feature_map(k.double(), scale).repeat_interleave(groups, 1)  # (B, Hq, S, F)
    values = v.double().repeat_interleave(groups, 1)
    states = torch.cumsum(phi_k[..., :, None] * values[..., None, :], dim=2)  # (B, Hq, T, F, Dv)
    sums = torch.cumsum(phi_k, dim=2)  # (B, Hq, T, F)
    numerator = torch.einsum("bhtf,bhtfd->bhtd", phi_q, states)
    return numerator / torch.einsum("bhtf,bhtf->bht", phi_q, sums)[..., None]


# Scaled logits are histogrammed on fixed edges so that heads, layers and models are comparable; values outside the
# range land in the end bins (the exact extremes are kept separately).
LOGIT_BINS = 512
LOGIT_RANGE = (-64.0, 64.0)
SMALL_DENOMINATOR = 1e-2  # a sum denominator below this fraction of the exact one counts as near zero


def logit_bin_edges() -> torch.Tensor:
    return torch.linspace(*LOGIT_RANGE, LOGIT_BINS + 1, dtype=torch.float64)


@dataclass
class TaylorSweep:
    """Every order 0..N of Taylor attention against exact softmax, for all denominators at once, with diagnostics.

    Shapes: O = N + 1 orders, (B, Hq, T) rows. O_softmax includes a learned sink when there is one, and so do the
    sum and exact denominators counted below; weights, terms and logits are the real keys' (module docstring).
    """

    error: dict[str, torch.Tensor]  # denominator -> (O, B, Hq, T) ||O_n - O_softmax|| / ||O_softmax|| per row
    target_norm: torch.Tensor  # (B, Hq, T) ||O_softmax|| per row: what an L2 denominator throws away
    negative_weights: torch.Tensor  # (O, B, Hq) fraction of visible truncated weights below zero
    nonpositive_denominator: torch.Tensor  # (O, B, Hq) fraction of rows whose sum denominator is <= 0
    small_denominator: torch.Tensor  # (O, B, Hq) ... below SMALL_DENOMINATOR x the exact softmax denominator
    term_mean: torch.Tensor  # (O, B, Hq) mean over visible logits of |s^n / n!| (the order-n term alone)
    logit_min: torch.Tensor  # (B, Hq) smallest visible scaled (softcapped) logit, before any clamp
    logit_max: torch.Tensor  # (B, Hq)
    logit_hist: torch.Tensor  # (B, Hq, LOGIT_BINS) counts of visible scaled logits on logit_bin_edges()

    def to(self, device: torch.device | str) -> TaylorSweep:
        """The same sweep with every tensor on `device`."""
        fields = {name: getattr(self, name).to(device) for name in self.__dataclass_fields__ if name != "error"}
        return TaylorSweep(error={name: rows.to(device) for name, rows in self.error.items()}, **fields)


def taylor_sweep(q, k, v, *, max_order: int, clamp=None, causal: bool = True, scale: float | None = None,
                 mask: torch.Tensor | None = None, softcap: float | None = None, window: int | None = None,
                 sinks: torch.Tensor | None = None) -> TaylorSweep:
    """fp64 reference for TaylorSweep: the full (T, S) matrix, each order summed term by term from scratch. The sum
    and exact denominators include the sink's term (its polynomial, its exp) as taylor_attention's do; the weights,
    terms and logits counted are the real keys' only."""
    model = dict(causal=causal, scale=scale, mask=mask, softcap=softcap, window=window)
    scores = model_scores(q, k, **model)  # (B, Hq, T, S), -inf where hidden
    visible = torch.isfinite(scores)
    count = visible.sum(-1)  # (B, Hq, T)
    raw = torch.where(visible, scores, torch.zeros_like(scores))
    clamped = clamp_logits(raw, clamp)
    values = v.double().repeat_interleave(q.shape[1] // k.shape[1], 1)
    target = softmax_attention(q, k, v, **model, sinks=sinks)
    target_norm = target.norm(dim=-1)
    exact = torch.where(visible, torch.exp(clamped), torch.zeros_like(clamped)).sum(-1)  # (B, Hq, T)
    sink = sink_column(sinks, torch.float64)
    if sink is not None:
        exact = exact + torch.exp(sink[..., 0])
    error = {name: [] for name in DENOMINATORS}
    negative, nonpositive, small, term_mean = [], [], [], []
    for n in range(max_order + 1):
        weights = torch.where(visible, taylor_weights(clamped, n), torch.zeros_like(clamped))
        numerator = torch.matmul(weights, values)
        denominator = weights.sum(-1)
        if sink is not None:
            denominator = denominator + taylor_weights(sink[..., 0], n)
        outputs = {
            "taylor": numerator / denominator[..., None],
            "softmax": numerator / exact[..., None],
            "l2": numerator / numerator.norm(dim=-1, keepdim=True),
            "none": numerator / count[..., None],
        }
        for name, output in outputs.items():
            reference = target / target_norm[..., None] if name == "l2" else target
            error[name].append((output - reference).norm(dim=-1) / reference.norm(dim=-1))
        negative.append(((weights < 0) & visible).sum((-1, -2)) / count.sum(-1))
        nonpositive.append((denominator <= 0).double().mean(-1))
        small.append((denominator < SMALL_DENOMINATOR * exact).double().mean(-1))
        term = torch.where(visible, clamped.abs() ** n / math.factorial(n), torch.zeros_like(clamped))
        term_mean.append(term.sum((-1, -2)) / count.sum(-1))
    edges = logit_bin_edges()
    hist = torch.zeros(*q.shape[:2], LOGIT_BINS, dtype=torch.int64)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            shown = raw[b, h][visible[b, h]].clamp(edges[0], edges[-1])
            index = torch.bucketize(shown, edges[1:-1], right=True)  # bin i holds [edges[i], edges[i + 1])
            hist[b, h] = torch.bincount(index, minlength=LOGIT_BINS)
    return TaylorSweep(
        error={name: torch.stack(rows).float() for name, rows in error.items()},
        target_norm=target_norm.float(),
        negative_weights=torch.stack(negative).float(),
        nonpositive_denominator=torch.stack(nonpositive).float(),
        small_denominator=torch.stack(small).float(),
        term_mean=torch.stack(term_mean).float(),
        logit_min=torch.where(visible, raw, torch.full_like(raw, math.inf)).amin((-1, -2)).float(),
        logit_max=torch.where(visible, raw, torch.full_like(raw, -math.inf)).amax((-1, -2)).float(),
        logit_hist=hist,
    )
