"""Every user-facing setting, defined once: its key, default, domain, label and help.

One table drives the dashboard's widgets (app/widgets.py), the permalink parser and writer (app/permalink.py), the
CLI's options (attnscope.cli) and the API's defaults (attnscope.api). A setting stores a *stable value* ("one_head",
"upper"), never its display label, so renaming a label breaks no link; links written before this table existed
carried labels, and each choice lists those as `legacy` spellings that are still read.

Domains parse text (a URL parameter or a CLI argument) into a value and raise ValueError with a sentence fragment
("must be ...") when they cannot; `format` writes a value back as text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from attnscope.hosting import NEW_TOKEN_CEILING, TOKEN_CEILING


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

    def label(self, value) -> str:
        return self.labels.get(value, str(value))


@dataclass(frozen=True)
class Integer:
    low: int
    high: int
    step: int = 1

    def parse(self, text: str) -> int:
        text = str(text).strip()
        if not re.fullmatch(r"-?[0-9]{1,9}", text) or not self.low <= int(text) <= self.high:
            raise ValueError(f"must be a whole number between {self.low} and {self.high}")
        return int(text)

    def format(self, value) -> str:
        return str(int(value))


@dataclass(frozen=True)
class Number:
    """A real number with low < x <= high."""

    low: float
    high: float

    def parse(self, text: str) -> float:
        try:
            number = float(str(text))
        except ValueError:
            raise ValueError("must be a number") from None
        if math.isnan(number) or not self.low < number <= self.high:
            raise ValueError(f"must be a number in ({self.low:g}, {self.high:g}]")
        return number

    def format(self, value) -> str:
        return f"{float(value):g}"


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


@dataclass(frozen=True)
class Setting:
    key: str  # session_state key, API keyword and (with dashes) CLI option
    default: object
    domain: Choice | Integer | Number | NumberChoice | Flag | Span
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
    # text and tokens
    Setting("max_tokens", 2048, Integer(8, TOKEN_CEILING), "Max tokens",
            "Texts longer than this are cut to this many tokens (the start or the end).", url="tokens"),
    Setting("keep", "start", Choice(("start", "end"), labels={"start": "its start", "end": "its end"}),
            "Analyse", "Which part of a text longer than the limit is analysed.", url="keep"),
    # attention maps
    Setting("view", "one_head", VIEWS, "View", url="view"),
    Setting("layer", 0, Integer(0, 1000), "Layer", url="layer"),
    Setting("head", 0, Integer(0, 1000), "Head", url="head"),
    Setting("query", -1, Integer(-1, 10**6), "Query token",
            "The token whose weights are shown; a new text opens on its last token (-1 in a link), whose row sees "
            "the whole text.", url="query"),
    Setting("hide_sink", False, Flag(), "Hide the sink (key 0)",
            "Blanks the first token's column, which often takes most of the weight and washes out the rest of the "
            "map. Weights are not renormalised: every value shown is the model's own.", url="sink"),
    Setting("reduce", "mean", Choice(("mean", "max")), "Pool long maps by",
            "Above the cell limit the map is drawn in square tiles: the mean or the max weight of the visible cells "
            "of each tile."),
    Setting("cell_limit", 256, Integer(32, 512, 32), "Cell limit per side",
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
    Setting("clamp_value", 5.0, Number(0.0, 100.0), "Clamp at", url="c"),
    Setting("tolerance", 1e-2, NumberChoice(TOLERANCES), "Tolerance",
            "Error a head must get below for the 'order needed' map.", url="tolerance"),
    Setting("taylor_layer", 0, Integer(0, 1000), "Layer", "The layer of the one-layer and one-head views.",
            url="t_layer"),
    Setting("taylor_head", 0, Integer(0, 1000), "Head", "The head of the one-head views.", url="t_head"),
    Setting("taylor_order", 10, Integer(0, 20), "Order shown", url="t_order"),
    # context collapse
    Setting("source", "builtin", SOURCES, "Text", url="source"),
    Setting("max_length", 2048, Integer(32, TOKEN_CEILING), "Longest context L",
            "Lengths double from 32 up to this.", url="L"),
    Setting("windows", 3, Integer(1, 8), "Windows",
            "Consecutive slices of the text per length; the figures average over them.", url="windows"),
    Setting("rows", 8, Integer(1, 64), "Queries / window",
            "The last query positions of each window are analysed: they see about L tokens.", url="rows"),
    Setting("vectors", "values", Choice(("values", "hidden"), labels={"values": "value vectors (default)",
                                                                      "hidden": "hidden states (layer input)"}),
            "Token vectors xᵢ", url="vectors"),
    Setting("fixed_length", 2048, Integer(32, TOKEN_CEILING), "Fixed L (distance vs N, N_s/N)", url="fixed_L"),
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
)

SETTINGS: dict[str, Setting] = {s.key: s for s in _TABLE}


def setting(key: str) -> Setting:
    return SETTINGS[key]


def default(key: str):
    return SETTINGS[key].default


def in_links() -> list[Setting]:
    return [s for s in _TABLE if s.url is not None]


def check(key: str, value) -> object:
    """Validate an API value against the setting's domain (ValueError naming the setting otherwise)."""
    s = SETTINGS[key]
    try:
        return s.parse(s.format(value)) if not isinstance(s.domain, Choice) else s.parse(value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{key}={value!r} {error}.") from None


def labels(keys: Sequence[str]) -> dict[str, str]:
    return {key: SETTINGS[key].label for key in keys}

