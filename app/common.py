"""The shared sidebar and the one path from the sidebar's choices to a captured run, with progress and errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import streamlit as st

from app import cached, state
from core.capture import Capture
from core.hosting import Policy, policy_from_env
from core.prompts import pasted
from core.report import build_report, figure_table
from core.models import PACKAGED_MODELS, ModelLoadError, ModelSpec, needs_preparation, prepare_packaged_model
from core.tokens import Cut, Tokens


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


def _fill_example() -> None:
    st.session_state[state.TEXT] = state.EXAMPLES[st.session_state[state.EXAMPLE]]


def _use_library_prompt() -> None:
    pick = st.session_state[state.LIBRARY_PICK]
    if pick is not None and pick < len(st.session_state[state.LIBRARY]):
        st.session_state[state.TEXT] = st.session_state[state.LIBRARY][pick].text


def use_prompt(index: int) -> None:
    """Make library prompt `index` the text every page analyses."""
    st.session_state[state.LIBRARY_PICK] = index
    _use_library_prompt()


def policy() -> Policy:
    """This deployment's limits (hosted mode or not), from the environment."""
    return policy_from_env()


@contextlib.contextmanager
def model_turn(spec: ModelSpec) -> Iterator[None]:
    """Hold the model's lock while a forward pass (or cached work that may run one) happens; say so while waiting."""
    lock = cached.model_lock(spec)
    if not lock.acquire(blocking=False):
        note = st.empty()
        note.info(f"Waiting for the model: another session is running {spec.name}.", icon="⏳")
        lock.acquire()
        note.empty()
    try:
        yield
    finally:
        lock.release()


def sidebar() -> None:
    """Model choice and text, shared by every page."""
    limits = policy()
    with st.sidebar:
        st.subheader("Model")
        extra = list(limits.allowed_models) if limits.hosted else []
        if limits.hosted and not extra and st.session_state[state.MODEL_CHOICE] == state.CUSTOM_MODEL:
            st.session_state[state.MODEL_CHOICE] = next(iter(PACKAGED_MODELS))
        choices = [*PACKAGED_MODELS, *([state.CUSTOM_MODEL] if not limits.hosted or extra else [])]
        st.selectbox("Model", choices, key=state.MODEL_CHOICE, label_visibility="collapsed",
                     format_func=lambda c: PACKAGED_MODELS[c].title if c in PACKAGED_MODELS else c)
        if st.session_state[state.MODEL_CHOICE] == state.CUSTOM_MODEL:
            if limits.hosted:
                if st.session_state[state.CUSTOM_NAME] not in extra:
                    st.session_state[state.CUSTOM_NAME] = extra[0]
                st.selectbox("Hub id", extra, key=state.CUSTOM_NAME)
                st.session_state[state.TRUST_REMOTE_CODE] = False
            else:
                st.text_input("Hub id or local folder", key=state.CUSTOM_NAME, placeholder="gpt2 or /path/to/model")
                st.text_input("Revision (optional)", key=state.CUSTOM_REVISION, placeholder="main")
                st.checkbox("Trust remote code", key=state.TRUST_REMOTE_CODE,
                            help="Runs Python code shipped with the model. Only for authors you trust.")
        if limits.hosted:
            st.caption(f"Hosted demo: texts are cut at {limits.max_tokens} tokens, uploads at "
                       f"{limits.max_upload_bytes / 2**20:.0f} MB; no remote code, no local folders.")
        st.subheader("Text")
        st.selectbox("Example prompts", list(state.EXAMPLES), key=state.EXAMPLE, on_change=_fill_example)
        library = st.session_state[state.LIBRARY]
        if library:
            st.selectbox("Your prompts", range(len(library)), key=state.LIBRARY_PICK, index=None,
                         placeholder=f"{len(library)} in the library: pick one",
                         format_func=lambda i: library[i].name, on_change=_use_library_prompt,
                         help="Prompts you uploaded or pasted on the Prompts page (this session only).")
        st.text_area("Text to analyse", key=state.TEXT, height=180,
                     help="Press Ctrl+Enter (or click outside the box) to run the model on the text.")
        ceiling = limits.max_tokens or 32768
        st.session_state[state.MAX_TOKENS] = min(int(st.session_state[state.MAX_TOKENS]), ceiling)
        st.number_input("Max tokens", min_value=8, max_value=ceiling, step=256, key=state.MAX_TOKENS,
                        help="Longer texts are cut here; capture memory grows linearly with it.")
        st.radio("Chart downloads", ["png", "svg"], key=state.IMAGE_FORMAT, horizontal=True,
                 help="What the camera button in each chart's toolbar saves. Each chart also offers its data as CSV, "
                      "and each page a self-contained HTML report.")


