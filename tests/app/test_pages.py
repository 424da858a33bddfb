"""Every page under Streamlit's AppTest, on the packaged model: no exception, clear messages for user mistakes."""

import json
import re

import numpy as np
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from attnscope.app import state

pytestmark = pytest.mark.slow

ENTRY = str(Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py")
TIMEOUT = 240


def _app() -> AppTest:
    return AppTest.from_file(ENTRY, default_timeout=TIMEOUT)


def _figure(at: AppTest, index: int = 0) -> dict:
    return json.loads(at.get("plotly_chart")[index].proto.spec)


def test_device_and_precision_in_the_sidebar():
    """The sidebar says where the model runs, in what, and the memory in use; choosing bfloat16 reloads it so."""
    at = _app().run()
    assert not at.exception
    assert at.selectbox(key=state.DEVICE).options == ["auto (GPU if there is one)", "cpu"]  # no GPU here
    assert any(re.search(r"\nOn cpu in float32 · \d+\.\d GiB resident \(this process\)$", c.value)
               for c in at.sidebar.caption)
    at.selectbox(key=state.DTYPE).set_value("bfloat16").run()
    assert not at.exception
    assert any("\nOn cpu in bfloat16 · " in c.value for c in at.sidebar.caption)
    assert "Layer 0, head 0" in _figure(at)["layout"]["title"]["text"]


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


def _taylor_page(at: AppTest) -> AppTest:
    return at.switch_page("app_pages/softmax_vs_taylor.py").run()


def _chart(at: AppTest, key: str) -> dict:
    """The spec of the plotly chart whose widget key is `key` (Streamlit puts the key in the element id)."""
    return json.loads(next(c for c in at.get("plotly_chart") if key in c.proto.id).proto.spec)


def _z(chart: dict) -> np.ndarray:
    """The first trace's z of a plotly chart spec, as an array."""
    import base64

    values = chart["data"][0]["z"]
    if isinstance(values, dict):  # a typed array: {"dtype", "bdata", "shape"}
        shape = tuple(int(n) for n in str(values["shape"]).split(","))
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).reshape(shape)
    return np.array(values, dtype=float)


def test_softmax_vs_taylor_page_every_section():
    at = _taylor_page(_app().run())
    assert not at.exception
    assert [t.value for t in at.title] == ["Softmax vs Taylor"]
    assert any("arXiv 2507.23632" in c.value for c in at.caption)
    errors = _chart(at, "taylor_error_chart")
    names = [t.get("name", "") for t in errors["data"]]
    assert sum("median" in n for n in names) == 4  # one line per denominator
    table = at.dataframe[0].value
    assert len(table) == 30 * 9 and table["min logit"].is_monotonic_increasing
    assert table["min logit"].iloc[0] < table["max logit"].iloc[0]

    at.radio(key=state.TAYLOR_SCOPE).set_value(state.SCOPE_HEAD).run()
    at.selectbox(key=state.TAYLOR_LAYER).set_value(29).run()
    assert not at.exception
    assert "layer 29, head 0" in _chart(at, "taylor_error_chart")["layout"]["title"]["text"]

    needed = _chart(at, "taylor_needed_chart")
    assert "heads never below 0.01" in needed["layout"]["title"]["text"]
    assert "truncation error of exp" in json.dumps(_chart(at, "taylor_logit_chart")["layout"])
    assert "dominant order" in json.dumps(_chart(at, "taylor_terms_chart"))
    row = _chart(at, "taylor_row_chart")
    assert "query 18" in row["layout"]["title"]["text"]  # the default query is the last token
    assert "RNN form" in [t.label for t in at.tabs]
    rnn = at.dataframe[1].value
    assert list(rnn["order n"]) == [0, 1, 2] and (rnn["max |recurrent − parallel|"] < 1e-9).all()

    at.slider(key=state.TAYLOR_MAX_ORDER).set_value(3).run()
    at.radio(key=state.TAYLOR_CLAMP_MODE).set_value(state.CLAMP_BOTH).run()
    assert not at.exception
    assert any("orders 0–3 · logits clamped to [-5, 5]" in c.value for c in at.caption)

    at.button[0].click().run()
    assert not at.exception
    losses = at.dataframe[-1].value.set_index("attention")["loss (nats)"]
    assert len(losses) == 3 + 3
    assert abs(losses["exact softmax (written out)"] - losses["the model as trained"]) < 1e-5
    assert "zero-shot" in _chart(at, "taylor_loss_chart")["layout"]["title"]["text"]


