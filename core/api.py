"""The Python API: load a model, run a study on a text, get a result object.

    import attnscope
    model = attnscope.load("smollm2-135m")
    result = attnscope.stats(model, "The capital of France is Paris.")
    result.findings(); result.figures(); result.to_frame(); result.save("stats.parquet")
    attnscope.open("stats.parquet")

Every study is one call of `run(study, model, inputs..., **settings)`: which studies exist, what each takes and what
it returns is declared once in attnscope.catalog, and every setting's default and domain once in attnscope.settings,
the table the CLI and the dashboard read too, so the three agree. The named functions (stats, maps, taylor, ...) are
thin calls of `run` with their settings spelled out for help() and editors; a setting left at None takes the table's
default. `progress(fraction, message)` is called as the work moves; `cache=True` (the default, as in the CLI and the
dashboard) keeps results in the disk cache under the attnscope cache folder, so a second call with the same model,
text and settings is read back instead of computed (`cache=attnscope.cache.ResultCache(folder)`: a cache of your
own; `cache=False`: none).

`model` is the handle `load` returns (or a Source wrapping it: the dashboard passes its cached one). Everything a caller
passes is checked here, before any work, with one sentence (ValueError) naming the input and what it must be.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from pathlib import Path

from attnscope import catalog
from attnscope import settings as S
from attnscope.models import PACKAGED_MODELS, Model, ModelLoadError, ModelSpec, load_model
from attnscope.reader import Budget
from attnscope.studies.base import RESULT_BUDGET, ProgressFn, Result, Source, open_result

Text = str | Sequence[int]
__all__ = ["PACKAGED_MODELS", "Model", "ModelLoadError", "ModelSpec", "Result", "Source", "ablate", "atlas", "batch",
           "collapse", "compare", "contributions", "generate", "load", "maps", "open", "run", "source", "stats",
           "taylor"]


def load(model: str | ModelSpec | None = None, *, revision: str | None = None, device: str | None = None,
         dtype: str | None = None, quantize: str | None = None, trust_remote_code: bool | None = None,
         progress: ProgressFn | None = None) -> Model:
    """Load a packaged alias ("smollm2-135m", "minilm-l6", "gemma3-270m"), a Hugging Face hub id or a local folder.

    Args (None: the default in attnscope.settings):
        model: alias, hub id ("org/name") or local folder (default smollm2-135m); or a whole ModelSpec (then the
            other arguments are not taken).
        revision: hub branch, tag or commit (hub ids only).
        device: "auto" (the first GPU when torch sees one, else the CPU), "cpu", "cuda", "cuda:N", or "map" (the
            layers spread over every GPU and then the CPU: accelerate's device_map="auto").
        dtype: "auto" (bfloat16 on a GPU, float32 on the CPU), "float32", "bfloat16" or "float16".
        quantize: "none", "8bit" or "4bit" weights (bitsandbytes, on a GPU).
        trust_remote_code: run code shipped with a hub model.
        progress: progress(fraction, message) while a packaged model is prepared the first time.

    Every analysis runs where the model runs; only small results come back to the CPU.

    Raises:
        ValueError: a setting that is not one of its choices.
        attnscope.ModelLoadError: one sentence saying what went wrong and what to do (no GPU, not enough memory, a
            packaged model not installed, ...).
    """
    if isinstance(model, ModelSpec):
        if any(value is not None for value in (revision, device, dtype, quantize, trust_remote_code)):
            raise ValueError("load takes a ModelSpec alone: its revision and placement are in the spec.")
        _settings({"model": model.name, "revision": model.revision, "device": model.device,
                            "dtype": model.dtype, "quantize": model.quantize,
                            "trust_remote_code": model.trust_remote_code}, catalog.PLACEMENT, "load")
        return load_model(model, progress=_progress(progress))
    given = {"model": model, "revision": revision, "device": device, "dtype": dtype, "quantize": quantize,
             "trust_remote_code": trust_remote_code}
    values = _settings(given, catalog.PLACEMENT, "load")
    spec = ModelSpec(name=values["model"], revision=values["revision"], trust_remote_code=values["trust_remote_code"],
                     device=values["device"], dtype=values["dtype"], quantize=values["quantize"])
    return load_model(spec, progress=_progress(progress))  # a wrong placement fails there before anything is read


def source(model: Model | Source, cache: bool | object = False) -> Source:
    """The Source the studies' units run against: `model` itself when it is one; else the model with the default
    disk cache when cache is True, with the given attnscope.cache.ResultCache, or without one."""
    if isinstance(model, Source):
        return model
    if not isinstance(model, Model):
        raise ValueError(_not_a_model(model))
    if cache is True:
        from attnscope.cache import ResultCache

        cache = ResultCache.default()
    return Source(model, cache=None if cache is False else cache)


def run(study: str, model: Model | Source, /, *inputs, progress: ProgressFn | None = None, **settings) -> Result:
    """Run the study called `study` (a name in attnscope.catalog.STUDIES) on `inputs` with `settings` (batch's
    setting `study`, the study run on every prompt, is a keyword: run("batch", model, prompts, study="taylor")).

    inputs: a text (or token ids) for most studies; none for collapse (its built-in document); the prompts for batch;
    the corpus and the output folder for atlas. Compare takes model_b and text_b as settings.
    """
    entry = catalog.study(study)
    extras = {key: settings.pop(key) for key in list(settings) if key in entry.extras}
    pair = {key: settings.pop(key, None) for key in ("model_b", "text_b")} if entry.inputs == "pair" else {}
    inner = None
    if entry.inputs == "prompts":  # the settings of the study run on every prompt
        kind = S.check("study", settings.pop("study", None) or S.default("study"))
        inner = catalog.study(kind)
        cache = settings.pop("cache", None)
        values = _settings(settings, tuple(k for k in inner.keys() if k != "cache"), f"batch of {kind}")
        values = {"study": kind, "cache": _check("cache", S.default("cache") if cache is None else cache),
                  "settings": values}
    else:
        values = _settings(settings, entry.keys(), study, nones=entry.nones)
    report = _progress(progress)
    fn = entry.function()
    if entry.inputs == "corpus":
        return _atlas(fn, model, inputs, values, report, extras)
    where = source(model, values.pop("cache", False))
    if entry.inputs == "prompts":
        named = _prompts(_one(inputs, study, "the prompts"))
        return fn(where, named, study=values["study"], settings=values["settings"], progress=report)
    text = _in_vocabulary(_text(_one(inputs, study, "a text", optional=entry.inputs == "text?"),
                                optional=entry.inputs == "text?"), where.model)
    if entry.inputs == "prompt":
        return fn(where, text, progress=report, **values, **extras)
    max_tokens, keep = values.pop("max_tokens", None), values.pop("keep", "start")
    if entry.inputs == "pair":
        model_b = pair["model_b"]
        where_b = where if model_b is None or model_b is model else source(model_b, where.cache is not None)
        text_b = text if pair["text_b"] is None else _in_vocabulary(_text(pair["text_b"], name="text_b"),
                                                                     where_b.model, "text_b")
        return fn(where, text, where.cut(max_tokens, keep), where_b, text_b, where_b.cut(max_tokens, keep),
                  progress=report, **values)
    return fn(where, text, cut=where.cut(max_tokens, keep), progress=report, **values, **extras)


# ---- the studies, one thin call of run each -----------------------------------------------------------------------


def stats(model: Model, text: Text, *, max_tokens: int | None = None, keep: str | None = None,
          progress: ProgressFn | None = None, cache: bool | object | None = None):
    """Every head's attention statistics over the text: entropy (and normalised), max weight, sink mass, mean
    distance, and the head-type scores (previous token, duplicate token, induction).

    max_tokens, keep: at most this many tokens (default 2048), from the text's "start" or its "end".
    Returns an attnscope.studies.maps.StatsResult (arrays (layers, heads)).
    """
    return run("stats", model, text, max_tokens=max_tokens, keep=keep, progress=progress, cache=cache)


def maps(model: Model, text: Text, *, layer: int | None = None, heads: Sequence[int] | None = None,
         max_tokens: int | None = None, keep: str | None = None, cell_limit: int | None = None,
         reduce: str | None = None, hide_sink: bool | None = None, queries: tuple[int, int] | None = None,
         keys: tuple[int, int] | None = None, map_scale: str | None = None, progress: ProgressFn | None = None,
         cache: bool | object | None = None):
    """Attention maps of one layer's heads (all by default), pooled into tiles when longer than cell_limit.

    queries, keys: a zoom, (start, end) token positions with the end excluded (either alone: the other side is the
    whole text), drawn token by token; a side longer than cell_limit is refused. map_scale: the colour scale the
    result's figures draw, "linear", "log" or "row".
    Returns an attnscope.studies.maps.MapsResult.
    """
    return run("maps", model, text, layer=layer, heads=heads, max_tokens=max_tokens, keep=keep, cell_limit=cell_limit,
               reduce=reduce, hide_sink=hide_sink, queries=queries, keys=keys, map_scale=map_scale, progress=progress,
               cache=cache)


def taylor(model: Model, text: Text, *, max_order: int | None = None, n_tokens: int | None = None,
           clamp: str | None = None, clamp_value: float | None = None, tolerance: float | None = None,
           max_tokens: int | None = None, keep: str | None = None, progress: ProgressFn | None = None,
           cache: bool | object | None = None, **expert):
    """Softmax vs its order-n Taylor expansion, every head, every denominator.

    expert: taylor_layer, taylor_head, taylor_order (the one-head figures), query, row_denominator, rnn_tokens,
    losses: see attnscope.studies.taylor.run. Returns an attnscope.studies.taylor.TaylorResult.
    """
    return run("taylor", model, text, max_order=max_order, n_tokens=n_tokens, clamp=clamp, clamp_value=clamp_value,
               tolerance=tolerance, max_tokens=max_tokens, keep=keep, progress=progress, cache=cache, **expert)


def collapse(model: Model, text: Text | None = None, *, max_length: int | None = None, windows: int | None = None,
             rows: int | None = None, vectors: str | None = None, max_tokens: int | None = None,
             progress: ProgressFn | None = None, cache: bool | object | None = None):
    """Context collapse over context lengths doubling from 32 to max_length (text None: the built-in long document),
    each figure against its bound. Returns an attnscope.studies.collapse.CollapseResult."""
    return run("collapse", model, text, max_length=max_length, windows=windows, rows=rows, vectors=vectors,
               max_tokens=max_tokens, progress=progress, cache=cache)


def generate(model: Model, text: Text, *, max_new_tokens: int | None = None, sample: bool | None = None,
             temperature: float | None = None, top_p: float | None = None, seed: int | None = None,
             chat: str | None = None, time_limit: float | None = None, on_token: Callable[[str], None] | None = None,
             progress: ProgressFn | None = None):
    """The model continues the text (greedy, or sampled with temperature / top_p / seed; as one user turn of its chat
    template when it has one, unless chat="off"), and every step's attention is measured: per layer and head, the
    entropy, max weight, weight on the first token and mean distance of the generated token's query row.

    on_token(text_so_far) streams the continuation. Returns an attnscope.studies.generation.GenerationResult; its
    `text_ids` (prompt and continuation) give the maps of the whole text: attnscope.maps(model, result.text_ids).
    """
    return run("generate", model, text, max_new_tokens=max_new_tokens, sample=sample, temperature=temperature,
               top_p=top_p, seed=seed, chat=chat, time_limit=time_limit, on_token=on_token, progress=progress)


def compare(model: Model, text: Text, *, model_b: Model | None = None, text_b: Text | None = None,
            layer: int | None = S.default("layer"), head: int | None = None, max_tokens: int | None = None,
            keep: str | None = None,
            cell_limit: int | None = None, reduce: str | None = None, hide_sink: bool | None = None,
            progress: ProgressFn | None = None, cache: bool | object | None = None):
    """Two runs side by side: side A is the model on the text, side B model_b (default: the same model) on text_b
    (default: the same text). Both sides' per-head statistics and B - A (head by head when the models have the same
    layers x heads, else each layer's mean over heads, layers paired by relative depth: see
    attnscope.studies.compare), and one head's maps of both with their difference when both texts have the same number
    of tokens. layer, head: the head whose maps are drawn (it must exist in both models); layer=None draws no maps.

    Returns an attnscope.studies.compare.CompareResult.
    """
    return run("compare", model, text, model_b=model_b, text_b=text_b, layer=layer, head=head, max_tokens=max_tokens,
               keep=keep, cell_limit=cell_limit, reduce=reduce, hide_sink=hide_sink, progress=progress, cache=cache)


def ablate(model: Model, text: Text, *, mode: str | None = None, heads: Sequence | None = None,
           target: int | None = None, max_tokens: int | None = None, keep: str | None = None,
           progress: ProgressFn | None = None, cache: bool | object | None = None):
    """Each head's effect on the loss when its output is removed.

    The loss is the mean next-token cross-entropy over the text (predicting tokens 1..T-1), or with `target` the
    cross-entropy of the token at that position; encoders (no next token) use 1 - cosine similarity of the mean-pooled
    (or the target token's) last hidden state. mode: "zero" sets the head's slice of the attention output (the input
    of the output projection) to 0, "mean" to its mean over the text's positions. heads: None (every head), head
    numbers (those heads in every layer) or (layer, head) pairs. Grouped-query heads ablate the query head only.
    Returns an attnscope.studies.why.AblationResult: to_frame() rows (layer, head, loss, delta).
    """
    return run("ablate", model, text, mode=mode, heads=heads, target=target, max_tokens=max_tokens, keep=keep,
               progress=progress, cache=cache)


def contributions(model: Model, text: Text, *, norm: int | None = None, threshold: float | None = None,
                  token: int | None = None, renormalize: bool | None = None, max_tokens: int | None = None,
                  keep: str | None = None, progress: ProgressFn | None = None, cache: bool | object | None = None):
    """Information-flow contributions (Ferrando & Voita 2024, as llm-transparency-tool defines them): for every layer
    and query, how much each head's value at each key, and the residual stream entering the layer, make of the
    query's residual stream after attention; they sum to 1 per (layer, query).

    norm: 1 (L1 distances) or 2. threshold: keep the edges at or above it (0: all). token: only the edges that lead
    back from this token's stream at the top, layer by layer (llm-transparency-tool's traversal). renormalize: divide
    each query's kept edges by their sum. Never materialises (tokens x tokens x heads x d_model): queries stream in
    chunks.
    Returns an attnscope.studies.why.ContributionsResult: to_frame() rows (layer, query, key, head, contribution),
    key = head = -1 for the residual's part.
    """
    return run("contributions", model, text, norm=norm, threshold=threshold, token=token, renormalize=renormalize,
               max_tokens=max_tokens, keep=keep, progress=progress, cache=cache)


def batch(model: Model, prompts: Sequence, *, study: str | None = None, progress: ProgressFn | None = None,
          cache: bool | object | None = None, **settings):
    """The same study ("stats", "taylor" or "collapse") over each prompt, with mean and spread over prompts.

    prompts: texts, or (name, text) pairs. settings: the study's own (max_tokens, max_order, max_length, ...).
    Returns an attnscope.studies.batch.BatchResult.
    """
    return run("batch", model, prompts, study=study, progress=progress, cache=cache, **settings)


def atlas(model: Model, corpus, out, *, engine: str | None = None, address: str | None = None,
          workers: int | None = None, max_tokens: int | None = None, limit: int | None = None,
          seed: int | None = None, shard_size: int | None = None, text_column: str | None = None,
          taylor_tokens: int | None = None, progress: ProgressFn | None = None):
    """Every head's fingerprint over a corpus (a folder of .txt/.md, a .jsonl/.csv/.parquet file with a text column,
    or a datasets folder), written to the folder `out` as Parquet shards; a second call resumes what is missing.
    engine "ray" spreads documents over `workers` Ray actors (a local instance, or the cluster at `address`).
    max_tokens: tokens analysed per document (the setting atlas_tokens, default 512).

    Returns the AtlasResult (per-head means over documents with spread and 95% intervals, findings, figures,
    .diff(other)); attnscope.open(out) reopens it and attnscope.studies.atlas.read(out) gives the per-document rows.
    """
    return run("atlas", model, corpus, out, engine=engine, address=address, workers=workers, atlas_tokens=max_tokens,
               limit=limit, seed=seed, shard_size=shard_size, text_column=text_column, taylor_tokens=taylor_tokens,
               progress=progress)


def open(path, *, budget: Budget = RESULT_BUDGET) -> Result:  # noqa: A001 - reads what result.save(path) wrote
    """Read a result saved as .json or .parquet, or summarise an atlas folder.

    The file's declared kind picks the result class from a fixed table (attnscope.catalog.RESULTS), so nothing a file
    says chooses which code is imported, and it is read under `budget` (its size, each array's, its nesting; see
    attnscope.studies.base.read_result). A file that is not a result attnscope can read back is one sentence naming
    it (a ValueError)."""
    if not isinstance(path, (str, Path)):
        raise ValueError(f"attnscope.open takes a path (a string or a pathlib.Path); got {type(path).__name__}.")
    if Path(path).is_dir():
        from attnscope.studies import atlas as study

        return study.open_atlas(path, budget=budget)
    return open_result(path, budget=budget)


# ---- checks, the same for every study ------------------------------------------------------------------------------


def _settings(given: dict, keys: Sequence[str], what: str, *, nones: Sequence[str] = ()) -> dict:
    """The settings `keys` of a call: each given value checked against its domain, None taking the default (except
    for the keys in `nones`, where a given None stays None: see catalog.Study.nones)."""
    unknown = sorted(set(given) - set(keys))
    if unknown:
        raise ValueError(f"{what} takes no setting {', '.join(map(repr, unknown))}; its settings are "
                         f"{', '.join(keys)}.")
    kept = {key: None for key in nones if key in given and given[key] is None}
    return {key: kept[key] if key in kept else S.default(key) if given.get(key) is None else _check(key, given[key])
            for key in keys}


def _check(key: str, value):
    """S.check, except that `cache` also takes an attnscope.cache.ResultCache (a cache folder of the caller's own)."""
    if key == "cache" and not isinstance(value, bool):
        from attnscope.cache import ResultCache

        if isinstance(value, ResultCache):
            return value
    return S.check(key, value)


def _one(inputs: tuple, study: str, what: str, *, optional: bool = False):
    if len(inputs) == 1:
        return inputs[0]
    if not inputs and optional:
        return None
    raise ValueError(f"{study} takes {what} after the model; got {len(inputs)} inputs.")


def _not_a_model(value) -> str:
    if isinstance(value, str):
        return (f"model is the string {value!r}: load it first, model = attnscope.load({value!r}), and pass the "
                "model.")
    return f"model must be what attnscope.load returns; got {type(value).__name__}."


def _text(value, *, optional: bool = False, name: str = "text") -> str | tuple[int, ...] | None:
    """A text as a string, or token ids as a tuple of ints (a list, a 1-D or (1, T) tensor or array)."""
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name} is None: give a string, or token ids as a list of ints.")
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        raise ValueError(f"{name} is bytes: decode it first ({name}.decode('utf-8')), or give token ids as a list "
                         "of ints.")
    shape = getattr(value, "shape", None)
    if shape is not None:  # a torch tensor or a numpy array of ids
        if len(shape) == 2 and shape[0] == 1:
            value = value[0]
        elif len(shape) != 1:
            raise ValueError(f"{name} is an array of shape {tuple(shape)}: give one sequence of token ids, shape (T,) "
                             "or (1, T).")
        value = value.tolist()
    if isinstance(value, Sequence) and all(isinstance(i, numbers.Integral) and not isinstance(i, bool)
                                           for i in value):
        if not value:
            raise ValueError(f"{name} holds no token ids.")
        if min(value) < 0:
            raise ValueError(f"{name} holds a negative token id ({min(value)}).")
        return tuple(int(i) for i in value)
    raise ValueError(f"{name} must be a string or token ids (a list of ints); got {type(value).__name__}.")


