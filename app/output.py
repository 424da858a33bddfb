"""What a page shows of its results: charts with their image and CSV downloads, findings beside the paper's claims,
and the HTML report of every figure a run drew."""

from __future__ import annotations

import streamlit as st

from attnscope.app import state
from attnscope.app.messages import literal
from attnscope.app.sidebar import current_spec
from attnscope.prompts import pasted
from attnscope.report import build_report, figure_table


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


def finding(item, *, literal_measured: bool = False) -> None:
    """One attnscope.studies.base.Finding: the paper's claim beside what was measured (core writes both sentences,
    which may hold Markdown links and math from attnscope itself, never from a visitor). literal_measured: the
    measured sentence quotes the visitor's text (its tokens) and is shown literally (messages.literal)."""
    measured = literal(item.measured) if literal_measured else item.measured
    if item.paper is None:
        st.markdown(f"**{item.topic}.** {measured}" if literal_measured else measured)
        return
    left, right = st.columns(2)
    left.markdown(f"**Paper:** {item.paper}")
    right.markdown(f"**Measured here:** {measured}")


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
