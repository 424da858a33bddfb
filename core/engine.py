"""Whole-model attention statistics computed while the model runs, one layer at a time, keeping only what was asked.

:func:`run` runs the model once inside a :func:`attnscope.capture.streaming` block. Each attention layer hands its
q/k/v to the engine, which makes one fused pass over them, ``kernels.attention_stats(q, k, v, ...)``: the pass that
produces the layer's output (returned to the model in place of SDPA's) also produces every row statistic, reduced at
once to per-head means (:func:`attnscope.headstats.summarise`). Then the layer's q/k/v are let go, unless the
caller asked to keep that layer. So memory is that of a plain forward plus one layer's statistics, instead of every
layer's q/k/v (run_with_capture) followed by a second pass per layer (maps.head_stats).

Every layer's rule goes to the same kernel: causal or full, a sliding window, learned sinks, a logit softcap (Triton
on CUDA), or an explicit padding mask (its torch path). The statistics read the first sequence of the batch, like
maps.head_stats; the output is computed for every sequence. Inference only: attention dropout is not applied. Token
log-probabilities are computed from the logits a block of rows at a time, so no (T, V) copy is made next to the
logits.

Cost: benchmarks/bench_engine.py against the plain forward (results/engine-cpu.json). The memory is the plain
forward's. On the CPU the kernel's torch path takes about 1.5x SDPA's time per layer with its compiled tile
(kernels.compiled), 1.8x without; on a GPU the Triton kernel is one pass. The compiled tile is built once per machine
and kept in the attnscope cache folder, so a fresh process's first run costs what a later one does
(benchmarks/bench_first_call.py, results/first-call-cpu.json).

    result = engine.run(model, input_ids, keep_layers=[5])
    result.head_stats[12].entropy          # (H,) mean row entropy of layer 12's heads
    maps.pooled_map(result.layer(5), heads=[0], block=64)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from attnscope import kernels
from attnscope.capture import Capture, LayerCapture, input_device, no_attention_message, streaming
from attnscope.headstats import HeadStats, summarise, visible_keys
from attnscope.logprobs import next_token_logprobs

FIELDS = ("entropy", "normalized_entropy", "max_weight", "sink_mass", "mean_distance", "learned_sink_mass")


@dataclass
class EngineRun:
    """One streamed forward pass: per-layer head statistics, the layers asked for, next-token log-probabilities."""

    head_stats: dict[int, HeadStats]  # layer index -> per-head means over the rows of the first sequence
    kept: dict[int, LayerCapture]  # the layers in keep_layers, as run_with_capture would have captured them
    token_logprobs: torch.Tensor | None  # (T-1,) log p(token t+1 | tokens <= t) for decoders, None for encoders
    hidden_states: dict[int, torch.Tensor] | None  # kept layer -> (B, T, d_model) residual stream entering it
    n_layers: int  # attention layers the model ran
    n_heads: int  # query heads per layer
    windows: dict[int, int | None] = dataclasses.field(default_factory=dict)  # layer -> sliding window, None: global

    def layer(self, index: int) -> LayerCapture:
        if index not in self.kept:
            raise ValueError(f"Layer {index} was not kept; pass it in keep_layers (kept: {sorted(self.kept)}).")
        return self.kept[index]

    def as_capture(self) -> Capture:
        """The kept layers as a capture.Capture, for code that takes one."""
        return Capture(layers=dict(self.kept), token_logprobs=self.token_logprobs, hidden_states=self.hidden_states)

    def stacked(self, field: str) -> torch.Tensor:
        """(n_layers, n_heads) fp32 of one HeadStats field, layers in order; learned_sink_mass is NaN for layers
        without learned sinks."""
        if field not in FIELDS:
            raise ValueError(f"field must be one of {FIELDS}, got {field!r}.")
        rows = [getattr(self.head_stats[index], field) for index in sorted(self.head_stats)]
        return torch.stack([torch.full((self.n_heads,), float("nan")) if row is None else row for row in rows])

    @property
    def has_learned_sinks(self) -> bool:
        return any(stats.learned_sink_mass is not None for stats in self.head_stats.values())


class _Engine:
    """The streaming consumer: one fused kernel pass per layer, its summary kept, q/k/v kept only when asked."""

    def __init__(self, keep: set[int], backend: str, on_layer=None):
        self.keep = keep
        self.backend = backend
        self.on_layer = on_layer
        self.head_stats: dict[int, HeadStats] = {}
        self.kept: dict[int, LayerCapture] = {}
        self.windows: dict[int, int | None] = {}
        self.n_heads = 0

    def __call__(self, index: int, layer: LayerCapture) -> torch.Tensor:
        stats = kernels.attention_stats(layer.q, layer.k, layer.v, scale=layer.scale, argmax=False,
                                        backend=self.backend, **layer.rule())
        self.head_stats[index] = summarise(stats, visible_keys(layer))
        self.n_heads = layer.n_heads
        self.windows[index] = layer.window
        if self.on_layer is not None:
            self.on_layer(index, layer, stats)
        if index in self.keep:
            self.kept[index] = dataclasses.replace(
                layer, q=layer.q.detach().clone(), k=layer.k.detach().clone(), v=layer.v.detach().clone(),
                sinks=None if layer.sinks is None else layer.sinks.clone())
        return stats.output  # (B, Hq, T, Dv)


@torch.no_grad()
def run(model: torch.nn.Module, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
        keep_layers: Iterable[int] = (), hidden_states: bool = False, backend: str = "auto",
        on_layer: Callable[[int, LayerCapture, kernels.AttentionStats], None] | None = None) -> EngineRun:
    """Run `model` on `input_ids` (B, T) once, computing every layer's head statistics as it goes.

    Args:
        model: loaded with attn_implementation="attnscope" (attnscope.models.load_model does this).
        input_ids: (B, T) token ids; statistics and log-probabilities are those of the first sequence.
        attention_mask: optional (B, T) padding mask for the model (1 = token, 0 = padding).
        keep_layers: layer indices whose q/k/v (and mask rule) to keep, as run_with_capture keeps them.
        hidden_states: also keep the residual stream entering each kept layer (transformers' output_hidden_states;
            the model then holds every layer's until it returns).
        backend: the kernels' backend, "auto" (Triton on CUDA tensors, torch elsewhere), "triton" or "torch".
            A layer with an explicit (padding) mask takes the torch path under "auto" (see kernels.attention_stats).
        on_layer: on_layer(index, layer, stats) after each layer's kernel call, with its live LayerCapture and
            kernels.AttentionStats, for a caller that measures more from the same pass (the fingerprint analysis).

    Returns:
        EngineRun with head_stats for every layer, kept for keep_layers, token_logprobs for decoders.
    """
    keep = set(keep_layers)
    engine = _Engine(keep, backend, on_layer)
    options = {"use_cache": False} if getattr(model.config, "use_cache", None) is not None else {}
    device = input_device(model)
    with streaming(engine):
        output = model(input_ids=input_ids.to(device),
                       attention_mask=None if attention_mask is None else attention_mask.to(device),
                       output_hidden_states=hidden_states, **options)
    if not engine.head_stats:
        raise ValueError(no_attention_message(model, "streamed"))
    missing = sorted(keep - set(engine.head_stats))
    if missing:
        raise ValueError(f"keep_layers {missing} do not exist; this model has layers 0..{len(engine.head_stats) - 1}.")
    logits = getattr(output, "logits", None)
    logprobs = (next_token_logprobs(logits, input_ids, dtype=torch.float32)
                if logits is not None and input_ids.shape[1] > 1 else None)
    states = {index: output.hidden_states[index].detach() for index in sorted(keep)} if hidden_states else None
    return EngineRun(head_stats=dict(sorted(engine.head_stats.items())), kept=dict(sorted(engine.kept.items())),
                     token_logprobs=logprobs, hidden_states=states, n_layers=len(engine.head_stats),
                     n_heads=engine.n_heads, windows=dict(sorted(engine.windows.items())))
