"""Why here: pick a token of the text; see which heads and tokens its residual stream is made of (information-flow
contributions), open a head from the graph (its attention map beside its value-weighted form), ablate every head, and
compare with attention rollout."""

import streamlit as st

import attnscope
from attnscope.app import common, output, run_control, runs, state
from attnscope.app.messages import literal, say
from attnscope.app.widgets import widget
from attnscope.studies import why

STRIP_TOKENS = 48  # tokens in the clickable strip around the chosen one (a text up to STRIP_WHOLE shows them all)
STRIP_WHOLE = 64
HOSTED_ABLATION_TOKENS = 256  # in hosted mode, the longest text whose heads are all ablated (about H*L/2 passes)
KEPT_ABLATIONS = 8  # ablation runs remembered per session
SCOPES = {"text": "the whole text", "token": "the chosen token"}


def _token_picked(key: str) -> None:
    """The position box or the strip moved: that token is followed (a strip click on the chosen token keeps it)."""
    value = st.session_state[key]
    if value is not None:
        st.session_state[state.WHY_TOKEN] = int(value)
        st.session_state[state.WHY_EDGE] = None


def _open_clicked_edge() -> None:
    """Graph selection callback: an edge's midpoint opens its head below (a residual edge has none)."""
    for point in st.session_state[state.WHY_GRAPH].selection.points:
        data = point.get("customdata")
        if isinstance(data, dict):  # a row of a typed array arrives as {index: value}
            data = [data[index] for index in sorted(data, key=int)]
        if data is not None and len(data) == 4 and int(data[1]) >= 0:
            layer, head, query, key = (int(v) for v in data)
            st.session_state[state.LAYER], st.session_state[state.HEAD] = layer, head
            st.session_state[state.WHY_EDGE] = (layer, head, query, key)
            return


def _chosen_token(n_tokens: int) -> int:
    """The token followed: the setting, the last token when it is None, -1 or past this text."""
    value = st.session_state[state.WHY_TOKEN]
    if value is not None and not -1 <= int(value) < n_tokens:
        st.session_state[state.WHY_TOKEN] = value = None
    return n_tokens - 1 if value is None or int(value) == -1 else int(value)


