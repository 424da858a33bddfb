"""Softmax vs Taylor: how well the order-n expansion of exp (a sum of n + 1 linear RNNs) reproduces each head."""

import numpy as np
import pandas as pd
import streamlit as st

from attnscope.app import cached, common, state
from attnscope.analyses import taylor
from attnscope.figures import taylor as figures
from attnscope.kernels import DENOMINATORS, MAX_ORDER
from attnscope.kernels.taylor import logit_bin_edges

PAPER = "[Mongaras & Larson, arXiv 2507.23632](https://arxiv.org/abs/2507.23632)"
DENOMINATOR_LABELS = {
    "taylor": "Taylor sum (Σ Pₙ(s))",
    "softmax": "exact softmax (Σ eˢ)",
    "l2": "L2 norm of the numerator",
    "none": "visible-key count",
}
RNN_TOKENS = [16, 32, 64, 128, 256]
PREFIX_DEFAULT = 512  # tokens analysed by default on long texts (the benchmark's size: about 10 s on 2 CPU cores)
HELP = {
    "intro": (
        f"exp(s) = Σₙ sⁿ/n!, and because (q·k)ⁿ = q⊗ⁿ·k⊗ⁿ each order is a linear RNN: softmax attention is an "
        f"infinite sum of RNNs, and linear attention is its first-order term ({PAPER}). The paper trains models with "
        "the truncation in place; here a model trained with softmax is evaluated with it, zero-shot, head by head on "
        "your text, so large errors are an honest answer, not a bug."
    ),
    "error": (
        "Each curve is the relative error ‖Oₙ − O‖ / ‖O‖ between the head's output with exp cut at order n and its "
        "softmax output, over all query rows (for the L2 denominator, against the L2-normalised softmax rows). "
        f"The paper ({PAPER}) reports that 10 orders nearly match softmax in models trained that way; a line that does "
        "not fall means the head's logits sit where the series about 0 cannot follow exp."
    ),
    "norms": (
        "An L2 denominator keeps only the direction of each output row; this is the length ‖Oₜ‖ of the softmax "
        f"output rows it throws away. A model trained with softmax relies on these lengths, which is why swapping in "
        f"the paper's L2 norm ({PAPER}) without retraining changes what every later layer sees."
    ),
    "needed": (
        "Each cell is the smallest order n whose error falls below the tolerance for that head; dark cells never get "
        f"there within the maximum order. Hover for the head's logit range: heads with logits far below zero are "
        f"the ones the truncated series ({PAPER}) cannot reproduce."
    ),
    "logits": (
        "Grey bars are the scaled logits q·k/√d of the layer's visible query-key pairs; the lines are the relative "
        "error of the order-n polynomial against exp at each logit value. Where the bars sit beyond the point a line "
        f"crosses 1, that order cannot reproduce exp for those pairs ({PAPER})."
    ),
    "terms": (
        "Each cell is the mean size of one term |sⁿ/n!| of the series over the layer's logits; the cross marks the "
        f"largest (the 'dominant order' of the paper's analysis, {PAPER}). A dominant order at or past the last one "
        "computed means the series has not started to shrink yet."
    ),
    "weights": (
        "Blue is the model's softmax weight on each key for the chosen query; red is the order-n weight Pₙ(s) "
        "divided by the chosen denominator. Odd orders make very negative logits into negative weights and even "
        f"orders into large positive ones, so the sum denominator can vanish or change sign ({PAPER})."
    ),
    "health": (
        "For this head and each order: the share of truncated weights below zero, and the share of query rows whose "
        "Taylor-sum denominator is at most zero or below 1% of the exact one. Those rows are where the 'taylor' "
        f"denominator divides by almost nothing, which is why the paper ({PAPER}) prefers norm-type denominators."
    ),
    "rnn": (
        "Orders 0, 1 and 2 run here as recurrent networks with explicit states S⁽ⁿ⁾ of d ⁿ × d_v numbers, token by "
        "token, and are compared with the parallel (matrix) form; order 1 is also compared with linear attention "
        f"φ(q)·Σφ(k)vᵀ with φ(x) = [1, √scale·x]. Agreement to rounding is the identity the paper ({PAPER}) builds on."
    ),
    "loss": (
        "Every attention layer of the model is replaced by Taylor-n attention and the next-token loss on your text is "
        "measured, beside the model as trained, exact softmax written out (a check of the replacement machinery) and "
        f"elu(x)+1 linear attention. This is zero-shot: unlike the paper's models ({PAPER}) nothing was retrained."
    ),
}


