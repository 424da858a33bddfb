"""Batch: one study over every prompt of the library, with the mean and spread over prompts."""

import streamlit as st

import attnscope
from attnscope import catalog
from attnscope.app import common, output, run_control, runs, sidebar, state
from attnscope.app.messages import say
from attnscope.app.widgets import widget
from attnscope.studies import maps as maps_study

STUDIES = catalog.batchable()  # name -> label
SETTINGS = {name: catalog.study(name).settings for name in STUDIES}  # the study's own settings, same keys as its page

st.title("Batch")
st.caption("Runs one study on each prompt of the library separately, through the same units as its page (so a "
           "prompt already analysed there is not computed again), and shows per head or per point of the curve the "
           "mean over prompts with its spread. Each prompt is cut like the sidebar text (Max tokens).")
library = st.session_state[state.LIBRARY]
if not library:
    st.info("The library is empty: add prompts on the Prompts page first.")
    st.stop()
spec = sidebar.current_spec()
if spec is None:
    st.info("Choose a model in the sidebar first.")
    st.stop()
limits = common.policy()
kind = st.radio("Study", list(STUDIES), key=state.BATCH_KIND, persist_state=state.PERSIST,
                format_func=STUDIES.get, horizontal=True)
columns = st.columns(max(1, len(SETTINGS[kind])))
for column, key in zip(columns, SETTINGS[kind]):
    widget(key, column)
prompts = library[:limits.max_batch]
if len(library) > limits.max_batch:
    st.caption(f"A batch runs the first {limits.max_batch} prompts of the library, this deployment's limit.")
loaded = runs.load(spec)
if loaded is None:
    st.stop()
cut = common.cut_for(loaded)
settings = {key: value for key, value in common.cut_settings(cut).items() if key in catalog.study(kind).cuts}
settings |= {key: st.session_state[key] for key in SETTINGS[kind]}
request = (spec, kind, tuple(sorted(settings.items())), tuple(p.digest for p in prompts))
if st.button(f"Run over the {len(prompts)} prompt(s)", type="primary"):
    st.session_state[state.BATCH_REQUESTS] = [*st.session_state[state.BATCH_REQUESTS], request]
    run_control.resume(request)
if request not in st.session_state[state.BATCH_REQUESTS]:
    st.stop()

with run_control.working("Running the prompts", request, models=(spec,)) as progress:
    result = attnscope.batch(common.source(spec), [(p.name, p.text) for p in prompts], study=kind,
                             progress=progress, **settings)
for item in result.findings():
    say("info", f"{item.topic}: {item.measured}")  # literal: prompt names are the visitor's
if not result.prompts:
    st.stop()
statistic = "entropy"
if kind == "stats":
    statistic = st.selectbox("Head statistic", list(maps_study.STATISTICS), key=state.BATCH_STAT,
                             persist_state=state.PERSIST,
                             format_func=lambda name: maps_study.STATISTICS[name][0])
figures = result.figures(statistic)
for column, (name, figure) in zip(st.columns(len(figures)), figures.items()):
    with column:
        output.chart(figure, key=name, name=name)
st.download_button("Per-prompt values as CSV", lambda: result.to_frame().to_csv(index=False),
                   file_name=f"batch-{kind}.csv", mime="text/csv", on_click="ignore")
output.report_button("Batch", {"study": kind, "prompts": len(result.prompts), **settings},
                     findings=result.findings())
