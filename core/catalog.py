"""The studies attnscope offers, each declared once: its name, help, inputs, the settings it takes, its run function
and its result type.

Every client reads this table: attnscope.api.run checks a call against it (the settings come from attnscope.settings,
validated and defaulted there) and calls the run function; the CLI makes one subcommand per study with one option per
setting; the dashboard's Batch page lists the studies it can batch and their settings from it. Adding a study means
adding its row here and its module under attnscope.studies.

A study's run function is named here as "module:function" and imported only when the study runs, so reading the
catalog (for `attnscope --help`) imports neither torch nor transformers. The names are fixed in this file: nothing a
user or a file says chooses which code is imported.

Inputs, and how run calls the function:
    "text"      fn(source, text, cut=Cut, progress=..., **settings)
    "text?"     the same, where text None means the study's built-in text
    "prompt"    fn(source, text, progress=..., **settings) (read whole; generation takes no token cut)
    "pair"      fn(source_a, text_a, cut_a, source_b, text_b, cut_b, progress=..., **settings)
    "prompts"   fn(source, [(name, text), ...], study=..., settings={...}, progress=...)
    "corpus"    fn(model, corpus, out, progress=..., **settings)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from attnscope import settings as S

PLACEMENT = ("model", "revision", "device", "dtype", "quantize", "trust_remote_code")  # what attnscope.load takes
CUT = ("max_tokens", "keep")  # how much of a text is read, for the studies that cut


@dataclass(frozen=True)
class Study:
    name: str  # the API function, the CLI subcommand
    help: str  # one line: what it measures
    inputs: str  # see the module's docstring
    run: str  # "module:function", imported when the study runs
    result: str  # "module:Class" of what it returns
    settings: tuple[str, ...]  # keys of attnscope.settings the study takes, beyond its inputs
    cuts: tuple[str, ...] = CUT  # the token-cut settings it takes: max_tokens and keep, max_tokens only, or none
    cached: bool = True  # its units go through the result cache
    batchable: bool = False  # the Batch page and attnscope.batch can run it over many prompts
    extras: tuple[str, ...] = ()  # API keywords outside the settings table (callbacks, expert knobs the study checks)
    # Settings for which None is a choice of its own, not "the default": compare's layer=None draws no maps. Their API
    # keyword defaults to the table's default itself.
    nones: tuple[str, ...] = ()

    def keys(self) -> tuple[str, ...]:
        """Every setting a call takes: the token cut (when it cuts), the study's own, and the result cache."""
        return self.cuts + self.settings + (("cache",) if self.cached else ())

    def function(self):
        module, _, name = self.run.partition(":")
        return getattr(importlib.import_module(module), name)

    def result_class(self):
        module, _, name = self.result.partition(":")
        return getattr(importlib.import_module(module), name)

    def defaults(self) -> dict:
        return {key: S.default(key) for key in self.keys()}


STUDIES: dict[str, Study] = {study.name: study for study in (
    Study("stats", "every head's entropy, max weight, sink mass, mean distance, and head-type scores (previous "
          "token, duplicate token, induction)", "text", "attnscope.studies.maps:stats",
          "attnscope.studies.maps:StatsResult", (), batchable=True, extras=("induction_copy",)),
    Study("maps", "attention maps of one layer's heads, pooled into tiles when long", "text",
          "attnscope.studies.maps:maps", "attnscope.studies.maps:MapsResult",
          ("layer", "heads", "cell_limit", "reduce", "hide_sink", "queries", "keys", "map_scale")),
    Study("taylor", "softmax against its order-n Taylor expansion, every head", "text",
          "attnscope.studies.taylor:run", "attnscope.studies.taylor:TaylorResult",
          ("max_order", "n_tokens", "clamp", "clamp_value", "tolerance"), batchable=True,
          extras=("taylor_layer", "taylor_head", "taylor_order", "query", "row_denominator", "rnn_tokens", "losses")),
    Study("collapse", "context collapse over context lengths, each figure against its bound", "text?",
          "attnscope.studies.collapse:run", "attnscope.studies.collapse:CollapseResult",
          ("max_length", "windows", "rows", "vectors"), cuts=("max_tokens",), batchable=True),
    Study("generate", "continue the text and measure each generated token's attention", "prompt",
          "attnscope.studies.generation:run", "attnscope.studies.generation:GenerationResult",
          ("max_new_tokens", "sample", "temperature", "top_p", "seed", "chat"), cuts=(), cached=False,
          extras=("on_token", "time_limit")),
    Study("compare", "two texts, two models, or both, side by side: every head's statistics, one head's maps, and "
          "B - A", "pair", "attnscope.studies.compare:run", "attnscope.studies.compare:CompareResult",
          ("layer", "head", "cell_limit", "reduce", "hide_sink"), nones=("layer",)),
    Study("ablate", "each head's effect on the loss when its output is removed (zero or mean ablation)", "text",
          "attnscope.studies.why:ablate", "attnscope.studies.why:AblationResult", ("mode", "heads", "target")),
    Study("contributions", "which heads and keys each token's residual stream is made of, layer by layer "
          "(information-flow routes)", "text", "attnscope.studies.why:contributions",
          "attnscope.studies.why:ContributionsResult", ("norm", "threshold", "token", "renormalize")),
    Study("batch", "the same study over many prompts, with the mean and spread over prompts", "prompts",
          "attnscope.studies.batch:run", "attnscope.studies.batch:BatchResult", ("study",)),
    Study("atlas", "every head's fingerprint over a corpus, as resumable Parquet shards", "corpus",
          "attnscope.studies.atlas:run", "attnscope.studies.atlas:AtlasResult",
          ("atlas_tokens", "limit", "seed", "shard_size", "text_column", "taylor_tokens", "engine", "workers",
           "address"), cuts=(), cached=False, extras=("deadline", "budget")),
)}

