"""Attention over generated text: the model continues a prompt, and each new token's attention is measured as the
model produces it (THEORY.md, "Generation").

Step t (t = 0 .. N-1) is the forward pass that produced generated token t. Its query row is the last position the
model had read (the prompt's last token for t = 0, generated token t - 1 after that) against every key in the KV
cache: T = 1, bottom-right aligned, under the layer's own rule (a sliding window, learned sinks, a softcap). The
prompt is read in one forward pass (step 0); every later step reads one token against the cache. Each pass runs in a
:func:`attnscope.capture.streaming` block, so the layers' outputs and the statistics of the rows come from one call
of the same kernel every other view uses (kernels.attention_stats), and q/k/v are never kept. The statistics of step
t therefore equal those of row P - 1 + t of one forward pass over the prompt (P tokens) and the generated text,
which tests/integration/test_generation_real.py checks on the packaged models.

A caching layer that keeps only the last w keys (sliding-window layers under transformers' DynamicCache) hands the
kernel fewer keys than positions read: its distances are still exact (the kept keys are the most recent ones), and its
weight on the first token is 0 once that token has left the cache, as it has left the window.

    run = generate(model, tokenizer, prompt_ids, max_new_tokens=32)
    run.generated_ids, run.stop                # the continuation and why it stopped
    run.entropy[t, layer, head]                # per-step statistics, (steps, layers, heads)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from attnscope import kernels
from attnscope.analyses import maps
from attnscope.capture import LayerCapture, input_device, no_attention_message, streaming

STATISTICS = ("entropy", "max_weight", "sink_mass", "mean_distance")  # per step, layer and head
STOPS = {
    "eos": "the model ended its answer",
    "max_new_tokens": "the new-token limit was reached",
    "positions": "the model's position limit was reached",
    "time": "the time limit was reached",
}


@dataclass
class Generation:
    """One continuation and the attention of every step. Arrays are (steps, layers, heads) unless stated."""

    prompt_ids: tuple[int, ...]
    generated_ids: tuple[int, ...]
    stop: str  # a key of STOPS
    entropy: np.ndarray
    max_weight: np.ndarray
    sink_mass: np.ndarray  # weight on the text's first token (0 where a sliding layer's cache no longer holds it)
    mean_distance: np.ndarray
    visible: np.ndarray  # (steps, layers) keys the step's row sees
    windows: tuple[int, ...]  # per layer: its sliding window, 0 for a global layer
    learned_sink_mass: np.ndarray | None = None  # models with learned sinks (gpt-oss)
    seconds: float = 0.0  # wall time of the generation


class _StepRecorder:
    """The streaming consumer: each layer's output from kernels.attention_stats, and the statistics of its last row."""

    def __init__(self, n_read: Callable[[], int]):
        self.n_read = n_read  # positions the model has read, this pass included
        self.rows: dict[int, dict] = {}

    def __call__(self, index: int, layer: LayerCapture) -> torch.Tensor:
        stats = kernels.attention_stats(layer.q, layer.k, layer.v, scale=layer.scale, argmax=False, **layer.rule())
        n_keys = layer.k.shape[2]
        sink = stats.sink_mass[0, :, -1]
        if n_keys < self.n_read():  # a cache that dropped the oldest keys: key 0 is not the text's first token
            sink = torch.zeros_like(sink)
        self.rows[index] = {
            "entropy": stats.entropy[0, :, -1], "max_weight": stats.max_weight[0, :, -1], "sink_mass": sink,
            "mean_distance": stats.mean_distance[0, :, -1],
            "learned_sink_mass": None if stats.learned_sink_mass is None else stats.learned_sink_mass[0, :, -1],
            "visible": float(maps.visible_keys(layer)[0, -1]), "window": layer.window or 0,
        }
        return stats.output

    def take(self) -> dict[int, dict]:
        rows, self.rows = self.rows, {}
        return {index: {name: value.float().cpu() if isinstance(value, torch.Tensor) else value
                        for name, value in row.items()} for index, row in sorted(rows.items())}


