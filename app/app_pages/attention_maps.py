"""Attention maps: one head, all heads as a clickable grid, and one query token's weights."""

import numpy as np
import streamlit as st

from attnscope.app import cached, common, state
from attnscope.app.widgets import widget
from attnscope.figures import maps as figures
from attnscope.studies import maps as study

GRID_CELLS_ONE_LAYER = 48  # thumbnail resolution when one layer's heads are shown
GRID_CELLS_ALL_LAYERS = 24  # ... and when every layer's are
TOP_KEYS = 60  # bars in the one-query view
STATISTICS = study.STATISTICS


def _open_clicked_head() -> None:
    """Grid selection callback: open the clicked head in the one-head view."""
    points = st.session_state[state.GRID_CHART].selection.points
    if points:
        layer, head = points[0]["customdata"]
        st.session_state[state.LAYER] = int(layer)
        st.session_state[state.HEAD] = int(head)
        st.session_state[state.VIEW] = state.VIEW_ONE_HEAD


st.title("Attention maps")
run = common.current_run()
if run is None:
    st.stop()
source, (_, text, cut) = cached.AppSource(run.key.spec), run.key.args()

capture, tokens = run.capture, run.tokens
n_layers, n_heads, n_tokens = capture.n_layers, capture.n_heads, len(tokens)
st.session_state[state.LAYER] = min(st.session_state[state.LAYER], n_layers - 1)
st.session_state[state.HEAD] = min(st.session_state[state.HEAD], n_heads - 1)
state.last_if_unset(state.QUERY, n_tokens)

view = widget("view", kind="segmented", label_visibility="collapsed") or state.VIEW_ONE_HEAD
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
    with st.spinner("Computing the map"):
        result = study.maps(source, text, cut=cut, layer=layer, heads=[head],
                            cell_limit=st.session_state[state.CELL_LIMIT], reduce=reduce, hide_sink=hide_sink)
    if result.block > 1:
        st.info(f"{n_tokens} tokens are more than the cell limit: showing the {reduce} weight of "
                f"{result.block}×{result.block}-token tiles ({result.values.shape[1]}×{result.values.shape[2]} "
                "tiles).")
    (name, figure), = result.figures().items()
    common.chart(figure, key="head_map", name=name)

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
    if common.stopped(request):
        common.show_stopped(request, "computing the head maps")
        st.stop()
    with common.working("Computing head maps", request) as progress:
        for index, grid_layer in enumerate(layers):
            thumbnails += study.maps(source, text, cut=cut, layer=grid_layer, cell_limit=cells, reduce=reduce,
                                     hide_sink=hide_sink).thumbnails()
            progress((index + 1) / len(layers), f"Computing head maps: layer {grid_layer + 1}/{n_layers}")
    title = ("All layers" if all_layers else f"Layer {layer}") + ": click a head to open it"
    figure = figures.head_grid(thumbnails, n_cols=n_heads if all_layers else min(n_heads, 6),
                               sort_by_entropy=st.session_state[state.GRID_SORT], title=title)
    st.caption("Each tile is scaled to its own maximum; its frame is coloured by the head's mean attention entropy "
               "(nats, averaged over query tokens).")
    common.chart(figure, key=state.GRID_CHART, name="head-grid", on_select=_open_clicked_head,
                 selection_mode="points", config={"displayModeBar": True})

elif view == state.VIEW_QUERY:
    query = widget("query", options=range(n_tokens), format_func=lambda i: f"{i}: {tokens.strings[i]}")
    weights = source.unit(study.query_row, text, cut, layer, head, query)
    if hide_sink:
        weights = weights.copy()
        weights[0] = 0.0
    figure = figures.query_bars(weights, tokens=tokens.strings, query=query, top_k=TOP_KEYS,
                                title=f"Layer {layer}, head {head}" + (" (sink hidden)" if hide_sink else ""))
    common.chart(figure, key="query_bars", name=f"query-{query}-layer{layer}-head{head}")

else:
    request = ("stats", run.key)
    if common.stopped(request):
        common.show_stopped(request, "computing every head's statistics")
        st.stop()
    with common.working("Computing per-head statistics", request, models=(run.key.spec,)) as progress:
        result = study.stats(source, text, cut=cut, progress=progress)
    for item in result.findings():
        common.finding(item)
    shown = st.selectbox("Statistic", list(STATISTICS), key=state.STAT_SHOWN, persist_state=state.PERSIST,
                         format_func=lambda name: STATISTICS[name][0])
    st.caption(f"{STATISTICS[shown][0]}: {STATISTICS[shown][1]}. Averaged over the {n_tokens} query tokens; the "
               "sink is never hidden here.")
    common.chart(result.figures()[f"{shown}-per-head"], key="stat_heatmap", name=f"{shown}-per-head")
    st.dataframe(result.to_frame().rename(columns={name: label for name, (label, _) in STATISTICS.items()}),
                 hide_index=True, width="stretch")
common.report_button("Attention maps", {"view": view, "layer": layer, "head": head, "hide the sink": hide_sink,
                                        "pooling": reduce, "cell limit": st.session_state[state.CELL_LIMIT]})
