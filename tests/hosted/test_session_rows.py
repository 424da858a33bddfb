"""Rows 1, 5, 8 and 9 of the hosted-mode issue's table, as a visitor's session meets them (Streamlit's AppTest on the
packaged models), and the per-model lock seen from inside the model. The browser rows are in test_browser_rows.py.

| # | what was tried | what happened before |
|---|---|---|
| 1 | 10 MB pasted into the sidebar text box | the whole text was tokenized (2,330,169 tokens) before the cut at 1,024 |
| 5 | `?model=<allowlisted id>&revision=refs/pr/1` in hosted mode | `load_model` received that revision |
| 8 | Batch with `minilm-l6` and a 902-token prompt | RuntimeError: Batch did not apply the position limit |
| 9 | a capture evicted from the cache, then the maps view | the forward pass ran without the per-model lock |
"""

import re
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from attnscope.app import state
from attnscope.prompts import pasted

pytestmark = pytest.mark.slow

ENTRY = str(Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py")


def _app() -> AppTest:
    return AppTest.from_file(ENTRY, default_timeout=240)


def _shown(elements) -> list[str]:
    """Messages as the page shows them: Markdown escapes removed."""
    return [re.sub(r"\\(.)", r"\1", e.value) for e in elements]


def test_row1_ten_megabytes_pasted_are_cut_to_the_box_before_any_work(monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_HOSTED", "1")
    at = _app().run()
    box = at.text_area(key=state.TEXT)
    assert box.proto.max_chars == 1024 * 16
    pasted_text = "All work and no play makes Jack a dull boy. " * 240_000  # 10.6 MB
    box.set_value(pasted_text).run()  # what any client can send; a browser's box stops at max_chars itself
    assert not at.exception
    kept = at.session_state[state.TEXT]
    assert len(kept) == 1024 * 16 and pasted_text.startswith(kept)
    assert at.sidebar.caption[-1].value.startswith("1024 tokens")
    warning = _shown(at.warning)[0]
    assert "only the first 1024 are analysed" in warning and "This deployment analyses at most 1024" in warning


@pytest.mark.parametrize("digest", ["0123456789abcdef\n", "0123456789ABCDEF", "**UPDATE** [click](https://x.example)"])
def test_row4_a_link_text_sha_must_be_16_hexadecimal_digits(digest):
    at = _app()
    at.query_params["text_sha"] = digest
    at.run()
    assert not at.exception
    assert any("was ignored: must be 16 hexadecimal characters" in w for w in _shown(at.warning))
    assert at.session_state[state.TEXT] == state.EXAMPLES["Capital cities"]


def test_row5_a_link_cannot_choose_the_revision_of_an_allowed_model(monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_HOSTED", "1")
    monkeypatch.setenv("ATTNSCOPE_ALLOWED_MODELS", "someone/allowed-model@v1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = _app()
    at.query_params["model"] = state.CUSTOM_MODEL
    at.query_params["hub"] = "someone/allowed-model"
    at.query_params["revision"] = "refs/pr/1"
    at.run()
    assert not at.exception
    assert at.session_state[state.CUSTOM_REVISION] == ""
    assert at.selectbox(key=state.CUSTOM_NAME).value == "someone/allowed-model@v1"
    warnings = _shown(at.warning)
    assert any("'revision=refs/pr/1' was ignored: this hosted demo offers each model at the revision it pins" in w
               for w in warnings), warnings
    errors = _shown(at.error)  # offline: the pinned revision is what the hub was asked for
    assert any("'someone/allowed-model' at revision 'v1'" in e for e in errors), errors
    assert not any("refs/pr" in e for e in errors), errors
    assert "revision" not in at.query_params and "hub" not in at.query_params


def test_row8_batch_applies_the_model_position_limit(monkeypatch):
    at = _app()
    at.session_state[state.MODEL_CHOICE] = "minilm-l6"
    at.session_state[state.LIBRARY] = [pasted(" ".join(["attention"] * 900), "902 tokens"),
                                       pasted("A short one.", "short")]
    at.run().switch_page("app_pages/batch.py").run()
    next(b for b in at.button if b.label.startswith("Run over the 2 prompt")).click().run()
    assert not at.exception
    assert any("batch-entropy-mean" in c.proto.id for c in at.get("plotly_chart"))


def _evict(cached) -> None:
    """Drop every capture and every view computed from one, as a busy server's bounded caches do."""
    for function in (cached.get_capture, cached.capture_ids, cached.study_unit):
        function.clear()


def _view(cached, spec, text, cut, head: int):
    """The Attention maps page's one-head view of layer 0, as the page asks for it."""
    return cached.study_unit(spec, "attnscope.studies.maps:layer_maps", (text, cut, 0, (head,), 1, "mean", False))


def test_row9_every_forward_pass_holds_the_model_lock_even_after_eviction():
    """A cached view whose capture was evicted runs the model from inside another cached function; the pass must
    hold the model's lock. The model itself reports, at every forward pass, whether the lock is held."""
    from attnscope.app import cached
    from attnscope.analyses.taylor import Substitute
    from attnscope.models import ModelSpec
    from attnscope.tokens import Cut

    spec, text, cut = ModelSpec("smollm2-135m"), "The lock must cover this pass.", Cut(64)
    model = cached.get_model(spec).model
    lock = cached.model_lock(spec)
    held = []
    hook = model.register_forward_pre_hook(lambda module, args: held.append(lock.locked()))
    try:
        _evict(cached)
        _view(cached, spec, text, cut, 0)  # a view, its capture evicted
        cached.study_unit(spec, "attnscope.studies.taylor:loss", (text, cut, 8, Substitute("softmax")))
        assert held == [True, True]

        _evict(cached)
        lock.acquire()  # another session's forward pass: the evicted capture must wait for it
        try:
            worker = threading.Thread(target=_view, args=(cached, spec, text, cut, 1), daemon=True)
            worker.start()
            time.sleep(2.0)
            assert worker.is_alive() and len(held) == 2, "the forward pass ran while another session held the model"
        finally:
            lock.release()
        worker.join(timeout=60)
        assert not worker.is_alive() and held == [True, True, True]
    finally:
        hook.remove()


def test_row9_a_page_in_its_turn_and_an_evicted_view_never_wait_for_each_other():
    """Session A has waited its turn (app.run_control.working) and is about to ask for a capture; meanwhile session B's
    view of the same text finds that capture evicted and computes it, holding Streamlit's lock on that cache key.
    Both must finish: nothing holds the model's lock while waiting for a cache key (when the page's wait held it, A
    waited for B's key and B for A's model lock, forever)."""
    from attnscope.app import cached, run_control
    from attnscope.models import ModelSpec
    from attnscope.tokens import Cut

    spec, text, cut = ModelSpec("smollm2-135m"), "Two sessions, one text, one evicted capture.", Cut(64)
    cached.get_model(spec)
    a_in_turn, a_done, b_done = threading.Event(), threading.Event(), threading.Event()

    def session_a():
        with run_control.working("Session A's page", ("row 9",), models=(spec,)):
            a_in_turn.set()
            time.sleep(1.5)  # B starts its view now
            cached.get_capture(spec, text, cut)
        a_done.set()

    def session_b():
        a_in_turn.wait(timeout=30)
        _view(cached, spec, text, cut, 0)
        b_done.set()

    _evict(cached)
    for target in (session_a, session_b):
        threading.Thread(target=target, daemon=True).start()
    assert b_done.wait(timeout=60) and a_done.wait(timeout=60), "the two sessions wait for each other"