def choose(logits: torch.Tensor, *, sample: bool, temperature: float, top_p: float,
           generator: torch.Generator | None) -> int:
    """The next token from (V,) logits: the most likely one, or a draw from softmax(logits / temperature) cut to the
    smallest set of tokens whose probability reaches top_p (nucleus sampling)."""
    if not sample:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    if top_p < 1.0:
        ordered, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(ordered, 0) - ordered < top_p  # the tokens needed to reach top_p, the first always
        probs = torch.zeros_like(probs).scatter_(0, order[keep], ordered[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def chat_prompt(tokenizer, text: str) -> list[int]:
    """The ids of `text` as one user turn of the tokenizer's chat template, ready for the model's answer.

    Raises:
        ValueError: the tokenizer has no chat template, or its template fails on this text.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("This model's tokenizer has no chat template: generate without it (chat off).")
    try:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
    except Exception as error:  # a template is Jinja code: it raises whatever its author raised
        raise ValueError(f"The model's chat template failed on this text ({type(error).__name__}: {error}); "
                         "generate without it (chat off).") from None
    if hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    if isinstance(ids, torch.Tensor):
        ids = ids.reshape(-1).tolist()
    return [int(i) for i in ids]


def end_ids(model, tokenizer) -> set[int]:
    """Token ids that end an answer: the generation config's eos ids, else the tokenizer's."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        return set()
    return {int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])}


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer, prompt_ids: Sequence[int], *, max_new_tokens: int,
             sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
             max_positions: int | None = None, time_limit: float | None = None,
             on_token: Callable[[int, int], None] | None = None) -> Generation:
    """Continue `prompt_ids` with `model` (loaded with the "attnscope" attention function), measuring each step.

    Args:
        max_new_tokens: at most this many new tokens.
        sample: draw tokens (temperature, top_p, seed) instead of taking the most likely one.
        max_positions: the model's position limit; generation stops when the text reaches it.
        time_limit: seconds after which generation stops (after the step in progress).
        on_token: on_token(step, token_id) after each new token (to stream it to a page or a terminal).

    Raises:
        ValueError: an empty prompt, a prompt already at the position limit, settings out of range, or a model whose
            attention attnscope cannot see.
    """
    prompt = [int(i) for i in prompt_ids]
    if not prompt:
        raise ValueError("The prompt is empty: give the model some text to continue.")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1; got {max_new_tokens}.")
    if sample and not temperature > 0:
        raise ValueError(f"temperature must be above 0 when sampling; got {temperature}.")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1]; got {top_p}.")
    if max_positions is not None and len(prompt) >= max_positions:
        raise ValueError(f"The prompt has {len(prompt):,} tokens, already the model's limit of {max_positions:,} "
                         "positions: shorten it to leave room for new tokens.")
    generator = torch.Generator().manual_seed(seed) if sample else None
    device = input_device(model)
    ends = end_ids(model, tokenizer)
    generated: list[int] = []
    recorder = _StepRecorder(lambda: len(prompt) + len(generated))
    steps: list[dict[int, dict]] = []
    started = time.perf_counter()
    with streaming(recorder):
        output = model(input_ids=torch.tensor([prompt], device=device), use_cache=True)
    stop = "max_new_tokens"
    while True:
        rows = recorder.take()
        if not rows:
            raise ValueError(no_attention_message(model, "streamed"))
        steps.append(rows)
        token = choose(output.logits[0, -1].float().cpu(), sample=sample, temperature=temperature, top_p=top_p,
                       generator=generator)
        generated.append(token)
        if on_token is not None:
            on_token(len(generated) - 1, token)
        if token in ends:
            stop = "eos"
            break
        if len(generated) >= max_new_tokens:
            stop = "max_new_tokens"
            break
        if max_positions is not None and len(prompt) + len(generated) >= max_positions:
            stop = "positions"
            break
        if time_limit is not None and time.perf_counter() - started >= time_limit:
            stop = "time"
            break
        with streaming(recorder):
            output = model(input_ids=torch.tensor([[token]], device=device), past_key_values=output.past_key_values,
                           use_cache=True)
    return _assemble(prompt, generated, stop, steps, time.perf_counter() - started)


def _assemble(prompt: list[int], generated: list[int], stop: str, steps: list[dict[int, dict]],
              seconds: float) -> Generation:
    layers = sorted(steps[0])
    n_heads = len(steps[0][layers[0]]["entropy"])

    def stacked(name: str) -> np.ndarray:  # (steps, layers, heads); NaN for a layer without the field
        return np.stack([np.stack([np.full(n_heads, np.nan, np.float32) if step[i][name] is None
                                   else step[i][name].numpy() for i in layers]) for step in steps])

    learned = any(steps[0][i]["learned_sink_mass"] is not None for i in layers)
    return Generation(
        prompt_ids=tuple(prompt), generated_ids=tuple(generated), stop=stop,
        **{name: stacked(name) for name in STATISTICS},
        visible=np.array([[step[i]["visible"] for i in layers] for step in steps]),
        windows=tuple(int(steps[0][i]["window"]) for i in layers),
        learned_sink_mass=stacked("learned_sink_mass") if learned else None, seconds=seconds,
    )