# Every kind of result a file may hold, to the class that reads it back (attnscope.open): a fixed table, so a file
# never chooses which module is imported.
RESULTS: dict[str, str] = {
    "stats": "attnscope.studies.maps:StatsResult",
    "maps": "attnscope.studies.maps:MapsResult",
    "taylor": "attnscope.studies.taylor:TaylorResult",
    "collapse": "attnscope.studies.collapse:CollapseResult",
    "generation": "attnscope.studies.generation:GenerationResult",
    "compare": "attnscope.studies.compare:CompareResult",
    "batch": "attnscope.studies.batch:BatchResult",
    "ablation": "attnscope.studies.why:AblationResult",
    "contributions": "attnscope.studies.why:ContributionsResult",
    "value-weighted": "attnscope.studies.why:ValueWeightedResult",
    "rollout": "attnscope.studies.why:RolloutResult",
    "atlas": "attnscope.studies.atlas:AtlasResult",
    "atlas-diff": "attnscope.studies.atlas:AtlasDiff",
}


# The dataclasses a result holds inside its fields, by the name its file gives them ("module:Class"). With RESULTS,
# these are every class attnscope.open builds: a file naming any other class is refused before anything is imported,
# and saving a result that holds any other fails (it could not be opened again).
PARTS: tuple[str, ...] = (
    "attnscope.studies.maps:StatsResult",  # the two sides of a compare
    "attnscope.studies.maps:MapsResult",
    "attnscope.studies.taylor:QueryProbe",
    "attnscope.studies.taylor:Losses",
    "attnscope.analyses.taylor:ModelSweep",
    "attnscope.analyses.taylor:RowWeights",
    "attnscope.analyses.taylor:RecurrentCheck",
    "attnscope.studies.collapse:CriticalN",
    "attnscope.analyses.collapse:LengthSummary",
    "attnscope.analyses.atlas:Summary",
    "attnscope.analyses.atlas:Difference",
)
_READABLE = frozenset(RESULTS.values()) | frozenset(PARTS)


def readable(name: object) -> bool:
    """Whether a result file may name the class `name` ("module:Class"): one of RESULTS or PARTS."""
    return isinstance(name, str) and name in _READABLE


def readable_class(name: str) -> type:
    """The class called `name`, one of RESULTS or PARTS (imported now, from this table); ValueError for any other
    name, before anything is imported."""
    if not readable(name):
        raise ValueError(f"{name!r} is not a class attnscope results hold")
    module, _, qualname = name.partition(":")
    return getattr(importlib.import_module(module), qualname)


def study(name: str) -> Study:
    """The study called `name`; ValueError with the list otherwise."""
    if not isinstance(name, str) or name not in STUDIES:
        raise ValueError(f"There is no study {name!r}: attnscope's studies are {', '.join(STUDIES)}.")
    return STUDIES[name]


def batchable() -> dict[str, str]:
    """The studies Batch runs over many prompts: name -> label."""
    labels = S.setting("study").domain.labels
    return {name: labels.get(name, name) for name, entry in STUDIES.items() if entry.batchable}
