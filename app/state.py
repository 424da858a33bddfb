"""Every st.session_state key the app uses, with its default, in one place.

Settings a person chooses (and links carry) are keyed and defaulted by attnscope.settings, the one table the widgets,
the permalinks, the CLI and the API read; their stored values are the stable ones there, never display labels. The
constants below name them for the pages; the other keys are the app's own.
"""

import streamlit as st

from attnscope import settings as S

MODEL_CHOICE = "model_choice"  # packaged alias, or CUSTOM_MODEL
CUSTOM_MODEL = "custom"
CUSTOM_LABEL = "Other: hub id or local folder"
CUSTOM_NAME = "custom_model_name"  # hub id or folder typed by the user
CUSTOM_REVISION = "custom_model_revision"
TRUST_REMOTE_CODE = "trust_remote_code"
DEVICE = "device"  # attnscope.models.DEVICES or "cuda:N"; not carried by links (the machine decides what exists)
DTYPE = "dtype"  # a key of attnscope.models.DTYPES
QUANTIZE = "quantize"  # attnscope.models.QUANTIZE
TEXT = "text"  # the text every page analyses
TEXT_NOTE = "text_note"  # a sentence saying the text box holds only part of a longer text, or None
NOTES_SHOWN = "notes_shown"  # notes about model preparation this session has already seen
EXAMPLE = "example_prompt"  # + the text's digest: the example box drawn for that text (example_box)
MAX_TOKENS = S.setting("max_tokens").key
KEEP = S.setting("keep").key  # which part of a too-long text is analysed: "start" or "end"

LAYER = S.setting("layer").key
HEAD = S.setting("head").key
QUERY = S.setting("query").key
VIEW = S.setting("view").key
HIDE_SINK = S.setting("hide_sink").key
REDUCE = S.setting("reduce").key
CELL_LIMIT = S.setting("cell_limit").key
MAP_SCALE = S.setting("map_scale").key
ZOOM_QUERIES = S.setting("queries").key  # (start, end) token positions of a zoom, or None: the whole text
ZOOM_KEYS = S.setting("keys").key
MAP_SEARCH = "map_search"  # what 'Find in the text' looks for
GRID_SCOPE = "grid_scope"
GRID_SORT = "grid_sort"
GRID_CHART = "grid_chart"

VIEW_ONE_HEAD, VIEW_ALL_HEADS, VIEW_QUERY, VIEW_STATS = S.VIEWS.values
VIEWS = S.VIEWS.values
STAT_SHOWN = "stat_shown"

# Prompts page and library
LIBRARY = "prompt_library"  # list of core.prompts.Prompt, this session only
LIBRARY_PICK = "prompt_library_pick"  # index into LIBRARY chosen in the sidebar
UPLOADER = "prompt_uploader"  # + the generation: a new, empty uploader once each upload has been taken
UPLOADER_GENERATION = "prompt_uploader_generation"
PASTE_TEXT = "paste_text"
PASTE_NAME = "paste_name"
UPLOAD_MESSAGES = "upload_messages"  # (kind, sentence) pairs from the last uploads, shown until the next
BATCH_KIND = "batch_kind"  # which study: a key of attnscope.studies.batch.STUDIES
BATCH_STAT = "batch_stat"
BATCH_REQUESTS = "batch_requests"  # batch runs the user asked for in this session

# Softmax vs Taylor page
TAYLOR_MAX_ORDER = S.setting("max_order").key
TAYLOR_PREFIX = S.setting("n_tokens").key  # decoders: analyse the first n tokens (exact under the causal mask)
TAYLOR_CLAMP_MODE = S.setting("clamp").key
TAYLOR_CLAMP_VALUE = S.setting("clamp_value").key
TAYLOR_TOLERANCE = S.setting("tolerance").key
TAYLOR_SCOPE = "taylor_scope"
TAYLOR_LAYER = S.setting("taylor_layer").key
TAYLOR_HEAD = S.setting("taylor_head").key
TAYLOR_QUERY = "taylor_query"
TAYLOR_ORDER = S.setting("taylor_order").key  # the one order the weight view shows
TAYLOR_NEEDED_DENOMINATOR = "taylor_needed_denominator"
TAYLOR_WEIGHT_DENOMINATOR = "taylor_weight_denominator"
TAYLOR_LOSS_DENOMINATOR = "taylor_loss_denominator"
TAYLOR_HIST_ORDERS = "taylor_hist_orders"
TAYLOR_HIST_LAYER = "taylor_hist_layer"
TAYLOR_RNN_TOKENS = "taylor_rnn_tokens"
TAYLOR_LOSS_REQUESTS = "taylor_loss_requests"  # loss sweeps the user asked for in this session

