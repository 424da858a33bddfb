"""fp64 references shared by the unit and the real-model tests: one written-out definition, not two copies."""

from attnscope.kernels import DENOMINATORS
from attnscope.kernels.taylor import naive


def visible_keys(layer, head: int):
    """(T, S) numpy bool: which keys each query row of head `head` sees (first sequence), from the layer's rule written
    out: an explicit mask, full visibility, or the causal rule (query row i at key position i + S - T) narrowed to a
    sliding window."""
    import numpy as np

    n_queries, n_keys = layer.q.shape[2], layer.k.shape[2]
    if layer.mask is not None:
        mask = layer.mask[0]
        return mask[head if mask.shape[0] > 1 else 0].expand(n_queries, n_keys).numpy().copy()
    if not layer.causal:
        return np.ones((n_queries, n_keys), dtype=bool)
    position = np.arange(n_queries)[:, None] + n_keys - n_queries
    key = np.arange(n_keys)[None, :]
    visible = key <= position
    if layer.window is not None:
        visible &= key > position - layer.window
    return visible


def pooled_tiles(values, visible, block: int, reduce: str):
    """(ceil(T/block), ceil(S/block)) numpy: a loop over the block x block tiles of a full (T, S) matrix, the mean or
    max of each tile's visible cells, NaN where none is visible."""
    import math

    import numpy as np

    out = np.full((math.ceil(values.shape[0] / block), math.ceil(values.shape[1] / block)), np.nan)
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            tile = values[r * block:(r + 1) * block, c * block:(c + 1) * block]
            seen = visible[r * block:(r + 1) * block, c * block:(c + 1) * block]
            if seen.any():
                out[r, c] = tile[seen].mean() if reduce == "mean" else tile[seen].max()
    return out


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


# ---- why here: information-flow contributions and ablation, from the model's own modules ---------------------------

# Per family, where a layer's pieces are, written out here (not read from attnscope.anatomy): the output projection
# (whose input is the heads' outputs side by side), the module whose input is the residual stream after attention
# ("mid", the model's own sum), and a norm between the projection and that sum (Gemma), each with "{l}" for the layer.
# GPT-NeoX adds attention and MLP to the residual in parallel: its "mid" is None and the sum is x + attention output.
FLOW_PATHS = {
    "llama": ("model.layers.{l}.self_attn.o_proj", "model.layers.{l}.post_attention_layernorm", None),
    "smollm2": ("model.layers.{l}.self_attn.o_proj", "model.layers.{l}.post_attention_layernorm", None),
    "gpt_oss": ("model.layers.{l}.self_attn.o_proj", "model.layers.{l}.post_attention_layernorm", None),
    "qwen2": ("model.layers.{l}.self_attn.o_proj", "model.layers.{l}.post_attention_layernorm", None),
    "gemma3": ("model.layers.{l}.self_attn.o_proj", "model.layers.{l}.pre_feedforward_layernorm",
               "model.layers.{l}.post_attention_layernorm"),
    "gemma2": ("model.layers.{l}.self_attn.o_proj", "model.layers.{l}.pre_feedforward_layernorm",
               "model.layers.{l}.post_attention_layernorm"),
    "gpt2": ("transformer.h.{l}.attn.c_proj", "transformer.h.{l}.ln_2", None),
    "bert": ("encoder.layer.{l}.attention.output.dense", "encoder.layer.{l}.attention.output.LayerNorm", None),
    "gpt_neox": ("gpt_neox.layers.{l}.attention.dense", None, None),
}