def test_softmax_vs_taylor_on_an_encoder():
    at = _app()
    at.session_state[state.MODEL_CHOICE] = "minilm-l6"
    at = _taylor_page(at.run())
    assert not at.exception
    assert any("attends in both directions" in i.value for i in at.info)
    assert any("needs a decoder" in i.value for i in at.info)
    assert len(at.dataframe[0].value) == 6 * 12


def test_softmax_vs_taylor_analyses_a_prefix_of_long_texts():
    at = _app()
    at.session_state[state.TEXT] = " ".join(f"word{i % 37}" for i in range(700))
    at = _taylor_page(at.run())
    assert not at.exception
    assert at.number_input(key=state.TAYLOR_PREFIX).value == 512
    assert any(c.value.startswith("512 tokens · 30 layers") for c in at.caption)
    at.number_input(key=state.TAYLOR_PREFIX).set_value(100).run()
    assert not at.exception
    assert any(c.value.startswith("100 tokens · 30 layers") for c in at.caption)


def _collapse_page(at: AppTest) -> AppTest:
    return at.switch_page("app_pages/context_collapse.py").run()


def test_context_collapse_page_every_section():
    at = _app()
    at.session_state[state.COLLAPSE_MAX_LENGTH] = 256
    at.session_state[state.COLLAPSE_WINDOWS] = 2
    at = _collapse_page(at.run())
    assert not at.exception
    assert [t.value for t in at.title] == ["Context collapse"]
    assert [h.value.split(".")[0] for h in at.header] == ["1", "2", "3", "4", "5", "6"]
    assert any("pydoc_data.topics" in c.value for c in at.caption)
    claims = [m.value for m in at.markdown if m.value.startswith("**Measured here:**")]
    assert len(claims) == 5
    assert any("Theorem 1 bound held in" in c and "of" in c for c in claims)
    downloads = at.get("download_button")
    assert [d.label for d in downloads].count("Data as CSV") == 6  # one per chart
    assert downloads[-1].label == "Download report (HTML)"
    vanishing = _chart(at, "collapse_vanishing")
    assert any("1/L" in (t.get("name") or "") for t in vanishing["data"])
    temperature = _chart(at, "collapse_temperature")
    assert {"1/(4T) (paper)", "1/(2T) (true maximum)"} <= {t.get("name") for t in temperature["data"]}

    at.selectbox(key=state.COLLAPSE_LAYER).set_value(5).run()
    at.selectbox(key=state.COLLAPSE_HEAD).set_value(2).run()
    at.selectbox(key=state.COLLAPSE_FIXED_LENGTH).set_value(128).run()
    assert not at.exception
    assert "L = 128, layer 5, head 2" in _chart(at, "collapse_distinguish")["layout"]["title"]["text"]
    at.radio(key=state.IMAGE_FORMAT).set_value("svg").run()
    assert not at.exception
    spec = next(c for c in at.get("plotly_chart") if "collapse_temperature" in c.proto.id).proto
    assert '"format": "svg"' in spec.config or '"format":"svg"' in spec.config


def test_context_collapse_on_short_user_text_and_on_an_encoder():
    at = _app()
    at.session_state[state.COLLAPSE_SOURCE] = state.SOURCE_SIDEBAR
    at = _collapse_page(at.run())
    assert not at.exception
    assert any("needs at least 32" in w.value for w in at.warning)
    assert at.session_state[state.TEXT] == state.EXAMPLES["Capital cities"]

    at = _app()
    at.session_state[state.MODEL_CHOICE] = "minilm-l6"
    at.session_state[state.COLLAPSE_MAX_LENGTH] = 128
    at.session_state[state.COLLAPSE_WINDOWS] = 1
    at.session_state[state.COLLAPSE_VECTORS] = "hidden"
    at = _collapse_page(at.run())
    assert not at.exception
    assert any("hidden states" in c.value and "6 layers × 12 heads" in c.value for c in at.caption)
    assert len([m for m in at.markdown if m.value.startswith("**Measured here:**")]) == 5


