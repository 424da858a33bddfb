"""Capture every layer's queries, keys and values through transformers' attention-function registry.

attnscope registers one attention function, ``"attnscope"``, with ``AttentionInterface`` and loads every model with
``attn_implementation="attnscope"``. The function computes the layer's output with PyTorch SDPA exactly as the
built-in ``"sdpa"`` implementation does; only while a :func:`capturing` block is active in the current thread (a
``ContextVar``, so concurrent app sessions sharing one model never see each other's tensors) does it also store
detached copies of the tensors it is handed:

- ``q``: (B, Hq, T, D) queries after rotary embedding;
- ``k``: (B, Hkv, S, D) keys after rotary embedding and *before* the grouped-query repeat (Hq = groups * Hkv);
- ``v``: (B, Hkv, S, Dv) values, likewise;
- the scale the model uses (Llama: 1/sqrt(D); GPT-2 may divide further by the layer index) and the mask.

The mask is stored as a rule, not a matrix, whenever it is one: ``causal=True`` (key j visible to query i iff
j <= i + S - T, bottom-right aligned as with a KV cache), the causal rule narrowed to a sliding window of w keys
(``window=w``: i + S - T - w < j, when the layer declares a window, as Mistral, Qwen2, Gemma 2/3 and gpt-oss layers
pass ``sliding_window`` to the attention function, and the mask it received is exactly that rule) or full
visibility; only a mask that is none of these (padding) is kept as a bool tensor, shared between layers that
received the same one. So a capture holds O(L) memory per head, and L x L probabilities are built only for the
layers and heads a view asks for (:meth:`LayerCapture.probs`). Learned sinks (gpt-oss hands ``s_aux``, one logit per
query head that joins the softmax's normaliser with no value) are kept as ``sinks``; the default path then computes
the layer with them (SDPA cannot), as it does softcapped logits.

The same function replaces attention inside a :func:`substituting` block (also per thread): each layer hands what
it received, as a LayerCapture, to a replacement function and returns that function's output, which is how the
Softmax-vs-Taylor page runs the model with Taylor-n attention in every layer without touching the shared model.
A :func:`streaming` block does the same with the layer's index, so a consumer can compute the layer's output together
with whatever it measures, keep what it needs and let the rest go (attnscope.engine).

Every call of the registered function is a cancellation point (attnscope.cancel.checkpoint): a forward pass whose
caller asked to stop ends before its next layer.

Caution: transformers builds no causal mask for an attention name that has no mask function registered under the
same name, and a decoder then silently attends to the future. :func:`register_attention` registers SDPA's mask
function as ``"attnscope"`` in ``AttentionMaskInterface`` too; tests/unit/test_capture.py checks causality directly.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from attnscope import cancel
from attnscope.kernels.utils import key_positions_visible
from attnscope.logprobs import next_token_logprobs

ATTENTION_NAME = "attnscope"


@dataclass
class LayerCapture:
    """What one attention layer saw during a forward pass. Layout [B, H, T, D] throughout."""

    q: torch.Tensor  # (B, Hq, T, D) queries after rotary embedding
    k: torch.Tensor  # (B, Hkv, S, D) keys after rotary embedding, before the grouped-query repeat
    v: torch.Tensor  # (B, Hkv, S, Dv) values, before the grouped-query repeat
    scale: float  # logits are q.k * scale
    causal: bool  # when mask is None: key j is visible to query i iff j <= i + S - T
    mask: torch.Tensor | None  # (B or 1, 1 or Hq, T, S) bool, True = visible; overrides `causal` when set
    softcap: float | None = None  # logits -> softcap * tanh(logits / softcap) before softmax (Gemma-2 style)
    window: int | None = None  # with causal and no mask: key j visible to query i iff i + S - T - window < j
    sinks: torch.Tensor | None = None  # (Hq,) learned sink logits (gpt-oss's s_aux), fp32

    def rule(self, heads: list[int] | None = None, *, first_sequence: bool = False) -> dict:
        """The keyword arguments the kernels take for this layer's visibility and logits (causal, mask, softcap,
        window, sinks), restricted to query heads `heads` (default all); the mask keeps its batch axis, or only its
        first sequence's rows with first_sequence=True (for kernels run on q[:1])."""
        mask, sinks = self.mask, self.sinks
        if mask is not None and first_sequence:
            mask = mask[:1]
        if heads is not None and heads != list(range(self.n_heads)):
            if mask is not None and mask.shape[1] > 1:
                mask = mask[:, heads]
            if sinks is not None:
                sinks = sinks[heads]
        return dict(causal=self.causal, mask=mask, softcap=self.softcap, window=self.window, sinks=sinks)

    @property
    def n_heads(self) -> int:
        return self.q.shape[1]

    @property
    def groups(self) -> int:
        """Query heads per key/value head (1 for multi-head attention)."""
        return self.q.shape[1] // self.k.shape[1]

    def kv_head(self, head: int) -> int:
        """Index of the key/value head that query head `head` reads."""
        return head // self.groups

    def visible(self, rows: slice | None = None) -> torch.Tensor:
        """Bool visibility (B or 1, 1 or Hq, t, S) of keys for the query rows `rows` (default all)."""
        n_queries, n_keys = self.q.shape[2], self.k.shape[2]
        rows = rows or slice(0, n_queries)
        if self.mask is not None:
            return self.mask[:, :, rows]
        return key_positions_visible(n_queries, n_keys, rows, self.causal, self.q.device, self.window)[None, None]

    def to(self, device: torch.device | str) -> LayerCapture:
        """The same layer with its tensors on `device` (itself when they are there already)."""
        device = torch.device(device)
        if self.q.device == device:
            return self
        moved = lambda x: None if x is None else x.to(device)  # noqa: E731
        return dataclasses.replace(self, q=moved(self.q), k=moved(self.k), v=moved(self.v), mask=moved(self.mask),
                                   sinks=moved(self.sinks))

    def prefix(self, n_tokens: int) -> LayerCapture:
        """The layer as the model computes it on its first `n_tokens` tokens alone (exact under the causal mask)."""
        if n_tokens >= self.q.shape[2]:
            return self
        if not self.causal or self.mask is not None or self.q.shape[2] != self.k.shape[2]:
            raise ValueError("Only causal attention over the whole text can be cut to a prefix; bidirectional "
                             "attention lets early tokens see the ones that would be cut.")
        return dataclasses.replace(self, q=self.q[:, :, :n_tokens], k=self.k[:, :, :n_tokens],
                                   v=self.v[:, :, :n_tokens])

    def logits(self, heads: Iterable[int] | None = None, rows: slice | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Scaled logits (B, h, t, S) in `dtype` for query heads `heads` and rows `rows`; masked cells are -inf."""
        heads = list(range(self.n_heads)) if heads is None else list(heads)
        rows = rows or slice(0, self.q.shape[2])
        q = self.q[:, heads, rows].to(dtype)  # (B, h, t, D)
        k = self.k[:, [self.kv_head(h) for h in heads]].to(dtype)  # (B, h, S, D)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        if self.softcap is not None:
            scores = self.softcap * torch.tanh(scores / self.softcap)
        visible = self.visible(rows)
        if visible.shape[1] > 1:
            visible = visible[:, heads]
        return scores.masked_fill(~visible, float("-inf"))

    def probs(self, heads: Iterable[int] | None = None, rows: slice | None = None) -> torch.Tensor:
        """Attention probabilities (B, h, t, S) in fp32, built only for the requested heads and rows. With learned
        sinks the sink cell takes its share of each row's softmax, so a row's weights sum to 1 - p_sink."""
        logits = self.logits(heads, rows)
        if self.sinks is None:
            probs = torch.softmax(logits, dim=-1)
        else:
            heads = list(range(self.n_heads)) if heads is None else list(heads)
            cell = self.sinks[heads].to(logits)[None, :, None, None].expand(*logits.shape[:3], 1)
            probs = torch.softmax(torch.cat([logits, cell], dim=-1), dim=-1)[..., :-1]
        return probs.nan_to_num(0.0)  # a row with no visible key (only under padding masks) has no distribution


def _layer_index(module, calls: int) -> int:
    """The module's own layer index when it has one (HF attention modules do), else the order of the call."""
    index = getattr(module, "layer_idx", None)
    return calls if index is None else index


def learned_sinks(kwargs) -> torch.Tensor | None:
    """The (Hq,) learned sink logits an attention call was handed (gpt-oss: ``s_aux``), detached fp32, or None."""
    sinks = kwargs.get("s_aux")
    return None if sinks is None else sinks.detach().float().reshape(-1)


def _layer_capture(query, key, value, rule: tuple[bool, torch.Tensor | None, int | None], scaling, kwargs, *,
                   copy: bool) -> LayerCapture:
    """What the attention function was handed, as a LayerCapture; with copy=True detached copies of q/k/v."""
    if copy:
        query, key, value = (x.detach().clone() for x in (query, key, value))
    sinks = learned_sinks(kwargs)
    return LayerCapture(
        q=query,
        k=key,
        v=value,
        scale=float(query.shape[-1] ** -0.5 if scaling is None else scaling),
        causal=rule[0],
        mask=rule[1],
        softcap=kwargs.get("softcap"),
        window=rule[2],
        sinks=None if sinks is None else (sinks.clone() if copy else sinks),
    )


class _MaskRules:
    """mask_rule per distinct mask tensor: a model hands every layer the same mask object, reduced once."""

    def __init__(self):
        self._masks: dict[tuple[int, int | None], tuple[torch.Tensor, tuple]] = {}

    def rule(self, module, query, key, attention_mask, kwargs) -> tuple[bool, torch.Tensor | None, int | None]:
        if attention_mask is None:
            return mask_rule(module, query, key, attention_mask, kwargs)
        key_ = (id(attention_mask), declared_window(module, kwargs))
        cached = self._masks.get(key_)
        if cached is not None and cached[0] is attention_mask:
            return cached[1]
        rule = mask_rule(module, query, key, attention_mask, kwargs)
        self._masks[key_] = (attention_mask, rule)
        return rule


class _Recorder:
    def __init__(self, layers: set[int] | None):
        self.layers = layers
        self.captured: dict[int, LayerCapture] = {}
        self._rules = _MaskRules()
        self._calls = 0

    def record(self, module, query, key, value, attention_mask, scaling, kwargs) -> None:
        layer = _layer_index(module, self._calls)
        self._calls += 1
        if self.layers is not None and layer not in self.layers:
            return
        rule = self._rules.rule(module, query, key, attention_mask, kwargs)
        self.captured[layer] = _layer_capture(query, key, value, rule, scaling, kwargs, copy=True)


class _Stream:
    def __init__(self, consumer: Callable[[int, LayerCapture], torch.Tensor]):
        self.consumer = consumer
        self._rules = _MaskRules()
        self._calls = 0

    def attend(self, module, query, key, value, attention_mask, scaling, kwargs) -> torch.Tensor:
        layer = _layer_index(module, self._calls)
        self._calls += 1
        rule = self._rules.rule(module, query, key, attention_mask, kwargs)
        return self.consumer(layer, _layer_capture(query, key, value, rule, scaling, kwargs, copy=False))


def declared_window(module, kwargs) -> int | None:
    """The sliding window a layer declares: the ``sliding_window`` it hands the attention function (Mistral, Qwen2,
    Gemma 2/3, gpt-oss), else its module's attribute; None for a global layer."""
    window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
    return int(window) if isinstance(window, int) and not isinstance(window, bool) and window > 0 else None


def mask_rule(module, query, key, attention_mask, kwargs) -> tuple[bool, torch.Tensor | None, int | None]:
    """Reduce the mask an attention layer received to (causal rule, explicit bool mask or None, window or None).

    None in place of a mask means what SDPA makes of it: the module's `is_causal` (or the call's `is_causal`).
    A mask equal to the causal rule narrowed to the layer's declared sliding window becomes that rule; a declared
    window the mask does not follow is ignored (the mask is kept as it is). A text no longer than the window gets the
    plain causal rule (SDPA's mask function then hands None), which is the windowed rule there: the window is kept,
    so the layer still reads as local.
    """
    window = declared_window(module, kwargs)
    n_queries, n_keys = query.shape[2], key.shape[2]
    within_window = window if window is not None and n_keys <= window else None
    if attention_mask is None:
        is_causal = kwargs.get("is_causal")
        causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
        return causal, None, within_window if causal else None
    if attention_mask.dtype == torch.bool:
        visible = attention_mask
    else:  # additive float mask: 0 where visible, a very negative number where not
        visible = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    causal_rule = torch.ones(n_queries, n_keys, dtype=torch.bool, device=visible.device).tril(n_keys - n_queries)
    if bool(visible.all()):
        return False, None, None
    if bool((visible == causal_rule).all()):
        return True, None, within_window
    if window is not None:
        windowed = key_positions_visible(n_queries, n_keys, slice(0, n_queries), True, visible.device, window)
        if bool((visible == windowed).all()):
            return True, None, window
    return False, visible.detach().clone(), None


_ACTIVE: contextvars.ContextVar[_Recorder | None] = contextvars.ContextVar("attnscope_recorder", default=None)
_SUBSTITUTE: contextvars.ContextVar[Callable[[LayerCapture], torch.Tensor] | None] = contextvars.ContextVar(
    "attnscope_substitute", default=None)
_STREAM: contextvars.ContextVar[_Stream | None] = contextvars.ContextVar("attnscope_stream", default=None)


def attnscope_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention function registered as "attnscope": SDPA, plus recording while a capture is active, or a
    replacement attention while a :func:`substituting` or :func:`streaming` block is active."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cancel.checkpoint()  # every forward pass can be stopped between layers
    recorder = _ACTIVE.get()
    if recorder is not None:
        recorder.record(module, query, key, value, attention_mask, scaling, kwargs)
    substitute = _SUBSTITUTE.get()
    if substitute is not None:
        rule = mask_rule(module, query, key, attention_mask, kwargs)
        layer = _layer_capture(query, key, value, rule, scaling, kwargs, copy=False)
        return substitute(layer).to(query.dtype).transpose(1, 2).contiguous(), None
    stream = _STREAM.get()
    if stream is not None:
        output = stream.attend(module, query, key, value, attention_mask, scaling, kwargs)
        return output.to(query.dtype).transpose(1, 2).contiguous(), None
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        if attention_mask is None:  # SDPA's mask function hands None for the plain pattern; spell a causal one out
            causal = mask_rule(module, query, key, attention_mask, kwargs)[0]
            n_queries, n_keys = query.shape[2], key.shape[2]
            if causal:
                attention_mask = key_positions_visible(n_queries, n_keys, slice(0, n_queries), True, query.device)
        return explicit_attention(module, query, key, value, attention_mask, scaling=scaling,
                                  softcap=kwargs.get("softcap"), sinks=learned_sinks(kwargs))
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def explicit_attention(module, query, key, value, attention_mask, scaling=None, softcap=None, sinks=None, **kwargs):
    """Softmax attention written out, applying exactly the mask it is handed (bool: True = visible; float: added).

    Used for softcapped logits and learned sinks (an extra softmax cell of logit sinks[h] with no value, as gpt-oss's
    eager attention does), which SDPA cannot do, and as the plain reference a replacement attention follows.
    """
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    elif attention_mask is not None:
        scores = scores + attention_mask
    if sinks is not None:
        cell = sinks.to(scores.dtype)[None, :, None, None].expand(*scores.shape[:3], 1)
        weights = torch.softmax(torch.cat([scores, cell], dim=-1), dim=-1, dtype=torch.float32)[..., :-1]
    else:
        # A row that sees no key (a padded query) gets zero weights, as in LayerCapture.probs, not softmax's NaN: the
        # NaN would reach every later token through the padded position's value (0 * NaN in the next layer).
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).nan_to_num(0.0)
    weights = weights.to(query.dtype)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _materialised_sdpa_mask(*args, **kwargs):
    """SDPA's mask function, but always a bool tensor: never None in place of the causal rule."""
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    kwargs["allow_is_bidirectional_skip"] = False
    return sdpa_mask(*args, **kwargs)


