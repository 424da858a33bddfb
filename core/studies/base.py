"""What every study shares: findings, the result object, and the Source its units run against.

A study (maps, stats, taylor, collapse) is composed of *units*: module-level functions ``unit(source, *args)`` whose
arguments are hashable and whose return values are small picklable numpy dataclasses (one layer's Taylor sweep, one
window at one context length). The entry point in attnscope.api plans the units, runs each through
``source.unit(fn, *args)`` and combines them into a Result. The library's Source computes a unit directly, or takes it
from the disk cache (attnscope.cache) when one is configured; the dashboard's Source (app/cached.py) routes the same
calls through st.cache_data and the per-model lock. So the page and the API run the same code, unit by unit, and a
page can show progress between units.

Results are dataclasses of numpy arrays plus `meta` (model, revision, settings, token count). `save(path)` writes by
suffix: .json (everything, exact: arrays as base64 of their bytes), .parquet (the table, with the JSON in the file's
metadata so `attnscope.open` can rebuild the result), .csv (the table only) and .html (the findings and every figure,
self-contained). `attnscope.open(path)` reads .json and .parquet back.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import html
import importlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from attnscope import cancel

ProgressFn = Callable[[float, str], None]  # (fraction done in [0, 1], what is being done)
FORMATS = (".json", ".csv", ".parquet", ".html")
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Finding:
    """One claim set beside what was measured: the page shows these two side by side, the API returns them."""

    topic: str  # what it is about: "Vanishing attention"
    measured: str  # what this model does, with the numbers
    paper: str | None = None  # the claim it is compared with (None: an observation with no claim to test)

    def text(self) -> str:
        claim = f"Paper: {self.paper} " if self.paper else ""
        return f"{self.topic}. {claim}Measured: {self.measured}"


def _no_progress(fraction: float, message: str) -> None:
    pass


class Source:
    """What a study's units run against: the model, the tokens of a text, captures and forward passes.

    The library's Source computes everything directly (with the disk cache when given one); the dashboard subclasses
    it to route each call through Streamlit's caches and the per-model lock.
    """

    def __init__(self, model, *, cache=None, ceiling: int | None = None):
        self.model = model  # attnscope.models.Model
        self.cache = cache  # attnscope.cache.ResultCache or None
        self.ceiling = ceiling  # the most tokens a run may read here (a hosted deployment's limit); None: no limit
        self._last = None  # (key, Capture): the units of one study (or one window) share one forward pass

    def cut(self, max_tokens: int | None, keep: str = "start"):
        """How much of a text a run reads: the one rule (attnscope.tokens.cut_rule) with this source's ceiling."""
        return self.model.cut(max_tokens, keep, ceiling=self.ceiling)

    def tokens(self, text: str, cut):
        return self.model.tokenize(text, cut)

    def capture(self, text: str, cut):
        """A capture of the model on the text, cut as asked. The last capture is kept for the next unit."""
        return self._remembered(("text", text, cut), lambda: self.tokens(text, cut).as_tensor(), hidden_states=False)

    def run_ids(self, ids: tuple[int, ...], *, hidden_states: bool = False):
        """A capture of the model on exactly these token ids (a window or a prefix of a text); the last one is kept."""
        import torch

        return self._remembered(("ids", tuple(ids), hidden_states), lambda: torch.tensor([ids], dtype=torch.long),
                                hidden_states=hidden_states)

    def _remembered(self, key: tuple, input_ids, *, hidden_states: bool):
        from attnscope.capture import run_with_capture

        if self._last is not None and self._last[0] == key:
            return self._last[1]
        self._last = None  # free the previous capture before the next forward pass
        ids = input_ids()
        with self.turn():
            capture = run_with_capture(self.model.module, ids, hidden_states=hidden_states)
        self._last = (key, capture)
        return capture

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Held around every forward pass (the dashboard's takes the model's lock)."""
        yield

    def unit(self, fn: Callable, *args):
        """fn(self, *args), or its cached value. Each unit starts at a cancellation point (attnscope.cancel)."""
        cancel.checkpoint()
        if self.cache is None:
            return fn(self, *args)
        return self.cache.get_or_compute(self.model.fingerprint, fn, args, lambda: fn(self, *args))


# ---- results ------------------------------------------------------------------------------------------------------


@dataclass
class Result:
    """Base of every study's result. Subclasses are dataclasses whose fields are numpy arrays, numbers, strings,
    tuples and nested dataclasses; `meta` says where the numbers come from."""

    kind: ClassVar[str] = "result"
    title: ClassVar[str] = "attnscope result"

    def findings(self) -> list[Finding]:
        return []

    def figures(self) -> dict[str, object]:
        """Name -> plotly figure, in the order the page shows them."""
        return {}

    def to_frame(self) -> pd.DataFrame:
        raise NotImplementedError

    # -- saving and opening --

    def to_json(self) -> str:
        return json.dumps({"attnscope": _FORMAT_VERSION, "kind": self.kind, "result": _encode(self)})

    def save(self, path: str | Path) -> Path:
        """Write the result; the format follows the suffix (.json, .parquet, .csv, .html)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in FORMATS:
            raise ValueError(f"Cannot save as '{path.suffix or path.name}': use one of {', '.join(FORMATS)}.")
        path.parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".json":
            path.write_text(self.to_json())
        elif suffix == ".csv":
            self.to_frame().to_csv(path, index=False)
        elif suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(self.to_frame(), preserve_index=False)
            metadata = {**(table.schema.metadata or {}), b"attnscope": self.to_json().encode()}
            pq.write_table(table.replace_schema_metadata(metadata), path)
        else:
            path.write_text(self.report())
        return path

    def report(self) -> str:
        from attnscope.report import build_report

        return build_report(self.title, getattr(self, "meta", {}), list(self.figures().items()),
                            findings=self.findings())

    def __repr__(self) -> str:
        """A few lines (under 1 KB): what it is, where it comes from, its fields, its first findings, what to call. The
        numbers are in .to_frame(); a notebook shows _repr_html_ instead."""
        meta = getattr(self, "meta", {}) or {}
        source = ", ".join(f"{key}={meta[key]!r}" for key in ("model", "tokens", "documents", "study", "prompts")
                           if isinstance(meta.get(key), (str, int)))
        fields = []
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name != "meta":
                shape = getattr(value, "shape", None)
                fields.append(item.name + (str(tuple(shape)).replace(" ", "") if shape is not None else ""))
        try:
            findings = [f.text() for f in self.findings()]
        except Exception:  # a repr never raises
            findings = []
        lines = [f"<attnscope {type(self).__name__}: {self.title.removeprefix('attnscope: ')}"
                 + (f" ({source})" if source else ""), "  fields: " + _shorten(", ".join(fields), 300)]
        lines += [f"  - {_shorten(text, 140)}" for text in findings[:3]]
        if len(findings) > 3:
            lines.append(f"  ... {len(findings) - 3} more findings")
        lines.append("  .findings()  .figures()  .to_frame()  .save(path)>")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{html.escape(f.topic)}</td><td>{html.escape(f.paper or '')}</td>"
                       f"<td>{html.escape(f.measured)}</td></tr>" for f in self.findings())
        meta = ", ".join(f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in getattr(self, "meta", {}).items())
        frame = self.to_frame()
        return (f"<h4>{html.escape(self.title)}</h4><p>{meta}</p>"
                + (f"<table><tr><th>finding</th><th>paper</th><th>measured</th></tr>{rows}</table>" if rows else "")
                + f"<p>{len(frame)} rows; the first:</p>" + frame.head(10).to_html(index=False)
                + "<p><code>.figures()</code> draws the figures, <code>.to_frame()</code> gives the table.</p>")


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def open_result(path: str | Path) -> Result:
    """Read a result written by Result.save as .json or .parquet."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"No file at {path}.")
    if suffix == ".json":
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{path.name} is not a readable attnscope result: it is not UTF-8 text, so not the JSON "
                             "that Result.save writes.") from None
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            metadata = pq.read_schema(path).metadata or {}
        except (pa.ArrowException, OSError) as error:
            raise ValueError(f"{path.name} is not a readable attnscope result: it is not a Parquet file "
                             f"({str(error).split('.')[0]}).") from None
        if b"attnscope" not in metadata:
            raise ValueError(f"{path.name} was not written by attnscope (its metadata has no attnscope result).")
        text = metadata[b"attnscope"].decode("utf-8", errors="replace")
    else:
        raise ValueError(f"Cannot open '{path.suffix or path.name}' files: attnscope reopens .json and .parquet; "
                         ".csv and .html hold the table or the figures only.")
    try:
        payload = json.loads(text)
        if payload.get("attnscope") != _FORMAT_VERSION:
            raise ValueError(f"format version {payload.get('attnscope')!r}, expected {_FORMAT_VERSION}")
        return _decode(payload["result"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path.name} is not a readable attnscope result: {error}.") from None


def _encode(obj):
    """JSON-ready form: arrays as dtype, shape and base64 bytes; dataclasses by their attnscope class name."""
    import torch

    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        array = np.ascontiguousarray(obj)
        return {"__ndarray__": array.dtype.str, "shape": list(array.shape),
                "data": base64.b64encode(array.tobytes()).decode()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj)
        return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f.name: _encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(item) for item in obj]}
    if isinstance(obj, list):
        return [_encode(item) for item in obj]
    if isinstance(obj, dict):
        return {"__dict__": [[_encode(k), _encode(v)] for k, v in obj.items()]}
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return {"__float__": repr(obj)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot save a {type(obj).__name__}")


def _decode(obj):
    if isinstance(obj, list):
        return [_decode(item) for item in obj]
    if not isinstance(obj, dict):
        return obj
    if "__ndarray__" in obj:
        return np.frombuffer(base64.b64decode(obj["data"]), dtype=np.dtype(obj["__ndarray__"])).reshape(
            obj["shape"]).copy()
    if "__dataclass__" in obj:
        module, _, name = obj["__dataclass__"].partition(":")
        if not module.startswith("attnscope."):  # never import what a file names outside attnscope
            raise ValueError(f"unknown class {obj['__dataclass__']}")
        cls = importlib.import_module(module)
        for part in name.split("."):
            cls = getattr(cls, part)
        if not dataclasses.is_dataclass(cls):
            raise ValueError(f"{obj['__dataclass__']} is not a result class")
        return cls(**{key: _decode(value) for key, value in obj["fields"].items()})
    if "__tuple__" in obj:
        return tuple(_decode(item) for item in obj["__tuple__"])
    if "__dict__" in obj:
        return {_decode(k): _decode(v) for k, v in obj["__dict__"]}
    if "__float__" in obj:
        return float(obj["__float__"])
    raise ValueError("unreadable value")


def progress_steps(progress: ProgressFn | None, total: int) -> Callable[[int, str], None]:
    """progress(fraction, message) called as step(done, message) after each of `total` units."""
    report = progress or _no_progress

    def step(done: int, message: str) -> None:
        report(min(1.0, done / max(total, 1)), message)
    return step


def meta_for(model, tokens, **settings) -> dict:
    """Where a result's numbers come from: the model, its revision, where and in what precision it ran, the token
    count and the settings."""
    import attnscope

    return {"model": model.spec.name, "revision": model.spec.revision or "", "device": model.info.get("device"),
            "dtype": model.info.get("dtype"), "quantize": model.info.get("quantize"), "tokens": len(tokens),
            "text_tokens": tokens.n_text_tokens, "truncated": tokens.truncated,
            **settings, "attnscope": attnscope.__version__}

