"""Generation: the model continues the sidebar text, streamed here; then each new token's attention, step by step, and
the maps of the whole text with the generated tokens marked."""

import streamlit as st

import attnscope
from attnscope import catalog
from attnscope.app import common, output, run_control, runs, sidebar, state
from attnscope.app.messages import literal, say
from attnscope.app.widgets import widget
from attnscope.figures import generation as figures

KEPT = 4  # generations remembered per session (switching settings back shows an earlier one again)

st.title("Generation")
st.caption("The model continues the sidebar text (as one user turn of its chat template, when it has one). Each "
           "step's query row, the token being read against every key in the KV cache, is measured with the same "
           "kernel as the other pages; a step's numbers are those of the same row of one pass over the whole text.")
spec = sidebar.current_spec()
text = st.session_state[state.TEXT]
if spec is None or not text.strip():
    st.info("Choose a model and type a text in the sidebar first.")
    st.stop()
loaded = runs.load(spec)
if loaded is None:
    st.stop()
if loaded.kind != "decoder":
    st.info(f"{literal(spec.name)} is an encoder: it reads a whole text at once and does not generate. Pick a "
            "decoder in the sidebar.")
    st.stop()
limits = common.policy()
st.session_state[state.MAX_NEW_TOKENS] = min(int(st.session_state[state.MAX_NEW_TOKENS]), limits.max_new_tokens)
columns = st.columns([1.1, 1.1, 1, 1, 0.9, 1.6])
widget("max_new_tokens", columns[0], max_value=limits.max_new_tokens)
sample = widget("sample", columns[1])
for column, key in zip(columns[2:5], ("temperature", "top_p", "seed")):
    widget(key, column, disabled=not sample)
widget("chat", columns[5])
settings = {key: st.session_state[key] for key in catalog.study("generate").settings}
if limits.hosted:
    st.caption(f"This demo generates at most {limits.max_new_tokens} tokens and {limits.generation_seconds} s per "
               "request.")
request = (spec, text, tuple(sorted(settings.items())))
done = st.session_state[state.GENERATIONS]
asked = st.button("Generate", type="primary") or st.session_state[state.GENERATE_NOW]
st.session_state[state.GENERATE_NOW] = False
if asked:
    run_control.resume(request)
    stream = st.empty()
    try:
        with run_control.working("Reading the prompt", request, models=(spec,)) as progress:
            result = attnscope.generate(common.source(spec), text, **settings, time_limit=limits.generation_seconds,
                                        on_token=lambda so_far: stream.markdown(f"> {literal(so_far)}"),
                                        progress=progress)
    except ValueError as error:  # a chat template that fails, a prompt at the position limit: nothing is lost
        say("error", str(error))
        st.stop()
    stream.empty()
    done.pop(request, None)
    done[request] = result
    while len(done) > KEPT:
        done.pop(next(iter(done)))
result = done.get(request)
if result is None:
    if run_control.stopped(request):
        st.info("Stopped before the model finished. Press Generate to start again.", icon="⏹️")
    else:
        st.info("Press Generate to let the model continue the text.")
    st.stop()

st.markdown(f"**Prompt** ({len(result.prompt_ids)} tokens{', chat template' if result.meta['chat_template'] else ''})"
            f"  \n**Continuation** ({len(result.generated_ids)} tokens): {literal(result.generated_text)}")
for item in result.findings():
    output.finding(item)
shown = result.figures()
output.chart(shown["timeline"], key="gen_timeline", name="generation-timeline")
left, right = st.columns(2)
for column, name in zip((left, right), ("entropy-by-layer", "max_weight-by-layer")):
    with column:
        output.chart(shown[name], key=f"gen_{name}", name=f"generation-{name}")

st.subheader("Maps of the whole text")
n_layers, n_heads = result.entropy.shape[1:]
controls = st.columns(3)
layer = controls[0].selectbox("Layer", range(n_layers), key=state.GEN_LAYER, persist_state=state.PERSIST)
head = controls[1].selectbox("Head", range(n_heads), key=state.GEN_HEAD, persist_state=state.PERSIST)
cell_limit = widget("cell_limit", controls[2], kind="slider")
source = common.source(spec)
cut = common.cut_for(loaded, requested=len(result.text_ids))
map_request = ("generation-map", spec, result.text_ids, cut)
with run_control.working("Running the model on the whole text", map_request, models=(spec,)):
    maps = attnscope.maps(source, result.text_ids, **common.cut_settings(cut), layer=layer, heads=[head],
                          cell_limit=cell_limit)
(name, figure), = maps.figures().items()
figures.mark_generated(figure, n_prompt=len(result.prompt_ids), block=maps.block)
output.chart(figure, key="gen_map", name=f"generation-{name}")
st.download_button("Per-step statistics as CSV", lambda: result.to_frame().to_csv(index=False),
                   file_name="generation-steps.csv", mime="text/csv", on_click="ignore")
output.report_button("Generation", {**settings, "new tokens": len(result.generated_ids), "stop": result.stop},
                     findings=result.findings())
