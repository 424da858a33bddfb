"""Head ablation: what the model loses when one head's output is removed.

For a head h of layer l, its slice of the attention output (the input of the output projection, Dv channels per query
head) is set to 0 ("zero") or to its mean over the text's positions in the unablated run ("mean"); everything else is
the model's own computation. Grouped-query heads ablate the query head only (its key/value head still serves the
other heads of its group). The loss is the mean next-token cross-entropy over the text (predicting tokens 1..T-1), or
the cross-entropy of the token at position `target` (predicting it from the tokens before it); delta is the loss
with the head ablated minus the loss without. Encoders have no next token: their loss is 1 - cosine similarity between
the mean-pooled last hidden state (sentence-transformers' pooling) with the head ablated and without it, or that of
the token at `target` (so the unablated loss is 0 and delta is the loss).

Batched: the heads of one layer run as the sequences of one forward pass whose layers below l run once, on one
sequence. The output projection's input of layer l is widened there to one sequence per ablated head
(attnscope.anatomy's gate), and the residual add broadcasts the rest of the model to that batch. So ablating every head
costs about H * L / 2 forward passes (L layers, H heads each), not H * L. The loss comes from the base model's last
hidden state through the output embedding a block of positions at a time, so no (batch, T, vocabulary) logits are
held; the rebuilt logits are checked once against the model's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from attnscope import anatomy
from attnscope.capture import input_device

MODES = ("zero", "mean")
LOSS_ROWS = 64  # positions turned into logits at a time (batch x LOSS_ROWS x vocabulary floats)
BATCH_BYTES = 2 * 2**30  # activations one widened forward pass may hold, which bounds the heads per pass
ENCODER_METRIC = "1 - cosine similarity of the mean-pooled last hidden state"
TOKEN_ENCODER_METRIC = "1 - cosine similarity of the token's last hidden state"
DECODER_METRIC = "mean next-token cross-entropy (nats)"
TOKEN_DECODER_METRIC = "cross-entropy of the target token (nats)"


@dataclass
class Ablation:
    layers: np.ndarray  # (n,) int: each ablated head's layer
    heads: np.ndarray  # (n,) int: its query head
    losses: np.ndarray  # (n,) float64: the loss with that head ablated
    base_loss: float  # the loss with nothing ablated
    metric: str  # what the loss is


def _final_states(model, ids: torch.Tensor) -> torch.Tensor:
    """(B, T, d) the base model's last hidden state (after its final norm), B = the batch the pass ends with."""
    options = {"use_cache": False} if getattr(model.config, "use_cache", None) is not None else {}
    output = model.base_model(input_ids=ids, **options)
    return output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]


