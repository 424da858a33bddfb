"""Permalinks: the view's settings live in the URL (st.query_params), so a copied link reopens the same view.

Each run writes the settings that differ from their defaults into the URL. When a session opens with parameters,
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

from attnscope.app import common, state
from attnscope.analyses.collapse import VECTORS
from attnscope.hosting import HUB_ID, REVISION, TOKEN_CEILING
from attnscope.models import PACKAGED_MODELS
from attnscope.prompts import pasted

TEXT_IN_URL = 1000  # characters
SHOWN_CHARS = 40  # of a refused value, quoted in the warning
RESTORED = "permalink_restored"
MESSAGES = "permalink_messages"
DIGEST = re.compile(r"[0-9a-f]{16}")  # use with fullmatch


def _choice(options):
    def check(value: str):
        if value not in options:
            raise ValueError(f"must be one of {', '.join(map(str, options))}")
        return value
    return check


def _int(low: int, high: int):
    def check(value: str) -> int:
        if not re.fullmatch(r"-?[0-9]{1,9}", value.strip()) or not low <= int(value) <= high:
            raise ValueError(f"must be a whole number between {low} and {high}")
        return int(value)
    return check


def _number(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError("must be a number") from None
    if number != number:  # NaN
        raise ValueError("must be a number")
    return number


def _float_in(options):
    def check(value: str) -> float:
        number = _number(value)
        match = [o for o in options if abs(o - number) <= 1e-12 * max(abs(o), 1)]
        if not match:
            raise ValueError(f"must be one of {', '.join(f'{o:g}' for o in options)}")
        return match[0]
    return check


def _positive_float(value: str) -> float:
    number = _number(value)
    if not 0 < number <= 100:
        raise ValueError("must be in (0, 100]")
    return number


def _matching(pattern: re.Pattern, what: str):
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"must be {what}")
        return value
    return check


# URL name -> (session_state key, parser that raises ValueError on a bad value)
PARAMS = {
    "model": (state.MODEL_CHOICE, _choice([*PACKAGED_MODELS, state.CUSTOM_MODEL])),
    "hub": (state.CUSTOM_NAME, _matching(HUB_ID, "a hub id such as org/name")),
    "revision": (state.CUSTOM_REVISION, _matching(REVISION, "a branch, tag or commit")),
    "tokens": (state.MAX_TOKENS, _int(8, TOKEN_CEILING)),
    "keep": (state.KEEP, _choice(["start", "end"])),
    "layer": (state.LAYER, _int(0, 1000)),
    "head": (state.HEAD, _int(0, 1000)),
    "view": (state.VIEW, _choice(state.VIEWS)),
    "query": (state.QUERY, _int(0, 10**6)),
    "sink": (state.HIDE_SINK, lambda v: {"1": True, "0": False}[v]),
    "order": (state.TAYLOR_MAX_ORDER, _int(1, 20)),
    "clamp": (state.TAYLOR_CLAMP_MODE, _choice(state.CLAMP_MODES)),
    "c": (state.TAYLOR_CLAMP_VALUE, _positive_float),
    "tolerance": (state.TAYLOR_TOLERANCE, _float_in(state.TOLERANCES)),
    "t_layer": (state.TAYLOR_LAYER, _int(0, 1000)),
    "t_head": (state.TAYLOR_HEAD, _int(0, 1000)),
    "t_order": (state.TAYLOR_ORDER, _int(0, 20)),
    "source": (state.COLLAPSE_SOURCE, _choice(state.SOURCES)),
    "L": (state.COLLAPSE_MAX_LENGTH, _int(32, TOKEN_CEILING)),
    "windows": (state.COLLAPSE_WINDOWS, _int(1, 8)),
    "rows": (state.COLLAPSE_ROWS, _int(1, 64)),
    "vectors": (state.COLLAPSE_VECTORS, _choice(VECTORS)),
    "fixed_L": (state.COLLAPSE_FIXED_LENGTH, _int(32, TOKEN_CEILING)),
}
HOSTED_IGNORES = ("hub", "revision")  # the allowlist decides the hub model and its revision


def _quoted(name: str, value: str) -> str:
    return f"'{common.literal(name, SHOWN_CHARS)}={common.literal(value, SHOWN_CHARS)}'"


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
            messages.append(f"The link's {_quoted(name, params[name])} was ignored: {common.literal(error, 120)}.")
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
            values[name] = ("1" if value else "0") if isinstance(value, bool) else str(value)
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
    is already quoted with common.literal."""
    for message in st.session_state.pop(MESSAGES, []):
        st.warning(message)
