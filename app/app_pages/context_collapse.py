"""Context collapse: paper B's figures on the chosen model and a long text, with the theory drawn over the data.

Layout only: the widgets, attnscope.collapse through the app's Source, and what its result says and draws."""

import streamlit as st

import attnscope
from attnscope import catalog
from attnscope import settings as S
from attnscope.app import cached, common, output, run_control, runs, state
from attnscope.app.messages import literal
from attnscope.app.widgets import widget
from attnscope.studies import collapse as study

SETTINGS = catalog.study("collapse").settings  # keys of attnscope.settings and the study's keywords
SECTIONS = (  # section of the study, header, figures drawn (name, chart key)
    ("vanishing", "1. Vanishing attention", (("vanishing-attention", "collapse_vanishing"),)),
    ("distance_l", "2. Distance vs context length (fig. 2a)", (("distance-vs-length", "collapse_distance_l"),)),
    ("distance_n", "3. Distance vs N and the critical N (fig. 2b, 2c)",
     (("distance-vs-n", "collapse_distance_n"), ("critical-n", "collapse_critical"))),
    ("distinguish", "4. Distinguishability (fig. 3)", (("distinguishability", "collapse_distinguish"),)),
    ("temperature", "5. Temperature (fig. 4)", (("temperature", "collapse_temperature"),)),
    ("advice", "6. What this means for your model", ()),
)

st.title("Context collapse")
st.caption(study.HELP["intro"])
run = runs.current_run()
if run is None:
    st.stop()
loaded = cached.get_model(run.key.spec)
model_limit = common.cut_for(loaded, S.TOKEN_CEILING).max_tokens  # the model's positions and this deployment's limit

controls = st.columns([1.6, 1, 0.8, 0.8, 1.2])
widget("source", controls[0], kind="radio", help=study.HELP["source"])
choices = [n for n in S.COLLAPSE_LENGTHS if n <= model_limit] or [model_limit]
if st.session_state["max_length"] not in choices:
    st.session_state["max_length"] = max((n for n in choices if n <= S.default("max_length")), default=choices[0])
widget("max_length", controls[1], options=choices,
       help=f"Lengths double from 32 up to this. {literal(loaded.spec.name)} reads at most {model_limit} "
            "positions. The default, 2048, takes a minute or two on 2 CPU cores; results are cached.")
widget("windows", controls[2])
widget("rows", controls[3])
widget("vectors", controls[4], kind="radio")
builtin = st.session_state["source"] == state.SOURCE_BUILTIN
settings = {key: st.session_state[key] for key in SETTINGS}

request = ("collapse", run.key.spec, None if builtin else run.key.text, tuple(sorted(settings.items())), model_limit)
try:
    with run_control.working("Measuring", request, models=(run.key.spec,)) as progress:
        result = attnscope.collapse(common.source(run.key.spec), None if builtin else run.key.text, **settings,
                                    max_tokens=model_limit, progress=progress)
except ValueError as error:
    st.warning(str(error))
    st.stop()
st.caption(result.summary("the sidebar text"))

focus = st.columns([1, 1, 1])
focus[0].selectbox("Heads in the figures", [state.ALL_LAYERS, *range(result.n_layers)], key=state.COLLAPSE_LAYER,
                   persist_state=state.PERSIST,
                   format_func=lambda i: "all heads (median, quartiles)" if i == state.ALL_LAYERS else f"layer {i}")
layer = st.session_state[state.COLLAPSE_LAYER]
if layer != state.ALL_LAYERS:
    st.session_state[state.COLLAPSE_HEAD] = min(st.session_state[state.COLLAPSE_HEAD], result.n_heads - 1)
    focus[1].selectbox("Head", range(result.n_heads), key=state.COLLAPSE_HEAD, persist_state=state.PERSIST)
if st.session_state["fixed_length"] not in result.lengths:
    st.session_state["fixed_length"] = result.lengths[-1]
widget("fixed_length", focus[2], options=result.lengths)
view = {"layer": layer, "head": st.session_state[state.COLLAPSE_HEAD],
        "fixed_length": st.session_state["fixed_length"]}
charts, tables = result.figures(**view), result.tables(**view)

for section, header, drawn in SECTIONS:
    st.header(header)
    if section in study.HELP:
        st.caption(study.HELP[section])
    for item in result.findings(**view, section=section):
        output.finding(item)
    drawn = [(name, key) for name, key in drawn if name in charts]
    for name, key in drawn:  # one above the other: at half width their legends wrapped onto the axis titles
        output.chart(charts[name], key=key, name=name, data=tables.get(name))
st.caption(study.HELP["caveat"])

output.report_button("Context collapse", {
    "text source": "the built-in document" if builtin else "the sidebar text", "longest context": result.window_tokens,
    "windows": result.windows, "queries per window": result.rows, "token vectors": result.vectors,
    "lengths": list(result.lengths), "fixed L": view["fixed_length"],
    "heads": "all" if layer == state.ALL_LAYERS else f"layer {layer}, head {view['head']}"},
    findings=result.findings(**view))
