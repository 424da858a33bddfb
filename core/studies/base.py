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
self-contained). `attnscope.open(path)` reads .json and .parquet back; `read_result(name, data)` an upload's bytes.

A result file is untrusted input and never chooses code: its declared kind picks the class from the fixed table
attnscope.catalog.RESULTS, and every class it names inside must be one of that table or catalog.PARTS, checked over the
whole file before anything is imported. It is read under a Budget (attnscope.reader, the reader corpora and prompt
uploads use) before anything is materialised: the file's size, its JSON nesting and integer size (reader.parse_json),
and each array's declared shape times its item size, against the budget and against the length of its data.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import html
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import ClassVar

import numpy as np
import pandas as pd

from attnscope import cancel, catalog
from attnscope.reader import (Budget, NotReadableJson, ReadError, file_label, parquet_file, parse_json, shown,
                              size_text)

ProgressFn = Callable[[float, str], None]  # (fraction done in [0, 1], what is being done)
FORMATS = (".json", ".csv", ".parquet", ".html")
_FORMAT_VERSION = 1
# What opening a result file may take in, unless the caller says otherwise (a hosted deployment passes
# attnscope.hosting.Policy.file_budget): the file (2 GB), one array (1 GB: a 512 x 512 map of every head of a large
# model in float64 is about 130 MB) and the JSON's nesting (the reader's 100 levels; a result needs under 20).
RESULT_BUDGET = Budget(total_bytes=2 * 10**9, value_bytes=10**9)
OPEN_FIX = "open a .json or .parquet file that attnscope saved (Result.save)"
_ARRAY_KINDS = "biufcUS"  # booleans, integers, floats, complex numbers, strings: what results hold
_ARRAY_DIMS = 32
# What decoding a checked payload can still raise on a file that was not written by Result.save.
_DECODE_ERRORS = (ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError, MemoryError,
                  RecursionError)


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


