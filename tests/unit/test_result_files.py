"""A result file (attnscope.open, the Head atlas page's upload) is untrusted input: its declared kind picks the class
from a fixed table and nothing it names is imported, and it is read under a budget before anything is materialised.
Each refusal is one sentence naming the file."""

import dataclasses
import json
import sys
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import attnscope
from attnscope import catalog
from attnscope.analyses import atlas as analysis
from attnscope.hosting import Policy, policy_from_env
from attnscope.reader import Budget, ReadError
from attnscope.studies import atlas as study
from attnscope.studies.atlas import AtlasResult
from attnscope.studies.base import Finding, open_result, read_result
from tests.unit.tiny_models import handle

DEEP = 200_000  # brackets: past what json.loads can nest (RecursionError) and past any budget
PACKAGES = {"attnscope": "core", "attnscope.kernels": "kernels", "attnscope.app": "app"}  # as pyproject.toml maps them


def _atlas_result() -> AtlasResult:
    values = np.random.default_rng(0).normal(size=(2, 3, 4))
    summary = analysis.Summary(fields=("entropy", "max_weight"), mean=values, std=values, low=values, high=values,
                               median=values, q25=values, q75=values, count=np.ones(values.shape, dtype=np.int64))
    return AtlasResult(meta={"model": "m", "model_fingerprint": "f", "corpus": "c", "engine": "local",
                             "documents": 1, "settings": {}}, summary=summary)


@pytest.fixture(scope="module")
def stats_payload() -> dict:
    return json.loads(attnscope.stats(handle("llama"), list(range(3, 30)), cache=False).to_json())


def _refused(name: str, data: bytes, **budget) -> str:
    """The sentence read_result refuses `data` with; it names the file and is one line."""
    with pytest.raises(ReadError) as raised:
        read_result(name, data, **({"budget": Budget(**budget)} if budget else {}))
    message = str(raised.value)
    assert message.startswith(f"'{name}' ") and "\n" not in message and message.endswith("."), message
    return message