def test_prompts_page_paste_use_and_remove():
    at = _app().run().switch_page("app_pages/prompts.py").run()
    assert not at.exception
    assert any("library is empty" in i.value for i in at.info)
    at.button[0].click().run()  # nothing pasted yet
    assert any("pasted text is empty" in e.value for e in at.error)
    markup = "<b>bold</b> and **stars** <script>x</script>"
    at.text_area(key=state.PASTE_TEXT).input(markup).run()
    at.text_input(key=state.PASTE_NAME).input("markup").run()
    at.button[0].click().run()
    assert not at.exception and [p.name for p in at.session_state[state.LIBRARY]] == ["markup"]
    assert at.text[-1].value == markup  # shown literally
    at.text_area(key=state.PASTE_TEXT).input(markup).run()
    at.button[0].click().run()
    assert any("already in the library" in s.value for s in at.success)
    assert len(at.session_state[state.LIBRARY]) == 1

    at.button[1].click().run()  # use this prompt
    assert at.session_state[state.TEXT] == markup
    at.switch_page("app_pages/attention_maps.py").run()
    assert not at.exception
    assert at.text_area(key=state.TEXT).value == markup
    assert "Your prompts" in [s.label for s in at.sidebar.selectbox]

    at.switch_page("app_pages/prompts.py").run()
    at.button[2].click().run()  # remove
    assert not at.exception and at.session_state[state.LIBRARY] == []
    assert at.session_state[state.TEXT] == markup, "removing a prompt keeps the text being analysed"


