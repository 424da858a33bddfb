"""Compiled CPU torch paths: one fused C++ loop per key tile where eager torch makes several passes.

On the CPU a tile's softmax bookkeeping (mask, row maximum, exp, the entropy sum) is memory-bound: eager torch reads
and writes the tile once per operation, Inductor (torch.compile's CPU backend) fuses them into one or two loops. The
compiled function is the same Python function the tests run eagerly, so there is no second implementation to trust.

A function whose tensor arguments are declared (`fused(fn, dims=...)`: every dimension named, each one dynamic) is
compiled ahead of time, once per machine: torch.export traces it with those dimensions symbolic and AOTInductor
compiles the graph into a shared library, kept as a package under the attnscope cache folder (compiled/ beside the
prepared models; the key is the function's source, its constant arguments, the dtypes, torch's version, the CPU's
instruction set and the thread count). One package serves every length, and a later process loads it in milliseconds
through torch's C++ package loader, importing neither Dynamo nor Inductor. torch.compile instead spends seconds in
every process on those imports and on tracing again, however warm Inductor's own disk cache: on SmolLM2 at 2,048
tokens a fresh process's first `stats` took 2.2x the forward, against 1.10x once warm
(benchmarks/bench_first_call.py). Building a package takes 10-40 s of C++ compilation; the first process on a
machine pays it. A function without declared dimensions goes through torch.compile(dynamic=True) in each process.

Policy, from the environment variable ATTNSCOPE_CPU_COMPILE (read at each call):
    auto  (default) compile when a C++ compiler is on PATH and a call is large enough to repay the first build
          (the callers' thresholds). A compilation that fails is logged once; the process then keeps to the eager
          torch path.
    on    always compile, whatever the size; a failure raises (the tests use this to check the compiled path).
    off   never compile.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import inspect
import json
import logging
import os
import platform
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import torch

MODES = ("auto", "on", "off")
COMPILERS = ("c++", "g++", "clang++")
CONSTANTS = (bool, int, float, str, type(None), torch.dtype)  # arguments outside dims: baked into a package
PACKAGE_FORMAT = 1  # part of every package's key: raise it when what a package holds or how it is called changes
log = logging.getLogger(__name__)
_failed = threading.Event()  # set when a compilation failed under "auto": the process stays eager
_AHEAD_OF_TIME: list[_AheadOfTime] = []  # every fused(fn, dims=...), for _unload


def mode() -> str:
    value = os.environ.get("ATTNSCOPE_CPU_COMPILE", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"ATTNSCOPE_CPU_COMPILE must be one of {MODES}, got {value!r}.")
    return value


@functools.cache
def has_compiler() -> bool:
    return any(shutil.which(name) for name in (os.environ.get("CXX"), *COMPILERS) if name)


def wanted(device: torch.device, work: int, *, least: int) -> bool:
    """Whether a call on `device` doing `work` (e.g. scores computed) should take the compiled path."""
    if device.type != "cpu":
        return False
    current = mode()
    if current == "on":
        return True
    return current == "auto" and work >= least and not _failed.is_set() and has_compiler()


def cache_folder() -> Path:
    """Where compiled packages are kept: compiled/ in the attnscope cache folder ($ATTNSCOPE_CACHE, else the user's
    cache dir), the folder attnscope.models.cache_dir names (worked out here: kernels import nothing from core)."""
    override = os.environ.get("ATTNSCOPE_CACHE")
    if override:
        return Path(override).expanduser() / "compiled"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "attnscope" / "compiled"


@functools.cache
def cpu_identity() -> str:
    """The machine a package is built for: Inductor compiles for the instruction set it finds (AVX-512, AVX2, NEON),
    and a library built for another CPU may not run here (a cache folder in a home shared between machines)."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith(("flags", "Features"))), "")
    except OSError:  # not Linux
        pass
    return f"{platform.machine()} {platform.processor()} {flags.strip()}"


