"""Rows 2, 3 and 4 of the hosted-mode issue's table, tried as a visitor would: Chromium against the hosted server
that deploy/start.sh starts (the Docker image's command), with the hosted defaults (2 MB uploads, 10 files per
upload, 200 prompts per library, 20 per batch).

| # | what was tried | what happened before |
|---|---|---|
| 2 | five 19 MB uploads with a 2 MB hosted limit | each refused only after the server had read it; no cap on files |
| 3 | a 2 MB `.jsonl` of tiny prompts | 116,224 prompts in the library, all sent as sidebar options each rerun |
| 4 | `?tokens=[Session expired: sign in again](https://evil.example/login) ![x](...)` | a working link, remote image |
"""

import json
import re
import urllib.parse

import pytest

from tests.e2e.conftest import upload

pytestmark = pytest.mark.slow

EVIL = "evil.example"


def _open_prompts(browser, hosted, requests: list | None = None):
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    if requests is not None:
        page.on("request", lambda request: requests.append(request))
    page.goto(f"{hosted.url}/prompts")
    page.get_by_role("heading", name="Prompts").wait_for(timeout=120_000)
    page.get_by_text("The library is empty").wait_for(timeout=120_000)
    return page


def test_row2_oversized_uploads_are_refused_before_the_server_reads_them(browser, hosted, tmp_path):
    uploads = []
    page = _open_prompts(browser, hosted, uploads)
    small = tmp_path / "small.txt"
    small.write_text("A small prompt about attention sinks.")
    upload(page, str(small))
    page.get_by_text("'small.txt': 1 prompt(s) added.").wait_for(timeout=60_000)
    put = next(r for r in uploads if r.method == "PUT" and "/_stcore/upload_file/" in r.url)

    big = tmp_path / "big.txt"
    big.write_bytes(b"a" * (19 * 2**20))
    upload(page, str(big))  # the browser refuses it: 2 MB per file
    page.get_by_text("or smaller").first.wait_for(timeout=30_000)

    # A client that ignores the widget's limit: the server answers 413 without reading the 19 MB.
    token = put.all_headers().get("x-xsrftoken", "")
    before = hosted.rss_mb()
    for attempt in range(5):
        url = re.sub(r"/[^/]+$", f"/oversized-{attempt}", put.url)
        response = page.request.put(url, headers={"X-Xsrftoken": token}, multipart={
            "file": {"name": "big.txt", "mimeType": "text/plain", "buffer": big.read_bytes()}})
        assert response.status == 413, response.status
    grown = hosted.rss_mb() - before
    print(f"server RSS grew by {grown:.1f} MB over five refused 19 MB uploads")
    assert grown < 19, "the server read an oversized upload"

    many = []
    for i in range(12):
        path = tmp_path / f"many-{i:02d}.txt"
        path.write_text(f"Prompt number {i} of twelve.")
        many.append(str(path))
    upload(page, many)
    page.get_by_text("Only 10 files are taken from one upload; 2 were left out").wait_for(timeout=60_000)
    page.get_by_text("Library (11)").first.wait_for(timeout=30_000)  # small.txt and ten of the twelve
    page.close()


def test_row3_a_jsonl_of_tiny_prompts_fills_the_library_to_its_limit(browser, hosted, tmp_path):
    path = tmp_path / "tiny.jsonl"
    lines, size = [], 0
    while size < 2 * 10**6 - 64:  # the browser's 2 MB
        line = json.dumps({"text": f"p{len(lines)}"})
        lines.append(line)
        size += len(line) + 1
    path.write_text("\n".join(lines) + "\n")
    page = _open_prompts(browser, hosted)
    upload(page, str(path))
    page.get_by_text("Library (200)").first.wait_for(timeout=60_000)
    page.get_by_text("only the first 200 prompts were taken").first.wait_for(timeout=30_000)

    # Another file on a full library is refused and changes nothing already loaded.
    more = tmp_path / "more.txt"
    more.write_text("One more prompt.")
    upload(page, str(more))
    page.get_by_text("library is full", exact=False).first.wait_for(timeout=60_000)
    page.get_by_text("Library (200)").first.wait_for(timeout=30_000)

    # A batch runs at most the deployment's 20 prompts.
    page.get_by_role("link", name="Batch").click()
    page.get_by_role("button", name="Run over the 20 prompt(s)").wait_for(timeout=60_000)
    page.get_by_text("A batch runs the first 20 prompts of the library").wait_for(timeout=30_000)
    page.close()


