"""Attention maps: one head, all heads as a clickable grid, and one query token's weights."""

import hashlib

import streamlit as st

import attnscope
from attnscope import settings as S
from attnscope.app import common, output, run_control, runs, state
from attnscope.app.messages import literal
from attnscope.app.widgets import widget
from attnscope.prompts import pasted
from attnscope.tokens import MAX_MATCHES, MAX_NEEDLE_CHARS, find
from attnscope.figures import maps as figures
from attnscope.studies import maps as study

GRID_CELLS_ONE_LAYER = 48  # thumbnail resolution when one layer's heads are shown
GRID_CELLS_ALL_LAYERS = 24  # ... and when every layer's are
TOP_KEYS = 60  # bars in the one-query view


def _open_clicked_head() -> None:
    """Grid selection callback: open the clicked head in the one-head view."""
    points = st.session_state[state.GRID_CHART].selection.points
    if points:
        layer, head = points[0]["customdata"]
        st.session_state[state.LAYER] = int(layer)
        st.session_state[state.HEAD] = int(head)
        st.session_state[state.VIEW] = state.VIEW_ONE_HEAD


def _span(values: tuple[int, int], n_tokens: int) -> tuple[int, int] | None:
    """A range slider's (first, last) positions as the zoom setting's (start, end), None for the whole text."""
    start, end = int(values[0]), int(values[1]) + 1
    return None if (start, end) == (0, n_tokens) else (start, end)


def _zoom_moved(setting: str, slider: str, n_tokens: int) -> None:
    st.session_state[setting] = _span(st.session_state[slider], n_tokens)


def _range_slider(where, setting: str, label: str, n_tokens: int) -> None:
    """A range slider over the text's token positions bound to the zoom setting `setting` ((start, end) or None)."""
    slider = f"{setting}_slider"
    start, end = st.session_state[setting] or (0, n_tokens)
    end = min(end, n_tokens)
    if st.session_state.get(slider) != (start, end - 1):
        st.session_state[slider] = (start, end - 1)
    where.slider(label, 0, n_tokens - 1, key=slider, on_change=_zoom_moved, args=(setting, slider, n_tokens),
                 help=S.setting(setting).help)


def _whole_text() -> None:
    st.session_state[state.ZOOM_QUERIES] = st.session_state[state.ZOOM_KEYS] = None


