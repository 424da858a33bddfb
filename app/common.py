"""The shared sidebar and the one path from the sidebar's choices to a captured run, with progress and errors."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

import streamlit as st
import torch

from attnscope.app import cached, state
from attnscope.capture import Capture
from attnscope.hosting import Policy, PolicyError, policy_from_env
from attnscope.prompts import pasted
from attnscope.report import build_report, figure_table
from attnscope.studies.base import ProgressFn
from attnscope.models import (DTYPES, PACKAGED_MODELS, QUANTIZE, LoadedModel, ModelLoadError, ModelSpec,
                              memory_in_use, needs_preparation, prepare_packaged_model)
from attnscope.tokens import Cut, Tokens, cut_text

_ASCII_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
# What GitHub-flavoured Markdown turns into a link even when every mark is escaped (it finds them in the parsed
# text): http:// and https:// addresses, www. names and e-mail addresses. A zero-width space breaks each one.
_AUTOLINK = re.compile(r"(?i)(?<=http:)(?=//)|(?<=https:)(?=//)|(?<=www)(?=\.)|(?<=@)")
NAME_CHARS = 200  # longest hub id or folder typed in the sidebar
REVISION_CHARS = 100


@dataclass(frozen=True)
class RunKey:
    """Everything that determines a capture; passed to every cached computation."""

    spec: ModelSpec
    text: str
    cut: Cut

    def args(self) -> tuple:
        return self.spec, self.text, self.cut


@dataclass
class CurrentRun:
    key: RunKey
    tokens: Tokens
    capture: Capture
    kind: str  # "decoder" or "encoder"


def literal(text: object, limit: int | None = None) -> str:
    """`text` as Markdown that shows these characters: every ASCII punctuation mark is escaped and every address
    GFM would link by itself is broken by a zero-width space, so no link, image, emphasis, HTML or LaTeX can come out
    of a value a visitor chose (a URL parameter, a file or prompt name, a model id, an error naming any of them).
    Whitespace runs become one space; `limit` cuts long values."""
    text = " ".join(str(text).split())
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    return _ASCII_PUNCTUATION.sub(r"\\\1", _AUTOLINK.sub("\u200b", text))


def say(kind: str, message: str) -> None:
    """Show a sentence that may hold values a visitor chose, literally, with server paths taken out when hosted."""
    {"error": st.error, "warning": st.warning, "info": st.info, "success": st.success}[kind](
        literal(policy().public(message)))


def _fill_example(box: str) -> None:
    if st.session_state[box] is None:
        return
    st.session_state[state.TEXT] = state.EXAMPLES[st.session_state[box]]
    st.session_state[state.TEXT_NOTE] = None


def _box_text(text: str) -> str:
    """What the sidebar's text box can hold of `text`: its start, or its end when the end is analysed."""
    limit = policy().max_chars
    if len(text) <= limit:
        st.session_state[state.TEXT_NOTE] = None
        return text
    which = "first" if st.session_state[state.KEEP] == "start" else "last"
    st.session_state[state.TEXT_NOTE] = (f"The text has {len(text):,} characters; the text box holds its {which} "
                                         f"{limit:,}, more than this deployment analyses.")
    return cut_text(text, policy().max_tokens, st.session_state[state.KEEP])


def _text_typed() -> None:
    st.session_state[state.TEXT_NOTE] = None


def _use_library_prompt() -> None:
    pick = st.session_state[state.LIBRARY_PICK]
    if pick is not None and pick < len(st.session_state[state.LIBRARY]):
        st.session_state[state.TEXT] = _box_text(st.session_state[state.LIBRARY][pick].text)


def _keep_changed() -> None:
    """A library prompt longer than the text box is cut again from the chosen side."""
    pick = st.session_state[state.LIBRARY_PICK]
    if pick is None or pick >= len(st.session_state[state.LIBRARY]):
        return
    text = st.session_state[state.LIBRARY][pick].text
    other_side = "end" if st.session_state[state.KEEP] == "start" else "start"
    if len(text) > policy().max_chars and st.session_state[state.TEXT] == cut_text(text, policy().max_tokens,
                                                                                   other_side):
        st.session_state[state.TEXT] = _box_text(text)


def use_prompt(index: int) -> None:
    """Make library prompt `index` the text every page analyses."""
    st.session_state[state.LIBRARY_PICK] = index
    _use_library_prompt()


