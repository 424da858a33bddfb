"""Load: 8 browser sessions at once against one local server, each with its own prompt, each gets its own numbers.

Every session opens a permalink with a different text; once all are running, each downloads its attention map as CSV
and the values must equal layer 0, head 0 of that text computed here with the packaged model. Loopback only, bounded
in time."""

import html
import io
import time
import urllib.parse

import numpy as np
import pandas as pd
import pytest
import torch

from core.capture import run_with_capture
from core.models import ModelSpec, load_model
from core.tokens import tokenize

pytestmark = pytest.mark.slow

SESSIONS = 8
BUDGET_S = 240


def _prompt(i: int) -> str:
    animals = ["zebra", "otter", "falcon", "badger", "lynx", "heron", "bison", "gecko"]
    return f"Session {i}: the {animals[i]} crossed the river {i + 2} times before the {animals[i]} rested."


def test_eight_concurrent_sessions_get_their_own_statistics(server, browser):
    start = time.monotonic()
    contexts = [browser.new_context(viewport={"width": 1300, "height": 1000}, accept_downloads=True)
                for _ in range(SESSIONS)]
    pages = []
    for i, context in enumerate(contexts):  # all sessions start before any is awaited
        page = context.new_page()
        page.goto(f"{server}/?text={urllib.parse.quote(_prompt(i))}", wait_until="commit")
        pages.append(page)
    model = load_model(ModelSpec("smollm2-135m"))
    try:
        for i, page in enumerate(pages):
            page.locator(".js-plotly-plot .gtitle", has_text="Layer 0, head 0").wait_for(timeout=BUDGET_S * 1000)
            with page.expect_download(timeout=60_000) as download:
                page.get_by_role("button", name="Data as CSV").first.click()
            table = pd.read_csv(io.BytesIO(open(download.value.path(), "rb").read()))
            tokens = tokenize(model.tokenizer, _prompt(i))
            with torch.no_grad():
                capture = run_with_capture(model.model, tokens.as_tensor(), layers=[0])
            expected = capture.layer(0).probs(heads=[0])[0, 0].numpy()  # (T, T)
            shown = table.pivot_table(index="y", columns="x", values="value", sort=False).to_numpy()
            assert shown.shape == expected.shape, f"session {i} shows another text"
            mask = np.isfinite(shown)
            np.testing.assert_allclose(shown[mask], expected[mask], atol=1e-5, err_msg=f"session {i}")
            labels = [f"{j}:{html.escape(t, quote=False)}" for j, t in enumerate(tokens.strings)]
            assert list(dict.fromkeys(table["x"])) == labels, f"session {i} shows another text's tokens"
    finally:
        for context in contexts:
            context.close()
    assert time.monotonic() - start < BUDGET_S + 120