def _in_vocabulary(text, model: Model, name: str = "text"):
    """Token ids the model has embeddings for (a string passes as it is)."""
    if isinstance(text, tuple):
        size = model.model.get_input_embeddings().num_embeddings
        if max(text) >= size:
            raise ValueError(f"{name} holds token id {max(text)}, but {model.spec.name} has {size} tokens (ids 0.."
                             f"{size - 1}).")
    return text


def _prompts(prompts) -> list[tuple[str, str | tuple[int, ...]]]:
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise ValueError("prompts must be a list of texts or of (name, text) pairs.")
    named = []
    for index, prompt in enumerate(prompts):
        if isinstance(prompt, tuple) and len(prompt) == 2 and isinstance(prompt[0], str):
            named.append((prompt[0], _text(prompt[1], name=f"prompt {prompt[0]!r}")))
        else:
            named.append((f"prompt {index + 1}", _text(prompt, name=f"prompt {index + 1}")))
    return named


def _progress(progress) -> ProgressFn | None:
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be a function progress(fraction, message); got {type(progress).__name__}.")
    return progress


def _atlas(fn, model, inputs: tuple, values: dict, progress, extras: dict):
    from attnscope.studies.atlas import Settings

    if len(inputs) != 2:
        raise ValueError("atlas takes the corpus and the output folder after the model.")
    corpus, out = inputs
    for name, value in (("corpus", corpus), ("out", out)):
        if not isinstance(value, (str, Path)):
            raise ValueError(f"{name} must be a path (a string or a pathlib.Path); got {type(value).__name__}.")
    handle = model.model if isinstance(model, Source) else model
    if not isinstance(handle, Model):
        raise ValueError(_not_a_model(model))
    settings = Settings(max_tokens=values["atlas_tokens"], limit=values["limit"], seed=values["seed"],
                        shard_size=values["shard_size"], text_column=values["text_column"],
                        taylor_tokens=values["taylor_tokens"])
    return fn(handle, corpus, out, settings=settings, engine=values["engine"], address=values["address"],
              workers=values["workers"], progress=progress, **extras)
