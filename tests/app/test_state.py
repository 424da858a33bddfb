"""Settings belong to the app, not to the page that drew their widget: every setting keeps its value across any
sequence of page switches, and what belongs to one text starts afresh when the text changes (AppTest, real model)."""

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from attnscope.app import state

pytestmark = pytest.mark.slow

ENTRY = str(Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py")
TIMEOUT = 240
PAGES = ("attention_maps", "softmax_vs_taylor", "context_collapse", "prompts", "batch", "compare", "generation",
         "head_atlas", "why_here")
KINDS = ("selectbox", "slider", "select_slider", "number_input", "radio", "toggle", "checkbox", "text_input",
         "text_area", "multiselect", "segmented_control")

# What a user does on each page, in order (a widget may appear only after an earlier step): set a widget to a value
# that differs from its default, or ("click", label) a button. The cheap values keep the walk below quick (orders 0-4,
# L up to 64); the text is long enough for the collapse page to read it (32 tokens).
CLICK = "click"
CHOICES = {
    "attention_maps": [(state.MAP_SCALE, "row"), (state.MAP_SEARCH, "Dursley"), (state.LAYER, 3), (state.HEAD, 2),
                       (state.HIDE_SINK, True), (state.REDUCE, "max"), (state.CELL_LIMIT, 128),
                       (state.VIEW, state.VIEW_ALL_HEADS), (state.GRID_SCOPE, "All layers"), (state.GRID_SORT, True),
                       (state.VIEW, state.VIEW_QUERY), (state.QUERY, 4), (state.VIEW, state.VIEW_STATS),
                       (state.STAT_SHOWN, "induction")],
    "softmax_vs_taylor": [(state.TAYLOR_MAX_ORDER, 4), (state.TAYLOR_CLAMP_MODE, "both"),
                          (state.TAYLOR_CLAMP_VALUE, 7.5), (state.TAYLOR_TOLERANCE, 1e-3), (state.TAYLOR_LAYER, 5),
                          (state.TAYLOR_HEAD, 1), (state.TAYLOR_SCOPE, state.SCOPE_LAYER),
                          (state.TAYLOR_NEEDED_DENOMINATOR, "l2"), (state.TAYLOR_HIST_LAYER, 2),
                          (state.TAYLOR_HIST_ORDERS, [1, 3]), (state.TAYLOR_QUERY, 6), (state.TAYLOR_ORDER, 3),
                          (state.TAYLOR_WEIGHT_DENOMINATOR, "softmax"), (state.TAYLOR_RNN_TOKENS, 32),
                          (state.TAYLOR_LOSS_DENOMINATOR, "taylor")],
    "context_collapse": [(state.COLLAPSE_SOURCE, state.SOURCE_SIDEBAR), (state.COLLAPSE_MAX_LENGTH, 64),
                         (state.COLLAPSE_WINDOWS, 1), (state.COLLAPSE_ROWS, 4), (state.COLLAPSE_VECTORS, "hidden"),
                         (state.COLLAPSE_LAYER, 4), (state.COLLAPSE_HEAD, 3), (state.COLLAPSE_FIXED_LENGTH, 32)],
    "prompts": [(state.PASTE_TEXT, "A prompt for the batch page"), (CLICK, "Add to the library"),
                (state.PASTE_TEXT, "a text being pasted"), (state.PASTE_NAME, "mine")],
    "batch": [(state.BATCH_KIND, "taylor")],
    "compare": [(state.COMPARE_MODEL, "minilm-l6"), (state.COMPARE_TEXT, "Side B's own text")],
    "generation": [(state.MAX_NEW_TOKENS, 12), ("sample", True), ("temperature", 0.5), ("top_p", 0.8), ("seed", 7),
                   ("chat", "off")],
    "head_atlas": [(state.ATLAS_DOCUMENTS, 3), (state.ATLAS_TOKENS, 64), (state.ATLAS_TEXT_COLUMN, "body")],
    "why_here": [(state.WHY_THRESHOLD, 0.05), (state.ABLATION_MODE, "mean"), (state.WHY_ABLATION_SCOPE, "token")],
}
# The widgets a page does not draw in the state the steps leave it in (another view of the maps page).
NOT_DRAWN = {"attention_maps": {state.MAP_SCALE, state.MAP_SEARCH, state.GRID_SCOPE, state.GRID_SORT, state.QUERY}}
SIDEBAR = [(state.TEXT, state.EXAMPLES["Repeated names (induction)"]), (state.MAX_TOKENS, 512),
           (state.IMAGE_FORMAT, "svg"), (state.DTYPE, "float32")]


def _widget(at: AppTest, key: str):
    for kind in KINDS:
        try:
            return getattr(at, kind)(key=key)
        except KeyError:
            continue
    raise AssertionError(f"no widget with key {key!r} on this page")


def _switch(at: AppTest, page: str) -> AppTest:
    at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _all_ordered_pairs(nodes) -> list:
    """A walk through every node that takes every ordered pair (a, b), a != b, exactly once as a step (an Euler
    circuit of the complete directed graph, by Hierholzer's algorithm)."""
    unused = {a: [b for b in nodes if b != a] for a in nodes}
    stack, walk = [nodes[0]], []
    while stack:
        here = stack[-1]
        if unused[here]:
            stack.append(unused[here].pop())
        else:
            walk.append(stack.pop())
    return walk[::-1]


def test_every_setting_survives_every_page_switch():
    at = AppTest.from_file(ENTRY, default_timeout=TIMEOUT).run()
    assert not at.exception
    chosen = {}
    for key, value in SIDEBAR:
        _widget(at, key).set_value(value).run()
        chosen[key] = value
    for page in PAGES:
        _switch(at, page)
        for key, value in CHOICES[page]:
            if key == CLICK:
                next(button for button in at.button if button.label == value).click().run()
            else:
                _widget(at, key).set_value(value).run()
                chosen[key] = value
            assert not at.exception, (page, key, [e.value for e in at.exception])
    walk = _all_ordered_pairs(list(PAGES))
    assert len(walk) == len(PAGES) * (len(PAGES) - 1) + 1
    for step, page in enumerate(walk):
        _switch(at, page)
        changed = {key: at.session_state[key] for key, value in chosen.items() if at.session_state[key] != value}
        assert not changed, f"after {' -> '.join(walk[max(0, step - 2):step + 1])}: {changed}"
        for key in set(dict(CHOICES[page])) - {CLICK} - NOT_DRAWN.get(page, set()):  # and its widgets show them
            assert _widget(at, key).value == chosen[key], (page, key)


def _example_box(at: AppTest):
    return next(box for box in at.sidebar.selectbox if box.label == "Example prompts")


def _title(at: AppTest) -> str:
    import json

    return json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["title"]["text"]


def test_what_belongs_to_one_text_starts_afresh_when_the_text_changes():
    at = AppTest.from_file(ENTRY, default_timeout=TIMEOUT).run()
    assert _example_box(at).value == "Capital cities"
    at.segmented_control(key=state.VIEW).set_value(state.VIEW_QUERY).run()
    n_tokens = int(at.sidebar.caption[0].value.split()[0])
    assert f"query {n_tokens - 1}:" in _title(at)  # the one-query view opens on the last token
    at.selectbox(key=state.QUERY).set_value(3).run()
    _switch(at, "softmax_vs_taylor")
    at.selectbox(key=state.TAYLOR_QUERY).set_value(2).run()

    at.text_area(key=state.TEXT).input("A different text, typed by hand, of a few more tokens than before.").run()
    assert not at.exception
    assert _example_box(at).value is None  # no longer says "Capital cities"
    n_tokens = int(at.sidebar.caption[0].value.split()[0])
    assert at.selectbox(key=state.TAYLOR_QUERY).value == n_tokens - 1
    _switch(at, "attention_maps")
    assert at.session_state[state.QUERY] == n_tokens - 1 and f"query {n_tokens - 1}:" in _title(at)

    _example_box(at).set_value("Code").run()
    assert at.text_area(key=state.TEXT).value == state.EXAMPLES["Code"]
    assert _example_box(at).value == "Code"


def test_a_link_opens_on_its_query_token_and_its_zoom():
    at = AppTest.from_file(ENTRY, default_timeout=TIMEOUT)
    at.query_params.update({"view": "query", "query": "5"})
    at.run()
    assert not at.exception and at.session_state[state.QUERY] == 5 and "query 5:" in _title(at)
    at = AppTest.from_file(ENTRY, default_timeout=TIMEOUT)
    at.query_params.update({"queries": "2:10", "keys": "0:10", "scale": "linear"})
    at.run()
    assert not at.exception
    assert "queries 2-9 × keys 0-9" in _title(at)
    assert "weight" == json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]["colorbar"]["title"]["text"]
