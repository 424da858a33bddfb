"""attnscope entry point: shared sidebar, then the page the user picked."""

from pathlib import Path

import streamlit as st

from attnscope import cancel
from attnscope.app import common, output, permalink, run_control, sidebar, state

st.set_page_config(page_title="attnscope", page_icon="🔭", layout="wide")
# An unusable ATTNSCOPE_* value, or a hosted server that stores larger uploads than it accepts, stops here with the
# sentence that says what to change.
common.check_deployment(common.policy())
state.init_state()
permalink.restore()
output.start_report()
PAGES = Path(__file__).resolve().parent / "app_pages"
pages = [
    st.Page(PAGES / "attention_maps.py", title="Attention maps", icon="🗺️", default=True),
    st.Page(PAGES / "softmax_vs_taylor.py", title="Softmax vs Taylor", icon=":material/functions:"),
    st.Page(PAGES / "context_collapse.py", title="Context collapse", icon=":material/compress:"),
    st.Page(PAGES / "prompts.py", title="Prompts", icon=":material/library_books:"),
    st.Page(PAGES / "batch.py", title="Batch", icon=":material/stacked_line_chart:"),
    st.Page(PAGES / "compare.py", title="Compare", icon=":material/compare:"),
    st.Page(PAGES / "generation.py", title="Generation", icon=":material/edit_note:"),
    st.Page(PAGES / "why_here.py", title="Why here", icon=":material/account_tree:"),
    st.Page(PAGES / "head_atlas.py", title="Head atlas", icon=":material/hub:"),
]
navigation = st.navigation(pages)
sidebar.sidebar()
permalink.publish()
permalink.show_messages()
with cancel.checking(run_control.check_stop):  # every forward pass and study unit stops when the user asks
    navigation.run()
