"""Every st.session_state key the app uses, with its default, in one place."""

import streamlit as st

from attnscope.models import DEFAULT_MODEL

MODEL_CHOICE = "model_choice"  # packaged alias, or CUSTOM_MODEL
CUSTOM_MODEL = "Other: hub id or local folder"
CUSTOM_NAME = "custom_model_name"  # hub id or folder typed by the user
CUSTOM_REVISION = "custom_model_revision"
TRUST_REMOTE_CODE = "trust_remote_code"
TEXT = "text"  # the text every page analyses
TEXT_NOTE = "text_note"  # a sentence saying the text box holds only part of a longer text, or None
NOTES_SHOWN = "notes_shown"  # notes about model preparation this session has already seen
EXAMPLE = "example_prompt"
MAX_TOKENS = "max_tokens"
KEEP = "keep_part"  # which part of a too-long text is analysed: "start" or "end"

LAYER = "layer"
HEAD = "head"
QUERY = "query_position"
VIEW = "maps_view"
HIDE_SINK = "hide_sink"
REDUCE = "pool_reduce"
CELL_LIMIT = "cell_limit"
GRID_SCOPE = "grid_scope"
GRID_SORT = "grid_sort"
GRID_CHART = "grid_chart"

VIEW_ONE_HEAD = "One head"
VIEW_ALL_HEADS = "All heads"
VIEW_QUERY = "One query token"
VIEW_STATS = "Head statistics"
VIEWS = (VIEW_ONE_HEAD, VIEW_ALL_HEADS, VIEW_QUERY, VIEW_STATS)
STAT_SHOWN = "stat_shown"

# Prompts page and library
LIBRARY = "prompt_library"  # list of core.prompts.Prompt, this session only
LIBRARY_PICK = "prompt_library_pick"  # index into LIBRARY chosen in the sidebar
UPLOADER = "prompt_uploader"  # + the generation: a new, empty uploader once each upload has been taken
UPLOADER_GENERATION = "prompt_uploader_generation"
PASTE_TEXT = "paste_text"
PASTE_NAME = "paste_name"
UPLOAD_MESSAGES = "upload_messages"  # (kind, sentence) pairs from the last uploads, shown until the next
BATCH_KIND = "batch_kind"
BATCH_STAT = "batch_stat"
BATCH_REQUESTS = "batch_requests"  # batch runs the user asked for in this session
BATCH_HEADS = "Head statistics (entropy, max weight, sink)"
BATCH_TAYLOR = "Softmax vs Taylor: error vs order"
BATCH_COLLAPSE = "Context collapse: max weight and entropy vs L"

# Softmax vs Taylor page
TAYLOR_MAX_ORDER = "taylor_max_order"
TAYLOR_PREFIX = "taylor_prefix"  # decoders: analyse the first n tokens (exact under the causal mask)
TAYLOR_CLAMP_MODE = "taylor_clamp_mode"
TAYLOR_CLAMP_VALUE = "taylor_clamp_value"
TAYLOR_TOLERANCE = "taylor_tolerance"
TAYLOR_SCOPE = "taylor_scope"
TAYLOR_LAYER = "taylor_layer"
TAYLOR_HEAD = "taylor_head"
TAYLOR_QUERY = "taylor_query"
TAYLOR_ORDER = "taylor_order"  # the one order the weight view shows
TAYLOR_NEEDED_DENOMINATOR = "taylor_needed_denominator"
TAYLOR_WEIGHT_DENOMINATOR = "taylor_weight_denominator"
TAYLOR_LOSS_DENOMINATOR = "taylor_loss_denominator"
TAYLOR_HIST_ORDERS = "taylor_hist_orders"
TAYLOR_HIST_LAYER = "taylor_hist_layer"
TAYLOR_RNN_TOKENS = "taylor_rnn_tokens"
TAYLOR_LOSS_REQUESTS = "taylor_loss_requests"  # loss sweeps the user asked for in this session

