"""Shared inputs and the tolerance rule for kernel tests.

Tolerance (flash-attention's rule, no magic numbers): a kernel's error against the fp64 reference may be at most
twice the error that the plain torch implementation makes in the inputs' own precision, plus a small floor.
"""

import math

import torch

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
    return f"B{batch}-H{n_heads}:{n_kv}-T{n_queries}-S{n_keys}-D{head_dim}-{'causal' if causal else 'full'}-{dtype_name}"


def cases(dtypes=DTYPES):
    return [(shape, name) for shape in SHAPES for name in dtypes], [shape_id(s, n) for s in SHAPES for n in dtypes]


def make_qkv(shape, dtype, *, logit_scale: float = 1.0, seed: int = 0):
    batch, n_heads, n_kv, n_queries, n_keys, head_dim, _ = shape
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, n_heads, n_queries, head_dim, generator=generator) * logit_scale
    k = torch.randn(batch, n_kv, n_keys, head_dim, generator=generator)
    v = torch.randn(batch, n_kv, n_keys, head_dim, generator=generator)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def assert_within_rule(actual, reference, plain, *, what: str, floor: float = 1e-6):
    """max |actual - reference| <= 2 max |plain - reference| + floor * (1 + max |reference|), NaNs in the same places."""
    actual, reference, plain = actual.double(), reference.double(), plain.double()
    nan = torch.isnan(reference)
    assert torch.equal(torch.isnan(actual), nan), f"{what}: NaN pattern differs from the reference"
    error = (actual - reference)[~nan].abs().max().item() if (~nan).any() else 0.0
    baseline = (plain - reference)[~nan].abs().max().item() if (~nan).any() else 0.0
    bound = 2 * baseline + floor * (1 + reference[~nan].abs().max().item() if (~nan).any() else 1)
    assert math.isfinite(bound), f"{what}: the plain torch baseline is not finite, so the rule would prove nothing"
    assert error <= bound, f"{what}: error {error:.3g} > bound {bound:.3g} (plain torch error {baseline:.3g})"
