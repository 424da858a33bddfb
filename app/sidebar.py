"""The shared sidebar: the model, its placement and the text every page analyses, the callbacks that keep the text
box in step with the examples and the prompt library, and the model the sidebar chose (current_spec)."""

from __future__ import annotations

import importlib.util

import streamlit as st
import torch

import attnscope
from attnscope import settings as S
from attnscope.app import state
from attnscope.app.common import policy
from attnscope.prompts import pasted
from attnscope.tokens import cut_text

PACKAGED_MODELS, ModelSpec = attnscope.PACKAGED_MODELS, attnscope.ModelSpec
DTYPES, QUANTIZE = S.setting("dtype").domain.values, S.setting("quantize").domain.values
NAME_CHARS = 200  # longest hub id or folder typed in the sidebar
REVISION_CHARS = 100


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


def keep_changed() -> None:
    """A library prompt longer than the text box is cut again from the chosen side (on_change of the page's Analyse
    choice, runs.current_run)."""
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
    """The model the sidebar chose, with its placement (the deployment's own when hosted); None while no hub id or
    folder is typed."""
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
