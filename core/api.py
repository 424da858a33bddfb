"""The Python API: load a model, run a study on a text, get a result object.

    import attnscope
    model = attnscope.load("smollm2-135m")
    result = attnscope.stats(model, "The capital of France is Paris.")
    result.findings(); result.figures(); result.to_frame(); result.save("stats.parquet")
    attnscope.open("stats.parquet")

Every entry point takes the handle from `load`, a text (or a sequence of token ids), the study's settings (defaults
from attnscope.settings, the table the dashboard and the CLI read too) and an optional progress(fraction, message)
callback; `cache=True` keeps results in the disk cache under the attnscope cache folder, so a second call with the
same model, text and settings (in this process or after a restart) is read back instead of computed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from attnscope.models import LoadedModel, ModelSpec, load_model
from attnscope.studies.base import ProgressFn, Result, Source, open_result
from attnscope.tokens import Cut, Tokens, from_ids, tokenize

Text = str | Sequence[int]


@dataclass
class Model:
    """A loaded model, ready for the studies. `module` is the transformers model, `tokenizer` its tokenizer."""

    loaded: LoadedModel

    @property
    def spec(self) -> ModelSpec:
        return self.loaded.spec

    @property
    def module(self):
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def kind(self) -> str:
        """"decoder" (causal) or "encoder" (bidirectional)."""
        return self.loaded.kind

    @property
    def info(self) -> dict:
        return self.loaded.info

    @property
    def max_positions(self) -> int | None:
        return self.loaded.info.get("max_positions")

    @cached_property
    def fingerprint(self) -> str:
        """Model id, revision and a digest of every weight's name and shape and a sample of its values: what a
        cached result must match (a fine-tuned copy under the same folder name gets a new fingerprint)."""
        placed = f"{self.info.get('device')}/{self.info.get('quantize')}"  # a GPU rounds differently from the CPU
        digest = hashlib.sha256(f"{self.spec.name}@{self.spec.revision}@{placed}".encode())
        for name, tensor in self.module.state_dict().items():
            flat = tensor.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 256)][:256].float().cpu().numpy().tobytes()
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode() + sample)
        return digest.hexdigest()[:32]

    def cut(self, max_tokens: int | None = None, keep: str = "start") -> Cut:
        """At most max_tokens tokens (default: the model's positions), from the text's start or end."""
        limits = [n for n in (max_tokens, self.max_positions) if n]
        return Cut(max_tokens=min(limits) if limits else 10**9, keep=keep)

    def tokenize(self, text: Text, *, max_tokens: int | None = None, keep: str = "start") -> Tokens:
        """Tokens of a text (or of token ids), cut to max_tokens and to the model's positions."""
        cut = self.cut(max_tokens, keep)
        if isinstance(text, str):
            return tokenize(self.tokenizer, text, max_tokens=cut.max_tokens, keep=cut.keep)
        return from_ids(self.tokenizer, text, max_tokens=cut.max_tokens, keep=cut.keep)

    def __repr__(self) -> str:
        info = self.info
        return (f"attnscope.Model({self.spec.name!r}, {self.kind}, {info.get('n_layers')} layers x "
                f"{info.get('n_heads')} heads, {info.get('max_positions')} positions, on {info.get('device')} in "
                f"{info.get('dtype')})")


def load(model: str = "smollm2-135m", *, revision: str | None = None, device: str = "auto", dtype: str = "auto",
         quantize: str = "none", trust_remote_code: bool = False, progress: ProgressFn | None = None) -> Model:
    """Load a packaged alias ("smollm2-135m", "minilm-l6"), a Hugging Face hub id or a local folder.

    Args:
        model: alias, hub id ("org/name") or local folder.
        revision: hub branch, tag or commit (hub ids only).
        device: "auto" (the first GPU when torch sees one, else the CPU), "cpu", "cuda", "cuda:N", or "map" (the
            layers spread over every GPU and then the CPU: accelerate's device_map="auto").
        dtype: "auto" (bfloat16 on a GPU, float32 on the CPU), "float32", "bfloat16" or "float16".
        quantize: "none", "8bit" or "4bit" weights (bitsandbytes, on a GPU).
        trust_remote_code: run code shipped with a hub model.
        progress: progress(fraction, message) while a packaged model is prepared the first time.

    Every analysis runs where the model runs; only small results come back to the CPU.

    Raises:
        ValueError: a device, dtype or quantize that is not one of the choices.
        attnscope.models.ModelLoadError: one sentence saying what went wrong and what to do (no GPU, not enough
            memory, no bitsandbytes, ...).
    """
    spec = ModelSpec(name=model, revision=revision or None, trust_remote_code=trust_remote_code, device=device,
                     dtype=dtype, quantize=quantize)
    return Model(load_model(spec, progress=progress))  # a wrong placement fails there before anything is read


def source(model: Model, cache: bool | object = False) -> Source:
    """The Source the entry points run their units against: with the default disk cache when cache is True, with
    the given attnscope.cache.ResultCache, or without one."""
    if cache is True:
        from attnscope.cache import ResultCache

        cache = ResultCache.default()
    return Source(model, cache=None if cache is False else cache)


def stats(model: Model, text: Text, *, max_tokens: int | None = None, keep: str = "start",
          progress: ProgressFn | None = None, cache: bool = False):
    """Every head's attention statistics over the text: entropy (and normalised), max weight, sink mass, mean distance.

    Returns an attnscope.studies.maps.StatsResult (arrays (layers, heads)).
    """
    from attnscope.studies import maps as study

    return study.stats(source(model, cache), text, cut=model.cut(max_tokens, keep), progress=progress)


def maps(model: Model, text: Text, *, layer: int = 0, heads: Sequence[int] | None = None,
         max_tokens: int | None = None, keep: str = "start", cell_limit: int | None = None, reduce: str = "mean",
         hide_sink: bool = False, queries: tuple[int, int] | None = None, keys: tuple[int, int] | None = None,
         map_scale: str | None = None, progress: ProgressFn | None = None, cache: bool = False):
    """Attention maps of one layer's heads (all by default), pooled into tiles when longer than cell_limit.

    queries, keys: a zoom, (start, end) token positions with the end excluded (either alone: the other side is the
    whole text), drawn token by token; a side longer than cell_limit is refused. map_scale: the colour scale the
    result's figures draw, "linear", "log" or "row" (default from attnscope.settings).
    Returns an attnscope.studies.maps.MapsResult.
    """
    from attnscope.studies import maps as study

    return study.maps(source(model, cache), text, cut=model.cut(max_tokens, keep), layer=layer, heads=heads,
                      cell_limit=cell_limit, reduce=reduce, hide_sink=hide_sink, queries=queries, keys=keys,
                      map_scale=map_scale, progress=progress)


def taylor(model: Model, text: Text, **settings):
    """Softmax vs its order-n Taylor expansion, every head; see attnscope.studies.taylor.run for the settings."""
    from attnscope.studies import taylor as study

    cache = settings.pop("cache", False)
    return study.run(source(model, cache), text, **settings)


def collapse(model: Model, text: Text | None = None, **settings):
    """Context collapse over context lengths (None: the built-in long document); see attnscope.studies.collapse.run
    for the settings."""
    from attnscope.studies import collapse as study

    cache = settings.pop("cache", False)
    return study.run(source(model, cache), text, **settings)


def batch(model: Model, prompts: Sequence, *, study: str = "stats", progress: ProgressFn | None = None,
          cache: bool = False, **settings):
    """The same study ("stats", "taylor" or "collapse") over each prompt, with mean and spread over prompts.

    prompts: texts, or (name, text) pairs. settings: the study's keywords (max_tokens, max_order, max_length, ...).
    Returns an attnscope.studies.batch.BatchResult.
    """
    from attnscope.studies import batch as study_module

    named = [(p[0], p[1]) if isinstance(p, tuple) else (f"prompt {i + 1}", p) for i, p in enumerate(prompts)]
    return study_module.run(source(model, cache), named, study=study, settings=settings, progress=progress)


def generate(model: Model, text: Text, *, max_new_tokens: int | None = None, sample: bool = False,
             temperature: float | None = None, top_p: float | None = None, seed: int = 0, chat: str = "auto",
             time_limit: float | None = None, on_token=None, progress: ProgressFn | None = None):
    """The model continues the text (greedy, or sampled with temperature / top_p / seed; as one user turn of its chat
    template when it has one, unless chat="off"), and every step's attention is measured: per layer and head, the
    entropy, max weight, weight on the first token and mean distance of the generated token's query row.

    on_token(text_so_far) streams the continuation. Returns an attnscope.studies.generation.GenerationResult; its
    `text_ids` (prompt and continuation) give the maps of the whole text: attnscope.maps(model, result.text_ids).
    """
    from attnscope import settings as S
    from attnscope.studies import generation as study

    checked = {key: S.check(key, value) for key, value in (
        ("max_new_tokens", S.default("max_new_tokens") if max_new_tokens is None else max_new_tokens),
        ("temperature", S.default("temperature") if temperature is None else temperature),
        ("top_p", S.default("top_p") if top_p is None else top_p), ("seed", seed), ("chat", chat))}
    return study.run(source(model), text, sample=sample, time_limit=time_limit, on_token=on_token,
                     progress=progress, **checked)


def compare(model: Model, text: Text, *, model_b: Model | None = None, text_b: Text | None = None,
            layer: int | None = 0, head: int = 0, max_tokens: int | None = None, keep: str = "start",
            cell_limit: int | None = None, reduce: str = "mean", hide_sink: bool = False,
            progress: ProgressFn | None = None, cache: bool = False):
    """Two runs side by side: side A is the model on the text, side B model_b (default: the same model) on text_b
    (default: the same text). Both sides' per-head statistics and B - A (head by head when the models have the same
    layers x heads, else each layer's mean over heads, layers paired by relative depth: see
    attnscope.studies.compare), and one head's maps of both with their difference when both texts have the same number
    of tokens.

    layer, head: the head whose maps are drawn (it must exist in both models); layer=None draws no maps.
    Returns an attnscope.studies.compare.CompareResult.
    """
    from attnscope.studies import compare as study

    model_b = model if model_b is None else model_b
    source_a = source(model, cache)
    source_b = source_a if model_b is model else source(model_b, cache)  # one model keeps at most one capture
    return study.run(source_a, text, model.cut(max_tokens, keep), source_b, text if text_b is None else text_b,
                     model_b.cut(max_tokens, keep), layer=layer, head=head, cell_limit=cell_limit, reduce=reduce,
                     hide_sink=hide_sink, progress=progress)


def atlas(model: Model, corpus, out, *, engine: str = "local", address: str | None = None, workers: int = 2,
          max_tokens: int = 512, limit: int | None = None, seed: int = 0, shard_size: int = 16,
          text_column: str = "text", taylor_tokens: int = 128, progress: ProgressFn | None = None):
    """Every head's fingerprint over a corpus (a folder of .txt/.md, a .jsonl/.csv/.parquet file with a text column,
    or a datasets folder), written to the folder `out` as Parquet shards; a second call resumes what is missing.
    engine "ray" spreads documents over `workers` Ray actors (a local instance, or the cluster at `address`).

    Returns the AtlasResult (per-head means over documents with spread and 95% intervals, findings, figures,
    .diff(other)); attnscope.open(out) reopens it and attnscope.studies.atlas.read(out) gives the per-document rows.
    """
    from attnscope.studies import atlas as study

    settings = study.Settings(max_tokens=max_tokens, limit=limit, seed=seed, shard_size=shard_size,
                              text_column=text_column, taylor_tokens=taylor_tokens)
    return study.run(model, corpus, out, settings=settings, engine=engine, address=address, workers=workers,
                     progress=progress)


def open(path) -> Result:  # noqa: A001 - attnscope.open(path) reads what result.save(path) wrote
    """Read a result saved as .json or .parquet, or summarise an atlas folder."""
    from pathlib import Path

    if Path(path).is_dir():
        from attnscope.studies import atlas as study

        return study.open_atlas(path)
    return open_result(path)
