"""A real Chromium against `streamlit run`: type a sentence, see its attention map, open a head from the grid."""

import pytest

from tests.e2e.conftest import upload

pytestmark = pytest.mark.slow

SENTENCE = "The giraffe ate leaves from the tallest acacia tree"


def _click_grid_tile(page, layer: int, head: int) -> None:
    """Click the centre of the (layer, head) tile, located through plotly's own axis transforms."""
    position = page.evaluate(
        """([layer, head]) => {
            const plots = [...document.querySelectorAll('.js-plotly-plot')];
            const gd = plots.find(p => p.data && p.data.some(t => t.name === 'heads'));
            const trace = gd.data.find(t => t.name === 'heads');
            const i = trace.customdata.findIndex(c => c[0] === layer && c[1] === head);
            const fl = gd._fullLayout, box = gd.getBoundingClientRect();
            return {x: box.left + fl._size.l + fl.xaxis.l2p(trace.x[i]),
                    y: box.top + fl._size.t + fl.yaxis.l2p(trace.y[i])};
        }""",
        [layer, head],
    )
    page.mouse.move(position["x"], position["y"])
    page.mouse.click(position["x"], position["y"])


def test_type_sentence_see_map_open_head(server, browser, output_dir):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(server)
    page.get_by_role("heading", name="Attention maps").wait_for(timeout=120_000)
    page.locator(".js-plotly-plot").first.wait_for(timeout=120_000)

    box = page.get_by_role("textbox", name="Text to analyse")
    box.fill(SENTENCE)
    box.press("Control+Enter")
    giraffe = page.locator(".js-plotly-plot .ytick text", has_text="giraffe")
    giraffe.first.wait_for(timeout=60_000)
    tick_texts = page.locator(".js-plotly-plot .xtick text").all_text_contents()
    for word in ["giraffe", "leaves", "tallest", "tree"]:
        assert any(word in t for t in tick_texts), f"{word!r} missing from the map's key axis: {tick_texts}"
    page.screenshot(path=str(output_dir / "e2e-one-head.png"), full_page=True)

    page.get_by_text("All heads", exact=True).click()
    page.get_by_text("click a head to open it").wait_for(timeout=60_000)
    page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')]"
                           ".some(p => p.data && p.data.some(t => t.name === 'heads'))", timeout=60_000)
    page.screenshot(path=str(output_dir / "e2e-grid.png"), full_page=True)

    _click_grid_tile(page, layer=0, head=4)
    title = page.locator(".js-plotly-plot .gtitle", has_text="Layer 0, head 4")
    title.wait_for(timeout=60_000)
    page.screenshot(path=str(output_dir / "e2e-opened-head.png"), full_page=True)
    page.close()


def test_softmax_vs_taylor_page_in_a_browser(server, browser, output_dir):
    """Open the page from the sidebar, read the error chart, and measure the zero-shot loss with the button."""
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(server)
    page.get_by_role("heading", name="Attention maps").wait_for(timeout=120_000)
    page.get_by_role("link", name="Softmax vs Taylor").click()  # before the first page has finished: a real race
    page.get_by_role("heading", name="Softmax vs Taylor").wait_for(timeout=60_000)
    page.locator(".js-plotly-plot").first.wait_for(timeout=120_000)
    text = page.get_by_role("textbox", name="Text to analyse").input_value()
    assert text.startswith("The capital of France"), f"the page switch lost the sidebar text: {text!r}"
    page.locator(".js-plotly-plot .gtitle", has_text="Error vs order, all heads").wait_for(timeout=120_000)
    lines = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].flatMap(p => (p.data || [])"
                          ".map(t => t.name)).filter(n => n && n.endsWith(': median'))")
    assert len(lines) == 4, lines
    page.screenshot(path=str(output_dir / "e2e-taylor.png"), full_page=True)

    page.get_by_role("tab", name="What the model loses").click()
    page.get_by_role("button", name="Measure the loss").click()
    page.locator(".js-plotly-plot .gtitle", has_text="zero-shot").wait_for(timeout=180_000)
    page.screenshot(path=str(output_dir / "e2e-taylor-loss.png"), full_page=True)
    page.close()


def test_generate_from_the_sidebar_streams_and_marks_the_continuation(server, browser, output_dir):
    """The sidebar's button opens the Generation page, which streams the continuation and draws the timeline and
    the whole text's map with the generated part marked; the sidebar text survives."""
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(server)
    page.get_by_role("heading", name="Attention maps").wait_for(timeout=120_000)
    page.get_by_role("button", name="Generate from this text").click()
    page.get_by_role("heading", name="Generation").wait_for(timeout=60_000)
    page.get_by_text("Continuation (").wait_for(timeout=180_000)
    page.locator(".js-plotly-plot .gtitle", has_text="Each generated token's attention").wait_for(timeout=60_000)
    page.locator(".js-plotly-plot .gtitle", has_text="Layer 0, head 0").wait_for(timeout=120_000)  # the whole map
    marks = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].flatMap(p => "
                          "((p.layout || {}).annotations || []).map(a => a.text))")
    assert "generated →" in marks, marks
    text = page.get_by_role("textbox", name="Text to analyse").input_value()
    assert text.startswith("The capital of France"), f"generation lost the sidebar text: {text!r}"
    page.screenshot(path=str(output_dir / "e2e-generation.png"), full_page=True)
    page.close()