def _zoom_at(span: tuple[int, int], n_tokens: int, cell_limit: int) -> None:
    """Zoom to a window of at most cell_limit tokens, queries and keys alike, centred on a search match."""
    width = min(cell_limit, n_tokens)
    start = max(0, min((span[0] + span[1]) // 2 - width // 2, n_tokens - width))
    window = None if width == n_tokens else (start, start + width)
    st.session_state[state.ZOOM_QUERIES] = st.session_state[state.ZOOM_KEYS] = window


def _zoom(n_tokens: int, cell_limit: int) -> dict:
    """The zoom controls; the maps() keywords of the zoom chosen (none when it covers the whole text or is wider
    than the cell limit, which is then said)."""
    for setting in (state.ZOOM_QUERIES, state.ZOOM_KEYS):  # a link or an earlier text may hold a range past this one
        span = st.session_state[setting]
        if span is not None and (span[1] > n_tokens or span[0] >= n_tokens):
            st.session_state[setting] = None
    with st.expander("Zoom: a token range, token by token", expanded=bool(st.session_state[state.ZOOM_QUERIES]
                                                                          or st.session_state[state.ZOOM_KEYS])):
        if n_tokens < 2:
            st.caption("The text has one token.")
            return {}
        columns = st.columns([2, 2, 1])
        _range_slider(columns[0], state.ZOOM_QUERIES, "Query tokens", n_tokens)
        _range_slider(columns[1], state.ZOOM_KEYS, "Key tokens", n_tokens)
        columns[2].button("Whole text", on_click=_whole_text, help="Back to the map of the whole text.")
        if n_tokens > cell_limit:
            st.caption(f"At most {cell_limit} tokens per side (the cell limit); a side left at the whole text takes "
                       "the other side's range.")
    queries, keys = st.session_state[state.ZOOM_QUERIES], st.session_state[state.ZOOM_KEYS]
    if queries is None and keys is None:
        return {}
    if n_tokens > cell_limit:  # a side left at the whole text would be too wide to draw: it takes the other's range
        queries, keys = queries or keys, keys or queries
    zoom = {"queries": queries or (0, n_tokens), "keys": keys or (0, n_tokens)}
    wide = {name: end - start for name, (start, end) in zoom.items() if end - start > cell_limit}
    if wide:
        st.warning("The zoom spans more tokens than the cell limit ("
                   + ", ".join(f"{name} {width}" for name, width in wide.items())
                   + f" > {cell_limit}): the whole text is shown pooled. Narrow the range or raise the cell limit.")
        return {}
    return zoom


def _picked(picker: str, matches: list[tuple[int, int]], n_tokens: int, cell_limit: int) -> None:
    if st.session_state[picker] is not None:
        _zoom_at(matches[st.session_state[picker]], n_tokens, cell_limit)


def _search(box, picker, tokens, text_digest: str, cell_limit: int) -> list[tuple[int, int]]:
    """'Find in the text': the matches' (first, last) token positions, framed on the map; picking one zooms to it."""
    needle = box.text_input("Find in the text", key=state.MAP_SEARCH, persist_state=state.PERSIST,
                            max_chars=MAX_NEEDLE_CHARS, placeholder="a word or a phrase",
                            help="Frames every token where it occurs on the map (case-insensitive).")
    if not needle.strip():
        return []
    try:
        matches = find(tokens, needle)
    except ValueError as error:  # longer than MAX_NEEDLE_CHARS (the box's limit is the browser's to keep)
        picker.caption(literal(error))
        return []
    if not matches:
        picker.caption(f"No match for '{literal(needle, 40)}'.")
        return []
    context = lambda span: "".join(tokens.strings[max(0, span[0] - 2):span[1] + 3])  # noqa: E731
    key = f"{state.MAP_SEARCH}_pick_{hashlib.sha256(needle.encode()).hexdigest()[:16]}_{text_digest}"  # per text
    picker.selectbox(f"{len(matches)}{'+' if len(matches) == MAX_MATCHES else ''} matches: zoom to one",
                     range(len(matches)), index=None, placeholder="pick a match to zoom to it",
                     format_func=lambda i: f"{matches[i][0]}: …{context(matches[i])}…", key=key,
                     on_change=_picked, args=(key, matches, len(tokens), cell_limit))
    return matches


st.title("Attention maps")
run = runs.current_run()
if run is None:
    st.stop()
source, (_, text, cut) = common.source(run.key.spec), run.key.args()

capture, tokens = run.capture, run.tokens
n_layers, n_heads, n_tokens = capture.n_layers, capture.n_heads, len(tokens)
st.session_state[state.LAYER] = min(st.session_state[state.LAYER], n_layers - 1)
st.session_state[state.HEAD] = min(st.session_state[state.HEAD], n_heads - 1)
state.last_if_unset(state.QUERY, n_tokens)

view = widget("view", kind="segmented", label_visibility="collapsed")
controls = st.columns([1, 1, 1.3, 1.3, 1.6])
widget("layer", controls[0], options=range(n_layers))
widget("head", controls[1], options=range(n_heads))
widget("hide_sink", controls[2])
widget("reduce", controls[3], kind="radio", horizontal=True)
widget("cell_limit", controls[4], kind="slider")
layer, head = st.session_state[state.LAYER], st.session_state[state.HEAD]
hide_sink, reduce = st.session_state[state.HIDE_SINK], st.session_state[state.REDUCE]
direction = "causal (each token sees itself and the tokens before it)" if run.kind == "decoder" else "bidirectional"
st.caption(f"{n_tokens} tokens · {direction} · rows are queries, columns are keys")

if view == state.VIEW_ONE_HEAD:
    cell_limit = st.session_state[state.CELL_LIMIT]
    reading = st.columns([1.6, 1.4, 2])
    widget("map_scale", reading[0], kind="segmented")
    marks = _search(reading[1], reading[2], tokens, pasted(text).digest, cell_limit)
    zoom = _zoom(n_tokens, cell_limit)
    with st.spinner("Computing the map"):
        result = attnscope.maps(source, text, **common.cut_settings(cut), layer=layer, heads=[head],
                                cell_limit=cell_limit, reduce=reduce, hide_sink=hide_sink, **zoom,
                                map_scale=st.session_state[state.MAP_SCALE])
    if result.block > 1:
        st.info(f"{n_tokens} tokens are more than the cell limit: showing the {reduce} weight of "
                f"{result.block}×{result.block}-token tiles ({result.values.shape[1]}×{result.values.shape[2]} "
                "tiles); hover a tile for its tokens, or zoom to a token range to see it token by token.")
    (name, figure), = result.figures(marks=marks).items()
    output.chart(figure, key="head_map", name=name, data=lambda: result.matrix_frame(head=head).reset_index())

elif view == state.VIEW_ALL_HEADS:
    options = st.columns([1.2, 1, 3])
    options[0].radio("Heads of", ["This layer", "All layers"], key=state.GRID_SCOPE, persist_state=state.PERSIST,
                     horizontal=True)
    options[1].toggle("Sort by entropy", key=state.GRID_SORT, persist_state=state.PERSIST,
                      help="Lowest mean entropy (most focused) first.")
    all_layers = st.session_state[state.GRID_SCOPE] == "All layers"
    layers = range(n_layers) if all_layers else [layer]
    cells = GRID_CELLS_ALL_LAYERS if all_layers else GRID_CELLS_ONE_LAYER
    thumbnails = []
    request = ("grid", run.key, tuple(layers), cells, reduce, hide_sink)
    with run_control.working("Computing head maps", request) as progress:
        for index, grid_layer in enumerate(layers):
            thumbnails += attnscope.maps(source, text, **common.cut_settings(cut), layer=grid_layer,
                                         cell_limit=cells, reduce=reduce, hide_sink=hide_sink).thumbnails()
            progress((index + 1) / len(layers), f"Computing head maps: layer {grid_layer + 1}/{n_layers}")
    title = ("All layers" if all_layers else f"Layer {layer}") + ": click a head to open it"
    # Every layer's heads, sorted by entropy, fill rows as wide as the table of layers x heads would be.
    figure = figures.head_grid(thumbnails, n_cols=max(n_layers, n_heads) if all_layers else min(n_heads, 6),
                               sort_by_entropy=st.session_state[state.GRID_SORT], title=title,
                               scale=st.session_state[state.MAP_SCALE])
    st.caption("Each tile is scaled to its own range (under the colour scale chosen on the one-head view); its frame "
               "is coloured by the head's mean attention entropy "
               "(nats, averaged over query tokens).")
    output.chart(figure, key=state.GRID_CHART, name="head-grid", on_select=_open_clicked_head,
                 selection_mode="points", config={"displayModeBar": True}, width="content")

elif view == state.VIEW_QUERY:
    query = widget("query", options=range(n_tokens), format_func=lambda i: f"{i}: {tokens.strings[i]}")
    weights = source.unit(study.query_row, text, cut, layer, head, query)
    if hide_sink:
        weights = weights.copy()
        weights[0] = 0.0
    figure = figures.query_bars(weights, tokens=tokens.strings, query=query, top_k=TOP_KEYS,
                                title=f"Layer {layer}, head {head}" + (" (sink hidden)" if hide_sink else ""))
    output.chart(figure, key="query_bars", name=f"query-{query}-layer{layer}-head{head}")

else:
    request = ("stats", run.key)
    with run_control.working("Computing per-head statistics", request, models=(run.key.spec,)) as progress:
        result = attnscope.stats(source, text, **common.cut_settings(cut), progress=progress)
    for item in result.findings():
        output.finding(item)
    columns = result.columns()  # the statistics, then the head-type scores this result has
    if st.session_state[state.STAT_SHOWN] not in columns:
        st.session_state[state.STAT_SHOWN] = "entropy"
    shown = st.selectbox("Statistic or head-type score", list(columns), key=state.STAT_SHOWN,
                         persist_state=state.PERSIST, format_func=lambda name: columns[name][0])
    over = (f"measured on {result.induction_measured_on}" if shown == "induction" else
            "over the tokens that have one" if shown in study.DETECTORS else
            f"averaged over the {n_tokens} query tokens")
    st.caption(f"{columns[shown][0]}: {columns[shown][1]}; {over}. The sink is never hidden here.")
    output.chart(result.figures()[f"{shown}-per-head"], key="stat_heatmap", name=f"{shown}-per-head")
    st.caption("Every column sorts: click its header. Head-type scores follow TransformerLens's detection patterns "
               "on this text's own tokens.")
    st.dataframe(result.to_frame().rename(columns={name: label for name, (label, _) in columns.items()}),
                 hide_index=True, width="stretch")
output.report_button("Attention maps", {"view": view, "layer": layer, "head": head, "hide the sink": hide_sink,
                                        "pooling": reduce, "cell limit": st.session_state[state.CELL_LIMIT]})