def open_result(path: str | Path, *, budget: Budget = RESULT_BUDGET) -> Result:
    """Read a result written by Result.save as .json or .parquet, under `budget` (see read_result).

    Raises:
        FileNotFoundError: no file at `path`.
        ReadError (a ValueError): one sentence naming the file, when it is not a result attnscope can read back.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No file at {path}.")
    return _read_result(file_label(path.name), path.suffix, path.stat().st_size, path, budget)


def read_result(name: str, data: bytes, *, budget: Budget = RESULT_BUDGET) -> Result:
    """A result from the bytes of a file (an upload): `name`'s suffix picks the format and names it in messages.

    Before anything is materialised the budget is kept: the file's size (total_bytes), the JSON's nesting (depth)
    and integers (4,300 digits at most), each array's declared shape times its item size against value_bytes and
    against the length of its data. The file's kind picks the result class from attnscope.catalog.RESULTS, and every
    class it names must be one of RESULTS or PARTS, checked before anything is imported: nothing a file says chooses
    which code runs.

    Raises:
        ReadError (a ValueError): one sentence naming the file, when it is not a result attnscope can read back.
    """
    return _read_result(file_label(name), PurePath(name).suffix, len(data), data, budget)


def _read_result(label: str, suffix: str, size: int, source: Path | bytes, budget: Budget) -> Result:
    suffix = suffix.lower()
    if suffix not in (".json", ".parquet"):
        raise ReadError(label, f"cannot be opened: attnscope reopens .json and .parquet results; .csv and .html hold "
                               f"the table or the figures only")
    if budget.total_bytes is not None and size > budget.total_bytes:
        raise ReadError(label, f"is {size_text(size)}, over the {size_text(budget.total_bytes)} limit for a result "
                               f"file; open a smaller result (fewer heads, a shorter text)")
    if suffix == ".json":
        data = source if isinstance(source, bytes) else source.read_bytes()
    else:
        data = _parquet_result(label, size, source)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _unreadable(label, "it is not UTF-8 text, so not the JSON that Result.save writes") from None
    return _from_json(label, text, budget)


def _unreadable(label: str, reason: str) -> ReadError:
    return ReadError(label, f"is not a readable attnscope result: {reason}; {OPEN_FIX}")


def _parquet_result(label: str, size: int, source: Path | bytes) -> bytes:
    """The result JSON a .parquet file carries in its metadata, reading only the file's footer, within the file's size
    (reader.parquet_file)."""
    import pyarrow as pa

    if isinstance(source, bytes):
        head, tail = source[:4], source[-8:]
    else:
        with source.open("rb") as file:
            head = file.read(4)
            file.seek(max(0, size - 8))
            tail = file.read(8)
    if size < 12 or head != b"PAR1" or tail[4:] != b"PAR1":
        raise _unreadable(label, "it is not a Parquet file (a Parquet file starts and ends with the bytes PAR1)")
    if int.from_bytes(tail[:4], "little") > size - 12:
        raise _unreadable(label, "it is a damaged Parquet file (its footer is longer than the file)")
    try:
        metadata = parquet_file(source, size).schema_arrow.metadata or {}
    except (pa.ArrowException, OSError, ValueError) as error:
        raise _unreadable(label, f"it is a damaged Parquet file ({shown(str(error).split('.')[0], 160)})") from None
    if b"attnscope" not in metadata:
        raise ReadError(label, f"was not written by attnscope (its metadata holds no attnscope result); {OPEN_FIX}")
    return metadata[b"attnscope"]


def _from_json(label: str, text: str, budget: Budget) -> Result:
    """The result a JSON text holds: its declared kind picks the class (catalog.RESULTS); every class it names is
    checked against the fixed table before any is imported."""
    try:
        payload = parse_json(text, depth=budget.depth)
    except NotReadableJson as why:
        raise _unreadable(label, str(why)) from None
    version = payload.get("attnscope") if isinstance(payload, dict) else None
    if version != _FORMAT_VERSION:
        raise _unreadable(label, f"format version {shown(repr(version), 40)}, expected {_FORMAT_VERSION}")
    kind = payload.get("kind")
    if not isinstance(kind, str) or kind not in catalog.RESULTS:
        raise _unreadable(label, f"it declares the kind {shown(repr(kind), 60)}, and attnscope's results are "
                                 f"{', '.join(catalog.RESULTS)}")
    result = payload.get("result")
    for name in sorted(_class_names(result)):
        if not catalog.readable(name):
            raise _unreadable(label, f"it names the class {shown(repr(name), 60)}, which no attnscope result holds")
    declared = result.get("__dataclass__") if isinstance(result, dict) else None
    if declared != catalog.RESULTS[kind]:
        raise _unreadable(label, f"its {kind} result is stored as {shown(repr(declared), 60)}, not as "
                                 f"{catalog.RESULTS[kind]}")
    try:
        return _decode(result, budget)
    except _DECODE_ERRORS as error:
        raise _unreadable(label, shown(str(error) or type(error).__name__, 200).rstrip(".")) from None


def _class_names(value) -> set:
    """Every "__dataclass__" a parsed result names, at any depth (walked without recursion)."""
    names, stack = set(), [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "__dataclass__" in item:
                name = item["__dataclass__"]
                names.add(name if isinstance(name, str) else repr(name))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return names


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
        name = f"{cls.__module__}:{cls.__qualname__}"
        if not catalog.readable(name):  # attnscope.open would refuse it
            raise TypeError(f"cannot save a {cls.__qualname__}: a result holds only the classes in "
                            "attnscope.catalog.RESULTS and PARTS")
        return {"__dataclass__": name,
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


def _decode(obj, budget: Budget):
    if isinstance(obj, list):
        return [_decode(item, budget) for item in obj]
    if not isinstance(obj, dict):
        return obj
    if "__ndarray__" in obj:
        return _array(obj, budget)
    if "__dataclass__" in obj:
        cls = catalog.readable_class(obj["__dataclass__"])  # checked against the table again: no file name imports
        fields = obj["fields"]
        if not isinstance(fields, dict):
            raise ValueError(f"the fields of {obj['__dataclass__']} are not an object")
        return cls(**{key: _decode(value, budget) for key, value in fields.items()})
    if "__tuple__" in obj:
        return tuple(_decode(item, budget) for item in obj["__tuple__"])
    if "__dict__" in obj:
        return {_decode(k, budget): _decode(v, budget) for k, v in obj["__dict__"]}
    if "__float__" in obj and isinstance(obj["__float__"], str):
        return float(obj["__float__"])
    raise ValueError("unreadable value")


def _array(obj: dict, budget: Budget) -> np.ndarray:
    """An array as _encode wrote it, its declared size checked against the budget and against its data before the
    data is decoded."""
    dtype_name, shape, data = obj["__ndarray__"], obj.get("shape"), obj.get("data")
    if not (isinstance(dtype_name, str) and isinstance(data, str) and isinstance(shape, list)
            and len(shape) <= _ARRAY_DIMS and all(type(n) is int and 0 <= n < 2**63 for n in shape)):
        raise ValueError("an array without a dtype, a shape of whole numbers and its data")
    try:
        dtype = np.dtype(dtype_name)
    except TypeError:
        raise ValueError(f"an array of dtype {shown(repr(dtype_name), 40)}, which numpy does not know") from None
    if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype is not None or not dtype.itemsize:
        raise ValueError(f"an array of dtype {shown(repr(dtype_name), 40)}, which results do not hold")
    size = math.prod(shape) * dtype.itemsize
    if size > budget.value_bytes:
        raise ValueError(f"an array of {size_text(size)} (shape {tuple(shape)}), over the "
                         f"{size_text(budget.value_bytes)} limit for one array")
    if len(data) != 4 * -(-size // 3):  # base64 writes 4 characters for every 3 bytes or part of them
        raise ValueError(f"an array whose data ({len(data):,} base64 characters) does not hold its shape "
                         f"{tuple(shape)} of {dtype}")
    try:
        raw = base64.b64decode(data, validate=True)
    except binascii.Error:
        raise ValueError(f"an array whose data is not base64 (shape {tuple(shape)} of {dtype})") from None
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


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