def register_attention_function(name: str, function, *, materialise_mask: bool) -> None:
    """Register `function` as attention implementation `name`, together with a mask function under the same name.

    Without a mask function under the same name transformers passes no mask at all, and a function that applies the
    mask it is handed lets a decoder see the future. With `materialise_mask=False` the mask is SDPA's, which is None
    for a plain causal or full pattern: fine for a function that, like SDPA, falls back to `module.is_causal`. A
    function that only applies the mask it is given (a replacement attention) needs `materialise_mask=True`.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, _materialised_sdpa_mask if materialise_mask else sdpa_mask)


def register_attention() -> None:
    """Register the "attnscope" attention function and its mask function (idempotent)."""
    register_attention_function(ATTENTION_NAME, attnscope_attention, materialise_mask=False)


@contextlib.contextmanager
def capturing(layers: Iterable[int] | None = None) -> Iterator[dict[int, LayerCapture]]:
    """Record q/k/v of every attention call in this thread while the block runs.

    Args:
        layers: layer indices to keep (default: all); other layers run normally and store nothing.

    Yields:
        A dict layer index -> LayerCapture, filled as the model runs. The recorder is removed in `finally`.
    """
    recorder = _Recorder(None if layers is None else set(layers))
    token = _ACTIVE.set(recorder)
    try:
        yield recorder.captured
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def substituting(attention: Callable[[LayerCapture], torch.Tensor]) -> Iterator[None]:
    """Replace every layer's attention, in this thread, while the block runs.

    Each call of the registered "attnscope" function hands `attention` what the layer received, as a LayerCapture
    (q, k, v before the grouped-query repeat, the scale, and the mask reduced to a rule or an explicit bool mask), and
    uses the (B, Hq, T, Dv) tensor it returns as the layer's attention output. The model stays shared and unchanged:
    other threads (other app sessions) keep exact attention.
    """
    token = _SUBSTITUTE.set(attention)
    try:
        yield
    finally:
        _SUBSTITUTE.reset(token)


@contextlib.contextmanager
def streaming(consumer: Callable[[int, LayerCapture], torch.Tensor]) -> Iterator[None]:
    """Hand every attention call in this thread to `consumer` while the block runs, and use what it returns.

    Each call of the registered "attnscope" function calls ``consumer(layer_index, layer)``: the layer's index (the
    module's ``layer_idx``, else the order of the call) and what it received as a LayerCapture of the live tensors
    (not copies: a consumer that keeps them past the call must clone them). The (B, Hq, T, Dv) tensor it returns is
    the layer's attention output. As with :func:`substituting`, other threads keep plain attention.
    """
    token = _STREAM.set(_Stream(consumer))
    try:
        yield
    finally:
        _STREAM.reset(token)


@dataclass
class Capture:
    """One forward pass over one text: every captured layer plus the model's own next-token log-probabilities."""

    layers: dict[int, LayerCapture]  # layer index -> what it saw
    token_logprobs: torch.Tensor | None  # (T-1,) log p(token t+1 | tokens <= t) for decoders, None for encoders
    hidden_states: dict[int, torch.Tensor] | None = None  # layer index -> (B, T, d_model) residual stream entering it

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_heads(self) -> int:
        return next(iter(self.layers.values())).n_heads

    def layer(self, index: int) -> LayerCapture:
        if index not in self.layers:
            raise ValueError(f"Layer {index} was not captured; captured layers are {sorted(self.layers)}.")
        return self.layers[index]


