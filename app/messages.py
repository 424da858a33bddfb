"""Messages that may hold what a visitor chose (a URL parameter, a file or prompt name, a model id, an error naming any
of them), shown literally: as Markdown that cannot make a link, an image, emphasis, HTML or LaTeX."""

from __future__ import annotations

import re

import streamlit as st

from attnscope.app.common import policy

_ASCII_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
# What GitHub-flavoured Markdown turns into a link even when every mark is escaped (it finds them in the parsed
# text): http:// and https:// addresses, www. names and e-mail addresses. A zero-width space breaks each one.
_AUTOLINK = re.compile(r"(?i)(?<=http:)(?=//)|(?<=https:)(?=//)|(?<=www)(?=\.)|(?<=@)")


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