def _clamp() -> taylor.Clamp:
    mode, value = st.session_state[state.TAYLOR_CLAMP_MODE], float(st.session_state[state.TAYLOR_CLAMP_VALUE])
    if mode == state.CLAMP_UPPER:
        return value
    if mode == state.CLAMP_BOTH:
        return (-abs(value), abs(value))
    return None


def _clamp_label(clamp: taylor.Clamp) -> str:
    if clamp is None:
        return "no clamp"
    if isinstance(clamp, tuple):
        return f"logits clamped to [{clamp[0]:g}, {clamp[1]:g}]"
    return f"logits clamped above at {clamp:g}"


def _sweep(run: common.CurrentRun, n_tokens: int, max_order: int, clamp: taylor.Clamp) -> taylor.ModelSweep | None:
    n_layers = run.capture.n_layers
    progress = st.progress(0.0, "Expanding every head")
    layers = []
    try:
        for index in range(n_layers):
            layers.append(cached.taylor_layer(*run.key.args(), index, n_tokens, max_order, clamp))
            progress.progress((index + 1) / n_layers,
                              f"Orders 0–{max_order} for every head: layer {index + 1}/{n_layers}")
    except ValueError as error:
        progress.empty()
        st.warning(f"Layer {len(layers)}: {error}")
        return None
    progress.empty()
    return taylor.ModelSweep.stack(layers)


def _clip_selection(key: str, upper: int) -> None:
    st.session_state[key] = min(int(st.session_state[key]), upper)


st.title("Softmax vs Taylor")
st.caption(HELP["intro"])
run = common.current_run()
if run is None:
    st.stop()

capture, tokens = run.capture, run.tokens
n_layers, n_heads, n_tokens = capture.n_layers, capture.n_heads, len(tokens)
if run.kind == "decoder" and n_tokens > PREFIX_DEFAULT:
    _clip_selection(state.TAYLOR_PREFIX, n_tokens)
    st.number_input(f"Analyse the first … of the {n_tokens} tokens", min_value=2, max_value=n_tokens, step=256,
                    key=state.TAYLOR_PREFIX,
                    help="Under the causal mask the first n tokens' attention is exactly what the model computes on "
                         "them alone. Every quantity on this page costs time ∝ n², so long texts start at "
                         f"{PREFIX_DEFAULT}.")
    n_tokens = int(st.session_state[state.TAYLOR_PREFIX])
for key, upper in ((state.TAYLOR_LAYER, n_layers - 1), (state.TAYLOR_HEAD, n_heads - 1),
                   (state.TAYLOR_QUERY, n_tokens - 1)):
    _clip_selection(key, upper)

controls = st.columns([1.3, 1.6, 0.8, 1.3, 0.8, 0.8])
controls[0].slider("Highest order N", 1, MAX_ORDER, key=state.TAYLOR_MAX_ORDER,
                   help="Orders 0..N are computed for every head. Cost grows linearly with N.")
controls[1].radio("Logit clamp", state.CLAMP_MODES, key=state.TAYLOR_CLAMP_MODE, horizontal=True,
                  help="The paper's code clamps scaled logits at 5 from above before exp, which does nothing for the "
                       "very negative logits of real models; 'both sides' clamps to [−c, c]. The target is always "
                       "the model's unclamped softmax.")
controls[2].number_input("c", min_value=0.1, max_value=100.0, step=0.5, key=state.TAYLOR_CLAMP_VALUE,
                         disabled=st.session_state[state.TAYLOR_CLAMP_MODE] == state.CLAMP_NONE)
controls[3].select_slider("Tolerance", state.TOLERANCES, key=state.TAYLOR_TOLERANCE,
                          format_func=lambda t: f"{t:g}", help="Error a head must get below for the 'order needed' map.")
controls[4].selectbox("Layer", range(n_layers), key=state.TAYLOR_LAYER,
                      help="The layer of the one-layer and one-head views.")
