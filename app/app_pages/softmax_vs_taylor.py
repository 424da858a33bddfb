"""Softmax vs Taylor: how well the order-n expansion of exp (a sum of n + 1 linear RNNs) reproduces each head.

Layout only: the widgets, attnscope.taylor through the app's Source, and what its result says and draws."""

import streamlit as st

import attnscope
from attnscope import catalog
from attnscope import settings as S
from attnscope.app import common, output, run_control, runs, state
from attnscope.app.widgets import widget
from attnscope.figures.taylor import DENOMINATOR_LABELS
from attnscope.studies import taylor as study

DENOMINATORS, MAX_ORDER = study.DENOMINATORS, S.setting("max_order").domain.high
# keys of attnscope.settings: session_state keys and the study's keywords alike (its settings, then the one-head views)
SETTINGS = catalog.study("taylor").settings + ("taylor_layer", "taylor_head", "taylor_order")
SCOPES = {state.SCOPE_MODEL: "model", state.SCOPE_LAYER: "layer", state.SCOPE_HEAD: "head"}


def _clip_selection(key: str, upper: int) -> None:
    st.session_state[key] = min(int(st.session_state[key]), upper)


def _ask_for_loss(request: tuple) -> None:
    st.session_state[state.TAYLOR_LOSS_REQUESTS] = [*st.session_state[state.TAYLOR_LOSS_REQUESTS], request]


def _tab_findings(result: study.TaylorResult, section: str) -> None:
    for item in result.findings(section):
        output.finding(item)


st.title("Softmax vs Taylor")
st.caption(study.HELP["intro"])
run = runs.current_run()
if run is None:
    st.stop()

tokens, n_layers, n_heads = run.tokens, run.capture.n_layers, run.capture.n_heads
n_tokens = len(tokens)
if run.kind == "decoder" and n_tokens > S.default("n_tokens"):
    _clip_selection("n_tokens", n_tokens)
    widget("n_tokens", max_value=n_tokens, step=256)
    n_tokens = int(st.session_state["n_tokens"])
for key, upper in (("taylor_layer", n_layers - 1), ("taylor_head", n_heads - 1)):
    _clip_selection(key, upper)
state.last_if_unset(state.TAYLOR_QUERY, n_tokens)

controls = st.columns([1.3, 1.6, 0.8, 1.3, 0.8, 0.8])
widget("max_order", controls[0], kind="slider")
widget("clamp", controls[1], kind="radio", horizontal=True)
widget("clamp_value", controls[2], step=0.5, disabled=st.session_state["clamp"] == "none")
widget("tolerance", controls[3], kind="select_slider")
widget("taylor_layer", controls[4], options=range(n_layers))
widget("taylor_head", controls[5], options=range(n_heads))
max_order = int(st.session_state["max_order"])
_clip_selection("taylor_order", max_order)
settings = {**{key: st.session_state[key] for key in SETTINGS}, "n_tokens": n_tokens}
loss_request = (run.key, n_tokens, max_order, study.clamp_bounds(settings["clamp"], settings["clamp_value"]),
                st.session_state[state.TAYLOR_LOSS_DENOMINATOR])  # what the loss curve depends on
losses = (loss_request[-1],) if loss_request in st.session_state[state.TAYLOR_LOSS_REQUESTS] else ()

request = ("taylor", run.key, tuple(sorted(settings.items())), losses)
try:
    with run_control.working("Expanding every head", request, models=(run.key.spec,)) as progress:
        result = attnscope.taylor(common.source(run.key.spec), run.key.text, **settings, losses=losses,
                                  query=st.session_state[state.TAYLOR_QUERY],
                                  row_denominator=st.session_state[state.TAYLOR_WEIGHT_DENOMINATOR],
                                  rnn_tokens=st.session_state[state.TAYLOR_RNN_TOKENS],
                                  **common.cut_settings(run.key.cut), progress=progress)
except ValueError as error:
    st.warning(str(error))
    st.stop()
st.caption(result.summary())

st.session_state[state.TAYLOR_HIST_ORDERS] = [o for o in st.session_state[state.TAYLOR_HIST_ORDERS] if o <= MAX_ORDER]
hist_layer = st.session_state[state.TAYLOR_HIST_LAYER]
charts = result.figures(scope=SCOPES[st.session_state[state.TAYLOR_SCOPE]],
                        needed_denominator=st.session_state[state.TAYLOR_NEEDED_DENOMINATOR],
                        hist_layer=None if hist_layer == state.ALL_LAYERS else hist_layer,
                        hist_orders=st.session_state[state.TAYLOR_HIST_ORDERS])
tabs = st.tabs(["Error vs order", "Order needed", "Logit scale", "One head's weights", "RNN form",
                "What the model loses"])

