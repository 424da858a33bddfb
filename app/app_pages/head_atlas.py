"""Head atlas: every head's fingerprint over a corpus. Open an atlas or run a small one, then its maps, table,
embedding (click a head to see its map on the sample document) and the difference with a second atlas.

Whatever a visitor's file makes core refuse is one sentence, naming the file as it was uploaded (never the temporary
folder it was written to), and what the session already shows stays."""

import hashlib
import importlib.util
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import streamlit as st

import attnscope
from attnscope import prompts, reader
from attnscope.app import cached, common, output, run_control, runs, sidebar, state
from attnscope.app.messages import literal, say
from attnscope.cache import ResultCache
from attnscope.studies import atlas as study

EMBEDDINGS = study.EMBEDDINGS
ModelSpec = attnscope.ModelSpec

CORPUS_TYPES = [suffix.lstrip(".") for suffix in reader.FORMATS]
TABLE_SUFFIXES = tuple(suffix for suffix, kind in reader.FORMATS.items() if kind != "text")  # one file, many documents
KEPT_RUNS = 32  # atlas runs of the app whose shards stay on disk to resume from
NAME_CHARS = 100  # characters of an uploaded corpus file's name kept for the temporary file core reads
NAMES_SHOWN = 3  # uploaded file names a message about several of them lists
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")  # what a file name in a temporary folder must not hold


def _file_name(name: str) -> str:
    """An uploaded corpus file's name as the name of the temporary file core reads, so that core's sentences (which
    name a file by its name, never its folder) name the file the visitor gave: separators and control characters become
    "_", the name is cut to NAME_CHARS keeping its suffix, and a name that is no file name becomes "upload"."""
    suffix = Path(name).suffix.lower() if reader.FORMATS.get(Path(name).suffix.lower()) else ""
    stem = _UNSAFE.sub("_", name[:len(name) - len(suffix)])[:NAME_CHARS].strip()
    return (stem if stem.strip(".") else "upload") + suffix


def _uploaded(uploads) -> str:
    """The corpus as a sentence names it: "'notes.txt'", or "of 3 uploaded files ('a.txt', 'b.txt', 'c.txt')"."""
    names = [f"'{reader.file_label(upload.name)}'" for upload in uploads]
    if len(names) == 1:
        return names[0]
    more = ", …" if len(names) > NAMES_SHOWN else ""
    return f"of {len(names)} uploaded files ({', '.join(names[:NAMES_SHOWN])}{more})"


def _open(upload, side: str, limits) -> None:
    """Open an uploaded atlas file as side A or B, read under this deployment's budget for a visitor's file."""
    if upload is None or st.session_state[state.ATLAS_OPENED][side] == upload.file_id:
        return
    st.session_state[state.ATLAS_OPENED][side] = upload.file_id
    _use(side, reader.file_label(upload.name),
         lambda: study.read_atlas(upload.name, upload.getvalue(), budget=limits.file_budget))


def _use(side: str, name: str, read: Callable[[], object]) -> None:
    """Show the atlas `read()` opens (a file named `name`) as side A or B, only if the page can lay it out (_lay_out):
    a file that does not open, or opens but cannot be shown, is one sentence, and what the session shows stays."""
    try:
        result = read()
        _lay_out(result)
    except (ValueError, OSError) as error:
        say("error", str(error))
        return
    except Exception as error:  # the file is the only input here: whatever else it makes core raise, it is no atlas
        logging.getLogger("attnscope").exception("Opening the atlas '%s' failed", name)
        say("error", f"'{name}' cannot be opened as a head atlas ({type(error).__name__}); give the atlas.parquet "
                     "(or .json) that attnscope wrote.")
        return
    st.session_state[state.ATLAS if side == "a" else state.ATLAS_B] = result
    if side == "a":
        st.session_state[state.ATLAS_HEAD] = None


def _lay_out(result) -> None:
    """Compute once what the page draws from an atlas (its title, findings, table and first field's figures): a file
    that opens but cannot be shown raises here, where it is refused, instead of on every later rerun."""
    literal(f"{result.meta['model']}: {result.meta['documents']} documents")
    result.findings()
    result.to_frame()
    result.figures(result.fields[0])


def _corpus(uploads, folder: Path) -> Path:
    """The uploaded corpus as a path read_corpus takes: one table file as it is, text files as a folder."""
    if len(uploads) == 1 and Path(uploads[0].name).suffix.lower() in TABLE_SUFFIXES:
        path = folder / _file_name(uploads[0].name)
        path.write_bytes(uploads[0].getvalue())
        return path
    (folder / "corpus").mkdir()
    for upload in uploads:
        (folder / "corpus" / _file_name(upload.name)).write_bytes(upload.getvalue())
    return folder / "corpus"