def policy() -> Policy:
    """This deployment's limits (hosted mode or not), from the environment; a bad ATTNSCOPE_* value stops the page
    with the sentence that names it."""
    try:
        return policy_from_env()
    except PolicyError as error:
        st.error(f"attnscope is misconfigured: {error}")
        st.stop()


def cut_for(loaded: LoadedModel, requested: int | None = None) -> Cut:
    """How much of a text a run of `loaded` reads (Max tokens unless `requested`), through the one rule in
    core.hosting.Policy.cut: this deployment's limit and the model's positions."""
    requested = int(st.session_state[state.MAX_TOKENS]) if requested is None else requested
    return policy().cut(requested, max_positions=loaded.info.get("max_positions"), keep=st.session_state[state.KEEP])


def _digest(request) -> str:
    """A widget key for `request`'s Stop and Run-again buttons: keys must differ between computations of one run."""
    return hashlib.sha256(repr(request).encode()).hexdigest()[:16]


def check_stop() -> None:
    """The dashboard's cancellation check (attnscope.cancel): reading session state is where Streamlit raises its
    StopException (Stop, a closed tab) or RerunException (a new run) in the script's thread."""
    st.session_state.get(state.STOPPED)


def stopped(request) -> bool:
    """True when the user pressed Stop on the computation of `request` (anything hashable that says what a page
    computes) and has not asked for it again: the page then shows why nothing is drawn instead of starting over."""
    return request in st.session_state.get(state.STOPPED, ())


def resume(request) -> None:
    """Forget that `request` was stopped, so the page computes it again (completed units come from the caches)."""
    st.session_state[state.STOPPED] = [r for r in st.session_state[state.STOPPED] if r != request]


def _stop(request) -> None:
    st.session_state[state.STOPPED] = [*st.session_state[state.STOPPED][-state.KEPT_STOPS + 1:], request]


@contextlib.contextmanager
def working(label: str, request, *, models: tuple[ModelSpec, ...] = ()) -> Iterator[ProgressFn]:
    """Around a computation that may take more than a second or two: a progress bar, a Stop button and, when another
    session is running one of `models` (its lock is held), "Waiting for the model". Yields progress(fraction, message).

    Stop (the button, a new run, a closed tab) ends the computation at its next cancellation point (attnscope.cancel:
    every layer of a forward pass, every unit of a study, every step of a wait for a model's lock): Streamlit raises
    its StopException or RerunException there, and every lock on the way out is released in `finally`. The Stop
    button also marks `request` as stopped: a stopped request is not started again unasked, the page says so here
    with "Run it again" and ends (st.stop). The wait itself happens where the lock is taken (app.cached), only for
    work that needs the model: what the caches hold comes at once.
    """
    if stopped(request):
        st.info(f"Stopped ({label[:1].lower()}{label[1:]}). What was finished is kept and is not computed again.",
                icon="⏹️")
        st.button("Run it again", key=f"resume_{_digest(request)}", on_click=resume, args=(request,), type="primary")
        st.stop()
    box = st.empty()
    with box.container():
        bar = st.progress(0.0, literal(label))
        st.button("Stop", key=f"stop_{_digest(request)}", on_click=_stop, args=(request,),
                  icon=":material/stop_circle:",
                  help="Stops at the next layer or unit; what is finished stays cached, so running it again resumes.")
        busy = [spec.name for spec in models if cached.model_lock(spec).locked()]
        if busy:
            st.info(f"Waiting for the model: another session is running {literal(busy[0])}. What is already "
                    "computed comes at once; the rest waits its turn.", icon="⏳")
    try:
        yield lambda fraction, message: bar.progress(min(max(float(fraction), 0.0), 1.0), literal(message))
    finally:
        box.empty()


