"""One door: the catalog of studies, the settings table, the API, the CLI and the pages agree, and every misuse of
the API is one sentence (the same checks as the CLI's, from the same table)."""

import argparse
import inspect

import numpy as np
import pytest
import torch

import attnscope
from attnscope import api, catalog, cli
from attnscope import settings as S
from tests.unit.tiny_models import handle

TEXT_IDS = list(range(3, 40))


def test_every_study_names_settings_that_exist_and_a_run_function_that_takes_them():
    for entry in catalog.STUDIES.values():
        for key in entry.keys():
            assert key in S.SETTINGS, (entry.name, key)
        parameters = inspect.signature(entry.function()).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        own = {"prompts": ("study", "settings"), "corpus": ()}.get(entry.inputs, entry.settings)
        for key in (*own, *entry.extras):
            assert takes_any or key in parameters or entry.inputs == "corpus", (entry.name, key)
        assert issubclass(entry.result_class(), attnscope.Result)


def test_every_result_kind_reads_back_through_the_fixed_table():
    for kind, name in catalog.RESULTS.items():
        module, _, cls = name.partition(":")
        assert getattr(__import__(module, fromlist=[cls]), cls).kind == kind


def test_the_api_has_one_thin_function_per_study_taking_exactly_its_settings():
    for entry in catalog.STUDIES.values():
        function = getattr(api, entry.name)
        parameters = set(inspect.signature(function).parameters)
        if entry.inputs == "corpus":  # atlas's max_tokens is the setting atlas_tokens
            parameters = parameters - {"max_tokens"} | {"atlas_tokens"}
        if entry.inputs == "prompts":
            assert {"study", "settings"} & parameters
            continue
        missing = set(entry.keys()) - parameters
        assert not missing, (entry.name, missing)


def test_every_api_default_is_the_tables():
    """The API's keywords default to None, which takes the table's default: there is no second copy. Where None is a
    choice of its own (catalog.Study.nones), the keyword's default is read from the table."""
    for entry in catalog.STUDIES.values():
        for name, parameter in inspect.signature(getattr(api, entry.name)).parameters.items():
            if (name in S.SETTINGS or name == "max_tokens") and name != "model":
                expected = S.default(name) if name in entry.nones else None
                assert parameter.default == expected, (entry.name, name)


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    root = cli.parser()
    action = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_the_cli_has_one_subcommand_per_study_with_one_option_per_setting_and_the_tables_defaults():
    commands = _subcommands()
    for entry in catalog.STUDIES.values():
        parser = commands[entry.name]
        defaults = {a.dest: a.default for a in parser._actions}
        for key in (*entry.keys(), *catalog.PLACEMENT):
            assert key in defaults, (entry.name, key)
            expected = S.default(key)
            shown = defaults[key]
            assert shown == expected or shown == [expected], (entry.name, key, shown, expected)
        for action in parser._actions:
            assert action.help, (entry.name, action.dest)  # help for every argument


def test_boolean_settings_are_flags_on_the_command_line():
    maps = _subcommands()["maps"]
    assert maps.parse_args(["--text", "x", "--hide-sink"]).hide_sink is True
    assert maps.parse_args(["--text", "x", "--no-cache"]).cache is False
    with pytest.raises(SystemExit):
        maps.parse_args(["--text", "x", "--hide-sink", "1"])


def test_the_batch_study_choice_lists_exactly_the_batchable_studies():
    assert set(S.setting("study").domain.values) == set(catalog.batchable())


def test_the_dashboards_batch_page_and_the_catalog_name_the_same_settings():
    from pathlib import Path

    page = (Path(attnscope.__file__).parents[1] / "app" / "app_pages" / "batch.py").read_text()
    assert "catalog.batchable()" in page and "catalog.study(name).settings" in page


def test_an_unknown_study_is_one_sentence():
    with pytest.raises(ValueError, match="There is no study 'stat': attnscope's studies are stats, maps"):
        catalog.study("stat")


# ---- misuse of the API: one sentence each, before any work ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return handle("llama")


@pytest.mark.parametrize("text, says", [
    (None, "text is None: give a string, or token ids"),
    (5, r"text must be a string or token ids \(a list of ints\); got int"),
    (b"abc", "text is bytes: decode it first"),
    ([], "text holds no token ids"),
    ([1, -2], "negative token id"),
    (torch.zeros(2, 3, dtype=torch.long), r"shape \(2, 3\): give one sequence of token ids"),
    ([1.5, 2.0], "text must be a string or token ids"),
    ([1, 10**6], "text holds token id 1000000, but tiny-llama has"),
])
def test_a_wrong_text_is_one_sentence(tiny, text, says):
    with pytest.raises(ValueError, match=says):
        attnscope.stats(tiny, text)


def test_a_batch_of_one_token_row_is_taken_as_the_ids(tiny):
    as_row = attnscope.stats(tiny, torch.tensor([TEXT_IDS]), cache=False)
    as_list = attnscope.stats(tiny, TEXT_IDS, cache=False)
    assert np.array_equal(as_row.entropy, as_list.entropy)
    assert np.array_equal(attnscope.stats(tiny, np.array(TEXT_IDS), cache=False).entropy, as_list.entropy)