def test_hosted_mode_limits_models_tokens_and_uploads(monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_HOSTED", "1")
    monkeypatch.setenv("ATTNSCOPE_MAX_TOKENS", "64")
    at = _app()
    at.session_state[state.TEXT] = " ".join(f"w{i}" for i in range(300))
    at.run()
    assert not at.exception
    assert state.CUSTOM_MODEL not in at.selectbox(key=state.MODEL_CHOICE).options
    assert at.number_input(key=state.MAX_TOKENS).value == 64
    assert any("only the first 64" in w.value for w in at.warning)
    assert any("Hosted demo" in c.value for c in at.sidebar.caption)
    at.switch_page("app_pages/prompts.py").run()
    assert not at.exception

    monkeypatch.setenv("ATTNSCOPE_ALLOWED_MODELS", "someone/allowed-model")
    at = _app().run()
    at.selectbox(key=state.MODEL_CHOICE).set_value(state.CUSTOM_MODEL).run()
    assert not at.exception
    assert at.selectbox(key=state.CUSTOM_NAME).options == ["someone/allowed-model"]
    assert not any(c.label == "Trust remote code" for c in at.checkbox)


def test_permalink_restores_the_view_and_reports_what_it_cannot():
    at = _app()
    at.query_params["layer"] = "3"
    at.query_params["head"] = "5"
    at.query_params["text"] = "Hello <b>world</b> again"
    at.query_params["view"] = "Nope"
    at.query_params["tokens"] = "-4"
    at.run()
    assert not at.exception
    assert "Layer 3, head 5" in _figure(at)["layout"]["title"]["text"]
    assert at.text_area(key=state.TEXT).value == "Hello <b>world</b> again"
    warnings = [re.sub(r"\\(.)", r"\1", w.value) for w in at.warning]  # as shown: Markdown escapes removed
    assert any("'view=Nope' was ignored" in w for w in warnings)
    assert any("'tokens=-4' was ignored: must be a whole number between 8 and 32768" in w for w in warnings)
    assert dict(at.query_params) == {"layer": "3", "head": "5", "text": "Hello <b>world</b> again"}
    at.selectbox(key=state.HEAD).set_value(6).run()
    assert at.query_params["head"] == "6"

    long_text = "word " * 400
    at.text_area(key=state.TEXT).input(long_text).run()
    digest = at.query_params["text_sha"]
    assert "text" not in at.query_params and len(digest) == 16
    fresh = _app()
    fresh.query_params["text_sha"] = digest
    fresh.run()
    assert not fresh.exception
    assert any(f"content hash {digest}" in w.value and "not available here" in w.value for w in fresh.warning)


def test_links_written_before_the_settings_table_open_the_same_view():
    """Links used to carry display labels; they still open the same view, and new links carry stable values."""
    at = _app()
    old_link = {"view": "All heads", "layer": "4", "sink": "1", "clamp": "clamp above (paper)", "c": "3.5",
                "tolerance": "0.001", "source": "The sidebar text", "L": "512", "vectors": "hidden",
                "model": "smollm2-135m"}
    for name, value in old_link.items():
        at.query_params[name] = value
    at.run()
    assert not at.exception and not at.warning
    assert at.session_state[state.VIEW] == "all_heads" and at.session_state[state.HIDE_SINK] is True
    assert at.session_state[state.TAYLOR_CLAMP_MODE] == "upper" and at.session_state[state.TAYLOR_CLAMP_VALUE] == 3.5
    assert at.session_state[state.TAYLOR_TOLERANCE] == 1e-3
    assert at.session_state[state.COLLAPSE_SOURCE] == "sidebar" and at.session_state[state.COLLAPSE_MAX_LENGTH] == 512
    heads = next(t for t in _figure(at)["data"] if t.get("name") == "heads")
    assert [tuple(c) for c in heads["customdata"]] == [(4, h) for h in range(9)]
    assert at.query_params["view"] == "all_heads" and at.query_params["clamp"] == "upper"
    assert at.query_params["source"] == "sidebar" and at.query_params["sink"] == "1"


def test_too_long_text_offers_the_start_or_the_end():
    at = _app()
    at.session_state[state.TEXT] = " ".join(f"w{i}" for i in range(40)) + " FINALWORD"
    at.session_state[state.MAX_TOKENS] = 8
    at.run()
    assert any("only the first 8 are analysed" in w.value for w in at.warning)
    assert "NAL" not in "".join(_figure(at)["data"][0]["x"])
    at.radio(key=state.KEEP).set_value("end").run()
    assert not at.exception
    assert any("only the last 8 are analysed" in w.value for w in at.warning)
    assert _figure(at)["data"][0]["x"][-3:] == ["5:NAL", "6:W", "7:ORD"]
    assert at.query_params["keep"] == "end"


def test_batch_over_the_library_matches_each_prompt():
    from attnscope.analyses.maps import head_stats
    from attnscope.capture import run_with_capture
    from attnscope.models import ModelSpec, load_model
    from attnscope.tokens import tokenize

    texts = ["The cat sat on the mat because it was warm there.",
             "def add(a, b):\n    return a + b\n\nprint(add(2, 3))"]
    at = _app().run().switch_page("app_pages/prompts.py").run()
    for text in texts:
        at.text_area(key=state.PASTE_TEXT).input(text).run()
        at.button[0].click().run()
    assert len(at.session_state[state.LIBRARY]) == 2
    at.switch_page("app_pages/batch.py").run()
    run = next(b for b in at.button if b.label.startswith("Run over the 2 prompt"))
    run.click().run()
    assert not at.exception
    mean = _chart(at, "batch-entropy-mean")
    z = mean["data"][0]["z"]
    shown = np.frombuffer(__import__("base64").b64decode(z["bdata"]), dtype=z["dtype"]).reshape(30, 9) \
        if isinstance(z, dict) else np.array(z)
    model = load_model(ModelSpec("smollm2-135m"))
    per_prompt = []
    for text in texts:
        capture = run_with_capture(model.model, tokenize(model.tokenizer, text).as_tensor())
        per_prompt.append(np.stack([head_stats(capture.layer(i)).entropy.numpy() for i in range(30)]))
    np.testing.assert_allclose(shown, np.mean(per_prompt, 0), rtol=1e-5)

    at.radio(key=state.BATCH_KIND).set_value("taylor").run()
    at.number_input(key=state.TAYLOR_MAX_ORDER).set_value(4).run()
    next(b for b in at.button if b.label.startswith("Run over")).click().run()
    assert not at.exception and "2 prompt(s)" in _chart(at, "batch-error-vs-order")["layout"]["title"]["text"]
    y = next(t for t in _chart(at, "batch-error-vs-order")["data"] if t.get("name") == "taylor: mean over prompts")["y"]
    y = np.frombuffer(__import__("base64").b64decode(y["bdata"]), dtype=y["dtype"]) if isinstance(y, dict) else y
    assert len(y) == 5  # orders 0..4, the setting, not 10
    at.radio(key=state.BATCH_KIND).set_value("collapse").run()
    next(b for b in at.button if b.label.startswith("Run over")).click().run()
    assert not at.exception
    assert any("fewer than 32" in i.value for i in at.info)


def test_generation_page_streams_measures_and_marks_the_generated_tokens():
    """The sidebar's Generate opens the Generation page and runs; its numbers are the API's (greedy), the whole
    text's map marks where the continuation starts, and an encoder gets one sentence."""
    import attnscope

    at = _app().run()
    at.session_state[state.MAX_NEW_TOKENS] = 6
    next(b for b in at.sidebar.button if b.label == "Generate from this text").click().run()
    assert not at.exception and [t.value for t in at.title] == ["Generation"]
    result = next(iter(at.session_state[state.GENERATIONS].values()))
    api = attnscope.generate(attnscope.load("smollm2-135m"), state.EXAMPLES["Capital cities"], max_new_tokens=6)
    assert result.generated_ids == api.generated_ids
    np.testing.assert_allclose(result.entropy, api.entropy, rtol=1e-5, atol=1e-6)
    from attnscope.app.messages import literal

    assert any(literal(api.generated_text) in m.value for m in at.markdown)
    shapes = _chart(at, "gen_map")["layout"]["shapes"]
    assert {s["type"] for s in shapes} == {"line"} and len(shapes) == 2
    assert shapes[0]["x0"] == len(api.prompt_ids) - 0.5
    assert len(_chart(at, "gen_timeline")["data"]) == 3 * 4  # band edges and mean, per statistic

    at.selectbox(key=state.MODEL_CHOICE).set_value("minilm-l6").run()
    assert not at.exception and any("is an encoder" in i.value for i in at.info)


def test_compare_page_draws_b_minus_a_of_the_api_and_keeps_the_sidebar_text():
    """Side B's text against the sidebar's: the B − A heatmap holds the difference of two attnscope.stats calls; an
    empty text B or a model B that cannot load gets one sentence, and the sidebar text stays."""
    import attnscope

    text_a, text_b = state.EXAMPLES["Capital cities"], state.EXAMPLES["Code"]
    at = _app().run().switch_page("app_pages/compare.py").run()
    assert not at.exception and [t.value for t in at.title] == ["Compare"]
    assert at.text_area(key=state.COMPARE_TEXT).value == text_a  # side B starts from the sidebar text
    at.text_area(key=state.COMPARE_TEXT).input(text_b).run()
    next(b for b in at.button if b.label == "Compare").click().run()
    assert not at.exception
    model = attnscope.load("smollm2-135m")
    expected = attnscope.stats(model, text_b).entropy - attnscope.stats(model, text_a).entropy
    np.testing.assert_allclose(_z(_chart(at, "compare_entropy-difference")), expected, rtol=1e-6, atol=1e-7)
    assert any("Both have 30 layers × 9 heads" in m.value for m in at.markdown)
    assert any("No difference map" in i.value for i in at.info)  # the texts have different token counts
    at.selectbox(key=state.COMPARE_STAT).set_value("sink_mass").run()
    expected = attnscope.stats(model, text_b).sink_mass - attnscope.stats(model, text_a).sink_mass
    np.testing.assert_allclose(_z(_chart(at, "compare_sink_mass-difference")), expected, rtol=1e-6, atol=1e-7)

    at.text_area(key=state.COMPARE_TEXT).input("   ").run()
    next(b for b in at.button if b.label == "Compare").click().run()
    assert not at.exception and any("Text B is empty" in e.value for e in at.error)
    at.text_area(key=state.COMPARE_TEXT).input(text_b).run()
    at.selectbox(key=state.COMPARE_MODEL).set_value(state.CUSTOM_MODEL).run()
    at.text_input(key=state.COMPARE_CUSTOM_NAME).input("/no/such/model/folder").run()
    next(b for b in at.button if b.label == "Compare").click().run()
    assert not at.exception and any("does not exist" in e.value for e in at.error), [e.value for e in at.error]
    assert at.session_state[state.TEXT] == text_a and at.text_area(key=state.TEXT).value == text_a


def test_hosted_generation_is_capped_in_tokens_and_time(monkeypatch):
    """In hosted mode the policy caps new tokens (the widget and what runs); its time budget is at least a second
    (the stop at a time limit is tested in tests/unit/test_generation.py)."""
    monkeypatch.setenv("ATTNSCOPE_HOSTED", "1")
    monkeypatch.setenv("ATTNSCOPE_MAX_NEW_TOKENS", "3")
    at = _app().run().switch_page("app_pages/generation.py")
    at.session_state[state.MAX_NEW_TOKENS] = 40
    at.session_state["chat"] = "off"
    at.run()
    assert not at.exception and at.number_input(key=state.MAX_NEW_TOKENS).value == 3
    next(b for b in at.button if b.label == "Generate").click().run()
    result = next(iter(at.session_state[state.GENERATIONS].values()))
    assert len(result.generated_ids) == 3 and result.stop == "max_new_tokens"
    monkeypatch.setenv("ATTNSCOPE_GENERATION_SECONDS", "0")
    from attnscope.hosting import PolicyError, policy_from_env

    with pytest.raises(PolicyError, match="ATTNSCOPE_GENERATION_SECONDS must be at least 1"):
        policy_from_env()


@pytest.fixture(scope="module")
def atlas_corpus(tmp_path_factory):
    """Seven short documents (one empty) as JSONL, and the atlas the API writes of them."""
    import attnscope

    folder = tmp_path_factory.mktemp("atlas")
    texts = [state.EXAMPLES[name] for name in state.EXAMPLES] + ["", "The cat sat on the mat. The cat sat on the mat."]
    corpus = folder / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": text}) for text in texts) + "\n")
    attnscope.atlas(attnscope.load("smollm2-135m"), corpus, folder / "atlas", max_tokens=48, shard_size=3)
    return corpus, folder / "atlas"


def test_head_atlas_page_opens_runs_and_opens_a_head(atlas_corpus):
    """Open an atlas folder: the page's findings and map are the API's; a clicked head gets its map on the sample
    document; a path that is no atlas gets one sentence and the open atlas stays; a small run from a corpus path."""
    import attnscope

    corpus, folder = atlas_corpus
    expected = attnscope.open(folder)
    at = _app().run().switch_page("app_pages/head_atlas.py").run()
    assert not at.exception and any("Open an atlas or run a small one" in i.value for i in at.info)
    at.text_input(key=state.ATLAS_FOLDER).input(str(folder)).run()
    next(b for b in at.button if b.label == "Open").click().run()
    assert not at.exception and at.session_state[state.ATLAS].meta["documents"] == expected.meta["documents"]
    shown = " ".join(m.value for m in at.markdown).replace("\\", "")
    assert expected.strongest("induction") in shown and "Induction heads" in shown
    np.testing.assert_allclose(_z(_chart(at, "atlas_map")), expected.values("induction"), rtol=1e-6)
    at.selectbox(key=state.ATLAS_FIELD).set_value("entropy_slope").run()
    np.testing.assert_allclose(_z(_chart(at, "atlas_map")), expected.values("entropy_slope"), rtol=1e-6)
    assert any(state.ATLAS_CHART in c.proto.id for c in at.get("plotly_chart"))  # the embedding

    at.session_state[state.ATLAS_HEAD] = (18, 6)  # what a click on the embedding stores
    at.run()
    assert not at.exception and any(s.value == "Layer 18, head 6 on the sample document" for s in at.subheader)
    assert any("atlas_head_map" in c.proto.id for c in at.get("plotly_chart"))

    at.text_input(key=state.ATLAS_FOLDER).input(str(corpus.parent / "missing")).run()
    next(b for b in at.button if b.label == "Open").click().run()
    assert not at.exception and any("No file at" in e.value for e in at.error)
    assert at.session_state[state.ATLAS].meta["documents"] == expected.meta["documents"]  # what was open stays

    at.text_input(key=state.ATLAS_CORPUS).input(str(corpus)).run()
    at.number_input(key=state.ATLAS_DOCUMENTS).set_value(3).run()
    at.number_input(key=state.ATLAS_TOKENS).set_value(32).run()
    next(b for b in at.button if b.label == "Run the atlas").click().run()
    assert not at.exception and at.session_state[state.ATLAS].meta["documents"] == 3
    assert at.session_state[state.ATLAS].meta["settings"]["max_tokens"] == 32


def test_hosted_head_atlas_reads_no_path_and_caps_runs(monkeypatch):
    """Hosted: no path inputs (uploads only), and the run's documents and tokens capped by the policy."""
    monkeypatch.setenv("ATTNSCOPE_HOSTED", "1")
    monkeypatch.setenv("ATTNSCOPE_MAX_ATLAS_DOCUMENTS", "5")
    at = _app().run().switch_page("app_pages/head_atlas.py").run()
    assert not at.exception
    keys = {w.key for w in at.text_input}
    assert state.ATLAS_FOLDER not in keys and state.ATLAS_CORPUS not in keys
    assert at.number_input(key=state.ATLAS_DOCUMENTS).max == 5
    assert at.number_input(key=state.ATLAS_TOKENS).max == 256
    next(b for b in at.button if b.label == "Run the atlas").click().run()
    assert any(e.value == "Upload a corpus first." for e in at.error)


def test_head_atlas_run_stops_at_the_time_limit(tmp_path, monkeypatch):
    """A run in the app starts no batch after ATTNSCOPE_ATLAS_SECONDS: what it finished is shown, with a sentence.
    (Documents of 256 tokens: one batch of four takes several seconds, well past the 1 s limit.)"""
    from attnscope.analyses.collapse import builtin_text

    monkeypatch.setenv("ATTNSCOPE_ATLAS_SECONDS", "1")
    corpus = tmp_path / "manual.jsonl"
    texts = [p for p in builtin_text().split("\n\n") if len(p) > 2000][:8]
    corpus.write_text("\n".join(json.dumps({"text": text}) for text in texts))
    at = _app().run().switch_page("app_pages/head_atlas.py").run()
    at.text_input(key=state.ATLAS_CORPUS).input(str(corpus)).run()
    at.number_input(key=state.ATLAS_DOCUMENTS).set_value(8).run()
    at.number_input(key=state.ATLAS_TOKENS).set_value(256).run()
    next(b for b in at.button if b.label == "Run the atlas").click().run()
    assert not at.exception
    assert any(i.value.startswith("Stopped at the time limit (1 s) after 4 documents") for i in at.info), \
        [i.value for i in at.info]
    assert at.session_state[state.ATLAS].meta["documents"] == 4  # the first batch (shards of 4 in the app)


def test_a_long_map_reads_on_a_log_scale_zooms_to_tokens_and_finds_a_word():
    at = _app()
    at.session_state[state.TEXT] = "The quick brown fox jumps over the lazy dog. " * 300 + "A giraffe"
    at.session_state[state.MAX_TOKENS] = 4096
    at.run()
    assert not at.exception
    n_tokens = int(at.sidebar.caption[0].value.split()[0])
    assert n_tokens > 3000
    figure = _figure(at)
    heatmap = figure["data"][0]
    block = -(-n_tokens // 256)
    tiles = -(-n_tokens // block)
    assert len(heatmap["x"]) == len(heatmap["y"]) == tiles <= 256
    assert heatmap["x"][0].startswith("keys 0-") and "…" in heatmap["x"][0]  # a tile's hover names its tokens
    assert figure["layout"]["xaxis"]["range"] == [-0.5, tiles - 0.5]  # the axes end at the text
    assert "log scale" in heatmap["colorbar"]["title"]["text"]

    at.text_input(key=state.MAP_SEARCH).input("giraffe").run()
    assert not at.exception
    assert len(_figure(at)["layout"]["shapes"]) == 2  # the match's column and row are framed
    picker = next(box for box in at.selectbox if box.label.startswith("1 matches"))
    picker.set_value(0).run()
    assert not at.exception
    zoomed = _figure(at)
    assert f"keys {n_tokens - 256}-{n_tokens - 1}" in zoomed["layout"]["title"]["text"]
    assert len(zoomed["data"][0]["x"]) == 256 and zoomed["data"][0]["x"][-1].endswith("giraffe")

    at.slider(key=f"{state.ZOOM_QUERIES}_slider").set_value((100, 163)).run()
    assert not at.exception
    window = _figure(at)
    assert len(window["data"][0]["y"]) == 64 and window["data"][0]["y"][0].startswith("100:")
    at.button[[b.label for b in at.button].index("Whole text")].click().run()
    assert len(_figure(at)["data"][0]["x"]) == tiles


def test_head_statistics_show_head_type_scores_of_the_text():
    at = _app()
    at.session_state[state.TEXT] = state.EXAMPLES["Repeated names (induction)"]
    at.session_state[state.VIEW] = state.VIEW_STATS
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    for column in ("previous-token score", "duplicate-token score", "induction score", "sink mass"):
        assert table[column].notna().any(), column
    assert table["induction score"].between(0, 1).all() and table["previous-token score"].between(0, 1).all()
    at.selectbox(key=state.STAT_SHOWN).set_value("induction").run()
    assert not at.exception and "induction score per head" in _figure(at)["layout"]["title"]["text"]
    assert any("the text's own repeats" in c.value for c in at.caption)

    at.text_area(key=state.TEXT).input("Colourless green ideas sleep furiously").run()  # no token repeats
    assert not at.exception
    assert any("a repeated copy of its first" in c.value for c in at.caption)


WHY_TEXT = "The cat sat on the mat. The cat"  # 9 tokens: ablating all 270 heads stays quick


def _why_page(at: AppTest) -> AppTest:
    at.session_state[state.TEXT] = WHY_TEXT
    return at.run().switch_page("app_pages/why_here.py").run()


def _edges(chart: dict) -> np.ndarray:
    """(n, 4) the (layer, head, query, key) of every edge of a contribution graph, from its midpoints' customdata."""
    middles = next(t for t in chart["data"] if t.get("customdata") is not None)
    data = middles["customdata"]
    if isinstance(data, dict):  # a typed array
        import base64

        shape = tuple(int(n) for n in str(data["shape"]).split(","))
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).reshape(shape)
    return np.array(data)


def test_why_here_follows_a_token_opens_a_head_and_ablates_on_its_button():
    """The graph is the API's traversal from the chosen token (the last by default); a token picked in the strip or the
    box and the edge threshold change it; an opened head shows its map beside its value-weighted form with the
    token framed; rollout and the findings are drawn; ablation runs only on its button and draws both figures."""
    import attnscope

    model = attnscope.load("smollm2-135m")
    at = _why_page(_app())
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Why here"]
    graph = _chart(at, state.WHY_GRAPH)
    assert "Information flow into token 8" in graph["layout"]["title"]["text"]
    expected = attnscope.contributions(model, WHY_TEXT, token=8, threshold=0.02).to_frame()
    assert len(_edges(graph)) == len(expected)

    at.pills(key=state.WHY_TOKEN_STRIP).set_value(3).run()
    assert not at.exception and at.session_state[state.WHY_TOKEN] == 3
    graph = _chart(at, state.WHY_GRAPH)
    assert "Information flow into token 3" in graph["layout"]["title"]["text"]
    assert _edges(graph)[:, 2].max() == 3  # nothing after the token reaches it
    at.number_input(key=state.WHY_TOKEN_BOX).set_value(5).run()
    assert at.session_state[state.WHY_TOKEN] == 5
    before = len(_edges(_chart(at, state.WHY_GRAPH)))
    at.number_input(key=state.WHY_THRESHOLD).set_value(0.1).run()
    assert not at.exception
    after = _edges(_chart(at, state.WHY_GRAPH))
    expected = attnscope.contributions(model, WHY_TEXT, token=5, threshold=0.1).to_frame()
    assert len(after) == len(expected) < before

    at.session_state[state.LAYER], at.session_state[state.HEAD] = 2, 5  # what a click on an edge stores
    at.run()
    assert not at.exception
    raw, weighted = _chart(at, "why_head_map"), _chart(at, "why_value_map")
    assert raw["layout"]["title"]["text"] == "Layer 2, head 5"
    assert weighted["layout"]["title"]["text"].startswith("Layer 2, head 5: value-weighted")
    assert raw["layout"]["shapes"] and weighted["layout"]["shapes"]  # token 5's row and column framed
    rollout = _chart(at, "why_rollout")
    assert len(rollout["data"]) == 2  # rollout's bars and the contribution graph's relevance
    shown = " ".join(m.value for m in at.markdown).replace("\\", "")
    for topic in ("Information flow routes", "Induction heads on this token's path", "Attention is not only a weight",
                  "Quantifying attention flow", "Rollout against contributions"):
        assert topic in shown, topic
    assert not any(state.WHY_GRAPH not in c.proto.id and "ablation" in c.proto.id for c in at.get("plotly_chart"))

    next(b for b in at.button if b.label == "Run ablation").click().run()
    assert not at.exception
    grid = _z(_chart(at, "why_ablation_map"))
    assert grid.shape == (30, 9) and np.isfinite(grid).all()
    one = attnscope.ablate(model, WHY_TEXT, heads=[(2, 5)])  # alone in its pass: fp32 sums in another batch size
    assert grid[2, 5] == pytest.approx(float(one.deltas[0]), abs=5e-5)
    assert len(_chart(at, "why_ablation_bars")["data"][0]["y"]) == 20
    assert "Are sixteen heads really better than one" in " ".join(m.value for m in at.markdown)
    at.radio(key=state.WHY_ABLATION_SCOPE).set_value("token").run()  # another run waits for the button
    assert not at.exception and not any("why_ablation_map" in c.proto.id for c in at.get("plotly_chart"))


def test_why_here_opens_a_link_on_its_token_and_threshold_and_caps_hosted_ablation(monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_HOSTED", "1")
    at = _app()
    at.query_params.update({"token": "4", "edges": "0.05", "text": WHY_TEXT})
    at.run().switch_page("app_pages/why_here.py").run()
    assert not at.exception
    assert at.session_state[state.WHY_TOKEN] == 4 and at.session_state[state.WHY_THRESHOLD] == 0.05
    assert "Information flow into token 4" in _chart(at, state.WHY_GRAPH)["layout"]["title"]["text"]
    assert any("This demo ablates texts of at most 256 tokens" in c.value for c in at.caption)
    at.session_state[state.TEXT] = " ".join(["cat"] * 300)
    at.run()
    assert not at.exception
    assert any("this demo ablates texts of at most 256" in i.value for i in at.info)
    assert next(b for b in at.button if b.label == "Run ablation").disabled
    assert at.session_state[state.WHY_TOKEN] is None  # a new text: the token starts afresh (its last)