def sidebar() -> None:
    """Model choice and text, shared by every page."""
    limits = policy()
    with st.sidebar:
        st.subheader("Model")
        hub_entries = list(limits.allowed_models) if limits.hosted else []
        if limits.hosted and not hub_entries and st.session_state[state.MODEL_CHOICE] == state.CUSTOM_MODEL:
            st.session_state[state.MODEL_CHOICE] = next(iter(PACKAGED_MODELS))
        choices = [*PACKAGED_MODELS, *([state.CUSTOM_MODEL] if not limits.hosted or hub_entries else [])]
        st.selectbox("Model", choices, key=state.MODEL_CHOICE, label_visibility="collapsed",
                     format_func=lambda c: PACKAGED_MODELS[c].title if c in PACKAGED_MODELS else state.CUSTOM_LABEL)
        if st.session_state[state.MODEL_CHOICE] == state.CUSTOM_MODEL:
            if limits.hosted:
                if st.session_state[state.CUSTOM_NAME] not in hub_entries:
                    st.session_state[state.CUSTOM_NAME] = hub_entries[0]
                st.selectbox("Hub model", hub_entries, key=state.CUSTOM_NAME,
                             help="The models this demo offers, each at the revision it pins.")
                st.session_state[state.CUSTOM_REVISION] = ""
                st.session_state[state.TRUST_REMOTE_CODE] = False
            else:
                st.text_input("Hub id or local folder", key=state.CUSTOM_NAME, placeholder="gpt2 or /path/to/model",
                              max_chars=NAME_CHARS)
                st.text_input("Revision (optional)", key=state.CUSTOM_REVISION, placeholder="main",
                              max_chars=REVISION_CHARS)
                st.checkbox("Trust remote code", key=state.TRUST_REMOTE_CODE,
                            help="Runs Python code shipped with the model. Only for authors you trust.")
        if not limits.hosted:  # a public demo runs where its operator put it
            _placement_choices()
        if limits.hosted:
            st.caption(f"Hosted demo: texts are cut at {limits.max_tokens} tokens ({limits.max_chars:,} characters), "
                       f"uploads at {limits.max_upload_mb} MB and {limits.max_files} files, the library at "
                       f"{limits.max_prompts} prompts and {limits.max_library_mb} MB, a batch at "
                       f"{limits.max_batch}; no remote code, no local folders.")
        st.subheader("Text")
        # The box names an example only while the text is that example: a new box for each text (its key holds the
        # text's digest), so a box once set never shows an example the text has since stopped being.
        text, names = st.session_state[state.TEXT], list(state.EXAMPLES)
        box = state.example_box(pasted(text).digest)
        st.selectbox("Example prompts", names, key=box, on_change=_fill_example, args=(box,),
                     index=next((i for i, name in enumerate(names) if state.EXAMPLES[name] == text), None),
                     placeholder="Pick an example")
        library = st.session_state[state.LIBRARY]
        if library:
            st.selectbox("Your prompts", range(len(library)), key=state.LIBRARY_PICK, index=None,
                         placeholder=f"{len(library)} in the library: pick one",
                         format_func=lambda i: library[i].name, on_change=_use_library_prompt,
                         help="Prompts you uploaded or pasted on the Prompts page (this session only).")
        if len(st.session_state[state.TEXT]) > limits.max_chars:  # e.g. set before the limit was lowered
            st.session_state[state.TEXT] = _box_text(st.session_state[state.TEXT])
        st.text_area("Text to analyse", key=state.TEXT, height=180, max_chars=limits.max_chars,
                     on_change=_text_typed,
                     help=f"Press Ctrl+Enter (or click outside the box) to run the model on the text. The box holds "
                          f"{limits.max_chars:,} characters and keeps the start of a longer paste; to analyse the "
                          "end of a longer text, upload it on the Prompts page.")
        if st.session_state[state.TEXT_NOTE]:
            st.caption(st.session_state[state.TEXT_NOTE])
        if st.button("Generate from this text", help="The model continues the text; the Generation page shows "
                     "each new token's attention."):
            st.session_state[state.GENERATE_NOW] = True
            st.switch_page("app_pages/generation.py")
        st.session_state[state.MAX_TOKENS] = min(int(st.session_state[state.MAX_TOKENS]), limits.max_tokens)
        st.number_input("Max tokens", min_value=8, max_value=limits.max_tokens, step=256, key=state.MAX_TOKENS,
                        help="Longer texts are cut here; capture memory grows linearly with it.")
        st.radio("Chart downloads", ["png", "svg"], key=state.IMAGE_FORMAT, horizontal=True,
                 help="What the camera button in each chart's toolbar saves. Each chart also offers its data as CSV, "
                      "and each page a self-contained HTML report.")


