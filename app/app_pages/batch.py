"""Batch: one study over every prompt of the library, with the mean and spread over prompts."""

import streamlit as st

from attnscope.app import cached, common, state
from attnscope.app.widgets import widget
from attnscope.studies import batch as study
from attnscope.studies import maps as maps_study

SETTINGS = {  # the study's settings drawn here, shared with its own page (same keys)
    "stats": (),
    "taylor": ("max_order", "n_tokens", "clamp", "clamp_value"),
    "collapse": ("max_length", "windows", "rows", "vectors"),
}

st.title("Batch")
st.caption("Runs one study on each prompt of the library separately, through the same units as its page (so a "
           "prompt already analysed there is not computed again), and shows per head or per point of the curve the "
           "mean over prompts with its spread. Each prompt is cut like the sidebar text (Max tokens).")
library = st.session_state[state.LIBRARY]
if not library:
    st.info("The library is empty: add prompts on the Prompts page first.")
    st.stop()
spec = common.current_spec()
if spec is None:
    st.info("Choose a model in the sidebar first.")
    st.stop()
limits = common.policy()
kind = st.radio("Study", list(study.STUDIES), key=state.BATCH_KIND, persist_state=state.PERSIST,
                format_func=study.STUDIES.get, horizontal=True)
columns = st.columns(max(1, len(SETTINGS[kind])))
for column, key in zip(columns, SETTINGS[kind]):
    widget(key, column)
prompts = library[:limits.max_batch]
if len(library) > limits.max_batch:
    st.caption(f"A batch runs the first {limits.max_batch} prompts of the library, this deployment's limit.")
loaded = common.load(spec)
if loaded is None:
    st.stop()
cut = common.cut_for(loaded)
settings = {"max_tokens": cut.max_tokens, **{key: st.session_state[key] for key in SETTINGS[kind]}}
if kind != "collapse":
    settings["keep"] = cut.keep
request = (spec, kind, tuple(sorted(settings.items())), tuple(p.digest for p in prompts))
if st.button(f"Run over the {len(prompts)} prompt(s)", type="primary"):
    st.session_state[state.BATCH_REQUESTS] = [*st.session_state[state.BATCH_REQUESTS], request]
    common.resume(request)
if request not in st.session_state[state.BATCH_REQUESTS]:
    st.stop()

with common.working("Running the prompts", request, models=(spec,)) as progress:
    result = study.run(cached.AppSource(spec), [(p.name, p.text) for p in prompts], study=kind, settings=settings,
                       progress=progress)
for item in result.findings():
    common.say("info", f"{item.topic}: {item.measured}")  # literal: prompt names are the visitor's
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
        common.chart(figure, key=name, name=name)
st.download_button("Per-prompt values as CSV", lambda: result.to_frame().to_csv(index=False),
                   file_name=f"batch-{kind}.csv", mime="text/csv", on_click="ignore")
common.report_button("Batch", {"study": kind, "prompts": len(result.prompts), **settings},
                     findings=result.findings())