with tabs[0]:
    st.caption(study.HELP["error"])
    st.radio("Over", list(SCOPES), key=state.TAYLOR_SCOPE, persist_state=state.PERSIST, horizontal=True,
             help="One layer and one head use the layer and head chosen above.")
    left, right = st.columns([3, 2])
    with left:
        output.chart(charts["error-vs-order"], key="taylor_error_chart", name="error-vs-order")
    with right:
        output.chart(charts["softmax-output-row-norms"], key="taylor_norm_chart", name="softmax-output-row-norms")
        st.caption(study.HELP["norms"])
    _tab_findings(result, "error")
    st.markdown("**Heads by their most negative logit**: each head's logit range beside its error at order "
                f"{max_order}.")
    table = result.heads_frame()
    st.dataframe(table, hide_index=True, width="stretch", height=300,
                 column_config={c: st.column_config.NumberColumn(format="%.3g") for c in table.columns[2:]})

with tabs[1]:
    st.caption(study.HELP["needed"])
    st.selectbox("Denominator", DENOMINATORS, key=state.TAYLOR_NEEDED_DENOMINATOR, persist_state=state.PERSIST,
                 format_func=DENOMINATOR_LABELS.get)
    output.chart(charts["order-needed"], key="taylor_needed_chart", name="order-needed")
    _tab_findings(result, "needed")

with tabs[2]:
    st.caption(study.HELP["logits"])
    pick = st.columns([1, 2])
    pick[0].selectbox("Layer", [state.ALL_LAYERS, *range(n_layers)], key=state.TAYLOR_HIST_LAYER,
                      persist_state=state.PERSIST,
                      format_func=lambda i: "all layers" if i == state.ALL_LAYERS else f"layer {i}")
    pick[1].multiselect("Orders drawn", list(range(MAX_ORDER + 1)), key=state.TAYLOR_HIST_ORDERS,
                        persist_state=state.PERSIST)
    output.chart(charts["logit-histogram"], key="taylor_logit_chart", name="logit-histogram")
    st.caption(study.HELP["terms"])
    output.chart(charts["term-sizes"], key="taylor_terms_chart", name="term-sizes")
    _tab_findings(result, "logits")

with tabs[3]:
    pick = st.columns(3)
    pick[0].selectbox("Query token", range(n_tokens), key=state.TAYLOR_QUERY, persist_state=state.PERSIST,
                      format_func=lambda i: f"{i}: {tokens.strings[i]}")
    widget("taylor_order", pick[1], kind="slider", max_value=max_order)
    pick[2].selectbox("Denominator", DENOMINATORS, key=state.TAYLOR_WEIGHT_DENOMINATOR, persist_state=state.PERSIST,
                      format_func=DENOMINATOR_LABELS.get)
    st.caption(study.HELP["weights"])
    output.chart(charts["one-query-weights"], key="taylor_row_chart", name="one-query-weights")
    row_note, health = result.findings("weights")
    output.finding(row_note)
    st.caption(study.HELP["health"])
    output.chart(charts["denominator-health"], key="taylor_health_chart", name="denominator-health")
    output.finding(health)

with tabs[4]:
    st.caption(study.HELP["rnn"])
    st.latex(study.HELP["rnn_equation"])
    if result.recurrent is None:
        st.info("The recurrent form runs left to right over a causal decoder; this model attends in both directions.")
    else:
        st.select_slider("Tokens run", study.RNN_TOKENS, key=state.TAYLOR_RNN_TOKENS, persist_state=state.PERSIST,
                         help=study.HELP["rnn_tokens"])
        st.dataframe(result.recurrent_frame(), hide_index=True, column_config={
            "max |recurrent − parallel|": st.column_config.NumberColumn(format="%.2e"),
            "max |output|": st.column_config.NumberColumn(format="%.3g"),
        })
        _tab_findings(result, "rnn")

with tabs[5]:
    st.caption(study.HELP["loss"])
    if not result.can_measure_loss:
        st.info(study.NO_LOSS)
    else:
        pick = st.columns([1, 2])
        pick[0].selectbox("Denominator", DENOMINATORS, key=state.TAYLOR_LOSS_DENOMINATOR, persist_state=state.PERSIST,
                          format_func=DENOMINATOR_LABELS.get)
        pick[1].button(f"Measure the loss ({max_order + len(study.REFERENCES)} forward passes)", type="primary",
                       on_click=_ask_for_loss, args=(loss_request,))
        if result.losses is not None:
            output.chart(charts["zero-shot-loss"], key="taylor_loss_chart", name="zero-shot-loss")
            table = result.loss_frame()
            st.dataframe(table, hide_index=True, width="stretch",
                         column_config={c: st.column_config.NumberColumn(format="%.4g") for c in table.columns[1:]})
            _tab_findings(result, "loss")
output.report_button("Softmax vs Taylor", {"tokens analysed": result.n_tokens, "highest order": max_order,
                                           "clamp": study.clamp_label(result.clamp), "tolerance": result.tolerance,
                                           "layer": result.layer, "head": result.head}, findings=result.findings())