@pytest.mark.parametrize("settings, says", [
    ({"max_tokens": 0}, "max_tokens=0 must be a whole number between 8 and 32768"),
    ({"max_tokens": -5}, "max_tokens=-5 must be"),
    ({"cell_limit": 0}, "cell_limit=0 must be a whole number between 8 and 512"),
    ({"keep": "middle"}, "keep='middle' must be one of"),
    ({"hide_sink": "yes"}, "hide_sink='yes' must be True or False"),
    ({"heads": 3}, "heads=3 must be a list of head numbers"),
    ({"queries": (5, 2)}, r"queries=\(5, 2\) must be start:end"),
    ({"layer": 1.5}, "layer=1.5 must be a whole number"),
])
def test_a_wrong_setting_is_one_sentence_naming_it(tiny, settings, says):
    with pytest.raises(ValueError, match=says):
        attnscope.maps(tiny, TEXT_IDS, **settings)


def test_a_setting_the_study_does_not_take_is_named(tiny):
    with pytest.raises(ValueError, match="stats takes no setting 'max_order'; its settings are max_tokens, keep"):
        attnscope.run("stats", tiny, TEXT_IDS, max_order=3)
    with pytest.raises(TypeError):
        attnscope.stats(tiny, TEXT_IDS, max_order=3)  # the named function: Python's own message names it


def test_a_model_name_instead_of_a_model_says_to_load_it():
    with pytest.raises(ValueError, match=r"model is the string 'smollm2-135m': load it first, model = "
                                         r"attnscope.load\('smollm2-135m'\)"):
        attnscope.stats("smollm2-135m", "Hello")


@pytest.mark.parametrize("settings, says", [
    ({"dtype": "float8"}, "dtype='float8' must be one of auto, float32, bfloat16, float16"),
    ({"device": "gpu"}, "device='gpu' must be auto, cpu, cuda, cuda:N or map"),
    ({"quantize": "2bit"}, "quantize='2bit' must be one of none, 8bit, 4bit"),
    ({"model": ""}, "model='' must be a text"),
])
def test_a_wrong_placement_is_one_sentence_before_anything_loads(settings, says):
    with pytest.raises(ValueError, match=says):
        attnscope.load(**settings)


def test_the_api_and_the_cli_refuse_the_same_values_with_the_same_words(tiny, capsys):
    with pytest.raises(ValueError) as raised:
        attnscope.stats(tiny, TEXT_IDS, max_tokens=0)
    with pytest.raises(SystemExit):
        cli.main(["stats", "--text", "x", "--max-tokens", "0"])
    said = capsys.readouterr().err
    assert "must be a whole number between 8 and 32768" in said
    assert "must be a whole number between 8 and 32768" in str(raised.value)


def test_defaults_agree_between_the_table_the_study_and_the_api(tiny):
    """The same text through the API with no settings equals the study run with the table's defaults."""
    from attnscope.studies import maps as study

    direct = study.stats(attnscope.source(tiny), TEXT_IDS, cut=tiny.cut(S.default("max_tokens"), S.default("keep")))
    through = attnscope.stats(tiny, TEXT_IDS, cache=False)
    assert np.array_equal(direct.entropy, through.entropy)
    assert through.meta["tokens"] == len(TEXT_IDS)


def test_generation_takes_the_tables_sampling_defaults():
    from attnscope.studies import generation

    parameters = inspect.signature(generation.run).parameters
    for key in ("temperature", "top_p", "seed", "chat", "sample"):
        assert parameters[key].default == S.default(key), key


def test_the_batch_function_runs_the_chosen_study_on_every_prompt_with_its_settings(tiny):
    """attnscope.batch passes the inner study's settings through, takes cache like every study, and refuses a
    setting the inner study does not have in one sentence."""
    result = attnscope.batch(tiny, [TEXT_IDS, TEXT_IDS[:12]], study="stats", max_tokens=10, cache=False)
    single = attnscope.stats(tiny, TEXT_IDS, max_tokens=10, cache=False)
    assert result.study == "stats" and len(result.prompts) == 2 and not result.skipped
    assert np.array_equal(result.values["entropy"][0], single.entropy)
    with pytest.raises(ValueError, match="batch of stats takes no setting 'max_order'"):
        attnscope.batch(tiny, [TEXT_IDS], study="stats", max_order=3, cache=False)


@pytest.mark.parametrize("name, content, says", [
    ("random.json", b"\xff\xfe\x00 not text", "'random.json' is not a readable attnscope result: it is not UTF-8 text"),
    ("other.json", b'{"a": 1}', "'other.json' is not a readable attnscope result: format version None"),
    ("random.parquet", bytes(range(256)) * 4, "'random.parquet' is not a readable attnscope result: it is not a "
                                              "Parquet file"),
    ("table.csv", b"a,b\n1,2\n", "'table.csv' cannot be opened: attnscope reopens .json and .parquet results"),
])
def test_opening_a_file_that_is_not_a_result_is_one_sentence(tmp_path, name, content, says):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=says) as raised:
        attnscope.open(path)
    assert str(raised.value).count("\n") == 0


def test_compare_without_a_layer_draws_no_maps_and_by_default_draws_the_tables_layer(tiny):
    """layer=None is compare's way of asking for no maps (catalog.Study.nones), not "the default layer"."""
    assert attnscope.compare(tiny, TEXT_IDS, layer=None, cache=False).maps_a is None
    drawn = attnscope.compare(tiny, TEXT_IDS, cache=False)
    assert drawn.maps_a is not None and drawn.maps_a.layer == S.default("layer")
