"""fp64 references shared by the unit and the real-model tests: one written-out definition, not two copies."""

from attnscope.kernels import DENOMINATORS
from attnscope.kernels.taylor import naive


def head_qkv(layer, head: int):
    """(q, k, v) of query head `head` of a captured layer, each (B, 1, T, D), its key/value head picked by GQA."""
    kv = layer.kv_head(head)
    return layer.q[:, head:head + 1], layer.k[:, kv:kv + 1], layer.v[:, kv:kv + 1]


def taylor_errors(layer, head: int, max_order: int) -> dict[str, list[float]]:
    """denominator -> the relative Frobenius error ||out_n - softmax|| / ||softmax|| of the order-n Taylor attention
    for n = 0..max_order (the "l2" variant against the row-normalised softmax output), from kernels/taylor/naive.py
    on the first sequence."""
    q, k, v = head_qkv(layer, head)
    target = naive.softmax_attention(q, k, v, scale=layer.scale)[0, 0]  # (T, Dv)
    errors = {}
    for name in DENOMINATORS:
        goal = target / target.norm(dim=-1, keepdim=True) if name == "l2" else target
        errors[name] = [float((naive.taylor_attention(q, k, v, order=order, denominator=name,
                                                      scale=layer.scale)[0, 0] - goal).norm() / goal.norm())
                        for order in range(max_order + 1)]
    return errors
