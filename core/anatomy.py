"""Where each attention layer's heads leave it: the output projection whose input is the heads' outputs side by side,
the norm (if any) between that projection and the residual stream, and a per-thread gate on the projection's input.

Information-flow contributions (attnscope.analyses.contributions) split a layer's attention output into one part per
head and key, which needs the projection's matrix W_O (d_model, Hq * Dv) and what a norm after attention multiplies
the output by. Head ablation (attnscope.analyses.ablation) edits the projection's input, one head's slice at a time.

Families, found from the modules themselves (no list of model classes):
- the attention module is the one transformers gives a ``layer_idx`` and a class name ending in "Attention"; its
  output projection is its ``o_proj`` (Llama, Qwen, Mistral, Gemma, Phi-3, gpt-oss), ``c_proj`` (GPT-2, a Conv1D),
  ``dense`` (GPT-NeoX) or ``out_proj``, or, for BERT, whose self-attention module has none, its parent's
  ``output.dense``;
- a norm after attention: the decoder layer's ``post_attention_layernorm`` when the layer also has a
  ``post_feedforward_layernorm`` (Gemma 2 and 3, OLMo 2: both sub-layers normed before the residual add; in Llama
  ``post_attention_layernorm`` is the MLP's input norm instead). It must be an RMS norm: norm(y) = y * g(y), where
  g(y) = rsqrt(mean(y^2) + eps) * s, s the norm's per-channel scale (read by normalising a vector of ones);
- BERT adds attention to the residual and then normalises the sum (post-LN): ``post_residual_norm`` is True and the
  residual after attention is taken before that LayerNorm.

The gate: :func:`install` registers one forward pre-hook on every output projection, once per model, which does
nothing unless an :func:`editing` block is active in the current thread (a ContextVar: app sessions sharing the model
never see each other's edits). Inside the block each projection hands its input to the editor, with its layer index,
and uses what the editor returns: a tensor with more sequences than it received widens the batch from that layer on
(the residual add broadcasts), which is how ablation runs many variants of a forward pass whose earlier layers are
computed once.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

PROJECTIONS = ("o_proj", "c_proj", "dense", "out_proj")
Editor = Callable[[int, torch.Tensor], torch.Tensor | None]


class UnsupportedModel(ValueError):
    """The model's attention layers are not laid out in a way attnscope can split into heads."""


@dataclass(frozen=True)
class AttentionLayer:
    index: int
    attention: torch.nn.Module  # the module that calls the attention function
    projection: torch.nn.Module  # the output projection (Linear or GPT-2's Conv1D): input (B, T, Hq * Dv)
    post_norm: torch.nn.Module | None  # a norm on the projection's output before the residual add (Gemma 2/3)
    post_residual_norm: bool  # BERT: the sum residual + attention is normalised (the whole is taken before it)

    def matrix(self) -> torch.Tensor:
        """W_O as (d_model, Hq * Dv): output = input @ W_O.T + bias."""
        weight = self.projection.weight
        return weight.t() if type(self.projection).__name__ == "Conv1D" else weight

    def bias(self) -> torch.Tensor | None:
        return getattr(self.projection, "bias", None)

    def project(self, heads_out: torch.Tensor) -> torch.Tensor:
        """The projection of (..., Hq * Dv) in heads_out's dtype, with its bias: what the layer adds (before a norm)."""
        weight = self.matrix().to(heads_out)
        bias = self.bias()
        out = heads_out @ weight.t()
        return out if bias is None else out + bias.to(heads_out)

    def post_factor(self, projected: torch.Tensor) -> torch.Tensor | None:
        """g with post_norm(y) = y * g for y = projected (T, d_model), in y's dtype; None without a norm after
        attention. Checked against the norm module itself; UnsupportedModel when it is not an RMS norm."""
        if self.post_norm is None:
            return None
        eps = next((float(getattr(self.post_norm, name)) for name in ("eps", "variance_epsilon")
                    if isinstance(getattr(self.post_norm, name, None), float)), None)
        if eps is None:
            raise UnsupportedModel(f"The norm after attention ({type(self.post_norm).__name__}) has no eps: attnscope "
                                   "splits attention into parts only through RMS norms.")
        with torch.no_grad():
            width = projected.shape[-1]
            ones = torch.ones(1, width, dtype=torch.float32, device=projected.device)
            scale = self.post_norm(ones.to(self.post_norm_dtype())).float()[0] * (1.0 + eps) ** 0.5
            y = projected.float()
            factor = torch.rsqrt(y.square().mean(-1, keepdim=True) + eps) * scale
            normed = self.post_norm(projected.to(self.post_norm_dtype())).float()
        # The norm rounds its output to its weights' dtype (bf16: 2^-8 relative), which the check must allow; a
        # LayerNorm or any other norm misses by far more.
        rounding = max(1e-3, 2 * torch.finfo(self.post_norm_dtype()).eps)
        if not torch.allclose(y * factor, normed, rtol=rounding,
                              atol=0.1 * rounding * float(normed.abs().max().clamp_min(1))):
            raise UnsupportedModel(f"The norm after attention ({type(self.post_norm).__name__}) is not an RMS norm "
                                   "(y / rms(y) times a per-channel scale), so attnscope cannot split it into parts.")
        return factor.to(projected.dtype)

    def post_norm_dtype(self) -> torch.dtype:
        weight = getattr(self.post_norm, "weight", None)
        return weight.dtype if isinstance(weight, torch.Tensor) else torch.float32


_LAYERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_INSTALL = threading.Lock()
_EDITOR: contextvars.ContextVar[Editor | None] = contextvars.ContextVar("attnscope_editor", default=None)


def attention_layers(model: torch.nn.Module) -> list[AttentionLayer]:
    """Every attention layer of `model` in order, with its output projection and norms (found once per model).

    Raises:
        UnsupportedModel: one sentence, when a layer's output projection cannot be found.
    """
    found = _LAYERS.get(model)
    if found is not None:
        return found
    modules = dict(model.named_modules())
    layers = []
    for name, module in modules.items():
        if not (type(module).__name__.endswith("Attention") and isinstance(getattr(module, "layer_idx", None), int)):
            continue
        parent_name, _, attribute = name.rpartition(".")
        parent = modules.get(parent_name)
        projection = next((getattr(module, a) for a in PROJECTIONS if isinstance(getattr(module, a, None),
                                                                             torch.nn.Module)), None)
        post_residual = False
        if projection is None and parent is not None:  # BERT: attention.self computes, attention.output projects
            output = getattr(parent, "output", None)
            projection = getattr(output, "dense", None)
            post_residual = isinstance(getattr(output, "LayerNorm", None), torch.nn.Module)
        if projection is None or not hasattr(projection, "weight"):
            raise UnsupportedModel(f"attnscope cannot find the output projection of {type(module).__name__} "
                                   f"({name}), so it cannot split its output into heads.")
        post_norm = None
        if parent is not None and isinstance(getattr(parent, "post_feedforward_layernorm", None), torch.nn.Module):
            post_norm = getattr(parent, "post_attention_layernorm", None)
        layers.append(AttentionLayer(module.layer_idx, module, projection, post_norm, post_residual))
    if not layers:
        raise UnsupportedModel(f"{type(model).__name__} has no attention module attnscope can split into heads.")
    layers.sort(key=lambda layer: layer.index)
    if [layer.index for layer in layers] != list(range(len(layers))):
        raise UnsupportedModel(f"{type(model).__name__}'s attention layers are not numbered 0..{len(layers) - 1}.")
    _LAYERS[model] = layers
    return layers


def install(model: torch.nn.Module) -> list[AttentionLayer]:
    """Register the gate on every output projection of `model` (once; idempotent and thread-safe)."""
    layers = attention_layers(model)
    with _INSTALL:
        for layer in layers:
            if getattr(layer.projection, "_attnscope_gate", False):
                continue
            layer.projection.register_forward_pre_hook(_gate(layer.index))
            layer.projection._attnscope_gate = True
    return layers


def _gate(index: int):
    def hook(module, args):
        editor = _EDITOR.get()
        if editor is None:
            return None
        edited = editor(index, args[0])
        return None if edited is None else (edited, *args[1:])
    return hook


@contextlib.contextmanager
def editing(model: torch.nn.Module, editor: Editor) -> Iterator[list[AttentionLayer]]:
    """While the block runs, in this thread, every output projection of `model` calls editor(layer, input) first
    and takes its return value (None: the input unchanged) as its input. Yields the model's attention layers."""
    layers = install(model)
    token = _EDITOR.set(editor)
    try:
        yield layers
    finally:
        _EDITOR.reset(token)