def flow_layers(model, ids, family: str, n_layers: int, n_heads: int) -> list[dict]:
    """Per layer, in fp64 from the model's own forward pass (hooks) and an eager copy's attention weights: x (T, d)
    the residual entering, whole (T, d) the model's residual after attention, parts (H, T, S, d) = alpha * g * v W_O[h]
    with alpha from `weights` and v from the projection input's decomposition, visible (H, T, S) and sinks (bool).

    The parts are checked to add up to the whole: sum over heads and keys + x (+ the projection's bias) = whole."""
    import torch

    from attnscope.capture import run_with_capture

    projection_path, mid_path, norm_path = FLOW_PATHS[family]
    modules = dict(model.named_modules())
    seen: dict[tuple[str, int], torch.Tensor] = {}
    handles = []
    for layer in range(n_layers):
        projection = modules[projection_path.format(l=layer)]
        handles.append(projection.register_forward_pre_hook(
            lambda m, a, layer=layer: seen.__setitem__(("heads", layer), a[0][0].detach().double())))
        handles.append(projection.register_forward_hook(
            lambda m, a, o, layer=layer: seen.__setitem__(("projected", layer), o[0].detach().double())))
        if mid_path is not None:
            handles.append(modules[mid_path.format(l=layer)].register_forward_pre_hook(
                lambda m, a, layer=layer: seen.__setitem__(("mid", layer), a[0][0].detach().double())))
        if norm_path is not None:
            handles.append(modules[norm_path.format(l=layer)].register_forward_hook(
                lambda m, a, o, layer=layer: seen.__setitem__(("normed", layer), o[0].detach().double())))
    try:
        capture = run_with_capture(model, ids, hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    out = []
    for layer in range(n_layers):
        captured = capture.layer(layer)
        x = capture.hidden_states[layer][0].double()
        weights = captured.probs()[0].double()  # (H, T, S)
        v = captured.v[0].double().repeat_interleave(captured.groups, 0)  # (H, S, Dv)
        heads = seen[("heads", layer)]  # (T, H * Dv): the model's own projection input
        assert torch.allclose(torch.einsum("hts,hsk->thk", weights, v).reshape(heads.shape), heads, atol=1e-4), \
            "the weights and values do not give the model's heads"
        projection = modules[projection_path.format(l=layer)]
        matrix = projection.weight.detach().double()
        matrix = matrix.t() if type(projection).__name__ == "Conv1D" else matrix  # (d, H * Dv)
        per_head = torch.einsum("hsk,dhk->hsd", v, matrix.view(matrix.shape[0], n_heads, -1))  # (H, S, d)
        parts = weights[..., None] * per_head[:, None]  # (H, T, S, d)
        added = seen[("projected", layer)]
        if norm_path is not None:
            gain = seen[("normed", layer)] / added
            parts = parts * gain[None, :, None, :]
            added = seen[("normed", layer)]
        whole = seen[("mid", layer)] if mid_path is not None else x + added
        bias = getattr(projection, "bias", None)
        total = parts.sum((0, 2)) + x + (0 if bias is None or norm_path is not None
                                         else bias.detach().double())
        assert torch.allclose(total, whole, atol=1e-4 * float(whole.abs().max())), "the parts miss the whole"
        visible = captured.visible()[0].expand(weights.shape)
        out.append(dict(x=x, whole=whole, parts=parts, visible=visible, sinks=captured.sinks is not None))
    return out


def flow_contributions(layer: dict, norm: int, floor: float = 1e-5):
    """(parts (H, T, S) contributions, residual (T,), sink (T,) per head or None) of one flow_layers entry, as
    llm-transparency-tool defines them: max(|w| - |w - part|, floor), normalised over the visible parts."""
    import torch

    whole, parts, x = layer["whole"], layer["parts"], layer["x"]
    size = torch.linalg.vector_norm(whole, ord=norm, dim=-1)  # (T,)
    raw = size[None, :, None] - torch.linalg.vector_norm(whole[None, :, None] - parts, ord=norm, dim=-1)
    scores = torch.where(layer["visible"], raw.clamp_min(floor), 0.0)
    residual = (size - torch.linalg.vector_norm(whole - x, ord=norm, dim=-1)).clamp_min(floor)
    sink = torch.full((parts.shape[0], parts.shape[1]), floor, dtype=torch.float64) if layer["sinks"] else None
    total = scores.sum((0, 2)) + residual + (0 if sink is None else sink.sum(0))
    return scores / total[None, :, None], residual / total, None if sink is None else sink / total[None]


def ablated_loss(model, ids, projection, n_heads: int, head: int | None, *, replace=None, target: int | None = None):
    """A plain forward pass of `model` with query head `head`'s slice of the input of `projection` (a module) set to 0,
    or to `replace` (the slice's mean), by a hook; the mean next-token cross-entropy in fp64 (or the target token's),
    or for an encoder its last hidden state (fp64, first sequence)."""
    import torch

    def hook(module, args):
        heads = args[0].clone()
        width = heads.shape[-1] // n_heads
        heads[..., head * width:(head + 1) * width] = 0.0 if replace is None else replace
        return (heads,)

    handle = None if head is None else projection.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            output = model(input_ids=ids)
    finally:
        if handle is not None:
            handle.remove()
    logits = getattr(output, "logits", None)
    if logits is None:
        return output.last_hidden_state[0].double()
    logprobs = torch.log_softmax(logits[0].double(), -1)
    losses = -logprobs[:-1].gather(-1, ids[0, 1:, None]).squeeze(-1)
    return float(losses.mean()) if target is None else float(losses[target - 1])
