"""Compare: the sidebar's model and text (side A) against a second text, a second model, or both (side B)."""

from dataclasses import replace

import streamlit as st

import attnscope
from attnscope.app import common, output, run_control, runs, sidebar, state
from attnscope.app.messages import literal, say
from attnscope.hosting import Policy
from attnscope.studies import maps as maps_study

PACKAGED_MODELS, ModelSpec = attnscope.PACKAGED_MODELS, attnscope.ModelSpec

LABELS = {name: label for name, (label, _) in maps_study.STATISTICS.items()} | {
    "learned_sink_mass": maps_study.LEARNED_SINK[0]}
KEPT_REQUESTS = 8
MAP_HEIGHT = 520  # px: about a half-width column's width on a laptop screen, so the square maps fill their column


def _a_b_then_difference(figures: dict, prefix: str, *, missing: str, beside: str) -> None:
    """A and B side by side, then B − A below at the same width (or the sentence `missing` when there is none),
    with the caption `beside` next to it."""
    top, below = st.columns(2), st.columns(2)
    for column, which in zip([*top, below[0]], ("a", "b", "difference")):
        with column:
            if f"{prefix}-{which}" in figures:
                output.chart(figures[f"{prefix}-{which}"], key=f"compare_{prefix}-{which}",
                             name=f"compare-{prefix}-{which}")
            else:
                st.info(missing)
    if beside:
        below[1].caption(beside)


def _use_sidebar_text() -> None:
    st.session_state[state.COMPARE_TEXT] = st.session_state[state.TEXT]


def _spec_b(spec_a: ModelSpec, choice: str, limits: Policy) -> ModelSpec | None:
    """Side B's model: side A's, a packaged alias or (hosted) an allowlist entry at its pinned revision, or (local) a
    hub id or folder at its default revision without remote code; placed like side A."""
    if choice == state.COMPARE_SAME:
        return spec_a
    pinned = dict(zip(limits.allowed_models, limits.hub_models())) if limits.hosted else {}
    if choice in pinned:
        return pinned[choice]
    name = st.session_state[state.COMPARE_CUSTOM_NAME].strip() if choice == state.CUSTOM_MODEL else choice
    return replace(spec_a, name=name, revision=None, trust_remote_code=False) if name else None


st.title("Compare")
st.caption("Side A is the sidebar's model and text; side B a second text, a second model, or both. Both sides run "
           "through the Attention maps page's cached units, and B − A is their difference: head by head when both "
           "models have the same layers × heads, else each layer's mean over heads, layers paired by relative "
           "depth (first with first, last with last).")
limits = common.policy()
spec_a, text_a = sidebar.current_spec(), st.session_state[state.TEXT]
if spec_a is None or not text_a.strip():
    st.info("Choose a model and type a text in the sidebar first: they are side A.")
    st.stop()
if st.session_state[state.COMPARE_TEXT] is None:
    _use_sidebar_text()
choices = [state.COMPARE_SAME, *PACKAGED_MODELS, *(limits.allowed_models if limits.hosted else [state.CUSTOM_MODEL])]
if st.session_state[state.COMPARE_MODEL] not in choices:
    st.session_state[state.COMPARE_MODEL] = state.COMPARE_SAME
names = {state.COMPARE_SAME: f"the same as A ({spec_a.name})", state.CUSTOM_MODEL: state.CUSTOM_LABEL}

side_a, side_b = st.columns(2)
side_a.markdown("**Side A**: the sidebar's model and text")
side_a.caption(literal(f"{spec_a.name} · {text_a}", limit=400))
with side_b:
    st.markdown("**Side B**")
    choice = st.selectbox("Model B", choices, key=state.COMPARE_MODEL, persist_state=state.PERSIST,
                          format_func=lambda c: names.get(c) or (PACKAGED_MODELS[c].title if c in PACKAGED_MODELS
                                                                 else c))
    if choice == state.CUSTOM_MODEL:
        st.text_input("Hub id or local folder (B)", key=state.COMPARE_CUSTOM_NAME, persist_state=state.PERSIST,
                      max_chars=sidebar.NAME_CHARS,
                      placeholder="gpt2 or /path/to/model",
                      help="Loaded at its default revision without remote code; for more, make it side A.")
    st.text_area("Text B", key=state.COMPARE_TEXT, persist_state=state.PERSIST, height=140, max_chars=limits.max_chars)
    st.button("Use the sidebar text", on_click=_use_sidebar_text)