def _parquet_with(metadata: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    table = pa.table({"x": [1, 2]})
    pq.write_table(table.replace_schema_metadata({b"attnscope": metadata}), sink)
    return sink.getvalue().to_pybytes()


def _module_names() -> list[str]:
    """Every module name attnscope has, found from its files (core/, kernels/ and app/ as attnscope.*), without
    importing any of them."""
    root = Path(__file__).resolve().parents[2]
    names = set()
    for package, folder in PACKAGES.items():
        for path in (root / folder).rglob("*.py"):
            parts = path.relative_to(root / folder).with_suffix("").parts
            names.add(".".join((package, *parts[:-1])) if parts[-1] == "__init__" else ".".join((package, *parts)))
    return sorted(names)


# ---- nothing a file says chooses code -------------------------------------------------------------------------------


def test_every_module_attnscope_has_is_refused_as_a_kind_and_as_a_class_and_none_is_imported(tmp_path):
    names = _module_names()
    assert {"attnscope.__main__", "attnscope.cli", "attnscope.app.streamlit_app", "attnscope.kernels.taylor",
            "attnscope.app.app_pages.head_atlas"} <= set(names) and len(names) > 60
    for name in (*catalog.RESULTS.values(), *catalog.PARTS):  # the table's own modules may be imported
        catalog.readable_class(name)
    atlas = json.loads(_atlas_result().to_json())
    before = set(sys.modules)
    for module in names:
        for claimed in (module, f"{module}:main", f"{module}:AtlasResult"):
            if catalog.readable(claimed):  # attnscope.studies.atlas:AtlasResult is the table's own
                continue
            as_kind = {**atlas, "kind": claimed}
            as_class = {**atlas, "result": {**atlas["result"], "__dataclass__": claimed}}
            inside = json.loads(json.dumps(atlas))
            inside["result"]["fields"]["summary"]["__dataclass__"] = claimed
            inside_a_value = json.loads(json.dumps(atlas))
            inside_a_value["result"]["fields"]["meta"]["__dict__"].append(
                ["x", {"__dataclass__": claimed, "fields": {}}])
            for payload in (as_kind, as_class, inside, inside_a_value):
                said = _refused("atlas.json", json.dumps(payload).encode())
                assert "is not a readable attnscope result: it" in said
        assert module not in sys.modules or module in before, module
    assert set(sys.modules) == before, sorted(set(sys.modules) - before)
    assert "attnscope.__main__" not in sys.modules


def test_a_class_or_kind_named_by_a_file_is_one_sentence_naming_it(tmp_path):
    atlas = json.loads(_atlas_result().to_json())
    made_up = {**atlas, "result": {**atlas["result"], "__dataclass__": "attnscope.made_up:AtlasResult"}}
    assert _refused("a.json", json.dumps(made_up).encode()) == (
        "'a.json' is not a readable attnscope result: it names the class 'attnscope.made_up:AtlasResult', which no "
        "attnscope result holds; open a .json or .parquet file that attnscope saved (Result.save).")
    assert _refused("a.json", json.dumps({**atlas, "kind": "os"}).encode()) == (
        f"'a.json' is not a readable attnscope result: it declares the kind 'os', and attnscope's results are "
        f"{', '.join(catalog.RESULTS)}; open a .json or .parquet file that attnscope saved (Result.save).")
    other = {**atlas, "kind": "stats"}  # a class from the table, but not the one the kind names
    assert "its stats result is stored as 'attnscope.studies.atlas:AtlasResult'" in _refused(
        "a.json", json.dumps(other).encode())
    path = tmp_path / "a.parquet"
    path.write_bytes(_parquet_with(json.dumps(made_up).encode()))
    with pytest.raises(ValueError, match=r"^'a\.parquet' is not a readable attnscope result: it names the class"):
        attnscope.open(path)


def test_the_classes_results_hold_are_in_the_fixed_table():
    """Every dataclass a result's fields are declared to hold (at any depth) is one attnscope.open may build, and
    every entry of the table is a dataclass of that name."""
    seen, todo = set(), [catalog.readable_class(name) for name in catalog.RESULTS.values()]
    while todo:
        cls = todo.pop()
        name = f"{cls.__module__}:{cls.__qualname__}"
        if name in seen:
            continue
        seen.add(name)
        for hint in typing.get_type_hints(cls).values():
            stack = [hint]
            while stack:
                item = stack.pop()
                stack.extend(typing.get_args(item))
                if dataclasses.is_dataclass(item):
                    assert catalog.readable(f"{item.__module__}:{item.__qualname__}"), (name, item)
                    todo.append(item)
    for name in catalog.PARTS:
        assert dataclasses.is_dataclass(catalog.readable_class(name)), name


def test_saving_a_class_outside_the_table_fails_at_once_instead_of_writing_a_file_that_cannot_open(tmp_path):
    result = _atlas_result()
    result.meta["note"] = Finding("x", "y")
    with pytest.raises(TypeError, match="cannot save a Finding: a result holds only the classes in"):
        result.save(tmp_path / "atlas.json")


# ---- read under a budget ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_deep_nesting_is_one_sentence_not_a_recursion_error(suffix):
    nested = ('{"attnscope": 1, "kind": "stats", "result": ' + "[" * DEEP + "]" * DEEP + "}").encode()
    data = nested if suffix == ".json" else _parquet_with(nested)
    assert _refused(f"deep{suffix}", data) == (
        f"'deep{suffix}' is not a readable attnscope result: nested too deeply to read; open a .json or .parquet "
        "file that attnscope saved (Result.save).")
    shallow_but_over = ('{"attnscope": 1, "kind": "stats", "result": ' + "[" * 50 + "]" * 50 + "}").encode()
    assert "nested too deeply" in _refused("d.json", shallow_but_over, depth=20)


def test_a_result_parquet_whose_footer_declares_a_huge_list_is_refused_before_room_is_made_for_it():
    from tests.unit.test_reader import crafted_footer

    said = _refused("crafted.parquet", crafted_footer(900_000))
    assert "it is a damaged Parquet file (" in said and "Exceeded size limit" in said


def test_a_result_parquet_opens_without_parsing_its_pandas_metadata(tmp_path):
    """The Parquet footer's pandas entry is never parsed: 200,000 brackets there cost nothing."""
    result = _atlas_result()
    path = result.save(tmp_path / "atlas.parquet")
    table = pq.read_table(path)
    metadata = {**table.schema.metadata, b"pandas": b"[" * DEEP + b"]" * DEEP}
    pq.write_table(table.replace_schema_metadata(metadata), path)
    again = study.read_atlas("atlas.parquet", path.read_bytes())
    np.testing.assert_array_equal(again.summary.mean, result.summary.mean)


def test_an_integer_of_absurd_size_is_one_sentence(stats_payload):
    changed = json.loads(json.dumps(stats_payload))
    changed["result"]["fields"]["induction_copy"] = "HUGE"
    text = json.dumps(changed).replace('"HUGE"', "9" * 100_000)
    assert "an integer longer than 4,300 digits" in _refused("huge.json", text.encode())


def _with_array(payload: dict, **array) -> bytes:
    changed = json.loads(json.dumps(payload))
    changed["result"]["fields"]["entropy"] = {**changed["result"]["fields"]["entropy"], **array}
    return json.dumps(changed).encode()


@pytest.mark.parametrize("array, says", [
    ({"shape": [10**6, 10**6]}, "an array of 4000000.0 MB (shape (1000000, 1000000)), over the 1000.0 MB limit for "
                                "one array"),
    ({"shape": [3, 7]}, "an array whose data (96 base64 characters) does not hold its shape (3, 7) of float32"),
    ({"shape": [-1, 6]}, "an array without a dtype, a shape of whole numbers and its data"),
    ({"shape": [True, 6]}, "an array without a dtype, a shape of whole numbers and its data"),
    ({"shape": "3"}, "an array without a dtype, a shape of whole numbers and its data"),
    ({"__ndarray__": "|O"}, "an array of dtype '|O', which results do not hold"),
    ({"__ndarray__": "f8,i4"}, "an array of dtype 'f8,i4', which results do not hold"),
    ({"__ndarray__": "no such type"}, "an array of dtype 'no such type', which numpy does not know"),
    ({"data": "!" * 96}, "an array whose data is not base64 (shape (3, 6) of float32)"),
])
def test_an_array_is_checked_against_its_declared_size_and_the_budget_before_it_is_decoded(stats_payload, array,
                                                                                           says):
    entropy = stats_payload["result"]["fields"]["entropy"]
    assert entropy["__ndarray__"] == "<f4" and entropy["shape"] == [3, 6]  # tiny llama: 3 layers, 6 heads
    assert says in _refused("arrays.json", _with_array(stats_payload, **array))


def test_an_array_over_the_budget_is_refused_even_when_its_data_matches(stats_payload):
    said = _refused("big.json", json.dumps(stats_payload).encode(), value_bytes=71)  # each array: 3 x 6 x 4 bytes
    assert "(shape (3, 6)), over the 0.1 KB limit for one array" in said


def test_a_file_over_the_budget_is_refused_from_its_size_unread(tmp_path, monkeypatch):
    path = _atlas_result().save(tmp_path / "atlas.json")

    def unread(*args, **kwargs):
        raise AssertionError("the file was read although its size is over the budget")

    monkeypatch.setattr(Path, "read_bytes", unread)
    monkeypatch.setattr(Path, "open", unread)
    with pytest.raises(ReadError) as raised:
        attnscope.open(path, budget=Budget(total_bytes=1000))
    assert str(raised.value).startswith(f"'atlas.json' is {path.stat().st_size / 1000:.1f} KB, over the 1.0 KB "
                                        "limit for a result file; ")


def test_the_hosted_budget_is_an_upload_and_the_atlas_upload_path_keeps_it():
    hosted = policy_from_env({"ATTNSCOPE_HOSTED": "1"}).file_budget
    assert hosted.total_bytes == hosted.value_bytes == 2 * 10**6
    assert Policy().file_budget.total_bytes > hosted.total_bytes  # locally generous, still bounded
    padded = json.loads(_atlas_result().to_json())
    padded["result"]["fields"]["sample"] = "x" * 2 * 10**6
    with pytest.raises(ReadError, match=r"^'atlas\.json' is 2\.0 MB, over the 2\.0 MB limit for a result file"):
        study.read_atlas("atlas.json", json.dumps(padded).encode(), budget=hosted)


# ---- what still opens ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_an_uploaded_atlas_opens_from_its_bytes_and_another_kind_is_one_sentence(tmp_path, suffix, stats_payload):
    result = _atlas_result()
    data = result.save(tmp_path / f"atlas{suffix}").read_bytes()
    again = study.read_atlas(f"mine{suffix}", data, budget=policy_from_env({"ATTNSCOPE_HOSTED": "1"}).file_budget)
    assert again.meta == result.meta and again.fields == result.fields
    np.testing.assert_array_equal(again.summary.count, result.summary.count)
    with pytest.raises(ValueError) as raised:
        study.read_atlas("stats.json", json.dumps(stats_payload).encode())
    assert str(raised.value) == ("stats.json holds a stats result, not a head atlas; give an atlas folder or the "
                                 "atlas.parquet that `attnscope atlas` wrote.")


def test_a_result_of_each_kind_reads_back_from_bytes_as_from_its_path(tmp_path, stats_payload):
    result = attnscope.compare(handle("llama"), list(range(3, 30)), text_b=list(range(5, 25)), cache=False)
    for suffix in (".json", ".parquet"):
        path = result.save(tmp_path / f"compare{suffix}")
        from_bytes, from_path = read_result(path.name, path.read_bytes()), open_result(path)
        for again in (from_bytes, from_path):
            assert type(again) is type(result) and type(again.a) is type(result.a)
            np.testing.assert_array_equal(again.a.entropy, result.a.entropy)


# ---- an atlas folder's files -----------------------------------------------------------------------------------------


def _atlas_folder(tmp_path) -> Path:
    out = tmp_path / "atlas"
    out.mkdir()
    rows = pd.DataFrame({"id": ["a", "a"], "tokens": [4, 4], "layer": [0, 0], "head": [0, 1],
                         "entropy": [0.5, 0.7]})
    rows.to_parquet(out / "shard-0-a.parquet", index=False)
    (out / study.MANIFEST).write_text(json.dumps({
        "attnscope_atlas": study.FORMAT, "model": "m", "model_fingerprint": "f", "corpus": "c", "engine": "local",
        "documents": 1, "settings": {"max_tokens": 8}, "problems": [], "sample": ""}))
    return out


def test_an_atlas_folder_whose_manifest_nests_too_deeply_is_one_sentence(tmp_path):
    out = _atlas_folder(tmp_path)
    assert attnscope.open(out).meta["documents"] == 1
    (out / study.MANIFEST).write_text("[" * DEEP + "]" * DEEP)
    with pytest.raises(ValueError) as raised:
        attnscope.open(out)
    assert str(raised.value) == (f"{out / study.MANIFEST} is not a readable atlas manifest (nested too deeply to "
                                 "read); run `attnscope atlas` into a new folder.")


def test_an_atlas_shard_whose_pandas_metadata_nests_too_deeply_is_one_sentence_naming_it(tmp_path):
    out = _atlas_folder(tmp_path)
    shard = out / "shard-0-a.parquet"
    table = pq.read_table(shard)
    pq.write_table(table.replace_schema_metadata({b"pandas": b"[" * DEEP + b"]" * DEEP}), shard)
    with pytest.raises(ValueError) as raised:
        attnscope.open(out)
    assert str(raised.value) == (f"{shard} cannot be read (nested too deeply to read); it is not a file `attnscope "
                                 "atlas` wrote: remove it, or run the atlas into a new folder.")
