"""From the sidebar's choices to a loaded model and a captured run: the model with its preparation's progress and
one sentence on failure (load), and the run of the sidebar's text every single-text page draws (current_run)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import streamlit as st

import attnscope
from attnscope.app import cached, state
from attnscope.app.common import cut_for, policy
from attnscope.app.messages import literal, say
from attnscope.app.run_control import working
from attnscope.app.sidebar import current_spec, keep_changed
from attnscope.packaged import needs_preparation, prepare_packaged_model
from attnscope.tokens import Cut, Tokens

Model, ModelLoadError, ModelSpec = attnscope.Model, attnscope.ModelLoadError, attnscope.ModelSpec


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
    capture: object  # attnscope.capture.Capture: every layer's q/k/v
    kind: str  # "decoder" or "encoder"


def load(spec: ModelSpec) -> Model | None:
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
                       f"{loaded.memory_in_use()}")
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
                 on_change=keep_changed,
                 format_func={"start": f"the first {len(tokens)} tokens", "end": f"the last {len(tokens)} tokens"}.get,
                 help="Which part of a text that is too long is analysed. The end of a text is run without the "
                      "model's start-of-text token.")
    return CurrentRun(key=key, tokens=tokens, capture=capture, kind=loaded.kind)