# Context collapse page
COLLAPSE_SOURCE = S.setting("source").key
COLLAPSE_MAX_LENGTH = S.setting("max_length").key
COLLAPSE_WINDOWS = S.setting("windows").key
COLLAPSE_ROWS = S.setting("rows").key
COLLAPSE_VECTORS = S.setting("vectors").key
COLLAPSE_FIXED_LENGTH = S.setting("fixed_length").key  # L of the distance-vs-N and distinguishability figures
COLLAPSE_LAYER = "collapse_layer"  # ALL_LAYERS or a layer: which heads the per-head figures follow
COLLAPSE_HEAD = "collapse_head"
# Generation page
MAX_NEW_TOKENS = S.setting("max_new_tokens").key
GENERATIONS = "generations"  # (request) -> GenerationResult: the last few generations of this session
GENERATE_NOW = "generate_now"  # set by the sidebar's Generate button: the Generation page starts one on arrival
GEN_LAYER = "gen_layer"
GEN_HEAD = "gen_head"
# Compare page (side A is the sidebar's model and text)
COMPARE_TEXT = "compare_text"  # side B's text; None until the page first copies the sidebar text into it
COMPARE_MODEL = "compare_model"  # side B's model: COMPARE_SAME, a packaged alias, a hosted allowlist entry or CUSTOM
COMPARE_SAME = "same"
COMPARE_CUSTOM_NAME = "compare_custom_name"  # side B's hub id or local folder (not in hosted mode)
COMPARE_STAT = "compare_stat"
COMPARE_LAYER = "compare_layer"
COMPARE_HEAD = "compare_head"
COMPARE_REQUESTS = "compare_requests"  # comparisons the user asked for in this session (the last few)
# Why here page (the head it opens is LAYER, HEAD: an edge's click opens it on the Attention maps page too)
WHY_TOKEN = S.setting("token").key  # the token followed back (None: the last token)
WHY_THRESHOLD = S.setting("why_threshold").key  # the edges drawn and followed
ABLATION_MODE = S.setting("mode").key
WHY_TOKEN_BOX = "why_token_box"  # the position box and the token strip, both mirrors of WHY_TOKEN
WHY_TOKEN_STRIP = "why_token_strip"
WHY_GRAPH = "why_graph"  # the contribution graph's chart (its selection: the clicked edge)
WHY_EDGE = "why_edge"  # (layer, head, query, key) of the edge clicked last, or None
WHY_ABLATION_SCOPE = "why_ablation_scope"  # "text" (the mean loss) or "token" (the loss of the chosen token)
WHY_ABLATIONS = "why_ablations"  # ablation runs the user asked for in this session (the last few)
# Head atlas page
ATLAS = "atlas"  # the AtlasResult shown (opened or run in this session), or None
ATLAS_B = "atlas_b"  # the atlas compared with it (B), or None
ATLAS_OPENED = "atlas_opened"  # upload file ids already opened (as A, as B): a rerun does not open them again
ATLAS_FIELD = "atlas_field"
ATLAS_EMBEDDING = "atlas_embedding"  # attnscope.analyses.atlas.EMBEDDINGS
ATLAS_HEAD = "atlas_head"  # (layer, head) clicked in the embedding, or None
ATLAS_CHART = "atlas_chart"
ATLAS_FOLDER = "atlas_folder"  # an atlas folder or file on this machine (not in hosted mode)
ATLAS_CORPUS = "atlas_corpus"  # a corpus path on this machine (not in hosted mode)
ATLAS_DOCUMENTS = "atlas_documents"
ATLAS_TOKENS = "atlas_tokens"
ATLAS_TEXT_COLUMN = "atlas_text_column"
STOPPED = "stopped"  # requests whose computation the user stopped (the last KEPT_STOPS): not started again unasked
KEPT_STOPS = 16
IMAGE_FORMAT = "image_format"  # what each chart's camera button saves: png or svg
REPORT_FIGURES = "report_figures"  # (name, figure) pairs drawn in this run, for the HTML report
SOURCE_BUILTIN, SOURCE_SIDEBAR = S.SOURCES.values
SOURCES = S.SOURCES.values

CLAMP_NONE, CLAMP_UPPER, CLAMP_BOTH = S.CLAMPS.values
CLAMP_MODES = S.CLAMPS.values
TOLERANCES = S.TOLERANCES  # offered for the "order needed" map
SCOPE_MODEL = "Whole model"
SCOPE_LAYER = "One layer"
SCOPE_HEAD = "One head"
ALL_LAYERS = -1

EXAMPLES = {
    "Capital cities": "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is",
    "Repeated names (induction)": (
        "Mr and Mrs Dursley, of number four, Privet Drive, were proud to say that they were perfectly normal. "
        "Mr Dursley was the director of a firm called Grunnings. Mrs Dursley was thin and blonde. Mr Dursley"
    ),
    "Code": "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Agreement over distance": "The keys to the old cabinet in the hallway that my grandmother painted blue are",
}