@pytest.mark.parametrize("query", [
    {"tokens": f"[Session expired: sign in again](https://{EVIL}/login) ![x](https://{EVIL}/p.png)"},
    {"text_sha": f"**UPDATE** [click](https://{EVIL}/login)"},
    {"layer": f"<img src=https://{EVIL}/q.png> <a href=https://{EVIL}>x</a>", "view": f"www.{EVIL} $x^2$"},
])
def test_row4_link_parameters_are_never_rendered_as_markdown_or_html(browser, hosted, query):
    requests = []
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.on("request", lambda request: requests.append(request.url))
    page.goto(f"{hosted.url}/?{urllib.parse.urlencode(query)}")
    page.locator(".js-plotly-plot .gtitle", has_text="Layer 0, head 0").wait_for(timeout=120_000)
    warnings = page.locator("[data-testid=stAlertContentWarning]")
    warnings.first.wait_for(timeout=30_000)
    assert page.locator(f"a[href*='{EVIL}']").count() == 0, "a link from the URL was rendered"
    assert page.locator(f"img[src*='{EVIL}']").count() == 0, "an image from the URL was rendered"
    assert page.locator("[data-testid=stAlertContentWarning] .katex").count() == 0, "LaTeX from the URL rendered"
    fetched = [url for url in requests if (urllib.parse.urlsplit(url).hostname or "").endswith(EVIL)]
    assert not fetched, f"the page fetched something from the URL's host: {fetched}"
    shown = " ".join(warnings.all_inner_texts())
    name = next(iter(query))
    assert f"'{name}=" in shown and "was ignored" in shown, shown
    page.close()


def test_row4_prompt_and_file_names_are_shown_literally(browser, hosted, tmp_path):
    """The same rule for names a visitor controls: a prompt's "name" and a file's name, where they stay on the page
    (upload messages, the library's caption, the sidebar's picker, the batch's figures); a remote image shown only
    while the batch ran would still show up as a request to its host."""
    requests = []
    page = _open_prompts(browser, hosted, requests)
    name = f"[click](https://{EVIL}/login) ![x](https://{EVIL}/n.png) **bold** www.{EVIL}"
    path = tmp_path / "names [see](www.evil.example).jsonl"
    path.write_text(json.dumps({"text": "A prompt with a hostile name.", "name": name}) + "\n{bad\n")
    upload(page, str(path))
    page.get_by_text("1 prompt(s) added").first.wait_for(timeout=60_000)
    page.get_by_text("Library (1)").first.wait_for(timeout=30_000)
    page.get_by_text("Your prompts", exact=True).wait_for(timeout=30_000)
    page.locator("[data-testid=stSidebar] [data-testid=stSelectbox]").last.click()  # open the picker's options
    page.get_by_role("option").first.wait_for(timeout=30_000)
    assert name[:70] in page.get_by_role("option").first.inner_text()  # names are cut at 80 characters
    page.keyboard.press("Escape")
    page.get_by_role("link", name="Batch").click()
    page.get_by_role("button", name="Run over the 1 prompt(s)").click()
    page.locator(".js-plotly-plot .gtitle", has_text="mean over 1 prompt").wait_for(timeout=120_000)
    assert page.locator(f"a[href*='{EVIL}']").count() == 0, "a name became a link"
    assert page.locator(f"img[src*='{EVIL}']").count() == 0, "a name became an image"
    assert page.locator("strong", has_text="bold").count() == 0, "a name was formatted"
    fetched = [r.url for r in requests if (urllib.parse.urlsplit(r.url).hostname or "").endswith(EVIL)]
    assert not fetched, f"the page fetched something named in a prompt: {fetched}"
    page.close()