controls[5].selectbox("Head", range(n_heads), key=state.TAYLOR_HEAD, help="The head of the one-head views.")
layer, head = st.session_state[state.TAYLOR_LAYER], st.session_state[state.TAYLOR_HEAD]
max_order = int(st.session_state[state.TAYLOR_MAX_ORDER])
clamp = _clamp()
tolerance = float(st.session_state[state.TAYLOR_TOLERANCE])
_clip_selection(state.TAYLOR_ORDER, max_order)

sweep = _sweep(run, n_tokens, max_order, clamp)
if sweep is None:
    st.stop()
precision = "fp64 on CPU" if capture.layer(0).q.device.type == "cpu" else "Triton fp32 on GPU"
st.caption(f"{n_tokens} tokens · {n_layers} layers × {n_heads} heads · orders 0–{max_order} · {_clamp_label(clamp)} · "
           f"{precision}")

tabs = st.tabs(["Error vs order", "Order needed", "Logit scale", "One head's weights", "RNN form",
                "What the model loses"])

with tabs[0]:
    st.caption(HELP["error"])
    scope = st.radio("Over", [state.SCOPE_MODEL, state.SCOPE_LAYER, state.SCOPE_HEAD], key=state.TAYLOR_SCOPE,
                     horizontal=True, help="One layer and one head use the layer and head chosen above.")
    if scope == state.SCOPE_MODEL:
        where, norms = "all heads", sweep.target_norm
    elif scope == state.SCOPE_LAYER:
        where, norms = f"layer {layer}", sweep.target_norm[layer]
    else:
        where, norms = f"layer {layer}, head {head}", sweep.target_norm[layer, head]
    curves = []
    for name in DENOMINATORS:
        error = sweep.error[name]
        if scope == state.SCOPE_HEAD:
            curves.append(figures.Curve(DENOMINATOR_LABELS[name], error[layer, head],
                                        colour=figures.DENOMINATOR_COLOURS[name]))
            continue
        spread = taylor.spread_over_heads(error if scope == state.SCOPE_MODEL else error[layer])
        curves.append(figures.Curve(f"{DENOMINATOR_LABELS[name]}: median", spread["median"], low=spread["q25"],
                                    high=spread["q75"], colour=figures.DENOMINATOR_COLOURS[name]))
    spread_note = "" if scope == state.SCOPE_HEAD else " (median over heads, band: 25th–75th percentile)"
    left, right = st.columns([3, 2])
    with left:
        common.chart(figures.error_vs_order(curves, title=f"Error vs order, {where}{spread_note}"),
                     key="taylor_error_chart", name="error-vs-order")
    with right:
        common.chart(figures.histogram(norms, title=f"‖softmax output row‖, {where}", x_title="‖Oₜ‖"),
                     key="taylor_norm_chart", name="softmax-output-row-norms")
        st.caption(HELP["norms"])
    st.markdown("**Heads by their most negative logit**: each head's logit range beside its error at order "
                f"{max_order}.")
    rows = []
    quantiles = taylor.logit_quantiles(sweep.logit_hist, [0.5])[..., 0]
    for lay in range(n_layers):
        for h in range(n_heads):
            rows.append({"layer": lay, "head": h, "min logit": float(sweep.logit_min[lay, h]),
                         "median logit": float(quantiles[lay, h]), "max logit": float(sweep.logit_max[lay, h]),
                         **{f"error n={max_order}, {name}": float(sweep.error[name][lay, h, -1])
                            for name in DENOMINATORS}})
    table = pd.DataFrame(rows).sort_values("min logit")
    st.dataframe(table, hide_index=True, width="stretch", height=300,
                 column_config={c: st.column_config.NumberColumn(format="%.3g") for c in table.columns[2:]})

with tabs[1]:
    st.caption(HELP["needed"])
    denominator = st.selectbox("Denominator", DENOMINATORS, key=state.TAYLOR_NEEDED_DENOMINATOR,
                               format_func=DENOMINATOR_LABELS.get)
    needed = taylor.order_needed(sweep.error[denominator], tolerance)
    common.chart(figures.order_needed_heatmap(
        needed, max_order=max_order, tolerance=tolerance, error_at_max=sweep.error[denominator][..., -1],
        logit_min=sweep.logit_min, logit_max=sweep.logit_max,
        title=f"Order needed for error < {tolerance:g}, {DENOMINATOR_LABELS[denominator]}"),
        key="taylor_needed_chart", name="order-needed")