spec_b, text_b = _spec_b(spec_a, choice, limits), st.session_state[state.COMPARE_TEXT]
keep, max_tokens = st.session_state[state.KEEP], int(st.session_state[state.MAX_TOKENS])
request = (spec_a, text_a, spec_b, text_b, max_tokens, keep)
if st.button("Compare", type="primary"):
    st.session_state[state.COMPARE_REQUESTS] = [*st.session_state[state.COMPARE_REQUESTS][-KEPT_REQUESTS + 1:],
                                                request]
    run_control.resume(request)
if request not in st.session_state[state.COMPARE_REQUESTS]:
    st.stop()
if spec_b is None:
    st.info("Type a hub id or a local folder for model B.")
    st.stop()
if not text_b.strip():
    st.error("Text B is empty: type a text for side B, or click 'Use the sidebar text'.")
    st.stop()
loaded_a = runs.load(spec_a)
loaded_b = runs.load(spec_b) if loaded_a is not None else None
if loaded_b is None:
    st.stop()

n_layers, n_heads = loaded_a.n_layers, min(loaded_a.n_heads, loaded_b.n_heads)  # B's layer: same relative depth
st.session_state[state.COMPARE_LAYER] = min(st.session_state[state.COMPARE_LAYER], n_layers - 1)
st.session_state[state.COMPARE_HEAD] = min(st.session_state[state.COMPARE_HEAD], n_heads - 1)
controls = st.columns(3)
layer = controls[0].selectbox("Layer (maps)", range(n_layers), key=state.COMPARE_LAYER, persist_state=state.PERSIST,
                              help="A's layer; when B has another number of layers, B's map is of its layer at the "
                                   "same relative depth.")
head = controls[1].selectbox("Head (maps)", range(n_heads), key=state.COMPARE_HEAD, persist_state=state.PERSIST)

try:
    with run_control.working("Comparing", request, models=(spec_a, spec_b)) as progress:
        result = attnscope.compare(common.source(spec_a), text_a, model_b=common.source(spec_b), text_b=text_b,
                                   **common.cut_settings(common.cut_for(loaded_a)), layer=layer, head=head,
                                   cell_limit=st.session_state[state.CELL_LIMIT],
                                   reduce=st.session_state[state.REDUCE],
                                   hide_sink=st.session_state[state.HIDE_SINK], progress=progress)
except ValueError as error:
    say("error", str(error))
    st.stop()
for item in result.findings():
    st.markdown(f"**{item.topic}.** {literal(item.measured)}")  # model names may be the visitor's

if st.session_state[state.COMPARE_STAT] not in result.difference:  # learned sinks: only when both sides have them
    st.session_state[state.COMPARE_STAT] = "entropy"
statistic = controls[2].selectbox("Statistic", list(result.difference), key=state.COMPARE_STAT,
                                  persist_state=state.PERSIST,
                                  format_func=LABELS.get)
figures = result.figures(statistic, map_height=MAP_HEIGHT)
st.subheader("Head statistics")
st.caption(f"{LABELS.get(statistic)}: {maps_study.STATISTICS.get(statistic, maps_study.LEARNED_SINK)[1]}.")
pairs = "" if result.per_head else " Each row pairs A's and B's layers at the same relative depth."
_a_b_then_difference(figures, statistic, missing="", beside="B − A is red where B is higher, blue where it is lower, "
                     f"on a scale centred at 0.{pairs}")
st.subheader(f"Layer {layer}, head {head}")
st.caption("Pooled as on the Attention maps page (cell limit, pooling, hide the sink).")
note = result.map_note[:1].upper() + result.map_note[1:]
drawn = "map-difference" in figures
_a_b_then_difference(figures, "map", missing=note, beside=literal(note) if drawn and note else "")
st.download_button("Both sides and B − A as CSV", lambda: result.to_frame().to_csv(index=False),
                   file_name="compare.csv", mime="text/csv", on_click="ignore")
output.report_button("Compare", {"model B": spec_b.name, "text B": text_b[:2000], "layer": layer, "head": head},
                     findings=result.findings())