def _placement_choices() -> None:
    """Device, precision and (on a GPU with bitsandbytes) quantized weights, in a collapsed expander."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    devices = ["auto", "cpu", *(f"cuda:{index}" for index in range(gpus)), *(["map"] if gpus else [])]
    if st.session_state[state.DEVICE] not in devices:
        st.session_state[state.DEVICE] = "auto"
    quantizable = gpus > 0 and importlib.util.find_spec("bitsandbytes") is not None
    if not quantizable:
        st.session_state[state.QUANTIZE] = "none"
    with st.expander("Device and precision"):
        st.selectbox("Device", devices, key=state.DEVICE,
                     format_func=lambda device: DEVICE_LABELS.get(device, device),
                     help="Where the model and every analysis run. 'auto' is the first GPU when there is one, "
                          "else the CPU.")
        st.selectbox("Precision", list(DTYPES), key=state.DTYPE, format_func=DTYPE_LABELS.get,
                     help="The weights' and activations' dtype; the kernels compute their statistics in float32 "
                          "whatever it is.")
        if quantizable:
            st.selectbox("Quantized weights", list(QUANTIZE), key=state.QUANTIZE,
                         help="8-bit or 4-bit weights through bitsandbytes, for models larger than the GPU.")


DEVICE_LABELS = {"auto": "auto (GPU if there is one)", "map": "spread over every GPU, then the CPU"}  # else the name
DTYPE_LABELS = {"auto": "auto (bfloat16 on a GPU, float32 on the CPU)", "float32": "float32", "bfloat16": "bfloat16",
                "float16": "float16"}


def current_spec() -> ModelSpec | None:
    placement = {} if policy().hosted else {key: st.session_state[key] for key in (state.DEVICE, state.DTYPE,
                                                                                    state.QUANTIZE)}
    choice = st.session_state[state.MODEL_CHOICE]
    if choice != state.CUSTOM_MODEL:
        return ModelSpec(name=choice, **placement)
    name = st.session_state[state.CUSTOM_NAME].strip()
    if not name:
        return None
    limits = policy()
    if limits.hosted:  # the allowlist entry fixes the revision; nothing else a visitor or a link sets counts
        pinned = dict(zip(limits.allowed_models, limits.hub_models()))
        return pinned.get(name, ModelSpec(name=name))
    return ModelSpec(name=name, revision=st.session_state[state.CUSTOM_REVISION].strip() or None,
                     trust_remote_code=bool(st.session_state[state.TRUST_REMOTE_CODE]), **placement)


def load(spec: ModelSpec) -> LoadedModel | None:
    """The model for `spec`, prepared once with progress when it is a packaged GGUF model; on failure one sentence
    and None. Notes about the model's preparation are shown once per session."""
    limits = policy()
    try:
        limits.check(spec)
        if needs_preparation(spec):
            with st.status("Preparing the packaged model (once per machine)", expanded=True) as status:
                bar = st.progress(0.0)
                prepare_packaged_model(spec.name, progress=lambda fraction, message: bar.progress(
                    fraction, literal(limits.public(message))))
                status.update(label="Packaged model prepared", state="complete", expanded=False)
        with st.spinner(f"Loading {literal(spec.name)}"):
            loaded = cached.get_model(spec)
    except ModelLoadError as error:
        say("error", str(error))
        return None
    except Exception as error:  # an arbitrary user-chosen model can fail anywhere inside transformers
        if limits.hosted:  # its message may hold anything, server paths included: the log gets it, not the visitor
            logging.getLogger("attnscope").exception("Loading %s failed", spec)
            say("error", f"Could not load '{spec.name}' ({type(error).__name__}); the server log has the details.")
        else:
            say("error", f"Could not load '{spec.name}': {type(error).__name__}: {error}")
        return None
    shown = st.session_state[state.NOTES_SHOWN]
    for note in loaded.notes:
        if note not in shown:
            shown.append(note)
            say("info", note)
    return loaded