with tabs[2]:
    st.caption(HELP["logits"])
    pick = st.columns([1, 2])
    pick[0].selectbox("Layer", [state.ALL_LAYERS, *range(n_layers)], key=state.TAYLOR_HIST_LAYER,
                      format_func=lambda i: "all layers" if i == state.ALL_LAYERS else f"layer {i}")
    st.session_state[state.TAYLOR_HIST_ORDERS] = [o for o in st.session_state[state.TAYLOR_HIST_ORDERS]
                                                  if o <= MAX_ORDER]
    pick[1].multiselect("Orders drawn", list(range(MAX_ORDER + 1)), key=state.TAYLOR_HIST_ORDERS)
    hist_layer = st.session_state[state.TAYLOR_HIST_LAYER]
    counts = sweep.logit_hist.sum((0, 1)) if hist_layer == state.ALL_LAYERS else sweep.logit_hist[hist_layer].sum(0)
    where = "all layers" if hist_layer == state.ALL_LAYERS else f"layer {hist_layer}"
    common.chart(figures.logit_histogram(
        counts, logit_bin_edges().numpy(), orders=sorted(st.session_state[state.TAYLOR_HIST_ORDERS]),
        clamp=None if clamp is None else (clamp if isinstance(clamp, tuple) else (None, clamp)),
        title=f"Scaled logits, {where}, and where each order fails"), key="taylor_logit_chart", name="logit-histogram")
    st.caption(HELP["terms"])
    dominant = taylor.dominant_order(sweep.term_mean)
    common.chart(figures.term_size_heatmap(sweep.term_mean.mean(1), dominant,
                                              title="Mean size of each term |sⁿ/n!| per layer"),
                    key="taylor_terms_chart", name="term-sizes")

with tabs[3]:
    pick = st.columns(3)
    pick[0].selectbox("Query token", range(n_tokens), key=state.TAYLOR_QUERY,
                      format_func=lambda i: f"{i}: {tokens.strings[i]}")
    pick[1].slider("Order", 0, max_order, key=state.TAYLOR_ORDER)
    pick[2].selectbox("Denominator", DENOMINATORS, key=state.TAYLOR_WEIGHT_DENOMINATOR,
                      format_func=DENOMINATOR_LABELS.get)
    query, order = st.session_state[state.TAYLOR_QUERY], st.session_state[state.TAYLOR_ORDER]
    denominator = st.session_state[state.TAYLOR_WEIGHT_DENOMINATOR]
    st.caption(HELP["weights"])
    row = taylor.row_weights(capture.layer(layer).prefix(n_tokens), head=head, query=query, order=order,
                             denominator=denominator, clamp=clamp)
    shown_denominator = "exact softmax (an L2 denominator normalises outputs, not weights)" \
        if denominator == "l2" else DENOMINATOR_LABELS[denominator]
    common.chart(figures.row_weights(row.logits, row.softmax, row.truncated, tokens=tokens.strings, order=order,
                                        denominator_label=f"÷ {shown_denominator}",
                                        title=f"Layer {layer}, head {head}, query {query}: weights at order {order}"),
                    key="taylor_row_chart", name="one-query-weights")
    st.caption(f"Denominator of this row: {row.denominator:.4g}. Negative weights in this row: "
               f"{int(np.nansum(row.truncated < 0))} of {int(np.isfinite(row.truncated).sum())}.")
    st.caption(HELP["health"])
    common.chart(figures.denominator_health(
        sweep.negative_weights[layer, head], sweep.nonpositive_denominator[layer, head],
        sweep.small_denominator[layer, head], title=f"Layer {layer}, head {head}: weights and sum denominators"),
        key="taylor_health_chart", name="denominator-health")

