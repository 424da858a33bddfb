"""Shared inputs and the tolerance rule for kernel tests.

Tolerance (flash-attention's rule, no magic numbers): a kernel's error against the fp64 reference may be at most
twice the error that the plain torch implementation makes in the inputs' own precision, plus a small floor.
"""

import math
import os

import torch

from attnscope.kernels.attention_stats import naive

# Where make_qkv and make_mask put their tensors: the CPU unless ATTNSCOPE_TEST_DEVICE names another device.
# benchmarks/gpu_check.py sets it to "cuda" (with TRITON_INTERPRET=0) to run these tests compiled on a GPU; the
# conftest beside this file then makes it torch's default device, so the tensors a test builds itself land there too.
# Random draws always come from a CPU generator, so every device tests the same numbers.
DEVICE = os.environ.get("ATTNSCOPE_TEST_DEVICE", "cpu")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# (B, Hq, Hkv, T, S, D, causal): awkward lengths, GQA 3:1 and 4:1, MHA, bidirectional with T != S.
SHAPES = [
    (1, 3, 1, 1, 1, 16, True),
    (1, 3, 1, 63, 63, 64, True),
    (1, 4, 1, 113, 113, 32, True),
    (2, 2, 2, 257, 257, 16, True),
    (1, 3, 1, 40, 75, 64, False),
    (1, 2, 1, 30, 50, 64, True),  # causal with a prefix already in the cache (T < S)
]


def shape_id(shape, dtype_name: str) -> str:
    batch, n_heads, n_kv, n_queries, n_keys, head_dim, causal = shape
    rule = "causal" if causal else "full"
    return f"B{batch}-H{n_heads}:{n_kv}-T{n_queries}-S{n_keys}-D{head_dim}-{rule}-{dtype_name}"


def cases(dtypes=DTYPES):
    return [(shape, name) for shape in SHAPES for name in dtypes], [shape_id(s, n) for s in SHAPES for n in dtypes]


def make_qkv(shape, dtype, *, logit_scale: float = 1.0, seed: int = 0):
    batch, n_heads, n_kv, n_queries, n_keys, head_dim, _ = shape
    with torch.device("cpu"):
        generator = torch.Generator().manual_seed(seed)
        q = torch.randn(batch, n_heads, n_queries, head_dim, generator=generator) * logit_scale
        k = torch.randn(batch, n_kv, n_keys, head_dim, generator=generator)
        v = torch.randn(batch, n_kv, n_keys, head_dim, generator=generator)
    return q.to(DEVICE, dtype), k.to(DEVICE, dtype), v.to(DEVICE, dtype)


# Explicit masks the torch paths take, over every shape above: (name, softcap applied with it).
MASKS = [("random", None), ("random", 2.0), ("sliding", 1.0), ("padding", None), ("key_padding", 3.0)]


def mask_id(kind: str, softcap) -> str:
    return f"{kind}-softcap{softcap}" if softcap is not None else kind


def make_mask(kind: str, shape, *, seed: int = 0) -> torch.Tensor:
    """A bool mask (True = visible) broadcastable to (B, Hq, T, S) for one of the shapes above.

    random (B, Hq, T, S): each cell visible with probability 0.6, and row 0 of head 0 hidden entirely (a row that
        sees no key);
    sliding (1, 1, T, S): the shape's own rule (causal or full) cut to a window of the 7 most recent keys;
    padding (B, 1, T, S): the shape's rule with the first 3 keys of sequence 0 hidden (left padding: under the
        causal rule the padded queries see nothing);
    key_padding (B, 1, 1, S): the last 4 keys of the last sequence hidden from every query.
    """
    with torch.device("cpu"):
        return _cpu_mask(kind, shape, seed=seed).to(DEVICE)


