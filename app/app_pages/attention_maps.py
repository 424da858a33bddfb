"""Attention maps: one head, all heads as a clickable grid, and one query token's weights."""

import numpy as np
import pandas as pd
import streamlit as st

from attnscope.app import cached, common, state
from attnscope.analyses.maps import REDUCTIONS, block_for
from attnscope.figures import maps as figures

GRID_CELLS_ONE_LAYER = 48  # thumbnail resolution when one layer's heads are shown
GRID_CELLS_ALL_LAYERS = 24  # ... and when every layer's are
TOP_KEYS = 60  # bars in the one-query view
STATISTICS = {  # HeadStats field -> (column name, what it means)
    "entropy": ("entropy (nats)", "mean over query tokens of the attention entropy; at most log(visible keys)"),
    "normalized_entropy": ("entropy / log(visible)", "entropy divided by its maximum, 1 = uniform attention"),
    "max_weight": ("max weight", "mean over query tokens of the largest weight"),
    "sink_mass": ("sink mass", "mean weight on the first token"),
    "mean_distance": ("mean distance", "expected |query position - key position|, in tokens"),
}


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

capture, tokens = run.capture, run.tokens
n_layers, n_heads, n_tokens = capture.n_layers, capture.n_heads, len(tokens)
st.session_state[state.LAYER] = min(st.session_state[state.LAYER], n_layers - 1)
st.session_state[state.HEAD] = min(st.session_state[state.HEAD], n_heads - 1)
st.session_state[state.QUERY] = min(st.session_state[state.QUERY], n_tokens - 1)

view = st.segmented_control("View", state.VIEWS, key=state.VIEW, label_visibility="collapsed") or state.VIEW_ONE_HEAD
controls = st.columns([1, 1, 1.3, 1.3, 1.6])
controls[0].selectbox("Layer", range(n_layers), key=state.LAYER)
controls[1].selectbox("Head", range(n_heads), key=state.HEAD)
controls[2].toggle("Hide the sink (key 0)", key=state.HIDE_SINK,
                   help="Blanks the first token's column, which often takes most of the weight and washes out the "
                        "rest of the map. Weights are not renormalised: every value shown is the model's own.")
controls[3].radio("Pool long maps by", REDUCTIONS, key=state.REDUCE, horizontal=True,
                  help="Above the cell limit the map is drawn in square tiles: the mean or the max weight of the "
                       "visible cells of each tile.")
controls[4].slider("Cell limit per side", 32, 512, step=32, key=state.CELL_LIMIT,
                   help="Maps with more tokens than this are pooled into tiles, so the browser never receives "
                        "more than this many cells per side.")
layer, head = st.session_state[state.LAYER], st.session_state[state.HEAD]
hide_sink, reduce = st.session_state[state.HIDE_SINK], st.session_state[state.REDUCE]
direction = "causal (each token sees itself and the tokens before it)" if run.kind == "decoder" else "bidirectional"
st.caption(f"{n_tokens} tokens · {direction} · rows are queries, columns are keys")

if view == state.VIEW_ONE_HEAD:
    block = block_for(n_tokens, st.session_state[state.CELL_LIMIT])
    with st.spinner("Computing the map"):
        values = cached.head_map(*run.key.args(), layer, head, block, reduce, hide_sink)
    if block > 1:
        st.info(f"{n_tokens} tokens are more than the cell limit: showing the {reduce} weight of "
                f"{block}×{block}-token tiles ({values.shape[0]}×{values.shape[1]} tiles).")
    figure = figures.head_heatmap(values, tokens=tokens.strings, block=block, reduce=reduce,
                                  title=f"Layer {layer}, head {head}" + (" (sink hidden)" if hide_sink else ""))
    common.chart(figure, key="head_map", name=f"attention-map-layer{layer}-head{head}")

elif view == state.VIEW_ALL_HEADS:
    options = st.columns([1.2, 1, 3])
    options[0].radio("Heads of", ["This layer", "All layers"], key=state.GRID_SCOPE, horizontal=True)
    options[1].toggle("Sort by entropy", key=state.GRID_SORT, help="Lowest mean entropy (most focused) first.")
    all_layers = st.session_state[state.GRID_SCOPE] == "All layers"
    layers = range(n_layers) if all_layers else [layer]
    cells = GRID_CELLS_ALL_LAYERS if all_layers else GRID_CELLS_ONE_LAYER
    thumbnails = []
    progress = st.progress(0.0, "Computing head maps") if all_layers else None
    for index, grid_layer in enumerate(layers):
        thumbnails += cached.layer_thumbnails(*run.key.args(), grid_layer, cells, reduce, hide_sink)
        if progress is not None:
            progress.progress((index + 1) / len(layers), f"Computing head maps: layer {grid_layer + 1}/{n_layers}")
    if progress is not None:
        progress.empty()
    title = ("All layers" if all_layers else f"Layer {layer}") + ": click a head to open it"
    figure = figures.head_grid(thumbnails, n_cols=n_heads if all_layers else min(n_heads, 6),
                               sort_by_entropy=st.session_state[state.GRID_SORT], title=title)
    st.caption("Each tile is scaled to its own maximum; its frame is coloured by the head's mean attention entropy "
               "(nats, averaged over query tokens).")
    common.chart(figure, key=state.GRID_CHART, name="head-grid", on_select=_open_clicked_head,
                 selection_mode="points", config={"displayModeBar": True})

elif view == state.VIEW_QUERY:
    st.selectbox("Query token", range(n_tokens), key=state.QUERY,
                 format_func=lambda i: f"{i}: {tokens.strings[i]}")
    query = st.session_state[state.QUERY]
    weights = cached.query_row(*run.key.args(), layer, head, query)
    if hide_sink:
        weights = weights.copy()
        weights[0] = 0.0
    figure = figures.query_bars(weights, tokens=tokens.strings, query=query, top_k=TOP_KEYS,
                                title=f"Layer {layer}, head {head}" + (" (sink hidden)" if hide_sink else ""))
    common.chart(figure, key="query_bars", name=f"query-{query}-layer{layer}-head{head}")

else:
    progress = st.progress(0.0, "Computing per-head statistics")
    per_layer = []
    for index in range(n_layers):
        per_layer.append(cached.layer_head_stats(*run.key.args(), index))
        progress.progress((index + 1) / n_layers, f"Computing per-head statistics: layer {index + 1}/{n_layers}")
    progress.empty()
    shown = st.selectbox("Statistic", list(STATISTICS), key=state.STAT_SHOWN,
                         format_func=lambda name: STATISTICS[name][0])
    grid = np.stack([getattr(stats, shown).numpy() for stats in per_layer])  # (layers, heads)
    st.caption(f"{STATISTICS[shown][0]}: {STATISTICS[shown][1]}. Averaged over the {n_tokens} query tokens; the "
               "sink is never hidden here.")
    common.chart(figures.stat_heatmap(grid, title=f"{STATISTICS[shown][0]} per head", label=STATISTICS[shown][0]),
                 key="stat_heatmap", name=f"{shown}-per-head")
    table = pd.DataFrame([
        {"layer": index, "head": h, **{STATISTICS[name][0]: float(getattr(stats, name)[h]) for name in STATISTICS}}
        for index, stats in enumerate(per_layer) for h in range(n_heads)
    ])
    st.dataframe(table, hide_index=True, width="stretch")
common.report_button("Attention maps", {"view": view, "layer": layer, "head": head, "hide the sink": hide_sink,
                                        "pooling": reduce, "cell limit": st.session_state[state.CELL_LIMIT]})