def fused(fn: Callable, *, dims: dict[str, str] | None = None) -> Callable:
    """`fn` compiled on first call; under "auto" a failed compilation falls back to running `fn` eagerly, which gives
    the same results more slowly.

    Args:
        fn: a function of tensors (and constants) made of torch operations, without data-dependent control flow.
        dims: argument name -> the names of its dimensions, e.g. {"scores": "N R C", "ref": "N R"}: a dimension
            named twice has the same size in both places, and every one is dynamic. With dims, `fn` is compiled ahead
            of time into a package kept on disk (module docstring); its other arguments are constants of the package,
            and a call must pass the named arguments as contiguous CPU tensors whose sizes agree with the names
            (ValueError otherwise). Without, torch.compile(fn, dynamic=True) in each process.

    Returns:
        A function with `fn`'s signature and results.
    """
    if dims is None:
        return _jit(fn)
    return _AheadOfTime(fn, dims).wrapper()


def _jit(fn: Callable) -> Callable:
    compiled: list[Callable] = []  # made on the first call: torch.compile imports Dynamo, which takes a while

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if _failed.is_set():
            return fn(*args, **kwargs)
        try:
            if not compiled:
                compiled.append(torch.compile(fn, dynamic=True))
            return compiled[0](*args, **kwargs)
        except Exception as error:  # Inductor raises many kinds (no compiler, a C++ error, a missing header)
            return _fall_back(f"torch.compile of {fn.__name__}", error, fn, args, kwargs)

    return call


def _fall_back(what: str, error: Exception, fn: Callable, args, kwargs):
    if mode() == "on":
        raise error
    log.warning("%s failed (%s: %s); the CPU torch path stays eager from now on.",
                what, type(error).__name__, str(error).splitlines()[0] if str(error) else "")
    _failed.set()
    return fn(*args, **kwargs)


@atexit.register
def _unload() -> None:
    """Drop every loaded package before the interpreter tears down: the C++ loader unpacks each into a temporary folder
    that only its destructor removes, and objects still alive at shutdown are not always destroyed."""
    for function in _AHEAD_OF_TIME:
        function.packages.clear()


class _Package:
    """A loaded package: AOTInductor's C++ runner, and whether `fn` returns a tuple or one tensor."""

    def __init__(self, path: Path):
        # torch._inductor.aoti_load_package wraps this loader, but importing torch._inductor takes seconds
        self.runner = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
        out_spec = json.loads(self.runner.get_call_spec()[1])[1]
        self.returns_tuple = out_spec["type"] == "builtins.tuple"

    def __call__(self, tensors: list[torch.Tensor]):
        outputs = self.runner.run(tensors)
        return tuple(outputs) if self.returns_tuple else outputs[0]


class _Bound(torch.nn.Module):
    """`fn` with its constants bound and its tensors positional: what torch.export traces."""

    def __init__(self, fn: Callable, names: list[str], constants: dict):
        super().__init__()
        self.fn, self.names, self.constants = fn, names, constants

    def forward(self, *tensors):
        return self.fn(**self.constants, **dict(zip(self.names, tensors)))