def _cpu_mask(kind: str, shape, *, seed: int) -> torch.Tensor:
    batch, n_heads, _, n_queries, n_keys, _, causal = shape
    query_pos = torch.arange(n_queries)[:, None] + (n_keys - n_queries)
    key_pos = torch.arange(n_keys)[None, :]
    rule = key_pos <= query_pos if causal else torch.ones(n_queries, n_keys, dtype=torch.bool)  # (T, S)
    if kind == "random":
        mask = torch.rand(batch, n_heads, n_queries, n_keys, generator=torch.Generator().manual_seed(seed)) < 0.6
        mask[0, 0, 0] = False
        return mask
    if kind == "sliding":
        return (rule & (key_pos > query_pos - 7))[None, None]
    if kind == "padding":
        mask = rule.repeat(batch, 1, 1, 1)
        mask[0, ..., : min(3, n_keys - 1)] = False
        return mask
    if kind == "key_padding":
        mask = torch.ones(batch, 1, 1, n_keys, dtype=torch.bool)
        mask[-1, ..., n_keys - min(4, n_keys - 1) :] = False
        return mask
    raise ValueError(f"unknown mask kind {kind!r}")


def assert_within_rule(actual, reference, plain, *, what: str, floor: float = 1e-6):
    """max |actual - reference| <= 2 max |plain - reference| + floor * (1 + max |reference|), NaNs and infinities
    (the lse of a row that sees no key) in the same places."""
    actual, reference, plain = actual.double(), reference.double(), plain.double()
    infinite = torch.isinf(reference)
    assert torch.equal(actual[infinite], reference[infinite]), f"{what}: infinities differ from the reference"
    assert not torch.isinf(actual[~infinite]).any(), f"{what}: infinite where the reference is finite"
    actual, reference, plain = (x.masked_fill(infinite, 0.0) for x in (actual, reference, plain))
    nan = torch.isnan(reference)
    assert torch.equal(torch.isnan(actual), nan), f"{what}: NaN pattern differs from the reference"
    error = (actual - reference)[~nan].abs().max().item() if (~nan).any() else 0.0
    baseline = (plain - reference)[~nan].abs().max().item() if (~nan).any() else 0.0
    bound = 2 * baseline + floor * (1 + reference[~nan].abs().max().item() if (~nan).any() else 1)
    assert math.isfinite(bound), f"{what}: the plain torch baseline is not finite, so the rule would prove nothing"
    assert error <= bound, f"{what}: error {error:.3g} > bound {bound:.3g} (plain torch error {baseline:.3g})"


STATS_FIELDS = ("lse", "entropy", "max_weight", "sink_mass", "mean_distance", "topk_weights", "output")


def check_attention_stats(result, q, k, v, *, causal, topk, mask=None, softcap=None, window=None, sinks=None):
    """An attention_stats result against the fp64 reference under the tolerance rule, field by field (top-k and the
    output when asked for), and its argmax and top-k indices against the weights they point at."""
    extras = dict(causal=causal, topk=topk, mask=mask, softcap=softcap, window=window, sinks=sinks)
    reference = naive.attention_stats(q, k, v, **extras)
    plain = naive.attention_stats(q, k, v, **extras, dtype=q.dtype)
    fields = [field for field in STATS_FIELDS
              if (field != "topk_weights" or topk > 0) and (field != "output" or v is not None)]
    for field in fields + (["learned_sink_mass"] if sinks is not None else []):
        assert_within_rule(getattr(result, field), getattr(reference, field), getattr(plain, field), what=field)
    if sinks is None:
        assert result.learned_sink_mass is None
    # Indices: ties are legitimate, so check that the chosen key carries the largest weight (-1: the sink cell).
    scores = naive.masked_scores(q, k, causal=causal, scale=None, mask=mask, softcap=softcap, window=window)
    if sinks is not None:
        scores = torch.cat([scores, sinks.double()[None, :, None, None].expand(*scores.shape[:3], 1)], -1)
    full = naive.probabilities(scores)
    at = result.argmax.masked_fill(result.argmax == -1, scores.shape[-1] - 1) if sinks is not None else result.argmax
    chosen = full.gather(-1, at[..., None]).squeeze(-1)
    torch.testing.assert_close(chosen, full.amax(-1), rtol=1e-3, atol=1e-6)
    if topk == 0:
        assert result.topk_weights is None and result.topk_indices is None
        return
    assert torch.equal(result.topk_indices == -1, reference.topk_indices == -1)
    found = result.topk_indices >= 0
    picked = full.gather(-1, result.topk_indices.clamp(min=0))
    torch.testing.assert_close(picked[found], reference.topk_weights.double()[found], rtol=1e-3, atol=1e-6)