UPLOADS = [  # (file name, bytes, text the page must show)
    ("notes.txt", b"Plain notes about attention.", "'notes.txt': 1 prompt(s) added."),
    ("story.md", "# A story\n\nThe fox jumped.".encode(), "'story.md': 1 prompt(s) added."),
    ("batch.jsonl", b'{"text": "first line"}\n{broken\n{"text": "second line"}\n', "line 2: not JSON"),
    ("table.csv", b"name,text\na,hello world\n", "'table.csv': 1 prompt(s) added."),
    ("columns.csv", b"title,body\nx,y\n", "has no 'text' column; columns found: 'title', 'body'."),
    ("empty.txt", b"", "'empty.txt' is empty."),
    ("binary.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "looks like a binary file"),
    ("latin.txt", "café".encode("latin-1"), "is not valid UTF-8 text"),
    ("huge.txt", b"a" * (21 * 2**20), "or smaller."),  # over app/.streamlit/config.toml's 20 MB: refused in the browser
]


def test_upload_every_format_and_every_bad_file(server, browser, output_dir, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(f"{server}/prompts")
    page.get_by_role("heading", name="Prompts").wait_for(timeout=120_000)
    for name, data, expected in UPLOADS:
        path = tmp_path / name
        path.write_bytes(data)
        upload(page, str(path))
        page.get_by_text(expected, exact=False).first.wait_for(timeout=60_000)
    page.get_by_text("Library (5)").wait_for(timeout=30_000)  # notes, story, two JSONL lines, one CSV row
    page.screenshot(path=str(output_dir / "e2e-prompts.png"), full_page=True)
    page.close()


def test_permalink_opens_the_same_view_in_a_fresh_browser(server, browser):
    first = browser.new_page(viewport={"width": 1400, "height": 1100})
    first.goto(f"{server}/?layer=2&head=7&text=Links%20carry%20%3Cb%3Eshort%3C/b%3E%20texts")
    first.locator(".js-plotly-plot .gtitle", has_text="Layer 2, head 7").wait_for(timeout=120_000)
    first.wait_for_function("() => window.location.search.includes('head=7')", timeout=30_000)
    link = first.url
    first.close()
    context = browser.new_context(viewport={"width": 1400, "height": 1100})  # no shared session or storage
    second = context.new_page()
    second.goto(link)
    second.locator(".js-plotly-plot .gtitle", has_text="Layer 2, head 7").wait_for(timeout=120_000)
    assert second.get_by_role("textbox", name="Text to analyse").input_value() == "Links carry <b>short</b> texts"
    ticks = second.locator(".js-plotly-plot .xtick text").all_text_contents()
    assert any("<" in t for t in ticks), f"token strings with markup are shown literally: {ticks}"
    context.close()


def test_download_csv_and_html_report(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1400}, accept_downloads=True)
    page.goto(server)
    page.locator(".js-plotly-plot .gtitle", has_text="Layer 0, head 0").wait_for(timeout=120_000)
    with page.expect_download(timeout=60_000) as download:
        page.get_by_role("button", name="Data as CSV").first.click()
    csv_text = open(download.value.path(), encoding="utf-8").read()
    assert download.value.suggested_filename == "attention-map-layer0-head0.csv"
    header, first = csv_text.splitlines()[:2]  # the map as a query x key matrix, labelled with the tokens
    assert header.startswith("query,key 0: The,key 1: ␣capital,") and first.startswith("query 0: The,1.0,")
    with page.expect_download(timeout=60_000) as download:
        page.get_by_role("button", name="Download report (HTML)").click()
    report = open(download.value.path(), encoding="utf-8").read()
    assert "<h1>attnscope: Attention maps</h1>" in report
    assert "The capital of France is Paris." in report and "smollm2-135m" in report
    assert report.count('class="plotly-graph-div"') == 1 and "plotly.js v" in report
    page.close()


def test_head_atlas_upload_click_a_head_and_diff(server, browser, output_dir, tmp_path):
    """Upload an atlas written by the API, click a head in the embedding to open its map on the sample document, and
    upload it again as atlas B: nothing changed, head by head."""
    import json

    import attnscope

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"{SENTENCE}, said visitor number {i}."}) for i in range(4)))
    attnscope.atlas(attnscope.load("smollm2-135m"), corpus, tmp_path / "atlas", max_tokens=32)
    path = str(tmp_path / "atlas" / "atlas.parquet")

    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(f"{server}/head_atlas")
    page.get_by_role("heading", name="Head atlas").wait_for(timeout=120_000)
    uploader = page.locator('[data-testid="stFileUploader"]')
    uploader.filter(has_text="Atlas file").locator("input[type=file]").set_input_files(path)
    page.get_by_text("Induction heads.").first.wait_for(timeout=60_000)
    page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')]"
                           ".some(p => p.data && p.data.some(t => (t.name || '').startsWith('cluster')))",
                           timeout=60_000)
    position = page.evaluate(
        """() => {
            const gd = [...document.querySelectorAll('.js-plotly-plot')]
                .find(p => p.data && p.data.some(t => (t.name || '').startsWith('cluster')));
            gd.scrollIntoView({block: 'center'});
            const index = gd.data.findIndex(t => (t.name || '').startsWith('cluster'));
            const trace = gd._fullData[index], fl = gd._fullLayout, box = gd.getBoundingClientRect();
            return {x: box.left + fl._size.l + fl.xaxis.l2p(trace.x[0]),
                    y: box.top + fl._size.t + fl.yaxis.l2p(trace.y[0]),
                    layer: trace.customdata[0][0], head: trace.customdata[0][1]};
        }""")
    page.mouse.move(position["x"], position["y"])
    page.mouse.click(position["x"], position["y"])
    heading = f"Layer {position['layer']}, head {position['head']} on the sample document"
    page.get_by_role("heading", name=heading).wait_for(timeout=60_000)
    page.locator(".js-plotly-plot .gtitle", has_text=f"Layer {position['layer']}, head {position['head']}").first \
        .wait_for(timeout=60_000)

    uploader.filter(has_text="Atlas B").locator("input[type=file]").set_input_files(path)
    page.get_by_text("0 of 270 heads changed").first.wait_for(timeout=60_000)
    page.screenshot(path=str(output_dir / "e2e-head-atlas.png"), full_page=True)
    page.close()


