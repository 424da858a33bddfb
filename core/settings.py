"""Every user-facing setting, defined once: its key, default, domain, label and help.

One table drives the dashboard's widgets (app/widgets.py), the permalink parser and writer (app/permalink.py), the
CLI's options (attnscope.cli) and the API's checks and defaults (attnscope.api.run): it is the only place a default
lives. Which study takes which setting is declared in attnscope.catalog. This module imports nothing heavy (no torch),
so the CLI's help and the catalog read it at once. A setting stores a *stable value* ("one_head",
"upper"), never its display label, so renaming a label breaks no link; links written before this table existed
carried labels, and each choice lists those as `legacy` spellings that are still read.

Domains parse text (a URL parameter or a CLI argument) into a value and raise ValueError with a sentence fragment
("must be ...") when they cannot; `format` writes a value back as text.
"""

from __future__ import annotations

import math
import numbers
import re
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

TOKEN_CEILING = 32768  # the most tokens any setting can ask for
NEW_TOKEN_CEILING = 4096  # the most new tokens any generation can ask for
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of values; `labels` are what a person reads, `legacy` older spellings still accepted."""

    values: tuple
    labels: Mapping = field(default_factory=dict)  # value -> display label
    legacy: Mapping = field(default_factory=dict)  # old text -> value

    def parse(self, text: str):
        text = str(text)
        for value in self.values:
            if text == str(value):
                return value
        if text in self.legacy:
            return self.legacy[text]
        raise ValueError(f"must be one of {', '.join(map(str, self.values))}")

    def format(self, value) -> str:
        return str(value)

    def check(self, value):
        if not isinstance(value, str):
            raise ValueError(f"must be one of {', '.join(map(repr, self.values))}")
        return self.parse(value)

    def label(self, value) -> str:
        return self.labels.get(value, str(value))


@dataclass(frozen=True)
class Integer:
    """A whole number low <= n <= high; with `optional`, None too (written "none": no limit)."""

    low: int
    high: int
    step: int = 1
    optional: bool = False

    def parse(self, text: str) -> int | None:
        text = str(text).strip()
        if self.optional and text.lower() in ("none", ""):
            return None
        if not re.fullmatch(r"-?[0-9]{1,10}", text) or not self.low <= int(text) <= self.high:
            whole = f"a whole number between {self.low} and {self.high}"
            raise ValueError(f"must be {whole}" + (" or none" if self.optional else ""))
        return int(text)

    def format(self, value) -> str:
        return "none" if value is None else str(int(value))

    def check(self, value) -> int | None:
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)) or (
                isinstance(value, numbers.Real) and not float(value).is_integer()):
            raise ValueError(self._what())
        return self.parse(value if isinstance(value, str) else str(int(value)))

    def _what(self) -> str:
        return (f"must be a whole number between {self.low} and {self.high}" + (" or None" if self.optional else ""))


@dataclass(frozen=True)
class Text:
    """A short string (a column name, an address, a model id), at most max_chars; with `optional`, None too."""

    max_chars: int = 200
    optional: bool = False

    def parse(self, text: str) -> str | None:
        text = str(text)
        if self.optional and text in ("", "none"):
            return None
        if not text.strip() or len(text) > self.max_chars or any(ord(c) < 32 for c in text):
            raise ValueError(f"must be a text of 1 to {self.max_chars} printable characters")
        return text

    def format(self, value) -> str:
        return "none" if value is None else str(value)

    def check(self, value):
        if value is None and self.optional:
            return None
        if not isinstance(value, str):
            raise ValueError(f"must be a string of 1 to {self.max_chars} characters")
        return self.parse(value)


@dataclass(frozen=True)
class Pattern:
    """A string that matches `regex` whole; `what` says in words what it must be."""

    regex: str
    what: str

    def parse(self, text: str) -> str:
        text = str(text).strip()
        if len(text) > 100 or not re.fullmatch(self.regex, text):
            raise ValueError(f"must be {self.what}")
        return text

    def format(self, value) -> str:
        return str(value)

    def check(self, value) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be {self.what}")
        return self.parse(value)


@dataclass(frozen=True)
class Heads:
    """Head numbers ("0,3,5"), or heads of given layers as layer.head ("5.1,7.0", ablation only); None (written
    "all") is every head. Whether they exist is checked with the model."""

    def parse(self, text: str) -> tuple | None:
        text = str(text).strip()
        if text in ("", "all"):
            return None
        if re.fullmatch(r"[0-9]{1,4}(\s*,\s*[0-9]{1,4}){0,1023}", text):
            return tuple(int(h) for h in text.split(","))
        if re.fullmatch(r"[0-9]{1,4}\.[0-9]{1,4}(\s*,\s*[0-9]{1,4}\.[0-9]{1,4}){0,65535}", text):
            return tuple(tuple(int(n) for n in pair.strip().split(".")) for pair in text.split(","))
        raise ValueError("must be head numbers separated by commas, e.g. 0,3,5, layer.head pairs, e.g. 5.1,7.0, "
                         "or all")

    def format(self, value) -> str:
        if value is None:
            return "all"
        return ",".join(f"{int(h[0])}.{int(h[1])}" if isinstance(h, tuple) else str(int(h)) for h in value)

    def check(self, value):
        if value is None:
            return None
        what = ("must be a list of head numbers, e.g. [0, 3], of (layer, head) pairs, e.g. [(5, 1), (7, 0)], or None "
                "for every head")
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ValueError(what)
        heads = list(value)
        whole = lambda n: isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 0  # noqa: E731
        if heads and all(whole(h) for h in heads):
            return tuple(int(h) for h in heads)
        if heads and all(isinstance(h, (tuple, list)) and len(h) == 2 and all(whole(n) for n in h) for h in heads):
            return tuple((int(h[0]), int(h[1])) for h in heads)
        raise ValueError(what)


def head_numbers(heads: tuple | None, study: str) -> tuple[int, ...] | None:
    """`heads` when they are head numbers; ValueError when they are layer.head pairs (`study` draws one layer)."""
    if heads is not None and any(isinstance(h, tuple) for h in heads):
        raise ValueError(f"heads: {study} shows heads of one layer, so give head numbers, e.g. [0, 3] (layer.head "
                         "pairs are for ablation).")
    return heads


@dataclass(frozen=True)
class Number:
    """A real number with low < x <= high (low <= x <= high when `closed`)."""

    low: float
    high: float
    closed: bool = False

    def parse(self, text: str) -> float:
        try:
            number = float(str(text))
        except ValueError:
            raise ValueError("must be a number") from None
        above = self.low <= number if self.closed else self.low < number
        if math.isnan(number) or not (above and number <= self.high):
            raise ValueError(f"must be a number in {self._range()}")
        return number

    def format(self, value) -> str:
        return f"{float(value):g}"

    def check(self, value) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"must be a number in {self._range()}")
        return self.parse(repr(float(value)))

    def _range(self) -> str:
        return f"{'[' if self.closed else '('}{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class NumberChoice:
    """One of a few numbers (compared with a relative tolerance, so 1e-2 and 0.01 are the same)."""

    values: tuple[float, ...]

    def parse(self, text: str) -> float:
        try:
            number = float(str(text))
        except ValueError:
            raise ValueError("must be a number") from None
        match = [v for v in self.values if abs(v - number) <= 1e-12 * max(abs(v), 1)]
        if not match:
            raise ValueError(f"must be one of {', '.join(f'{v:g}' for v in self.values)}")
        return match[0]

    def format(self, value) -> str:
        return f"{float(value):g}"

    def check(self, value) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"must be one of {', '.join(f'{v:g}' for v in self.values)}")
        return self.parse(repr(float(value)))


@dataclass(frozen=True)
class Flag:
    def parse(self, text: str) -> bool:
        text = str(text).lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError("must be 1 or 0")

    def format(self, value) -> str:
        return "1" if value else "0"

    def check(self, value) -> bool:
        if isinstance(value, numbers.Integral) and value in (0, 1):  # True, False, 0, 1, numpy's bools
            return bool(value)
        raise ValueError("must be True or False")


@dataclass(frozen=True)
class Span:
    """A half-open range of token positions "start:end" (end excluded), low <= start < end <= high; None (written
    "all") is the whole text. Whether the range fits a text is checked where the text is known."""

    low: int
    high: int

    def parse(self, text: str) -> tuple[int, int] | None:
        text = str(text).strip()
        if text in ("", "all"):
            return None
        match = re.fullmatch(r"([0-9]{1,9})\s*:\s*([0-9]{1,9})", text)
        if match is None or not self.low <= int(match[1]) < int(match[2]) <= self.high:
            raise ValueError(f"must be start:end with {self.low} <= start < end <= {self.high}, e.g. 100:356, or all")
        return int(match[1]), int(match[2])

    def format(self, value) -> str:
        return "all" if value is None else f"{int(value[0])}:{int(value[1])}"

    def check(self, value) -> tuple[int, int] | None:
        if value is None:
            return None
        try:
            start, end = value
            text = f"{int(start)}:{int(end)}" if all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                                        for v in (start, end)) else "?"
        except (TypeError, ValueError):
            text = "?"
        return self.parse(text)


@dataclass(frozen=True)
class Setting:
    key: str  # session_state key, API keyword and (with dashes) CLI option
    default: object
    domain: Choice | Integer | Number | NumberChoice | Flag | Span | Text | Heads | Pattern
    label: str
    help: str = ""
    url: str | None = None  # URL parameter; None: not carried by links

    @property
    def option(self) -> str:
        """The CLI option: --max-order for max_order."""
        return "--" + self.key.replace("_", "-")

    def parse(self, text: str):
        return self.domain.parse(text)

    def format(self, value) -> str:
        return self.domain.format(value)

    def check(self, value):
        """An API value, validated (the same domain as the CLI's and the links' text)."""
        return self.domain.check(value)


# ---- choices with stable values ------------------------------------------------------------------------------------

VIEWS = Choice(("one_head", "all_heads", "query", "stats"),
               labels={"one_head": "One head", "all_heads": "All heads", "query": "One query token",
                       "stats": "Head statistics"},
               legacy={"One head": "one_head", "All heads": "all_heads", "One query token": "query",
                       "Head statistics": "stats"})
CLAMPS = Choice(("none", "upper", "both"),
                labels={"none": "no clamp", "upper": "clamp above (paper)", "both": "clamp both sides"},
                legacy={"no clamp": "none", "clamp above (paper)": "upper", "clamp both sides": "both"})
SOURCES = Choice(("builtin", "sidebar"),
                 labels={"builtin": "Built-in long document", "sidebar": "The sidebar text"},
                 legacy={"Built-in long document": "builtin", "The sidebar text": "sidebar"})
# How a map's weights become colours (attnscope.figures.maps.colour_values). Log is the default: over a long text a
# row's weights span several decades (a 3,000-token row averages 3e-4 per key beside a first token holding most of
# it), so a linear scale gives nearly every cell the bottom colour, while log10 shows the structure at every decade
# and, unlike per-row scaling, still compares rows (a diffuse row stays dim).
MAP_SCALES = Choice(("linear", "log", "row"),
                    labels={"log": "log", "linear": "linear", "row": "per row"})
TOLERANCES = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4, 1e-6)
COLLAPSE_LENGTHS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)

_TABLE: tuple[Setting, ...] = (
    # the model and where it runs (attnscope.load; the CLI's --model, --device, ...)
    Setting("model", DEFAULT_MODEL, Text(300), "Model",
            "A packaged alias (smollm2-135m, minilm-l6, gemma3-270m), a Hugging Face hub id or a local folder."),
    Setting("revision", None, Text(100, optional=True), "Revision", "Hub branch, tag or commit (hub ids only)."),
    Setting("device", "auto", Pattern(r"auto|cpu|cuda|cuda:[0-9]{1,2}|map", "auto, cpu, cuda, cuda:N or map"),
            "Device", "auto: the first GPU when torch sees one, else the CPU; map: the layers spread over every GPU "
            "and then the CPU."),
    Setting("dtype", "auto", Choice(("auto", "float32", "bfloat16", "float16")), "Precision",
            "auto: bfloat16 on a GPU, float32 on the CPU."),
    Setting("quantize", "none", Choice(("none", "8bit", "4bit")), "Quantized weights",
            "8bit or 4bit weights through bitsandbytes, on a GPU."),
    Setting("trust_remote_code", False, Flag(), "Trust remote code", "Run modelling code shipped with a hub model."),
    Setting("cache", True, Flag(), "Result cache",
            "Keep results in the disk cache (the attnscope cache folder), so the same model, text and settings are "
            "read back instead of computed again."),
    # text and tokens
    Setting("max_tokens", 2048, Integer(8, TOKEN_CEILING), "Max tokens",
            "Texts longer than this are cut to this many tokens (the start or the end).", url="tokens"),
    Setting("keep", "start", Choice(("start", "end"), labels={"start": "its start", "end": "its end"}),
            "Analyse", "Which part of a text longer than the limit is analysed.", url="keep"),
    # attention maps
    Setting("heads", None, Heads(), "Heads",
            "The heads, e.g. 0,3 (all: every head): of the layer drawn (maps), or of every layer; ablation also takes "
            "layer.head pairs, e.g. 5.1,7.0."),
    Setting("view", "one_head", VIEWS, "View", "What the Attention maps page draws.", url="view"),
    Setting("layer", 0, Integer(0, 1000), "Layer", "The layer, counted from 0.", url="layer"),
    Setting("head", 0, Integer(0, 1000), "Head", "The head, counted from 0.", url="head"),
    Setting("query", -1, Integer(-1, 10**6), "Query token",
            "The token whose weights are shown; a new text opens on its last token (-1 in a link), whose row sees "
            "the whole text.", url="query"),
    Setting("hide_sink", False, Flag(), "Hide the sink (key 0)",
            "Blanks the first token's column, which often takes most of the weight and washes out the rest of the "
            "map. Weights are not renormalised: every value shown is the model's own.", url="sink"),
    Setting("reduce", "mean", Choice(("mean", "max")), "Pool long maps by",
            "Above the cell limit the map is drawn in square tiles: the mean or the max weight of the visible cells "
            "of each tile."),
    Setting("cell_limit", 256, Integer(8, 512, 8), "Cell limit per side",
            "Maps with more tokens than this are pooled into tiles, so the browser never receives more than this "
            "many cells per side."),
    Setting("map_scale", "log", MAP_SCALES, "Colour scale",
            "How weights become colours. Logarithmic shows every decade of weight, which a long text needs; linear "
            "shows weights as they are; per row divides each query row by its largest weight, so each token's "
            "strongest keys stand out. The hover always shows the model's own weight.", url="scale"),
    Setting("queries", None, Span(0, TOKEN_CEILING), "Query tokens",
            "Zoom: the query positions start:end (end excluded) drawn token by token, e.g. 100:356; all: the whole "
            "text, pooled when longer than the cell limit.", url="queries"),
    Setting("keys", None, Span(0, TOKEN_CEILING), "Key tokens",
            "Zoom: the key positions start:end (end excluded) drawn token by token, e.g. 0:256; all: the whole "
            "text, pooled when longer than the cell limit.", url="keys"),
    # softmax vs Taylor
    Setting("max_order", 10, Integer(1, 20), "Highest order n",
            "Orders 0..N are computed for every head. Cost grows linearly with N.", url="order"),
    Setting("n_tokens", 512, Integer(8, TOKEN_CEILING), "Tokens analysed",
            "Decoders: the first n tokens (exact under the causal mask); the default is the benchmark's size."),
    Setting("clamp", "none", CLAMPS, "Logit clamp",
            "The paper's code clamps scaled logits at 5 from above before exp, which does nothing for the very "
            "negative logits of real models; 'both sides' clamps to [−c, c]. The target is always the model's "
            "unclamped softmax.", url="clamp"),
    Setting("clamp_value", 5.0, Number(0.0, 100.0), "Clamp at", "The clamp c of the logit clamp.", url="c"),
    Setting("tolerance", 1e-2, NumberChoice(TOLERANCES), "Tolerance",
            "Error a head must get below for the 'order needed' map.", url="tolerance"),
    Setting("taylor_layer", 0, Integer(0, 1000), "Layer", "The layer of the one-layer and one-head views.",
            url="t_layer"),
    Setting("taylor_head", 0, Integer(0, 1000), "Head", "The head of the one-head views.", url="t_head"),
    Setting("taylor_order", 10, Integer(0, 20), "Order shown",
            "The order of the one-query probe (at most the highest order).", url="t_order"),
    # context collapse
    Setting("source", "builtin", SOURCES, "Text", "The text the collapse page reads.", url="source"),
    Setting("max_length", 2048, Integer(32, TOKEN_CEILING), "Longest context L",
            "Lengths double from 32 up to this.", url="L"),
    Setting("windows", 3, Integer(1, 8), "Windows",
            "Consecutive slices of the text per length; the figures average over them.", url="windows"),
    Setting("rows", 8, Integer(1, 64), "Queries / window",
            "The last query positions of each window are analysed: they see about L tokens.", url="rows"),
    Setting("vectors", "values", Choice(("values", "hidden"), labels={"values": "value vectors (default)",
                                                                      "hidden": "hidden states (layer input)"}),
            "Token vectors xᵢ", "The vectors the distance and N_s measures read.", url="vectors"),
    Setting("fixed_length", 2048, Integer(32, TOKEN_CEILING), "Fixed L (distance vs N, N_s/N)",
            "The context length of the figures drawn at one length.", url="fixed_L"),
    # generation (not carried by links: a link reproduces a view, and a generation is rerun on request)
    Setting("max_new_tokens", 48, Integer(1, NEW_TOKEN_CEILING), "New tokens",
            "The model stops earlier when it ends its answer or reaches its position limit."),
    Setting("sample", False, Flag(), "Sample",
            "Draw each token from the model's distribution (temperature, top-p, seed) instead of taking the most "
            "likely one."),
    Setting("temperature", 0.7, Number(0.0, 10.0), "Temperature", "Sampling only: logits are divided by it."),
    Setting("top_p", 0.95, Number(0.0, 1.0), "Top-p",
            "Sampling only: draw from the smallest set of tokens whose probability reaches this."),
    Setting("seed", 0, Integer(0, 2**31 - 1), "Seed", "Sampling only: the same seed gives the same text."),
    Setting("chat", "auto", Choice(("auto", "on", "off"), labels={
                "auto": "when the model has one", "on": "always", "off": "never (continue the raw text)"}),
            "Chat template", "Wrap the text as a user turn of the model's chat template, as instruct models expect."),
    # one study over many prompts
    Setting("study", "stats", Choice(("stats", "taylor", "collapse"), labels={
                "stats": "Head statistics", "taylor": "Softmax vs Taylor: error vs order",
                "collapse": "Context collapse: curves vs L"}), "Study", "The study run on every prompt."),
    # why here: ablation and information-flow contributions
    Setting("mode", "zero", Choice(("zero", "mean"), labels={"zero": "zero (remove the head's output)",
                                                            "mean": "mean (its mean over the text)"}),
            "Ablation", "Replace each head's output (the input of the output projection) by 0, or by its mean over the "
            "text's positions.", url="ablation"),
    Setting("target", None, Integer(-1, 10**6, optional=True), "Target token",
            "Measure the loss of this token only (decoders: predicting it from the tokens before it; -1: the last "
            "token); none: the mean next-token loss over the whole text.", url="target"),
    Setting("norm", 1, Integer(1, 2), "Distance norm",
            "1: L1 distances, as llm-transparency-tool; 2: L2 distances (matrix products only, faster).", url="norm"),
    Setting("threshold", 0.0, Number(0.0, 1.0, closed=True), "Threshold",
            "Keep the edges whose contribution is at least this (0: every part)."),
    Setting("token", None, Integer(-1, 10**6, optional=True), "Token",
            "Follow the contributions back from this token's residual stream at the top (only the edges above the "
            "threshold that lead to it; -1: the last token); none: every token of every layer.", url="token"),
    Setting("renormalize", False, Flag(), "Renormalise",
            "Divide each query's kept edges by their sum, so they sum to 1 again after the threshold."),
    Setting("why_threshold", 0.02, Number(0.0, 1.0), "Edges drawn",
            "The Why here page draws (and follows) the contribution edges at or above this.", url="edges"),
    # the head atlas
    Setting("atlas_tokens", 512, Integer(8, TOKEN_CEILING), "Tokens per document",
            "Tokens analysed per document, from its start."),
    Setting("limit", None, Integer(1, 10**9, optional=True), "Documents",
            "Read at most this many documents of the corpus (unusable ones count); none: all."),
    Setting("shard_size", 16, Integer(1, 10_000), "Shard size", "Documents per Parquet shard."),
    Setting("text_column", "text", Text(200), "Text column", "The column of a table corpus that holds the text."),
    Setting("taylor_tokens", 128, Integer(8, TOKEN_CEILING), "Taylor tokens",
            "Tokens of each document the Taylor order is measured on."),
    Setting("engine", "local", Choice(("local", "ray"), labels={"local": "in this process",
                                                                 "ray": "Ray actors that hold the model once"}),
            "Engine", "local: in this process; ray: Ray actors (a local instance, or the cluster at --address)."),
    Setting("workers", 2, Integer(1, 4096), "Ray workers", "Ray actors, each holding the model once."),
    Setting("address", None, Text(300, optional=True), "Ray address",
            "Join this Ray cluster (none: start a local Ray instance)."),
)

SETTINGS: dict[str, Setting] = {s.key: s for s in _TABLE}


def setting(key: str) -> Setting:
    return SETTINGS[key]


def default(key: str):
    return SETTINGS[key].default


def in_links() -> list[Setting]:
    return [s for s in _TABLE if s.url is not None]


def check(key: str, value) -> object:
    """Validate an API value against the setting's domain: ValueError with one sentence naming the setting and what it
    must be otherwise."""
    try:
        return SETTINGS[key].check(value)
    except ValueError as error:
        raise ValueError(f"{key}={reprlib.repr(value)} {error}.") from None


def labels(keys: Sequence[str]) -> dict[str, str]:
    return {key: SETTINGS[key].label for key in keys}