def _token_picker(tokens, token: int) -> None:
    """A position box and a strip of the tokens around the chosen one, each click choosing a token."""
    n_tokens = len(tokens)
    if n_tokens <= STRIP_WHOLE:
        start, end = 0, n_tokens
    else:
        start = max(0, min(token - STRIP_TOKENS // 2, n_tokens - STRIP_TOKENS))
        end = start + STRIP_TOKENS
    st.session_state[state.WHY_TOKEN_BOX] = token
    st.session_state[state.WHY_TOKEN_STRIP] = token
    box, strip = st.columns([1, 6])
    box.number_input("Token position", min_value=0, max_value=n_tokens - 1, step=1, key=state.WHY_TOKEN_BOX,
                     on_change=_token_picked, args=(state.WHY_TOKEN_BOX,),
                     help="The token whose residual stream is followed back; or click a token in the text.")
    strip.pills("Click a token" + ("" if (start, end) == (0, n_tokens) else f" (tokens {start}-{end - 1} of "
                                                                             f"{n_tokens})"),
                range(start, end), format_func=lambda p: literal(tokens.strings[p]) or "·", required=True,
                key=state.WHY_TOKEN_STRIP, on_change=_token_picked, args=(state.WHY_TOKEN_STRIP,))


def _ablation(run, source, text, cut, token: int, n_tokens: int) -> list:
    """The ablation section: settings, the Run button, and once asked, the deltas' map and bars. Its findings."""
    st.subheader("Ablation: the loss without each head")
    loaded = source.model
    limits = common.policy()
    passes = loaded.n_layers * loaded.n_heads // 2
    controls = st.columns([2, 2, 1])
    scope = controls[0].radio("Loss of", list(SCOPES), key=state.WHY_ABLATION_SCOPE, persist_state=state.PERSIST,
                              format_func=SCOPES.get, horizontal=True)
    mode = widget("mode", controls[1], kind="radio", horizontal=True)
    hosted_cap = limits.hosted and n_tokens > HOSTED_ABLATION_TOKENS
    st.caption(f"Every one of the {loaded.n_layers * loaded.n_heads} heads in turn, about {passes} forward passes over "
               f"{n_tokens} tokens (a layer's heads share one pass up to that layer); each layer is cached."
               + (f" This demo ablates texts of at most {HOSTED_ABLATION_TOKENS} tokens." if limits.hosted else ""))
    target = token if scope == "token" else None
    request = ("why-ablation", run.key, mode, target)
    first = scope == "token" and token == 0 and loaded.kind == "decoder"  # no token before it to predict it from
    if controls[2].button("Run ablation", type="primary", disabled=hosted_cap or first):
        st.session_state[state.WHY_ABLATIONS] = [*st.session_state[state.WHY_ABLATIONS][-KEPT_ABLATIONS + 1:],
                                                 request]
        run_control.resume(request)
    if first:
        st.info("The first token has no next-token loss: choose a later token, or the whole text.")
        return []
    if hosted_cap:
        st.info(f"The text has {n_tokens} tokens: this demo ablates texts of at most {HOSTED_ABLATION_TOKENS}. Lower "
                "'Max tokens' in the sidebar to ablate its first part.")
        return []
    if request not in st.session_state[state.WHY_ABLATIONS]:
        st.caption("Press Run ablation to measure every head.")
        return []
    try:
        with run_control.working("Ablating every head", request, models=(run.key.spec,)) as progress:
            result = attnscope.ablate(source, text, **common.cut_settings(cut), mode=mode, target=target,
                                      progress=progress)
    except ValueError as error:
        say("error", str(error))
        return []
    shown = result.figures()
    left, right = st.columns(2)
    with left:
        output.chart(shown["ablation-map"], key="why_ablation_map", name="ablation-map", data=result.to_frame)
    with right:
        output.chart(shown["ablation-bars"], key="why_ablation_bars", name="ablation-bars", data=result.to_frame)
    findings = result.findings()
    for item in findings:
        output.finding(item, literal_measured=True)
    return findings


st.title("Why here")
st.caption("Pick a token: its residual stream after the last layer is followed back through the layers to the "
           "heads and tokens it is made of (information-flow contributions, Ferrando & Voita 2024, as "
           "llm-transparency-tool computes them). Click an edge to open its head.")
run = runs.current_run()
if run is None:
    st.stop()
source, (_, text, cut) = common.source(run.key.spec), run.key.args()
tokens, spec = run.tokens, run.key.spec
n_tokens, n_layers, n_heads = len(tokens), source.model.n_layers, source.model.n_heads
token = _chosen_token(n_tokens)
_token_picker(tokens, token)
findings = []

st.subheader(f"Where token {token} ({literal(tokens.strings[token])}) comes from")
threshold = widget("why_threshold", st.columns([1, 5])[0], min_value=0.001, max_value=1.0, step=0.01,
                   format="%.3f")
graph_request = ("why-graph", run.key, token, threshold)
try:
    with run_control.working(f"Following token {token} back through {n_layers} layers", graph_request,
                             models=(spec,)) as progress:
        flow = attnscope.contributions(source, text, **common.cut_settings(cut), token=token, threshold=threshold,
                                       progress=progress)
except ValueError as error:  # a model attnscope cannot split into heads, a position outside the text
    say("error", str(error))
    st.stop()
st.caption(f"{len(flow.contribution):,} edges of at least {threshold:g}: tokens left to right, layers bottom to top; "
           "grey edges are a token's own residual stream, the others a head reading a key. Click an edge's midpoint "
           "to open its head below.")
output.chart(flow.figures()["contribution-graph"], key=state.WHY_GRAPH, name="contribution-graph",
             data=flow.to_frame, on_select=_open_clicked_edge, selection_mode="points")
with run_control.working("Head-type scores of the text", ("stats", run.key), models=(spec,)) as progress:
    stats = attnscope.stats(source, text, **common.cut_settings(cut), progress=progress)
findings += [*flow.findings(), why.head_roles(flow, stats)]
for item in findings:
    output.finding(item, literal_measured=True)

# Drawn on Attention maps too: assigned before their widgets, so the first run after a page switch sends these values
# with the widgets instead of the widgets' built-in defaults (as state.SHARED_WIDGETS for the sidebar's).
st.session_state[state.LAYER] = min(st.session_state[state.LAYER], n_layers - 1)
st.session_state[state.HEAD] = min(st.session_state[state.HEAD], n_heads - 1)
st.session_state[state.MAP_SCALE] = st.session_state[state.MAP_SCALE]
layer, head = st.session_state[state.LAYER], st.session_state[state.HEAD]
st.subheader(f"Layer {layer}, head {head}: its weights and what they carry")
controls = st.columns([1, 1, 2])
widget("layer", controls[0], options=range(n_layers))
widget("head", controls[1], options=range(n_heads))
scale = widget("map_scale", controls[2], kind="segmented")
edge = st.session_state[state.WHY_EDGE]
marks = sorted({token} | ({edge[2]} if edge is not None and edge[:2] == (layer, head) else set()))
cell_limit, reduce = st.session_state[state.CELL_LIMIT], st.session_state[state.REDUCE]
with run_control.working(f"Maps of layer {layer}, head {head}", ("why-maps", run.key, layer, head, cell_limit, reduce),
                         models=(spec,)):
    raw = attnscope.maps(source, text, **common.cut_settings(cut), layer=layer, heads=[head], cell_limit=cell_limit,
                         reduce=reduce, map_scale=scale)
    weighted = why.value_weighted(source, text, cut=cut, layer=layer, head=head, cell_limit=cell_limit,
                                  reduce=reduce, token=token)
st.caption("Left, the weights α; right, α·‖v W_O‖, the size of what each key adds to the query through this head "
           "(Kobayashi et al. 2020). Framed: the row and column of token "
           + ", ".join(str(p) for p in marks) + (f"; pooled into {raw.block}×{raw.block}-token tiles "
                                                 f"({reduce})" if raw.block > 1 else "") + ".")
left, right = st.columns(2)
with left:
    (name, figure), = raw.figures(marks=marks).items()
    output.chart(figure, key="why_head_map", name=name, data=lambda: raw.matrix_frame(head=head).reset_index())
with right:
    (name, figure), = weighted.figures(scale=scale, marks=marks).items()
    output.chart(figure, key="why_value_map", name=name, data=weighted.to_frame)
weighted_findings = weighted.findings()
for item in weighted_findings:
    output.finding(item, literal_measured=True)
findings += weighted_findings

st.subheader("Attention rollout, the classic baseline")
with run_control.working(f"Rollout from token {token}", ("why-rollout", run.key, token), models=(spec,)):
    rollout = why.rollout(source, text, cut=cut, token=token)
st.caption(why.ROLLOUT_DIFFERS + " The diamonds are the same token's relevance along its contribution graph.")
output.chart(rollout.figures(flow=why.flow_relevance(flow)[0])["rollout"], key="why_rollout", name="rollout",
             data=rollout.to_frame)
rollout_findings = [*rollout.findings(), why.compare_rollout(rollout, flow)]
for item in rollout_findings:
    output.finding(item, literal_measured=True)
findings += rollout_findings

findings += _ablation(run, source, text, cut, token, n_tokens)
output.report_button("Why here", {"token": token, "edges at or above": threshold, "layer": layer, "head": head,
                                  "ablation": st.session_state[state.ABLATION_MODE],
                                  "ablation loss of": SCOPES[st.session_state[state.WHY_ABLATION_SCOPE]]},
                     findings=findings)
