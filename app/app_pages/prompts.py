"""Prompts: upload or paste texts into this session's library and choose the one every page analyses."""

import pandas as pd
import streamlit as st

from app import common, state
from core import prompts

st.title("Prompts")
st.caption("Upload .txt or .md files (one prompt each), .jsonl (one {\"text\": ...} object per line, optional "
           "\"name\") or .csv (a `text` column, optional `name`), or paste a text. The library lasts for this "
           "browser session; the prompt you use drives every page.")


def _add(found: list[prompts.Prompt]) -> int:
    """Add prompts not already in the library (same text); return how many were new."""
    library = st.session_state[state.LIBRARY]
    known = {p.digest for p in library}
    new = [p for p in found if p.digest not in known and not known.add(p.digest)]
    st.session_state[state.LIBRARY] = [*library, *new]
    return len(new)


def _take_uploads() -> None:
    """Uploader callback: parse each new file once, keep what is good, say what is not."""
    messages, processed = [], st.session_state[state.PROCESSED_UPLOADS]
    for upload in st.session_state[state.UPLOADER] or []:
        if upload.file_id in processed:
            continue
        processed.append(upload.file_id)
        parsed = prompts.parse_upload(upload.name, upload.getvalue(), max_bytes=common.policy().max_upload_bytes)
        for problem in parsed.problems:
            messages.append(("error" if parsed.refused else "warning", problem))
        if parsed.prompts:
            added = _add(parsed.prompts)
            messages.append(("success", f"'{upload.name}': {added} prompt(s) added"
                             + (f", {len(parsed.prompts) - added} already in the library." if added <
                                len(parsed.prompts) else ".")))
    st.session_state[state.UPLOAD_MESSAGES] = messages


def _take_paste() -> None:
    text = st.session_state[state.PASTE_TEXT]
    if not text.strip():
        st.session_state[state.UPLOAD_MESSAGES] = [("error", "The pasted text is empty: nothing was added.")]
        return
    added = _add([prompts.pasted(text, st.session_state[state.PASTE_NAME])])
    st.session_state[state.UPLOAD_MESSAGES] = [("success", "Pasted text added." if added else
                                                "That text is already in the library.")]
    st.session_state[state.PASTE_TEXT] = ""
    st.session_state[state.PASTE_NAME] = ""


left, right = st.columns(2)
with left:
    st.file_uploader("Upload prompt files", type=[suffix.lstrip(".") for suffix in prompts.FORMATS],
                     accept_multiple_files=True, key=state.UPLOADER, on_change=_take_uploads,
                     help=f"UTF-8 text, at most {common.policy().max_upload_bytes / 2**20:.0f} MB per file.")
with right:
    st.text_area("Paste a text", key=state.PASTE_TEXT, height=120)
    st.text_input("Name (optional)", key=state.PASTE_NAME)
    st.button("Add to the library", on_click=_take_paste)

for kind, message in st.session_state[state.UPLOAD_MESSAGES]:
    {"error": st.error, "warning": st.warning, "success": st.success}[kind](message)

library = st.session_state[state.LIBRARY]
st.subheader(f"Library ({len(library)})")
if not library:
    st.info("The library is empty: upload a file or paste a text above.")
    st.stop()
st.dataframe(pd.DataFrame([{"#": i, "name": p.name, "source": p.source, "characters": len(p.text),
                            "in use": p.text == st.session_state[state.TEXT]} for i, p in enumerate(library)]),
             hide_index=True, width="stretch")
choice = st.selectbox("Prompt", range(len(library)), format_func=lambda i: f"{i}: {library[i].name}",
                      key="library_choice")
chosen = library[choice]
actions = st.columns([1, 1, 4])
actions[0].button("Use this prompt", type="primary", on_click=common.use_prompt, args=(choice,),
                  help="Every page analyses it; the sidebar's text box shows it.")


def _remove(index: int) -> None:
    library = list(st.session_state[state.LIBRARY])
    library.pop(index)
    st.session_state[state.LIBRARY] = library
    st.session_state[state.LIBRARY_PICK] = None


actions[1].button("Remove", on_click=_remove, args=(choice,))
st.caption(f"{chosen.source} · {len(chosen.text)} characters · content hash {chosen.digest}")
st.text(chosen.text[:4000] + ("\n…" if len(chosen.text) > 4000 else ""))  # st.text never renders markup