def current_spec() -> ModelSpec | None:
    choice = st.session_state[state.MODEL_CHOICE]
    if choice != state.CUSTOM_MODEL:
        return ModelSpec(name=choice)
    name = st.session_state[state.CUSTOM_NAME].strip()
    if not name:
        return None
    return ModelSpec(name=name, revision=st.session_state[state.CUSTOM_REVISION].strip() or None,
                     trust_remote_code=bool(st.session_state[state.TRUST_REMOTE_CODE]))


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
    try:
        policy().check(spec)
        if needs_preparation(spec):
            with st.status("Preparing the packaged model (once per machine)", expanded=True) as status:
                bar = st.progress(0.0)
                prepare_packaged_model(spec.name, progress=lambda fraction, message: bar.progress(fraction, message))
                status.update(label="Packaged model prepared", state="complete", expanded=False)
        with st.spinner(f"Loading {spec.name}"):
            loaded = cached.get_model(spec)
    except ModelLoadError as error:
        st.error(str(error))
        return None
    except Exception as error:  # an arbitrary user-chosen model can fail anywhere inside transformers
        st.error(f"Could not load '{spec.name}': {type(error).__name__}: {error}")
        return None
    max_tokens = int(st.session_state[state.MAX_TOKENS])
    model_limit = loaded.info.get("max_positions") or max_tokens
    max_tokens = min(max_tokens, model_limit)
    key = RunKey(spec=spec, text=text, cut=Cut(max_tokens=max_tokens, keep=st.session_state[state.KEEP]))
    try:
        tokens = cached.get_tokens(*key.args())
    except ValueError as error:
        st.error(str(error))
        return None
    with model_turn(spec), st.spinner(f"Running {spec.name} on {len(tokens)} tokens and capturing every layer"):
        capture = cached.get_capture(*key.args())
    st.sidebar.caption(f"{len(tokens)} tokens · {loaded.n_layers} layers × {loaded.n_heads} heads · {loaded.kind}")
    if tokens.truncated:
        remedy = (f"{spec.name} reads at most {model_limit} positions." if max_tokens == model_limit
                  else "Raise 'Max tokens' in the sidebar to see more.")
        which = "first" if key.cut.keep == "start" else "last"
        st.warning(f"The text has {tokens.n_text_tokens} tokens; only the {which} {len(tokens)} are analysed. "
                   f"{remedy}")
        st.radio("Analyse", ["start", "end"], key=state.KEEP, horizontal=True,
                 format_func={"start": f"the first {len(tokens)} tokens", "end": f"the last {len(tokens)} tokens"}.get,
                 help="Which part of a text that is too long is analysed. The end of a text is run without the "
                      "model's start-of-text token.")
    return CurrentRun(key=key, tokens=tokens, capture=capture, kind=loaded.kind)


def start_report() -> None:
    """Called at the start of each run: the report collects the figures this run draws."""
    st.session_state[state.REPORT_FIGURES] = []


def chart(figure, *, key: str, name: str, data=None, **kwargs):
    """st.plotly_chart with the chosen image format, a CSV of its data (the given DataFrame, or every trace's
    points), and a place in the page's HTML report."""
    st.session_state[state.REPORT_FIGURES].append((name, figure))
    config = {"toImageButtonOptions": {"format": st.session_state[state.IMAGE_FORMAT], "filename": name},
              "displaylogo": False, **kwargs.pop("config", {})}
    shown = st.plotly_chart(figure, key=key, config=config, **kwargs)
    st.download_button("Data as CSV", lambda: (figure_table(figure) if data is None else data).to_csv(index=False),
                       file_name=f"{name}.csv", mime="text/csv", key=f"csv_{key}", on_click="ignore",
                       help=f"{name}.csv")
    return shown


def report_button(title: str, settings: dict | None = None) -> None:
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
    st.download_button("Download report (HTML)", lambda: build_report(f"attnscope: {title}", everything, figures),
                       file_name=f"attnscope-{title.lower().replace(' ', '-')}.html", mime="text/html",
                       key="report", on_click="ignore", type="primary",
                       help="One self-contained file with every figure on this page and the settings behind them.")
