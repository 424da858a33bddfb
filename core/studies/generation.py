"""Attention over generated text as a study: the model continues the text, every step's attention is measured.

The entry point :func:`run` tokenizes the prompt (as one user turn of the chat template when asked), generates with
attnscope.generation.generate and returns a GenerationResult: the continuation, per-step statistics for every layer
and head, the findings and figures. Maps over the whole text (prompt and continuation, generated tokens marked) come
from the maps study on `result.text_ids`, as the page and the CLI do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from attnscope import generation as engine
from attnscope import settings as S
from attnscope.figures import generation as figures
from attnscope.studies.base import Finding, ProgressFn, Result, Source, meta_for
from attnscope.tokens import display_string, from_ids

CHAT = ("auto", "on", "off")


@dataclass(repr=False)  # Result's short repr
class GenerationResult(Result):
    """A continuation and each step's attention statistics: arrays (steps, layers, heads)."""

    kind = "generation"
    title = "attnscope: attention over generated text"

    meta: dict
    prompt_tokens: tuple[str, ...]
    generated_tokens: tuple[str, ...]
    prompt_ids: tuple[int, ...]
    generated_ids: tuple[int, ...]
    generated_text: str
    stop: str
    entropy: np.ndarray
    max_weight: np.ndarray
    sink_mass: np.ndarray
    mean_distance: np.ndarray
    visible: np.ndarray  # (steps, layers)
    windows: tuple[int, ...]
    learned_sink_mass: np.ndarray | None = None
    seconds: float = 0.0

    @property
    def text_ids(self) -> tuple[int, ...]:
        """Prompt and continuation, as the maps of the whole text read them."""
        return self.prompt_ids + self.generated_ids

    def _statistics(self) -> dict[str, np.ndarray]:
        values = {name: getattr(self, name) for name in engine.STATISTICS}
        if self.learned_sink_mass is not None:
            values["learned_sink_mass"] = self.learned_sink_mass
        return values

    def findings(self) -> list[Finding]:
        steps = len(self.generated_ids)
        first, last = slice(0, max(1, steps // 4)), slice(steps - max(1, steps // 4), steps)
        mean = lambda name, rows: float(np.nanmean(getattr(self, name)[rows]))  # noqa: E731
        out = [
            Finding("Generation", f"{steps} new token(s) after a {len(self.prompt_ids)}-token prompt in "
                                  f"{self.seconds:.1f} s; stopped because {engine.STOPS[self.stop]}."),
            Finding("Attention while generating",
                    f"Over every head, the mean entropy went from {mean('entropy', first):.2f} nats (first quarter "
                    f"of the steps) to {mean('entropy', last):.2f} (last quarter), the mean max weight from "
                    f"{mean('max_weight', first):.3f} to {mean('max_weight', last):.3f}, and the weight on the "
                    f"first token from {mean('sink_mass', first):.3f} to {mean('sink_mass', last):.3f}, while the "
                    f"keys seen grew from {int(self.visible[0].max())} to {int(self.visible[-1].max())}."),
        ]
        local = [w for w in self.windows if w]
        if local:
            out.append(Finding("Local layers", f"{len(local)} of {len(self.windows)} layers see only their last "
                                               f"{min(local):,} keys at every step, however long the text grows."))
        if self.learned_sink_mass is not None:
            out.append(Finding("Learned sinks", f"The learned sink cells took {np.nanmean(self.learned_sink_mass):.1%}"
                                                " of the attention on average over the steps."))
        return out

    def figures(self) -> dict[str, object]:
        tokens = self.generated_tokens
        out = {"timeline": figures.timeline(self._statistics(), tokens=tokens,
                                            title="Each generated token's attention: mean over heads, 10-90% band")}
        for name in ("entropy", "max_weight"):
            out[f"{name}-by-layer"] = figures.layer_timeline(getattr(self, name), tokens=tokens,
                                                             label=figures.LABELS[name],
                                                             title=f"{figures.LABELS[name]} by layer and step")
        return out

    def to_frame(self) -> pd.DataFrame:
        steps, layers, heads = self.entropy.shape
        step, layer, head = np.meshgrid(np.arange(steps), np.arange(layers), np.arange(heads), indexing="ij")
        frame = pd.DataFrame({
            "step": step.ravel(), "token_id": np.asarray(self.generated_ids)[step.ravel()],
            "token": np.asarray(self.generated_tokens, dtype=object)[step.ravel()],
            "position": len(self.prompt_ids) - 1 + step.ravel(), "layer": layer.ravel(), "head": head.ravel(),
            "window": np.asarray(self.windows)[layer.ravel()], "visible": self.visible[step.ravel(), layer.ravel()],
        })
        for name, values in self._statistics().items():
            frame[name] = values.ravel()
        return frame


def prompt_ids(model, text: str, chat: str) -> tuple[list[int], bool]:
    """The prompt's ids, and whether the chat template made them: "on" uses it (and fails in one sentence without
    one), "off" never, "auto" when the tokenizer has one."""
    if chat not in CHAT:
        raise ValueError(f"chat must be one of {', '.join(CHAT)}; got {chat!r}.")
    tokenizer = model.tokenizer
    if chat == "on" or (chat == "auto" and getattr(tokenizer, "chat_template", None)):
        return engine.chat_prompt(tokenizer, text), True
    return list(model.tokenize(text).ids), False


def run(source: Source, text, *, max_new_tokens: int = S.default("max_new_tokens"), sample: bool = S.default("sample"),
        temperature: float = S.default("temperature"), top_p: float = S.default("top_p"), seed: int = S.default("seed"),
        chat: str = S.default("chat"), time_limit: float | None = None,
        on_token: Callable[[str], None] | None = None, progress: ProgressFn | None = None) -> GenerationResult:
    """Generate from a text (or token ids, taken as they are) and measure each step.

    on_token(text_so_far) is called after each new token (for a page or a terminal to stream it); progress(fraction,
    message) after each step. Sampled generation is reproducible from its seed.
    """
    model = source.model
    if model.kind != "decoder":
        raise ValueError(f"{model.spec.name} is an encoder: it reads a whole text at once and does not generate; "
                         "pick a decoder (e.g. smollm2-135m).")
    if isinstance(text, str):
        if not text.strip():
            raise ValueError("The text is empty: give the model something to continue.")
        ids, templated = prompt_ids(model, text, chat)
    else:
        ids, templated = list(from_ids(model.tokenizer, text).ids), False
    tokenizer = model.tokenizer
    generated: list[int] = []

    def each_token(step: int, token: int) -> None:
        generated.append(token)
        if on_token is not None:
            on_token(tokenizer.decode(generated, skip_special_tokens=True))
        if progress is not None:
            progress((step + 1) / max_new_tokens, f"Generated {step + 1} of at most {max_new_tokens} tokens")

    with source.turn():
        done = engine.generate(model.module, tokenizer, ids, max_new_tokens=max_new_tokens, sample=sample,
                               temperature=temperature, top_p=top_p, seed=seed, max_positions=model.max_positions,
                               time_limit=time_limit, on_token=each_token)
    prompt = from_ids(tokenizer, done.prompt_ids)
    settings = dict(max_new_tokens=max_new_tokens, sample=sample, temperature=temperature, top_p=top_p, seed=seed,
                    chat=chat, chat_template=templated)
    return GenerationResult(
        meta=meta_for(model, prompt, **settings), prompt_tokens=prompt.strings,
        generated_tokens=tuple(display_string(tokenizer, i) for i in done.generated_ids),
        prompt_ids=done.prompt_ids, generated_ids=done.generated_ids,
        generated_text=tokenizer.decode(list(done.generated_ids), skip_special_tokens=True), stop=done.stop,
        entropy=done.entropy, max_weight=done.max_weight, sink_mass=done.sink_mass, mean_distance=done.mean_distance,
        visible=done.visible, windows=done.windows, learned_sink_mass=done.learned_sink_mass, seconds=done.seconds)