def no_attention_message(model: torch.nn.Module, what: str) -> str:
    """Why no attention layer was `what` (captured, streamed): an architecture that computes attention in its own
    code (Bloom, Falcon, MPT: ALiBi added to the logits), which no registered function sees, or a model loaded
    without the "attnscope" implementation."""
    if getattr(model, "_supports_attention_backend", True) is False:
        return (f"No attention layer was {what}: {type(model).__name__} computes attention in its own code, not "
                "through transformers' attention interface, so attnscope cannot see it; choose another model.")
    return (f"No attention layer was {what}: load the model with attn_implementation='{ATTENTION_NAME}' "
            "(attnscope.load and attnscope.models.load_model do).")


def input_device(model: torch.nn.Module) -> torch.device:
    """Where the model's input ids go: the device of its input embedding (the first GPU under a device map)."""
    return model.get_input_embeddings().weight.device


@torch.no_grad()
def run_with_capture(model: torch.nn.Module, input_ids: torch.Tensor, *, layers: Iterable[int] | None = None,
                     hidden_states: bool = False) -> Capture:
    """Run `model` on `input_ids` (B, T) with capture on; with hidden_states=True also keep each captured layer's
    input residual stream (transformers' output_hidden_states[layer]).

    The model must have been loaded with ``attn_implementation="attnscope"`` (attnscope.models does this); otherwise no
    layer is recorded and a ValueError says so.
    """
    with capturing(layers) as captured:
        output = model(input_ids=input_ids.to(input_device(model)), output_hidden_states=hidden_states)
    if not captured:
        raise ValueError(no_attention_message(model, "captured"))
    logits = getattr(output, "logits", None)
    token_logprobs = None
    if logits is not None and input_ids.shape[1] > 1:
        token_logprobs = next_token_logprobs(logits, input_ids, dtype=torch.float32)
    states = None
    if hidden_states:
        states = {index: output.hidden_states[index].detach() for index in captured}
    return Capture(layers=dict(sorted(captured.items())), token_logprobs=token_logprobs, hidden_states=states)
