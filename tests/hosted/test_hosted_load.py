"""Load: 8 Chromium sessions at once against one hosted server (deploy/start.sh, hosted defaults), loopback only,
bounded in count and time, in ROUNDS rounds: the first on the fresh server, the next on the same server once it has
served (its caches full, its allocator fragmented), each round with texts of its own so that nothing is answered
from the first round's caches.

Half the sessions paste the largest text the box takes (16,384 characters: 1,024 tokens analysed) and then upload
the largest file the uploader takes (2 MB); the other half open permalinks with their own short texts and explore
the maps (one head, all heads, head statistics). Every session must get its own numbers (its map's CSV equals the
packaged model's map of its own text, computed here), and no session may see an exception. The server's peak
resident memory over all rounds is printed and must stay under the ceiling the README states, read from the README
("enforces a ceiling of **3.5 GB**", in GB of 10^9 bytes).
"""

import asyncio
import io
import re
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from attnscope.analyses.maps import block_for, pooled_map
from attnscope.capture import run_with_capture
from attnscope.hosting import policy_from_env
from attnscope.models import ModelSpec, load_model
from attnscope.tokens import tokenize
from tests.e2e.conftest import CHROMIUM, ROOT

pytestmark = pytest.mark.slow

SESSIONS = 8
ROUNDS = 2  # the first on the fresh server, the second on a server that has served
BUDGET_S = 420  # one round
DOWNLOAD_S = 120  # one press of a CSV button
HOSTED = policy_from_env({"ATTNSCOPE_HOSTED": "1"})
ANIMALS = ["zebra", "otter", "falcon", "badger", "lynx", "heron", "bison", "gecko"]


def _readme_ceiling_bytes() -> int:
    """The peak the README promises for the hosted server under this load, in bytes."""
    stated = re.search(r"enforces a ceiling of \*\*(\d+(?:\.\d+)?) GB\*\*", (ROOT / "README.md").read_text())
    assert stated, "the README no longer states the hosted server's memory ceiling; update this test with it"
    return int(float(stated.group(1)) * 10**9)


