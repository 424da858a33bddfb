"""Permalinks: the view's settings live in the URL (st.query_params), so a copied link reopens the same view.

Each run writes the settings that differ from their defaults into the URL, as the stable values of attnscope.settings
(links written before that table carried display labels, which are still read). When a session opens with parameters,
they are read once into st.session_state, each checked; a value that cannot be used is dropped with a warning. Short
texts (up to TEXT_IN_URL characters) travel in the link; longer or uploaded ones only as their content hash, and the
page says when the recipient does not have that text. Remote code is never switched on by a link, and in hosted mode
neither the hub model nor its revision is taken from one (the deployment's allowlist decides both).

A link is something anybody can write, so every value is checked against its domain and length before use, and a
value that is refused is quoted literally (escaped, cut to SHOWN_CHARS) in the warning: no parameter can put a link,
an image or formatting into the page.
"""

from __future__ import annotations

import re

import streamlit as st

from attnscope import settings as S
from attnscope.app import common, state
from attnscope.app.messages import literal
from attnscope.hosting import HUB_ID, REVISION
from attnscope.packaged import PACKAGED_MODELS
from attnscope.prompts import pasted

TEXT_IN_URL = 1000  # characters
SHOWN_CHARS = 40  # of a refused value, quoted in the warning
RESTORED = "permalink_restored"
MESSAGES = "permalink_messages"
DIGEST = re.compile(r"[0-9a-f]{16}")  # use with fullmatch


def _matching(pattern: re.Pattern, what: str):
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"must be {what}")
        return value
    return check


def _model(value: str) -> str:
    if value in PACKAGED_MODELS or value == state.CUSTOM_MODEL:
        return value
    if value == state.CUSTOM_LABEL:  # links written before the settings table stored the label
        return state.CUSTOM_MODEL
    raise ValueError(f"must be one of {', '.join([*PACKAGED_MODELS, state.CUSTOM_MODEL])}")


# URL name -> (session_state key, parser that raises ValueError on a bad value): the model's three, then every
# setting of the table that links carry (attnscope.settings: same key, domain and stable values as the widgets).
PARAMS = {
    "model": (state.MODEL_CHOICE, _model),
    "hub": (state.CUSTOM_NAME, _matching(HUB_ID, "a hub id such as org/name")),
    "revision": (state.CUSTOM_REVISION, _matching(REVISION, "a branch, tag or commit")),
    **{setting.url: (setting.key, setting.parse) for setting in S.in_links()},
}
_FORMAT = {setting.key: setting.format for setting in S.in_links()}
HOSTED_IGNORES = ("hub", "revision")  # the allowlist decides the hub model and its revision


def _quoted(name: str, value: str) -> str:
    return f"'{literal(name, SHOWN_CHARS)}={literal(value, SHOWN_CHARS)}'"


def restore() -> None:
    """Once per session: read the URL's parameters into session_state. Messages are Markdown-safe sentences."""
    if st.session_state.get(RESTORED):
        return
    st.session_state[RESTORED] = True
    messages = []
    params = st.query_params
    hosted = common.policy().hosted
    for name, (key, parse) in PARAMS.items():
        if name not in params:
            continue
        if hosted and name in HOSTED_IGNORES:
            messages.append(f"The link's {_quoted(name, params[name])} was ignored: this hosted demo offers each "
                            "model at the revision it pins.")
            continue
        try:
            st.session_state[key] = parse(params[name])
        except (ValueError, KeyError) as error:
            messages.append(f"The link's {_quoted(name, params[name])} was ignored: {literal(error, 120)}.")
    if "text" in params:
        text = params["text"]
        if len(text) <= TEXT_IN_URL:
            st.session_state[state.TEXT] = text
        else:
            messages.append(f"The link's text was ignored: it has {len(text):,} characters and links carry at most "
                            f"{TEXT_IN_URL}.")
    elif "text_sha" in params:
        digest = params["text_sha"]
        known = [p for p in st.session_state.get(state.LIBRARY, []) if p.digest == digest]
        if not DIGEST.fullmatch(digest):
            messages.append(f"The link's {_quoted('text_sha', digest)} was ignored: must be 16 hexadecimal "
                            "characters.")
        elif known:
            st.session_state[state.TEXT] = known[0].text
        else:
            messages.append(f"This link refers to a text (content hash {digest}) that is not available here: it was "
                            "uploaded or too long to travel in a link. The default text is shown instead; upload "
                            "the same text on the Prompts page to see the shared view.")
    st.session_state[MESSAGES] = messages


def publish() -> None:
    """Write the current settings (those that differ from the defaults) into the URL."""
    values = {}
    defaults = {**state.DEFAULTS, state.MAX_TOKENS: min(state.DEFAULTS[state.MAX_TOKENS], common.policy().max_tokens)}
    for name, (key, _) in PARAMS.items():
        value = st.session_state.get(key)
        if value != defaults.get(key):
            values[name] = _FORMAT.get(key, str)(value)
    if st.session_state[state.MODEL_CHOICE] != state.CUSTOM_MODEL or common.policy().hosted:
        values.pop("hub", None)
        values.pop("revision", None)
    text = st.session_state[state.TEXT]
    if text != state.DEFAULTS[state.TEXT]:
        if len(text) <= TEXT_IN_URL:
            values["text"] = text
        else:
            values["text_sha"] = pasted(text).digest
    if dict(st.query_params) != values:
        st.query_params.from_dict(values)


def show_messages() -> None:
    """The link's problems, shown on the first page the link opens (until the next interaction). Every value in them
    is already quoted with messages.literal."""
    for message in st.session_state.pop(MESSAGES, []):
        st.warning(message)
