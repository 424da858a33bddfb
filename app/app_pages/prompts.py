"""Prompts: upload or paste texts into this session's library and choose the one every page analyses."""

import numpy as np
import pandas as pd
import streamlit as st

from attnscope.app import cached, common, state
from attnscope import prompts
from attnscope.analyses import batch, collapse, taylor
from attnscope.figures import collapse as collapse_figures
from attnscope.figures import maps as map_figures
from attnscope.figures import taylor as taylor_figures
from attnscope.kernels import DENOMINATORS

st.title("Prompts")
st.caption("Upload .txt or .md files (one prompt each), .jsonl (one {\"text\": ...} object per line, optional "
           "\"name\") or .csv (a `text` column, optional `name`), or paste a text. The library lasts for this "
           "browser session; the prompt you use drives every page.")


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
    if len(uploads) > limits.max_files:
        names = ", ".join(f"'{prompts.file_label(u.name, 40)}'" for u in uploads[limits.max_files:][:5])
        messages.append(("warning", f"Only {limits.max_files} files are taken from one upload; "
                                    f"{len(uploads) - limits.max_files} were left out ({names}"
                                    f"{', …' if len(uploads) - limits.max_files > 5 else ''}). Upload them "
                                    "separately."))
    for upload in uploads[:limits.max_files]:
        room = limits.max_prompts - len(st.session_state[state.LIBRARY])
        parsed = prompts.parse_upload(upload.name, upload.getvalue(), max_bytes=limits.max_upload_bytes,
                                      max_prompts=max(room, 0))
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
    st.text_area("Paste a text", key=state.PASTE_TEXT, height=120, max_chars=limits.max_chars)
    st.text_input("Name (optional)", key=state.PASTE_NAME, max_chars=prompts.MAX_NAME_CHARS)
    st.button("Add to the library", on_click=_take_paste)

for kind, message in st.session_state[state.UPLOAD_MESSAGES]:
    common.say(kind, message)

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
st.caption(f"{common.literal(chosen.source)} · {len(chosen.text):,} characters · content hash {chosen.digest}")
st.text(chosen.text[:4000] + ("\n…" if len(chosen.text) > 4000 else ""))  # st.text never renders markup

# Batch ----------------------------------------------------------------------------------------------------------------
st.subheader("Batch: every prompt in the library")
st.caption("Runs one page's statistics on each prompt separately and shows, per head or per point of the curve, the "
           "mean over prompts with its spread. Each prompt is cut like the sidebar text (Max tokens).")
spec = common.current_spec()
if spec is None:
    st.info("Choose a model in the sidebar first.")
    st.stop()
kind = st.radio("Statistic", [state.BATCH_HEADS, state.BATCH_TAYLOR, state.BATCH_COLLAPSE], key=state.BATCH_KIND)
batch_prompts = library[:limits.max_batch]
if len(library) > limits.max_batch:
    st.caption(f"A batch runs the first {limits.max_batch} prompts of the library, this deployment's limit.")
request = (spec, st.session_state[state.MAX_TOKENS], st.session_state[state.KEEP], kind,
           tuple(p.digest for p in batch_prompts))
if st.button(f"Run over the {len(batch_prompts)} prompt(s)", type="primary"):
    st.session_state[state.BATCH_REQUESTS] = [*st.session_state[state.BATCH_REQUESTS], request]
if request not in st.session_state[state.BATCH_REQUESTS]:
    st.stop()
loaded = common.load(spec)
if loaded is None:
    st.stop()
cut = common.cut_for(loaded)
progress = st.progress(0.0, "Running the prompts")
per_prompt, skipped = [], []
for index, prompt in enumerate(batch_prompts):
    progress.progress(index / len(batch_prompts),
                      f"Prompt {index + 1}/{len(batch_prompts)}: {common.literal(prompt.name, 60)}")
    tokens = cached.get_tokens(spec, prompt.text, cut)
    with common.model_turn(spec):
        capture = cached.get_capture(spec, prompt.text, cut)
        if kind == state.BATCH_HEADS:
            stats = [cached.layer_head_stats(spec, prompt.text, cut, layer) for layer in range(capture.n_layers)]
            per_prompt.append({name: np.stack([getattr(s, name).numpy() for s in stats])
                               for name in batch.HEAD_STATISTICS})
        elif kind == state.BATCH_TAYLOR:
            n = min(len(tokens), 512) if loaded.kind == "decoder" else len(tokens)
            layers = [cached.taylor_layer(spec, prompt.text, cut, layer, n, 10, None)
                      for layer in range(capture.n_layers)]
            sweep = taylor.ModelSweep.stack(layers)
            per_prompt.append({name: np.median(sweep.error[name].reshape(-1, 11), 0) for name in DENOMINATORS})
        else:
            if loaded.kind != "decoder" or len(tokens) < 32:
                skipped.append(prompt.name)
                continue
            settings = collapse.Settings(max_length=min(len(tokens), 512), windows=1, rows=8)
            lengths = collapse.length_grid(settings.max_length)
            units = [cached.collapse_unit(spec, prompt.text, settings, 0, length, False) for length in lengths]
            per_prompt.append({"lengths": lengths, "max_weight": np.array([u.max_weight.mean() for u in units]),
                               "entropy": np.array([u.entropy.mean() for u in units]),
                               "sink_mass": np.array([u.sink_mass.mean() for u in units])})
progress.empty()
if skipped:
    common.say("warning", f"Left out (context collapse needs a decoder and at least 32 tokens): "
                          f"{', '.join(skipped)}.")
if not per_prompt:
    st.stop()
count = len(per_prompt)
if kind == state.BATCH_HEADS:
    shown = st.selectbox("Head statistic", batch.HEAD_STATISTICS, key=state.BATCH_STAT)
    result = batch.spread([p[shown] for p in per_prompt])
    left, right = st.columns(2)
    with left:
        common.chart(map_figures.stat_heatmap(result.mean, title=f"{shown}: mean over {count} prompt(s)", label=shown),
                     key="batch_mean", name=f"batch-{shown}-mean")
    with right:
        common.chart(map_figures.stat_heatmap(result.std, title=f"{shown}: standard deviation over prompts",
                                              label="std"), key="batch_std", name=f"batch-{shown}-std")
elif kind == state.BATCH_TAYLOR:
    curves = []
    for name in DENOMINATORS:
        result = batch.spread([p[name] for p in per_prompt])
        curves.append(taylor_figures.Curve(f"{name}: mean over prompts", result.mean, low=result.low,
                                           high=result.high, colour=taylor_figures.DENOMINATOR_COLOURS[name]))
    common.chart(taylor_figures.error_vs_order(curves, title=f"Median error over heads, {count} prompt(s) "
                                                             "(band: smallest to largest prompt)"),
                 key="batch_taylor", name="batch-error-vs-order")
else:
    lengths, maxima = batch.common_prefix([(p["lengths"], p["max_weight"]) for p in per_prompt])
    _, entropies = batch.common_prefix([(p["lengths"], p["entropy"]) for p in per_prompt])
    _, sinks = batch.common_prefix([(p["lengths"], p["sink_mass"]) for p in per_prompt])
    common.chart(collapse_figures.vanishing(lengths, np.stack(maxima, 1), np.stack(entropies, 1),
                                            np.stack(sinks, 1), None, None,
                                            title=f"Mean over heads, {count} prompt(s) (median and quartiles over "
                                                  "prompts)"), key="batch_collapse", name="batch-vanishing")
common.report_button("Prompts batch", {"statistic": kind, "prompts": count, "model": spec.name})