def _long_text(i: int, round_: int) -> str:
    """Exactly as many characters as the hosted text box holds, different for every session and round."""
    sentence = (f"Session {i} of round {round_}: the {ANIMALS[i]} crossed the river {i + 2 + round_} times, then the "
                f"{ANIMALS[i]} rested. ")
    return (sentence * (HOSTED.max_chars // len(sentence) + 1))[:HOSTED.max_chars]


def _short_text(i: int, round_: int) -> str:
    return (f"Session {i} of round {round_}: the {ANIMALS[i]} crossed the river {i + 2 + round_} times before the "
            f"{ANIMALS[i]} rested.")


async def _map_csv(page) -> pd.DataFrame:
    """The shown map's CSV. The button's file is made on the server when pressed; a rerun that lands meanwhile
    cancels the download (Streamlit replaces the file) or drops the press, with no download at all. The map is
    unchanged either way, so the button is pressed again, at most three times, each press given DOWNLOAD_S."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    for attempt in range(3):
        try:
            async with page.expect_download(timeout=DOWNLOAD_S * 1000) as download:
                await page.get_by_role("button", name="Data as CSV").first.click()
            return pd.read_csv(io.BytesIO(open(await (await download.value).path(), "rb").read()))
        except PlaywrightTimeout:
            if attempt == 2:
                raise
        except Exception as error:  # playwright's Error("Download.path: canceled")
            if "canceled" not in str(error) or attempt == 2:
                raise


async def _no_exception(page, who: str) -> None:
    assert await page.locator("[data-testid=stException]").count() == 0, f"{who} saw an exception"


async def _see(locator) -> None:
    await locator.first.wait_for(timeout=BUDGET_S * 1000)


async def _paster(page, url: str, i: int, round_: int, upload: Path) -> dict:
    """Paste the largest text the box takes, read its map, then upload the largest file the uploader takes."""
    await page.goto(url)
    await _see(page.locator(".js-plotly-plot .gtitle", has_text="Layer 0, head 0"))
    box = page.get_by_role("textbox", name="Text to analyse")
    await box.fill(_long_text(i, round_))
    await box.press("Control+Enter")
    await _see(page.get_by_text("only the first 1024 are analysed"))
    await _see(page.get_by_text("1024 tokens · 30 layers"))
    await _see(page.locator(".js-plotly-plot .gtitle", has_text="Layer 0, head 0"))
    result = {"map": await _map_csv(page), "box": await box.input_value()}
    await _no_exception(page, f"session {i}")
    await page.get_by_role("link", name="Prompts").click()
    await _see(page.get_by_text("The library is empty"))
    await page.locator("input[type=file]").set_input_files(str(upload))
    await _see(page.get_by_text(f"'{upload.name}': 1 prompt(s) added."))
    await _see(page.get_by_text("Library (1)"))
    await _no_exception(page, f"session {i}")
    return result


async def _explorer(page, url: str, i: int, round_: int) -> dict:
    """Open a permalink with a short text, read its map, then the grid of all heads and the statistics."""
    await page.goto(f"{url}/?text={urllib.parse.quote(_short_text(i, round_))}")
    await _see(page.locator(".js-plotly-plot .gtitle", has_text="Layer 0, head 0"))
    result = {"map": await _map_csv(page)}
    await page.get_by_text("All heads", exact=True).click()
    await _see(page.get_by_text("click a head to open it"))
    await page.get_by_text("Head statistics", exact=True).click()
    await _see(page.locator(".js-plotly-plot .gtitle", has_text="per head"))
    await _no_exception(page, f"session {i}")
    return result


async def _sessions(url: str, round_: int, uploads: dict[int, Path], output_dir) -> list:
    """One round: SESSIONS new browser sessions, all at once; each session's result, or the error it met."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                            "--disable-component-update", "--disable-sync", "--no-first-run"])
        contexts = [await browser.new_context(viewport={"width": 1300, "height": 1000}, accept_downloads=True)
                    for _ in range(SESSIONS)]
        pages = [await context.new_page() for context in contexts]

        async def one(i: int):
            try:
                if i % 2 == 0:
                    return await _paster(pages[i], url, i, round_, uploads[i])
                return await _explorer(pages[i], url, i, round_)
            except Exception as error:  # every session's failure is reported, each with a screenshot
                await pages[i].screenshot(path=str(output_dir / f"load-round-{round_}-session-{i}.png"),
                                          full_page=True)
                return error

        results = await asyncio.gather(*(one(i) for i in range(SESSIONS)))  # all eight at once
        await browser.close()
        return results


def _uploads(folder: Path, round_: int) -> dict[int, Path]:
    """The largest file the hosted uploader takes, one per pasting session and round."""
    uploads = {}
    for i in range(0, SESSIONS, 2):
        path = folder / f"upload-{round_}-{i}.txt"
        line = f"Upload {i} of round {round_}: the {ANIMALS[i]} keeps a long diary of every river it crossed.\n"
        path.write_text((line * (HOSTED.max_upload_bytes // len(line) + 1))[:HOSTED.max_upload_bytes])
        uploads[i] = path
    return uploads


def _check_maps(model, round_: int, results: list) -> None:
    """Every session of a round shows the packaged model's map of its own text."""
    for i, result in enumerate(results):
        text = _long_text(i, round_) if i % 2 == 0 else _short_text(i, round_)
        if i % 2 == 0:
            assert result["box"] == text, f"round {round_}, session {i}: the text box lost its text"
        tokens = tokenize(model.tokenizer, text, max_tokens=HOSTED.max_tokens)
        with torch.no_grad():
            layer = run_with_capture(model.model, tokens.as_tensor(), layers=[0]).layer(0)
        block = block_for(len(tokens), 256)
        expected = pooled_map(layer, heads=[0], block=block, reduce="mean").values[0].numpy()
        table = result["map"]  # the map's CSV: a query x key matrix, rows and columns labelled with their tokens
        shown = table.set_index("query").to_numpy(dtype=float)
        assert shown.shape == expected.shape, f"round {round_}, session {i} shows another text"
        mask = np.isfinite(expected)
        np.testing.assert_allclose(shown[mask], expected[mask], atol=1e-5, err_msg=f"round {round_}, session {i}")
        if block == 1:
            labels = [f"key {j}: {t}" for j, t in enumerate(tokens.strings)]
            assert list(table.columns[1:]) == labels, f"round {round_}, session {i} shows another text's tokens"


def test_eight_sessions_at_once_on_a_fresh_then_a_served_server_stay_under_the_readme_ceiling(hosted, output_dir,
                                                                                                 tmp_path):
    ceiling = _readme_ceiling_bytes()
    start = time.monotonic()
    rounds = []
    for round_ in range(ROUNDS):
        results = asyncio.run(_sessions(hosted.url, round_, _uploads(tmp_path, round_), output_dir))
        peak = hosted.peak_rss_mb() * 2**20
        print(f"round {round_ + 1} of {ROUNDS}: hosted server peak RSS so far under {SESSIONS} concurrent sessions "
              f"{peak / 2**20:.0f} MiB = {peak / 10**9:.2f} GB (ceiling {ceiling / 10**9:.2f} GB); "
              f"{time.monotonic() - start:.0f} s")
        failures = [f"round {round_}, session {i}: {r!r}" for i, r in enumerate(results) if isinstance(r, Exception)]
        assert not failures, failures
        rounds.append(results)

    model = load_model(ModelSpec("smollm2-135m"))
    for round_, results in enumerate(rounds):
        _check_maps(model, round_, results)
    assert peak < ceiling, f"peak RSS {peak / 10**9:.2f} GB over the README's {ceiling / 10**9:.2f} GB ceiling"
    assert time.monotonic() - start < ROUNDS * BUDGET_S + 180