def test_why_here_click_a_token_then_an_edge_to_open_its_head(server, browser, output_dir):
    """A short text's link opens Why here on its last token; clicking a token in the strip follows that token back,
    and clicking an edge's midpoint in the graph opens its head's map beside its value-weighted form."""
    import re
    from urllib.parse import quote

    text = "The cat sat on the mat. The cat"
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(f"{server}/why_here?text={quote(text)}")
    page.get_by_role("heading", name="Why here").wait_for(timeout=120_000)
    page.locator(".js-plotly-plot .gtitle", has_text="Information flow into token 8").wait_for(timeout=120_000)

    page.locator('[data-testid="stButtonGroup"] button', has_text="mat").first.click()
    page.locator(".js-plotly-plot .gtitle", has_text="Information flow into token 5").wait_for(timeout=120_000)
    page.wait_for_function("() => window.location.search.includes('token=5')", timeout=30_000)

    edge = page.evaluate(
        """() => {
            const gd = [...document.querySelectorAll('.js-plotly-plot')]
                .find(p => p.data && p.data.some(t => t.mode === 'markers' && t.customdata));
            gd.scrollIntoView({block: 'center'});
            const index = gd.data.findIndex(t => t.customdata);
            const trace = gd._fullData[index], fl = gd._fullLayout, box = gd.getBoundingClientRect();
            const at = i => `${trace.x[i]},${trace.y[i]}`;
            const count = {};
            trace.x.forEach((_, i) => { count[at(i)] = (count[at(i)] || 0) + 1; });
            const heads = i => trace.customdata.map((c, j) => at(j) === at(i) ? c[1] : null).filter(h => h !== null);
            const candidates = trace.customdata.map((c, i) => i).filter(i => trace.customdata[i][1] >= 0
                && !(trace.customdata[i][0] === 0 && trace.customdata[i][1] === 0));
            const i = candidates.find(j => count[at(j)] === 1) ?? candidates[0];
            return {x: box.left + fl._size.l + fl.xaxis.l2p(trace.x[i]),
                    y: box.top + fl._size.t + fl.yaxis.l2p(trace.y[i]),
                    layer: trace.customdata[i][0], heads: heads(i)};
        }""")
    page.mouse.move(edge["x"], edge["y"])
    page.mouse.click(edge["x"], edge["y"])
    heads = "|".join(str(h) for h in edge["heads"])
    opened = re.compile(rf"^Layer {edge['layer']}, head ({heads})$")
    page.locator(".js-plotly-plot .gtitle", has_text=opened).first.wait_for(timeout=60_000)
    weighted = page.locator(".js-plotly-plot .gtitle",
                            has_text=re.compile(rf"^Layer {edge['layer']}, head ({heads}): value")).first
    weighted.wait_for(timeout=60_000)
    weighted.scroll_into_view_if_needed()
    page.screenshot(path=str(output_dir / "e2e-why-here.png"), full_page=True)
    page.close()