with tabs[4]:
    st.caption(HELP["rnn"])
    st.latex(r"S^{(n)}_t = S^{(n)}_{t-1} + k_t^{\otimes n} v_t^\top,\quad z^{(n)}_t = z^{(n)}_{t-1} + k_t^{\otimes n},"
             r"\quad o_t = \frac{\sum_n \mathrm{scale}^n (q_t^{\otimes n})^\top S^{(n)}_t / n!}"
             r"{\sum_n \mathrm{scale}^n (q_t^{\otimes n})^\top z^{(n)}_t / n!}")
    if run.kind != "decoder":
        st.info("The recurrent form runs left to right over a causal decoder; this model attends in both directions.")
    else:
        st.select_slider("Tokens run", RNN_TOKENS, key=state.TAYLOR_RNN_TOKENS,
                         help="The order-2 state has d² × d_v numbers and is updated token by token in Python.")
        with st.spinner("Running the recurrences"):
            check = cached.taylor_recurrent(*run.key.args(), layer, head,
                                            int(st.session_state[state.TAYLOR_RNN_TOKENS]))
        st.dataframe(pd.DataFrame({
            "order n": [0, 1, 2],
            "state size d^n × d_v": check.state_entries,
            "max |recurrent − parallel|": check.max_difference,
            "max |output|": check.output_scale,
        }), hide_index=True, column_config={
            "max |recurrent − parallel|": st.column_config.NumberColumn(format="%.2e"),
            "max |output|": st.column_config.NumberColumn(format="%.3g"),
        })
        st.markdown(f"Order 1 against linear attention with φ(x) = [1, √scale·x] on the first {check.n_tokens} tokens "
                    f"of layer {layer}, head {head}: max difference **{check.linear_difference:.2e}** (fp64).")

with tabs[5]:
    st.caption(HELP["loss"])
    if run.kind != "decoder" or capture.token_logprobs is None:
        st.info("Next-token loss needs a decoder (a causal language model) and at least two tokens.")
    else:
        pick = st.columns([1, 2])
        pick[0].selectbox("Denominator", DENOMINATORS, key=state.TAYLOR_LOSS_DENOMINATOR,
                          format_func=DENOMINATOR_LABELS.get)
        denominator = st.session_state[state.TAYLOR_LOSS_DENOMINATOR]
        orders = list(range(1, max_order + 1))
        substitutes = [taylor.Substitute("taylor", order=n, denominator=denominator, clamp=clamp) for n in orders]
        references = [taylor.Substitute("model"), taylor.Substitute("softmax"), taylor.Substitute("elu+1")]
        request = (run.key, n_tokens, tuple(substitutes))
        if pick[1].button(f"Measure the loss ({len(substitutes) + len(references)} forward passes)", type="primary"):
            st.session_state[state.TAYLOR_LOSS_REQUESTS] = [*st.session_state[state.TAYLOR_LOSS_REQUESTS], request]
        if request in st.session_state[state.TAYLOR_LOSS_REQUESTS]:
            progress = st.progress(0.0, "Running the model with replaced attention")
            losses = {}
            everything = references + substitutes
            for index, substitute in enumerate(everything):
                progress.progress(index / len(everything), f"Forward pass {index + 1}/{len(everything)}: "
                                                           f"{substitute.label}")
                with common.model_turn(run.key.spec):
                    losses[substitute] = cached.substitution_loss(*run.key.args(), n_tokens, substitute)
            progress.empty()
            reference_losses = {s.label: losses[s] for s in references}
            vocabulary = getattr(cached.get_model(run.key.spec).model.config, "vocab_size", None)
            if vocabulary:
                reference_losses["uniform guess, log V"] = float(np.log(vocabulary))
            common.chart(figures.loss_vs_order(
                orders, [losses[s] for s in substitutes], references=reference_losses,
                title=f"Next-token loss with every layer replaced, {DENOMINATOR_LABELS[denominator]}, "
                      f"{_clamp_label(clamp)} (zero-shot)"), key="taylor_loss_chart", name="zero-shot-loss")
            table = pd.DataFrame([{"attention": s.label, "loss (nats)": losses[s],
                                   "perplexity": float(np.exp(losses[s])) if np.isfinite(losses[s]) else np.inf,
                                   "Δ loss vs the model": losses[s] - losses[references[0]]}
                                  for s in everything])
            st.dataframe(table, hide_index=True, width="stretch",
                         column_config={c: st.column_config.NumberColumn(format="%.4g") for c in table.columns[1:]})
            st.caption("Zero-shot: the model was trained with softmax and is evaluated with the replacement in all "
                       f"{n_layers} layers at once; the paper's models were trained with the approximation in place.")
common.report_button("Softmax vs Taylor", {"tokens analysed": n_tokens, "highest order": max_order,
                                           "clamp": _clamp_label(clamp), "tolerance": tolerance, "layer": layer,
                                           "head": head})