def _run(corpus_uploads, limits) -> None:
    """Run a small atlas of the uploaded corpus (or, locally, the corpus path typed) with the sidebar's model. Core
    refuses a corpus with no usable document before any forward pass and before the shards' folder is made; its
    sentence names the corpus as it was uploaded."""
    spec = sidebar.current_spec()
    loaded = runs.load(spec) if spec is not None else None
    if loaded is None:
        return
    documents, tokens = int(st.session_state[state.ATLAS_DOCUMENTS]), int(st.session_state[state.ATLAS_TOKENS])
    settings = {"atlas_tokens": tokens, "limit": documents, "shard_size": 4,
                "text_column": st.session_state[state.ATLAS_TEXT_COLUMN].strip() or "text"}
    deadline = time.monotonic() + limits.atlas_seconds
    handle = cached.get_model(spec)  # before the model's lock: no cached function runs under it
    source = ([(u.name, hashlib.sha256(u.getvalue()).hexdigest()) for u in corpus_uploads] if corpus_uploads
              else _on_disk(st.session_state[state.ATLAS_CORPUS]))
    with tempfile.TemporaryDirectory() as folder:
        corpus = _corpus(corpus_uploads, Path(folder)) if corpus_uploads else st.session_state[state.ATLAS_CORPUS]
        named = _uploaded(corpus_uploads) if corpus_uploads else corpus
        shards = _shards(repr((handle.fingerprint, source, tuple(sorted(settings.items()))))) or Path(folder) / "atlas"
        run_control.resume(("atlas", spec))  # the button asks for a run, even after a Stop
        try:
            with run_control.working("Fingerprinting the corpus", ("atlas", spec), models=(spec,)) as progress, \
                    cached.holding_model(spec):
                result = attnscope.run("atlas", handle, corpus, shards, **settings, deadline=deadline,
                                       budget=limits.file_budget, progress=progress)
        except (ValueError, OSError) as error:
            say("error", str(error).replace(str(corpus), named))
            return
    if corpus_uploads:  # not the temporary folder they were written to
        result.meta["corpus"] = named
    if time.monotonic() > deadline:
        st.info(f"Stopped at the time limit ({limits.atlas_seconds} s) after {result.meta['documents']} documents.")
    st.session_state[state.ATLAS], st.session_state[state.ATLAS_HEAD] = result, None


def _on_disk(corpus: str) -> tuple:
    """A corpus on this machine as a run's identity: its path and every file's name, size and modification time, so
    a corpus edited since an earlier run starts afresh instead of resuming from the old shards."""
    path = Path(corpus.strip()).expanduser()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    return (str(path), *((str(p.relative_to(path) if path.is_dir() else p.name), p.stat().st_size, p.stat().st_mtime_ns)
                         for p in files))


def _shards(run: str) -> Path | None:
    """The folder an atlas run in the app writes its shards to, one per (model, corpus, settings), beside the result
    cache: a run that was stopped, timed out or interrupted resumes from the documents it finished
    (attnscope.studies.atlas.run). The folder is named here and made by the run, once the corpus has passed core's
    check, so a refused corpus leaves no folder. Only the KEPT_RUNS most recently used folders are kept (each holds a
    few kB per document). None when the result cache is off (ATTNSCOPE_RESULT_CACHE_MB=0): the run then starts
    afresh each time."""
    cache = ResultCache.default()
    if cache is None:
        return None
    root = cache.folder.parent / "app-atlas"
    folder = root / hashlib.sha256(run.encode()).hexdigest()[:24]
    if folder.is_dir():
        folder.touch()  # used now: kept before older runs
    if root.is_dir():
        for old in sorted(root.iterdir(), key=_used, reverse=True)[KEPT_RUNS:]:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def _used(folder: Path) -> float:
    """When an atlas folder was last used; 0 for one another session has just removed."""
    try:
        return folder.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _finding(item) -> None:
    """A finding whose measured sentence may name what an uploaded file says (model, corpus): shown literally."""
    measured = literal(common.policy().public(item.measured))
    if item.paper is None:
        st.markdown(f"**{item.topic}.** {measured}")
        return
    left, right = st.columns(2)
    left.markdown(f"**{item.topic}.** Paper: {item.paper}")
    right.markdown(f"**Measured here:** {measured}")


def _clicked() -> None:
    points = st.session_state[state.ATLAS_CHART].selection.points
    if points:
        st.session_state[state.ATLAS_HEAD] = tuple(int(v) for v in points[0]["customdata"])


st.title("Head atlas")
st.caption("Every head's fingerprint over many documents: what a head does across a corpus, not on one text. Large "
           "corpora run from the command line (`attnscope atlas --engine ray` for a Ray cluster); open the "
           "atlas.parquet it writes here.")
limits = common.policy()
opened, run = st.tabs(["Open an atlas", "Run a small atlas"])
with opened:
    _open(st.file_uploader("Atlas file (atlas.parquet or .json written by attnscope)", type=["parquet", "json"],
                           max_upload_size=limits.max_upload_mb), "a", limits)
    if not limits.hosted:  # a hosted demo never reads a path a visitor types
        folder = st.text_input("Or an atlas folder or file on this machine", key=state.ATLAS_FOLDER,
                               persist_state=state.PERSIST)
        if st.button("Open") and folder.strip():
            _use("a", folder.strip(),
                 lambda: study.open_atlas(Path(folder.strip()).expanduser(), budget=limits.file_budget))
