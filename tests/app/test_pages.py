"""Every page under Streamlit's AppTest, on the packaged model: no exception, clear messages for user mistakes."""

import json

import numpy as np
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import state

pytestmark = pytest.mark.slow

ENTRY = str(Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py")
TIMEOUT = 240


def _app() -> AppTest:
    return AppTest.from_file(ENTRY, default_timeout=TIMEOUT)


def _figure(at: AppTest, index: int = 0) -> dict:
    return json.loads(at.get("plotly_chart")[index].proto.spec)


def test_attention_maps_page_every_view():
    at = _app().run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Attention maps"]
    figure = _figure(at)
    assert "Layer 0, head 0" in figure["layout"]["title"]["text"]
    assert "0:The" in figure["data"][0]["x"]
    assert any("tokens · 30 layers × 9 heads" in c.value for c in at.sidebar.caption)

    at.session_state[state.LAYER] = 7
    at.session_state[state.HEAD] = 8
    at.toggle(key=state.HIDE_SINK).set_value(True).run()
    assert not at.exception
    assert "Layer 7, head 8 (sink hidden)" in _figure(at)["layout"]["title"]["text"]

    at.segmented_control(key=state.VIEW).set_value(state.VIEW_ALL_HEADS).run()
    assert not at.exception
    heads = next(t for t in _figure(at)["data"] if t.get("name") == "heads")
    assert [tuple(c) for c in heads["customdata"]] == [(7, h) for h in range(9)]

    at.radio(key=state.GRID_SCOPE).set_value("All layers").run()
    at.toggle(key=state.GRID_SORT).set_value(True).run()
    assert not at.exception
    heads = next(t for t in _figure(at)["data"] if t.get("name") == "heads")
    assert len(heads["customdata"]) == 30 * 9

    at.segmented_control(key=state.VIEW).set_value(state.VIEW_QUERY).run()
    at.selectbox(key=state.QUERY).set_value(5).run()
    assert not at.exception
    assert "query 5:" in _figure(at)["layout"]["title"]["text"]

    at.segmented_control(key=state.VIEW).set_value(state.VIEW_STATS).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert len(table) == 30 * 9 and list(table.columns[:2]) == ["layer", "head"]
    n_tokens = int(at.sidebar.caption[0].value.split()[0])
    assert (table["entropy (nats)"] <= np.log(n_tokens) + 1e-5).all()
    assert table["sink mass"].between(0, 1).all() and table["max weight"].between(0, 1).all()
    at.selectbox(key=state.STAT_SHOWN).set_value("mean_distance").run()
    assert not at.exception and "mean distance per head" in _figure(at)["layout"]["title"]["text"]


def test_long_text_is_pooled_and_never_sent_cell_by_cell():
    at = _app()
    at.session_state[state.TEXT] = " ".join(f"word{i % 50}" for i in range(1200))
    at.session_state[state.CELL_LIMIT] = 128
    at.run()
    assert not at.exception
    z = _figure(at)["data"][0]["z"]
    n_tokens = int(at.sidebar.caption[0].value.split()[0])
    assert n_tokens > 1000
    # plotly sends numpy arrays as typed arrays: {"dtype", "bdata", "shape": "rows, cols"}
    rows, cols = (int(n) for n in z["shape"].split(",")) if isinstance(z, dict) else (len(z), len(z[0]))
    assert rows <= 128 and cols <= 128
    assert any("tiles" in i.value for i in at.info)


def test_truncation_is_visible():
    at = _app()
    at.session_state[state.TEXT] = "one two three four five six seven eight nine ten eleven twelve"
    at.session_state[state.MAX_TOKENS] = 8
    at.run()
    assert not at.exception
    assert any("only the first 8" in w.value for w in at.warning)


def test_empty_text_asks_for_text():
    at = _app()
    at.session_state[state.TEXT] = "   "
    at.run()
    assert not at.exception
    assert any("Type or paste some text" in i.value for i in at.info)


@pytest.mark.parametrize("name,message", [
    ("/no/such/model/folder", "does not exist"),
    ("someone/no-such-model-attnscope", "Could not fetch"),
])
def test_bad_model_shows_a_sentence_and_keeps_the_text(name, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = _app()
    at.session_state[state.TEXT] = "My own carefully typed text"
    at.run()
    at.selectbox(key=state.MODEL_CHOICE).set_value(state.CUSTOM_MODEL).run()
    at.text_input(key=state.CUSTOM_NAME).input(name).run()
    assert not at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert at.session_state[state.TEXT] == "My own carefully typed text"
    assert at.text_area(key=state.TEXT).value == "My own carefully typed text"


def test_encoder_model_runs():
    at = _app().run()
    at.selectbox(key=state.MODEL_CHOICE).set_value("minilm-l6").run()
    assert not at.exception
    assert "0:[CLS]" in _figure(at)["data"][0]["x"]
    assert any("bidirectional" in c.value for c in at.caption)


def test_model_position_limit_caps_the_text():
    at = _app()
    at.session_state[state.TEXT] = " ".join(["word"] * 700)
    at.session_state[state.MODEL_CHOICE] = "minilm-l6"
    at.run()
    assert not at.exception
    assert any("reads at most 512 positions" in w.value for w in at.warning)
    assert at.sidebar.caption[0].value.startswith("512 tokens")
