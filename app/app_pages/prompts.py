"""Prompts: upload or paste texts into this session's library and choose the one every page analyses."""

import pandas as pd
import streamlit as st

from attnscope import prompts
from attnscope.app import common, sidebar, state
from attnscope.app.messages import literal, say

st.title("Prompts")
st.caption("Upload .txt or .md files (one prompt each), .jsonl (one {\"text\": ...} object per line, optional "
           "\"name\"), .json (one array of such objects), .csv or .parquet (a `text` column, optional `name`), or "
           "paste a text. The library lasts for this browser session; the prompt you use drives every page, and the "
           "Batch page runs a study over all of them.")


def _add(found: list[prompts.Prompt]) -> tuple[int, int]:
    """Add prompts not already in the library (same text), within the library's limits on prompts and on text;
    return (added, left out for want of room)."""
    limits = common.policy()
    library = list(st.session_state[state.LIBRARY])
    known = {p.digest for p in library}
    size = sum(len(p.text.encode()) for p in library)
    added = full = 0
    for prompt in found:
        if prompt.digest in known:
            continue
        grown = size + len(prompt.text.encode())
        if len(library) >= limits.max_prompts or grown > limits.max_library_mb * 10**6:
            full += 1
            continue
        known.add(prompt.digest)
        library.append(prompt)
        size, added = grown, added + 1
    st.session_state[state.LIBRARY] = library
    return added, full


def _full_sentence(left_out: int) -> str:
    limits = common.policy()
    return (f"The library is full ({limits.max_prompts} prompts or {limits.max_library_mb} MB of text, this "
            f"deployment's limits): {left_out} prompt(s) were not added. Remove some prompts first.")


def _forget(upload) -> None:
    """Drop an upload's bytes from the server once its prompts are taken (Streamlit keeps them for the session)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    context = get_script_run_ctx()
    remove = getattr(getattr(context, "uploaded_file_mgr", None), "remove_file", None)
    if remove is not None:
        remove(session_id=context.session_id, file_id=upload.file_id)


def _uploader_key() -> str:
    return f"{state.UPLOADER}_{st.session_state[state.UPLOADER_GENERATION]}"


def _take_uploads() -> None:
    """Uploader callback: parse each file once (at most the per-upload limit), keep what is good, say what is not;
    then a fresh uploader replaces this one and the files' bytes are dropped."""
    limits = common.policy()
    uploads = list(st.session_state[_uploader_key()] or [])
    messages = []
    left_out = prompts.files_left_out([u.name for u in uploads], limits.max_files)
    if left_out:
        messages.append(("warning", left_out))
    for upload in uploads[:limits.max_files]:
        room = limits.max_prompts - len(st.session_state[state.LIBRARY])
        parsed = prompts.parse_upload(upload.name, upload.getvalue(), max_bytes=limits.max_upload_bytes,
                                      max_prompts=max(room, 0), budget=limits.file_budget)
        for problem in parsed.problems:
            messages.append(("error" if parsed.refused else "warning", problem))
        if parsed.prompts:
            added, full = _add(parsed.prompts)
            known = len(parsed.prompts) - added - full
            messages.append(("success", f"'{prompts.file_label(upload.name)}': {added} prompt(s) added"
                             + (f", {known} already in the library." if known else ".")))
            if full:
                messages.append(("error", _full_sentence(full)))
    for upload in uploads:
        _forget(upload)
    st.session_state[state.UPLOADER_GENERATION] += 1
    st.session_state[state.UPLOAD_MESSAGES] = messages


def _take_paste() -> None:
    text = st.session_state[state.PASTE_TEXT]
    if not text.strip():
        st.session_state[state.UPLOAD_MESSAGES] = [("error", "The pasted text is empty: nothing was added.")]
        return
    added, full = _add([prompts.pasted(text, st.session_state[state.PASTE_NAME])])
    if full:
        st.session_state[state.UPLOAD_MESSAGES] = [("error", _full_sentence(full) + " The pasted text is still in the "
                                                                                  "box.")]
        return
    st.session_state[state.UPLOAD_MESSAGES] = [("success", "Pasted text added." if added else
                                                "That text is already in the library.")]
    st.session_state[state.PASTE_TEXT] = ""
    st.session_state[state.PASTE_NAME] = ""


limits = common.policy()
left, right = st.columns(2)
with left:
    st.file_uploader("Upload prompt files", type=[suffix.lstrip(".") for suffix in prompts.FORMATS],
                     accept_multiple_files=True, key=_uploader_key(), on_change=_take_uploads,
                     max_upload_size=limits.max_upload_mb,
                     help=f"UTF-8 text, at most {limits.max_upload_mb} MB per file and {limits.max_files} files at a "
                          f"time; the library holds {limits.max_prompts} prompts and {limits.max_library_mb} MB.")
with right:
    st.text_area("Paste a text", key=state.PASTE_TEXT, persist_state=state.PERSIST, height=120,
                 max_chars=limits.max_chars)
    st.text_input("Name (optional)", key=state.PASTE_NAME, persist_state=state.PERSIST,
                  max_chars=prompts.MAX_NAME_CHARS)
    st.button("Add to the library", on_click=_take_paste)

for kind, message in st.session_state[state.UPLOAD_MESSAGES]:
    say(kind, message)

library = st.session_state[state.LIBRARY]
st.subheader(f"Library ({len(library)})")
if not library:
    st.info("The library is empty: upload a file or paste a text above.")
    st.stop()
st.dataframe(pd.DataFrame([{"#": i, "name": p.name, "source": p.source, "characters": len(p.text),
                            "in use": p.text == st.session_state[state.TEXT]} for i, p in enumerate(library)]),
             hide_index=True, width="stretch")
choice = st.selectbox("Prompt", range(len(library)), format_func=lambda i: f"{i}: {library[i].name}",
                      key="library_choice", persist_state=state.PERSIST)
chosen = library[choice]
actions = st.columns([1, 1, 4])
actions[0].button("Use this prompt", type="primary", on_click=sidebar.use_prompt, args=(choice,),
                  help="Every page analyses it; the sidebar's text box shows it.")


def _remove(index: int) -> None:
    library = list(st.session_state[state.LIBRARY])
    library.pop(index)
    st.session_state[state.LIBRARY] = library
    st.session_state[state.LIBRARY_PICK] = None


actions[1].button("Remove", on_click=_remove, args=(choice,))
st.caption(f"{literal(chosen.source)} · {len(chosen.text):,} characters · content hash {chosen.digest}")
st.text(chosen.text[:4000] + ("\n…" if len(chosen.text) > 4000 else ""))  # st.text never renders markup