def _logits(model, states: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(states).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return logits if cap is None else cap * torch.tanh(logits / cap)


def _decoder_losses(model, states: torch.Tensor, ids: torch.Tensor, target: int | None) -> torch.Tensor:
    """(B,) mean next-token cross-entropy over positions 1..T-1, or the target token's: each position's
    logsumexp(logits) - logit of the next token in fp32 (within about 1e-6 of fp64), summed in fp64."""
    targets = ids[0]
    if target is not None:
        logits = _logits(model, states[:, target - 1])  # (B, V)
        return (torch.logsumexp(logits, -1) - logits[:, targets[target]]).double()
    total = torch.zeros(states.shape[0], dtype=torch.float64, device=states.device)
    for start in range(0, len(targets) - 1, LOSS_ROWS):
        rows = slice(start, min(start + LOSS_ROWS, len(targets) - 1))
        logits = _logits(model, states[:, rows])  # (B, r, V)
        picked = logits.gather(-1, targets[rows.start + 1:rows.stop + 1][None, :, None].expand(
            states.shape[0], -1, 1)).squeeze(-1)
        total += (torch.logsumexp(logits, -1) - picked).double().sum(-1)
    return total / (len(targets) - 1)


def _check_logits(model, states: torch.Tensor, ids: torch.Tensor) -> None:
    """The logits rebuilt from the last hidden state are the model's own (at the last position)."""
    try:
        own = model(input_ids=ids, logits_to_keep=1).logits[0, -1].float()
    except TypeError:  # a model without logits_to_keep
        own = model(input_ids=ids).logits[0, -1].float()
    rebuilt = _logits(model, states[:1, -1])[0]
    if not torch.allclose(rebuilt, own, rtol=1e-3, atol=1e-3 * float(own.abs().max().clamp_min(1))):
        raise anatomy.UnsupportedModel(f"attnscope cannot rebuild {type(model).__name__}'s logits from its last hidden "
                                       "state (its head scales or caps them in its own way), so it cannot measure "
                                       "ablation losses for it.")


def _batch_size(model, n_tokens: int, n_heads: int) -> int:
    config = model.config
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 1024)
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * width
    per_sequence = n_tokens * (3 * inner + 12 * width) * 4
    return max(1, min(n_heads, BATCH_BYTES // max(per_sequence, 1)))


@dataclass
class Baseline:
    """The unablated pass: its loss, each layer's mean projection input (for mean ablation) and, for encoders, the
    pooled (or target token's) last hidden state the ablated ones are compared with."""

    loss: float
    means: dict[int, np.ndarray]  # layer -> (Hq * Dv,) mean over the text's positions of the projection's input
    reference: np.ndarray | None  # encoders: (d,) the unablated pooled (or target) state; None for decoders
    metric: str


def _check(model, input_ids: torch.Tensor, target: int | None) -> bool:
    """Whether the model is a decoder; ValueError for a target or a text the loss cannot be measured on."""
    n_tokens = input_ids.shape[1]
    decoder = model.get_output_embeddings() is not None
    if target is not None and not (1 if decoder else 0) <= target < n_tokens:
        raise ValueError(f"target must be a token position from {1 if decoder else 0} to {n_tokens - 1} (the "
                         f"{'token predicted' if decoder else 'token measured'}); got {target}.")
    if decoder and n_tokens < 2:
        raise ValueError("Ablation losses need at least two tokens: the first has no next-token loss.")
    return decoder


@torch.no_grad()
def baseline(model: torch.nn.Module, input_ids: torch.Tensor, *, target: int | None = None) -> Baseline:
    """The unablated forward pass (see Baseline); the rebuilt logits are checked against the model's own."""
    decoder = _check(model, input_ids, target)
    ids = input_ids.to(input_device(model))
    means: dict[int, np.ndarray] = {}

    def record(index: int, heads_in: torch.Tensor):
        means[index] = heads_in[0].mean(0).float().cpu().numpy()
        return None

    with anatomy.editing(model, record):
        states = _final_states(model, ids)
    if decoder:
        _check_logits(model, states, ids)
        loss = float(_decoder_losses(model, states, ids, target)[0])
        metric = TOKEN_DECODER_METRIC if target is not None else DECODER_METRIC
        return Baseline(loss=loss, means=means, reference=None, metric=metric)
    pooled = states[0, target] if target is not None else states[0].mean(0)
    return Baseline(loss=0.0, means=means, reference=pooled.double().cpu().numpy(),
                    metric=TOKEN_ENCODER_METRIC if target is not None else ENCODER_METRIC)


@torch.no_grad()
def ablate_layer(model: torch.nn.Module, input_ids: torch.Tensor, base: Baseline, *, layer: int,
                 heads: Sequence[int], n_heads: int, mode: str = "zero", target: int | None = None,
                 progress: Callable[[float, str], None] | None = None) -> np.ndarray:
    """(len(heads),) the loss with each of `heads` of `layer` ablated, as many per forward pass as memory allows."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}.")
    decoder = _check(model, input_ids, target)
    n_layers = len(anatomy.install(model))
    bad = [h for h in heads if not 0 <= h < n_heads]
    if not 0 <= layer < n_layers or bad:
        raise ValueError(f"There is no head {layer}.{bad[0] if bad else heads[0]}: this model has layers "
                         f"0..{n_layers - 1} with heads 0..{n_heads - 1}.")
    ids = input_ids.to(input_device(model))
    batch = _batch_size(model, ids.shape[1], n_heads)
    out = []
    for start in range(0, len(heads), batch):
        group = list(heads[start:start + batch])
        if progress is not None:
            progress(start / len(heads), f"Layer {layer}: ablating head{'s' if len(group) > 1 else ''} "
                                         f"{', '.join(map(str, group))}")

        def edit(index: int, heads_in: torch.Tensor, group=group):
            if index != layer:
                return None
            width = heads_in.shape[-1] // n_heads
            edited = heads_in[:1].expand(len(group), *heads_in.shape[1:]).clone()
            for row, head in enumerate(group):
                channels = slice(head * width, (head + 1) * width)
                edited[row, :, channels] = (0.0 if mode == "zero"
                                            else torch.as_tensor(base.means[layer][channels]).to(heads_in))
            return edited

        with anatomy.editing(model, edit):
            states = _final_states(model, ids)
        if decoder:
            values = _decoder_losses(model, states, ids, target)
        else:
            pooled = states[:, target] if target is not None else states.mean(1)
            reference = torch.as_tensor(base.reference).to(pooled.device)[None]
            values = 1 - torch.nn.functional.cosine_similarity(pooled.double(), reference, dim=-1)
        out.extend(values.tolist())
    return np.array(out, dtype=np.float64)


def losses_by_layer(pairs: Sequence[tuple[int, int]],
                    layer_losses: Callable[[int, tuple[int, ...]], Sequence[float]],
                    on_layer: Callable[[int, tuple[int, ...], int], None] | None = None) -> np.ndarray:
    """(len(pairs),) float64: the loss of each (layer, head) pair, in the pairs' order, from layer_losses(layer,
    heads), called once for each layer that has heads, lowest layer first (ablate_layer, or a cached unit of it).
    on_layer(layer, heads, heads done before it) is called before each layer, for progress."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in pairs:
        by_layer.setdefault(layer, []).append(head)
    losses: dict[tuple[int, int], float] = {}
    done = 0
    for layer, layer_heads in sorted(by_layer.items()):
        heads = tuple(layer_heads)
        if on_layer is not None:
            on_layer(layer, heads, done)
        losses.update({(layer, head): float(value) for head, value in zip(heads, layer_losses(layer, heads))})
        done += len(heads)
    return np.array([losses[pair] for pair in pairs], dtype=np.float64)


def ablate(model: torch.nn.Module, input_ids: torch.Tensor, *, n_heads: int, mode: str = "zero",
           heads: Sequence[tuple[int, int]] | None = None, target: int | None = None,
           progress: Callable[[float, str], None] | None = None) -> Ablation:
    """The loss with each of `heads` ablated ((layer, head) pairs; None: every head of every layer): baseline,
    then ablate_layer for each layer that has heads to ablate (losses_by_layer).

    Raises:
        ValueError: a mode, head or target that does not fit; anatomy.UnsupportedModel for a model whose heads
            attnscope cannot split.
    """
    n_layers = len(anatomy.install(model))
    pairs = [(l, h) for l in range(n_layers) for h in range(n_heads)] if heads is None else list(heads)
    report = progress or (lambda fraction, message: None)
    report(0.0, f"The unablated forward pass over {input_ids.shape[1]} tokens")
    base = baseline(model, input_ids, target=target)
    losses = losses_by_layer(
        pairs, lambda layer, layer_heads: ablate_layer(model, input_ids, base, layer=layer, heads=layer_heads,
                                                       n_heads=n_heads, mode=mode, target=target),
        lambda layer, layer_heads, done: report(done / len(pairs), f"Layer {layer}: ablating {len(layer_heads)} heads"))
    report(1.0, "Ablation done")
    return Ablation(layers=np.array([p[0] for p in pairs], dtype=np.int32),
                    heads=np.array([p[1] for p in pairs], dtype=np.int32), losses=losses, base_loss=base.loss,
                    metric=base.metric)