class _AheadOfTime:
    """fused(fn, dims=...): one package per dtypes, constants and thread count, loaded or built on first use."""

    def __init__(self, fn: Callable, dims: dict[str, str]):
        self.fn = fn
        self.signature = inspect.signature(fn)
        unknown = set(dims) - set(self.signature.parameters)
        if unknown:
            raise ValueError(f"dims names {sorted(unknown)}, which are not arguments of {fn.__name__}.")
        self.names = [name for name in self.signature.parameters if name in dims]  # tensors, in the signature's order
        self.axes = [dims[name].split() for name in self.names]
        self.source = inspect.getsource(fn)
        self.packages: dict[tuple, _Package] = {}
        self.lock = threading.Lock()  # one build at a time per function in a process
        _AHEAD_OF_TIME.append(self)

    def wrapper(self) -> Callable:
        @functools.wraps(self.fn)
        def call(*args, **kwargs):
            if _failed.is_set():
                return self.fn(*args, **kwargs)
            bound = self.signature.bind(*args, **kwargs)
            bound.apply_defaults()
            tensors = [bound.arguments[name] for name in self.names]
            sizes = self.sizes(tensors)
            if 0 in sizes.values():  # nothing to compute; packages are built for sizes from 1 on
                return self.fn(*args, **kwargs)
            constants = {name: value for name, value in bound.arguments.items() if name not in self.names}
            bad = sorted(name for name, value in constants.items() if not isinstance(value, CONSTANTS))
            if bad:
                raise ValueError(f"{self.fn.__name__}: {bad} would be constants of the compiled package, which "
                                 "must be numbers, strings or dtypes; name tensor arguments in dims.")
            settings = (tuple(t.dtype for t in tensors), tuple(constants.items()), torch.get_num_threads())
            package = self.packages.get(settings)
            if package is None:
                try:
                    package = self.package(settings, tensors, sizes, constants)
                except Exception as error:  # export, Inductor and the C++ compiler raise many kinds
                    return _fall_back(f"Compiling {self.fn.__name__} ahead of time", error, self.fn, args, kwargs)
            return package(tensors)

        return call

    def sizes(self, tensors: list[torch.Tensor]) -> dict[str, int]:
        """Each named dimension's size, or ValueError where a tensor does not fit the declared dimensions."""
        sizes: dict[str, int] = {}
        for name, tensor, axes in zip(self.names, tensors, self.axes):
            fits = (isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu" and tensor.dim() == len(axes)
                    and tensor.is_contiguous()
                    and all(sizes.setdefault(axis, size) == size for axis, size in zip(axes, tensor.shape)))
            if not fits:
                got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ValueError(f"{self.fn.__name__}: {name} must be a contiguous CPU tensor of sizes "
                                 f"({', '.join(axes)}) agreeing with the other arguments' {sizes}; got {got}.")
        return sizes

    def path(self, settings: tuple) -> Path:
        """The package for calls with these settings (dtypes, constants, threads) on this machine and torch."""
        key = json.dumps([PACKAGE_FORMAT, self.fn.__module__, self.fn.__qualname__, self.source, self.axes,
                          repr(settings), torch.__version__, cpu_identity()])
        return cache_folder() / f"{self.fn.__name__}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt2"

    def package(self, settings: tuple, tensors: list[torch.Tensor], sizes: dict[str, int],
                constants: dict) -> _Package:
        with self.lock:
            if settings not in self.packages:
                path = self.path(settings)
                try:
                    package = _Package(path) if path.is_file() else None
                except Exception as error:  # a package left by a crash or an older torch: build it again
                    log.info("Rebuilding %s, which does not load (%s).", path, error)
                    package = None
                self.packages[settings] = package or _Package(self.build(path, tensors, sizes, constants))
            return self.packages[settings]

    def build(self, path: Path, tensors: list[torch.Tensor], sizes: dict[str, int], constants: dict) -> Path:
        """Export `fn` with every named dimension dynamic and compile it into a package at `path` (written under
        another name, then renamed: a process never loads a half-written package); returns where it went."""
        import torch._inductor  # noqa: F401  (the package builder; seconds to import, so only here)

        log.info("Compiling %s into %s (once per machine; a C++ build of 10-40 s).", self.fn.__name__, path)
        # Size hints as in the call (Inductor's loop choices follow them), at least 2: a size-1 example would be
        # specialised to 1 instead of staying dynamic.
        hints = {axis: max(2, size) for axis, size in sizes.items()}
        examples = tuple(torch.zeros([hints[axis] for axis in axes], dtype=tensor.dtype)
                         for tensor, axes in zip(tensors, self.axes))
        symbols = {axis: torch.export.Dim(axis, min=1) for axis in hints}
        shapes = tuple({i: symbols[axis] for i, axis in enumerate(axes)} for axes in self.axes)
        exported = torch.export.export(_Bound(self.fn, self.names, constants), examples, dynamic_shapes=(shapes,),
                                       strict=False)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".pt2")
        except OSError:  # a cache folder that cannot be written: this process builds for itself alone
            path = Path(tempfile.mkdtemp(prefix="attnscope-compiled-")) / path.name
            handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".pt2")
        os.close(handle)
        try:
            torch._inductor.aoti_compile_and_package(exported, package_path=partial)
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        return path