# Context collapse page
COLLAPSE_SOURCE = "collapse_source"
COLLAPSE_MAX_LENGTH = "collapse_max_length"
COLLAPSE_WINDOWS = "collapse_windows"
COLLAPSE_ROWS = "collapse_rows"
COLLAPSE_VECTORS = "collapse_vectors"
COLLAPSE_FIXED_LENGTH = "collapse_fixed_length"  # L of the distance-vs-N and distinguishability figures
COLLAPSE_LAYER = "collapse_layer"  # ALL_LAYERS or a layer: which heads the per-head figures follow
COLLAPSE_HEAD = "collapse_head"
IMAGE_FORMAT = "image_format"  # what each chart's camera button saves: png or svg
REPORT_FIGURES = "report_figures"  # (name, figure) pairs drawn in this run, for the HTML report
SOURCE_BUILTIN = "Built-in long document"
SOURCE_SIDEBAR = "The sidebar text"
SOURCES = (SOURCE_BUILTIN, SOURCE_SIDEBAR)

CLAMP_NONE = "no clamp"
CLAMP_UPPER = "clamp above (paper)"
CLAMP_BOTH = "clamp both sides"
CLAMP_MODES = (CLAMP_NONE, CLAMP_UPPER, CLAMP_BOTH)
TOLERANCES = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4, 1e-6)  # offered for the "order needed" map
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
    MODEL_CHOICE: DEFAULT_MODEL,
    CUSTOM_NAME: "",
    CUSTOM_REVISION: "",
    TRUST_REMOTE_CODE: False,
    TEXT: EXAMPLES["Capital cities"],
    TEXT_NOTE: None,
    NOTES_SHOWN: [],
    EXAMPLE: "Capital cities",
    MAX_TOKENS: 2048,
    KEEP: "start",
    LAYER: 0,
    HEAD: 0,
    QUERY: 0,
    VIEW: VIEW_ONE_HEAD,
    HIDE_SINK: False,
    REDUCE: "mean",
    CELL_LIMIT: 256,
    GRID_SCOPE: "This layer",
    GRID_SORT: False,
    STAT_SHOWN: "entropy",
    TAYLOR_MAX_ORDER: 10,
    TAYLOR_PREFIX: 512,
    TAYLOR_CLAMP_MODE: CLAMP_NONE,
    TAYLOR_CLAMP_VALUE: 5.0,
    TAYLOR_TOLERANCE: 1e-2,
    TAYLOR_SCOPE: SCOPE_MODEL,
    TAYLOR_LAYER: 0,
    TAYLOR_HEAD: 0,
    TAYLOR_QUERY: 10**9,  # clipped to the last token, whose row sees the whole text
    TAYLOR_ORDER: 10,
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
    BATCH_KIND: BATCH_HEADS,
    BATCH_STAT: "entropy",
    BATCH_REQUESTS: [],
    COLLAPSE_SOURCE: SOURCE_BUILTIN,
    COLLAPSE_MAX_LENGTH: 2048,
    COLLAPSE_WINDOWS: 3,
    COLLAPSE_ROWS: 8,
    COLLAPSE_VECTORS: "values",
    COLLAPSE_FIXED_LENGTH: 2048,
    COLLAPSE_LAYER: ALL_LAYERS,
    COLLAPSE_HEAD: 0,
    IMAGE_FORMAT: "png",
}


# Sidebar widgets shared by every page. Re-assigning their values at the start of each run makes Streamlit send them
# to the browser with the widgets: a page switch requested before the previous run drew the sidebar otherwise leaves
# the browser's copies at the widgets' built-in defaults (an empty text), which the next interaction sends back.
SHARED_WIDGETS = (MODEL_CHOICE, CUSTOM_NAME, CUSTOM_REVISION, TRUST_REMOTE_CODE, TEXT, EXAMPLE, MAX_TOKENS,
                  LIBRARY_PICK, IMAGE_FORMAT)


def init_state() -> None:
    for key, value in DEFAULTS.items():
        st.session_state.setdefault(key, list(value) if isinstance(value, list) else value)  # no shared lists
    for key in SHARED_WIDGETS:
        st.session_state[key] = st.session_state[key]