with run:
    st.caption("Runs the sidebar's model in this process on the start of each document (at most "
               f"{limits.max_atlas_documents} documents of {limits.max_atlas_tokens} tokens, "
               f"{limits.atlas_seconds} s here).")
    uploads = st.file_uploader(f"Corpus: text files, or one {'/'.join(TABLE_SUFFIXES)} with a text column",
                               type=CORPUS_TYPES, accept_multiple_files=True, max_upload_size=limits.max_upload_mb)
    left_out = prompts.files_left_out([u.name for u in uploads], limits.max_files)
    if left_out:
        st.warning(left_out)
    if not limits.hosted:
        st.text_input("Or a corpus on this machine (folder, file or datasets folder)", key=state.ATLAS_CORPUS,
                      persist_state=state.PERSIST)
    columns = st.columns(3)
    columns[0].number_input("Documents", 1, limits.max_atlas_documents, key=state.ATLAS_DOCUMENTS,
                            persist_state=state.PERSIST)
    columns[1].number_input("Tokens per document", 8, limits.max_atlas_tokens, key=state.ATLAS_TOKENS,
                            persist_state=state.PERSIST)
    columns[2].text_input("Text column", key=state.ATLAS_TEXT_COLUMN, persist_state=state.PERSIST, max_chars=100)
    if st.button("Run the atlas", type="primary"):
        if uploads or (not limits.hosted and st.session_state[state.ATLAS_CORPUS].strip()):
            _run(uploads[:limits.max_files], limits)
        else:
            st.error("Upload a corpus first" + ("." if limits.hosted else ", or type its path on this machine."))

result = st.session_state[state.ATLAS]
if result is None:
    st.info("Open an atlas or run a small one to see every head's fingerprint.")
    st.stop()
st.subheader(literal(f"{result.meta['model']}: {result.meta['documents']} documents"))
for item in result.findings():
    _finding(item)
if st.session_state[state.ATLAS_FIELD] not in result.fields:
    st.session_state[state.ATLAS_FIELD] = result.fields[0]
controls = st.columns(2)
field = controls[0].selectbox("Fingerprint", result.fields, key=state.ATLAS_FIELD, persist_state=state.PERSIST,
                              format_func=study.label)
embeddings = [e for e in EMBEDDINGS if e != "umap" or importlib.util.find_spec("umap")]
controls[1].radio("Embedding", embeddings, key=state.ATLAS_EMBEDDING, persist_state=state.PERSIST, horizontal=True,
                  format_func=str.upper)
figures = result.figures(field, embedding=st.session_state[state.ATLAS_EMBEDDING])
left, right = st.columns(2)
with left:
    output.chart(figures[f"map-{field}"], key="atlas_map", name=f"atlas-{field}")
with right:
    if "embedding" in figures:
        output.chart(figures["embedding"], key=state.ATLAS_CHART, name="atlas-embedding", on_select=_clicked,
                     selection_mode="points")
        st.caption("Click a head to see its map on the atlas's sample document.")
table = result.to_frame()
st.dataframe(table[["layer", "head", *result.fields, f"{field}_low", f"{field}_high", f"{field}_count"]],
             hide_index=True, width="stretch", height=320)

picked = st.session_state[state.ATLAS_HEAD]
if picked is not None and result.sample:
    layer, head = picked
    st.subheader(f"Layer {layer}, head {head} on the sample document")
    current = sidebar.current_spec()
    spec = current if current is not None and current.name == result.meta["model"] else ModelSpec(result.meta["model"])
    loaded = runs.load(spec)
    if loaded is not None:
        cut = common.cut_for(loaded, requested=result.meta["settings"]["max_tokens"])
        with run_control.working("Computing the map", ("atlas-map", spec, layer, head), models=(spec,)):
            maps = attnscope.maps(common.source(spec), result.sample, **common.cut_settings(cut), layer=layer,
                                  heads=[head], cell_limit=st.session_state[state.CELL_LIMIT])
        (name, figure), = maps.figures().items()
        output.chart(figure, key="atlas_head_map", name=f"atlas-{name}")

st.subheader("Compare with a second atlas (B − A)")
_open(st.file_uploader("Atlas B: a model of the same shape (base vs fine-tuned, two precisions)",
                       type=["parquet", "json"], max_upload_size=limits.max_upload_mb), "b", limits)
other = st.session_state[state.ATLAS_B]
if other is not None:
    try:
        difference = result.diff(other)
        findings, figure = difference.findings(), difference.figures(field)[f"diff-{field}"]
    except ValueError as error:
        say("error", str(error))
    else:
        for item in findings:
            _finding(item)
        output.chart(figure, key="atlas_diff", name=f"atlas-diff-{field}")
with tempfile.TemporaryDirectory() as folder:
    saved = result.save(Path(folder) / "atlas.parquet").read_bytes()
st.download_button("Atlas (atlas.parquet, reopens here and in attnscope.open)", saved, file_name="atlas.parquet",
                   on_click="ignore")
output.report_button("Head atlas", {"model": result.meta["model"], "documents": result.meta["documents"],
                                    "fingerprint": field}, findings=result.findings())
