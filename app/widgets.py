"""Widgets drawn from attnscope.settings: one call per setting, with the table's key, label, help and domain.

The widget stores the setting's stable value in st.session_state[setting.key] (choices show their labels through
format_func), so links, the CLI and the API read the same values the widgets write; it persists across pages
(app/state.py, PERSIST).
"""

from __future__ import annotations

import streamlit as st

from attnscope import settings as S
from attnscope.app import state


def widget(key: str, where=st, *, kind: str | None = None, options=None, **overrides):
    """Draw the widget of setting `key` in `where` (st, a column, st.sidebar) and return its value.

    kind: "selectbox" (default for choices), "radio", "segmented", "select_slider"; "number" (default for numbers),
    "slider" or "selectbox" for whole numbers. options: a subset of the domain's values to offer.
    """
    setting = S.setting(key)
    domain = setting.domain
    common = {"key": setting.key, "persist_state": state.PERSIST, "label": overrides.pop("label", setting.label),
              "help": overrides.pop("help", setting.help or None), **overrides}
    if isinstance(domain, S.Flag):
        return where.toggle(**common)
    if isinstance(domain, (S.Choice, S.NumberChoice)):
        values = list(domain.values if options is None else options)
        label = domain.label if isinstance(domain, S.Choice) else (lambda v: f"{v:g}")
        draw = {"selectbox": where.selectbox, "radio": where.radio, "segmented": where.segmented_control,
                "select_slider": where.select_slider}[kind or "selectbox"]
        if kind == "segmented":  # clicking the chosen segment would otherwise leave the setting with no value
            common.setdefault("required", True)
        return draw(options=values, format_func=label, **common)
    if options is not None or kind == "selectbox":
        return where.selectbox(options=list(options), **common)
    if isinstance(domain, S.Integer):
        bounds = {"min_value": common.pop("min_value", domain.low), "max_value": common.pop("max_value", domain.high),
                  "step": common.pop("step", domain.step)}
        if kind == "slider":
            return where.slider(**bounds, **common)
        return where.number_input(**bounds, **common)
    return where.number_input(min_value=common.pop("min_value", max(domain.low, 0.1)),
                              max_value=common.pop("max_value", domain.high), **common)