def current_run() -> CurrentRun | None:
    """Load the chosen model and capture the text, showing progress; on a user mistake show why and return None."""
    spec = current_spec()
    if spec is None:
        st.info("Type a Hugging Face hub id (e.g. `gpt2`) or a local model folder in the sidebar.")
        return None
    text = st.session_state[state.TEXT]
    if not text.strip():
        st.info("Type or paste some text in the sidebar to see its attention.")
        return None
    loaded = load(spec)
    if loaded is None:
        return None
    key = RunKey(spec=spec, text=text, cut=cut_for(loaded))
    state.follow_text(key)
    try:
        tokens = cached.get_tokens(*key.args())
    except ValueError as error:
        say("error", str(error))
        return None
    with working(f"Running {spec.name} on {len(tokens)} tokens and capturing every layer", key, models=(spec,)):
        capture = cached.get_capture(*key.args())
    quantized = "" if loaded.info.get("quantize", "none") == "none" else f" ({loaded.info['quantize']} weights)"
    st.sidebar.caption(f"{len(tokens)} tokens · {loaded.n_layers} layers × {loaded.n_heads} heads · {loaded.kind}  \n"
                       f"On {loaded.info['device']} in {loaded.info['dtype']}{quantized} · "
                       f"{memory_in_use(loaded.model)}")
    if tokens.truncated:
        model_limit = loaded.info.get("max_positions")
        if key.cut.max_tokens == model_limit:
            remedy = f"{literal(spec.name)} reads at most {model_limit} positions."
        elif key.cut.max_tokens == policy().max_tokens:
            remedy = f"This deployment analyses at most {key.cut.max_tokens} tokens of a text."
        else:
            remedy = "Raise 'Max tokens' in the sidebar to see more."
        which = "first" if key.cut.keep == "start" else "last"
        size = (f"more than {tokens.n_text_tokens} tokens ({len(text):,} characters)" if tokens.chars_cut
                else f"{tokens.n_text_tokens} tokens")
        st.warning(f"The text has {size}; only the {which} {len(tokens)} are analysed. {remedy}")
        st.radio("Analyse", ["start", "end"], key=state.KEEP, persist_state=state.PERSIST, horizontal=True,
                 on_change=_keep_changed,
                 format_func={"start": f"the first {len(tokens)} tokens", "end": f"the last {len(tokens)} tokens"}.get,
                 help="Which part of a text that is too long is analysed. The end of a text is run without the "
                      "model's start-of-text token.")
    return CurrentRun(key=key, tokens=tokens, capture=capture, kind=loaded.kind)


def start_report() -> None:
    """Called at the start of each run: the report collects the figures this run draws."""
    st.session_state[state.REPORT_FIGURES] = []


def chart(figure, *, key: str, name: str, data=None, **kwargs):
    """st.plotly_chart with the chosen image format, a CSV of its data (the given DataFrame, or a function making
    it, called only when the CSV is downloaded; else every trace's points), and a place in the page's HTML report."""
    st.session_state[state.REPORT_FIGURES].append((name, figure))
    config = {"toImageButtonOptions": {"format": st.session_state[state.IMAGE_FORMAT], "filename": name},
              "displaylogo": False, **kwargs.pop("config", {})}
    shown = st.plotly_chart(figure, key=key, config=config, **kwargs)
    table = (lambda: figure_table(figure)) if data is None else data if callable(data) else (lambda: data)
    st.download_button("Data as CSV", lambda: table().to_csv(index=False),
                       file_name=f"{name}.csv", mime="text/csv", key=f"csv_{key}", on_click="ignore",
                       help=f"{name}.csv")
    return shown


def finding(item) -> None:
    """One attnscope.studies.base.Finding: the paper's claim beside what was measured (core writes both sentences,
    which may hold Markdown links and math from attnscope itself, never from a visitor)."""
    if item.paper is None:
        st.markdown(item.measured)
        return
    left, right = st.columns(2)
    left.markdown(f"**Paper:** {item.paper}")
    right.markdown(f"**Measured here:** {item.measured}")


def report_button(title: str, settings: dict | None = None, findings=()) -> None:
    """'Download report': one HTML file with every figure this run drew and the settings behind them."""
    figures = list(st.session_state[state.REPORT_FIGURES])
    if not figures:
        return
    text = st.session_state[state.TEXT]
    spec = current_spec()
    everything = {
        "model": spec.name if spec else "(none)",
        "text": text if len(text) <= 2000 else text[:2000] + f"… ({len(text)} characters in all)",
        "text content hash": pasted(text).digest,
        "max tokens": st.session_state[state.MAX_TOKENS],
        **(settings or {}),
    }
    st.divider()
    st.download_button("Download report (HTML)",
                       lambda: build_report(f"attnscope: {title}", everything, figures, findings=findings),
                       file_name=f"attnscope-{title.lower().replace(' ', '-')}.html", mime="text/html",
                       key="report", on_click="ignore", type="primary",
                       help="One self-contained file with every figure on this page and the settings behind them.")