DEFAULTS = {
    **{setting.key: setting.default for setting in S.SETTINGS.values()},
    MODEL_CHOICE: S.DEFAULT_MODEL,
    CUSTOM_NAME: "",
    CUSTOM_REVISION: "",
    TRUST_REMOTE_CODE: False,
    DEVICE: "auto",
    DTYPE: "auto",
    QUANTIZE: "none",
    TEXT: EXAMPLES["Capital cities"],
    TEXT_NOTE: None,
    NOTES_SHOWN: [],
    GRID_SCOPE: "This layer",
    GRID_SORT: False,
    STAT_SHOWN: "entropy",
    MAP_SEARCH: "",
    TAYLOR_SCOPE: SCOPE_MODEL,
    TAYLOR_QUERY: -1,  # the last token, whose row sees the whole text
    TAYLOR_NEEDED_DENOMINATOR: "softmax",
    TAYLOR_WEIGHT_DENOMINATOR: "taylor",
    TAYLOR_LOSS_DENOMINATOR: "l2",
    TAYLOR_HIST_ORDERS: [1, 2, 4, 10],
    TAYLOR_HIST_LAYER: ALL_LAYERS,
    TAYLOR_RNN_TOKENS: 64,
    TAYLOR_LOSS_REQUESTS: [],
    LIBRARY: [],
    LIBRARY_PICK: None,
    UPLOADER_GENERATION: 0,
    PASTE_TEXT: "",
    PASTE_NAME: "",
    UPLOAD_MESSAGES: [],
    BATCH_KIND: "stats",
    BATCH_STAT: "entropy",
    BATCH_REQUESTS: [],
    COLLAPSE_LAYER: ALL_LAYERS,
    COLLAPSE_HEAD: 0,
    COMPARE_TEXT: None,
    COMPARE_MODEL: COMPARE_SAME,
    COMPARE_CUSTOM_NAME: "",
    COMPARE_STAT: "entropy",
    COMPARE_LAYER: 0,
    COMPARE_HEAD: 0,
    COMPARE_REQUESTS: [],
    IMAGE_FORMAT: "png",
    STOPPED: [],
    GENERATIONS: {},
    GENERATE_NOW: False,
    GEN_LAYER: 0,
    ATLAS: None,
    ATLAS_B: None,
    ATLAS_OPENED: {"a": None, "b": None},
    ATLAS_FIELD: "induction",
    ATLAS_EMBEDDING: "pca",
    ATLAS_HEAD: None,
    ATLAS_FOLDER: "",
    ATLAS_CORPUS: "",
    ATLAS_DOCUMENTS: 8,
    ATLAS_TOKENS: 128,
    ATLAS_TEXT_COLUMN: "text",
    GEN_HEAD: 0,
    WHY_EDGE: None,
    WHY_ABLATION_SCOPE: "text",
    WHY_ABLATIONS: [],
}


def example_box(digest: str) -> str:
    return f"{EXAMPLE}_{digest}"


TEXT_SEEN = "text_seen"  # the run (model, text, cut) whose tokens the TEXT_SCOPED values index
# token positions in one text: back to their defaults when the text changes
TEXT_SCOPED = (QUERY, TAYLOR_QUERY, ZOOM_QUERIES, ZOOM_KEYS, WHY_TOKEN, WHY_EDGE)


def follow_text(run) -> None:
    """Called with each page's run key: when the text (or the model, or the cut, which change its tokens) is not the
    one the token positions in TEXT_SCOPED were chosen on, they go back to their defaults."""
    seen, st.session_state[TEXT_SEEN] = st.session_state.get(TEXT_SEEN), run
    if seen is not None and seen != run:  # a session's first text keeps what its link chose
        for key in TEXT_SCOPED:
            st.session_state[key] = DEFAULTS[key]


def last_if_unset(key: str, n_tokens: int) -> int:
    """The token position stored under `key`, the last one when it is -1 (the default) or beyond the text."""
    position = int(st.session_state[key])
    st.session_state[key] = n_tokens - 1 if position < 0 or position >= n_tokens else position
    return st.session_state[key]


# Sidebar widgets shared by every page. Re-assigning their values at the start of each run makes Streamlit send them
# to the browser with the widgets: a page switch requested before the previous run drew the sidebar otherwise leaves
# the browser's copies at the widgets' built-in defaults (an empty text), which the next interaction sends back.
SHARED_WIDGETS = (MODEL_CHOICE, CUSTOM_NAME, CUSTOM_REVISION, TRUST_REMOTE_CODE, DEVICE, DTYPE, QUANTIZE, TEXT,
                  MAX_TOKENS, LIBRARY_PICK, IMAGE_FORMAT)

# Every widget bound to a key of DEFAULTS is drawn with persist_state=PERSIST: Streamlit then keeps its value when a
# page that does not draw it runs (by default it deletes it, and the setting would fall back to its default after a
# visit to another page). So a setting belongs to the app, not to the page that drew its widget last.
PERSIST = "session"


def init_state() -> None:
    for key, value in DEFAULTS.items():
        st.session_state.setdefault(key, type(value)(value) if isinstance(value, (list, dict)) else value)  # unshared
    for key in SHARED_WIDGETS:
        st.session_state[key] = st.session_state[key]
