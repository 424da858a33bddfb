"""No sequence of tabs, reruns, stops and closes leaves the server waiting for a model (real Chromium, real server).

Session A holds SmolLM2's lock for as long as it generates (a long raw continuation). Meanwhile sessions B and B2
ask for the model and wait; B is then rerun and stopped, B2's tab is closed, each while it waits. A is stopped with
its Stop button. A fresh session C must then get its map at once, and B must run again when asked.
"""

import re

import pytest

pytestmark = pytest.mark.slow

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"  # a raw continuation that goes on without an end token
WAITING = "Waiting for the model"


def _open(browser, url: str):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(url)
    return context, page


def _current(page, text: str):
    """An element of the run in progress (Streamlit marks the previous run's elements stale until redrawn)."""
    return page.locator('[data-testid="stElementContainer"][data-stale="false"]', has_text=text).last


def _waits(page) -> None:
    _current(page, WAITING).wait_for(timeout=120_000)


STOP_KEY = re.compile(r"\bst-key-(stop_[0-9a-f]+)\b")


def _stop_key(page) -> str:
    """The widget key of the Stop button on screen (one per computation: run_control.working)."""
    container = page.locator('[data-testid="stElementContainer"][data-stale="false"][class*="st-key-stop_"]').last
    container.wait_for(timeout=120_000)
    return STOP_KEY.search(container.get_attribute("class")).group(1)


def _new_stop(page, old_key: str):
    """The Stop button of a computation other than `old_key`'s: right after a rerun the previous run's button can stay
    in the page for a moment, hidden and not yet marked stale, and clicking it would wait for it in vain."""
    fresh = f'[data-testid="stElementContainer"][data-stale="false"][class*="st-key-stop_"]:not(.st-key-{old_key})'
    return page.locator(fresh).last.get_by_role("button")


def test_no_interrupted_wait_leaves_the_model_locked(server, browser, output_dir):
    a_context, a = _open(browser, f"{server}/generation?text={COUNTING}")
    a.get_by_role("heading", name="Generation").wait_for(timeout=120_000)
    a.get_by_role("spinbutton", name="New tokens").fill("1024")
    a.get_by_role("spinbutton", name="New tokens").press("Enter")
    a.get_by_role("combobox", name="Chat template").click()
    a.get_by_role("option", name="never (continue the raw text)").click()
    assert a.get_by_role("combobox", name="Chat template").input_value() == "never (continue the raw text)"
    a.get_by_role("button", name="Generate", exact=True).click()
    a.get_by_text(re.compile(r"Generated \d+ of at most 1024 tokens")).wait_for(timeout=120_000)  # A holds the lock

    b_context, b = _open(browser, server)
    _waits(b)
    first_stop = _stop_key(b)
    box = b.get_by_role("textbox", name="Text to analyse")  # rerun while waiting: the new run waits its turn
    box.fill("A second visitor's own sentence")
    box.press("Control+Enter")
    _waits(b)
    _new_stop(b, first_stop).click()  # stop the new run while it waits
    b.get_by_text("Stopped (running").wait_for(timeout=60_000)

    b2_context, b2 = _open(browser, server)  # close the tab while waiting
    _waits(b2)
    b2_context.close()

    assert a.get_by_text("Generated").count() == 1, "A finished before the waits were interrupted: no lock was held"
    a.screenshot(path=str(output_dir / "e2e-lock-holder.png"), full_page=True)
    _current(a, "Stop").get_by_role("button").click()
    a.get_by_text("Stopped before the model finished").wait_for(timeout=60_000)

    c_context, c = _open(browser, server)  # a new visitor gets the model at once
    c.locator(".js-plotly-plot .gtitle", has_text="Layer 0, head 0").wait_for(timeout=60_000)
    assert c.get_by_text(WAITING).count() == 0
    c.screenshot(path=str(output_dir / "e2e-lock-after.png"), full_page=True)

    b.get_by_role("button", name="Run it again").click()  # and the stopped session runs when asked
    b.locator(".js-plotly-plot .ytick text", has_text="visitor").first.wait_for(timeout=60_000)
    for context in (a_context, b_context, c_context):
        context.close()
