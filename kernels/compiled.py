"""torch.compile for the CPU torch paths: one fused C++ loop per key tile where eager torch makes several passes.

On the CPU a tile's softmax bookkeeping (mask, row maximum, exp, the entropy sum) is memory-bound: eager torch reads
and writes the tile once per operation, Inductor (torch.compile's CPU backend) fuses them into one or two loops. The
compiled function is the same Python function the tests run eagerly, so there is no second implementation to trust.

Policy, from the environment variable ATTNSCOPE_CPU_COMPILE (read at each call):
    auto  (default) compile when a C++ compiler is on PATH and a call is large enough to repay the one-time
          compilation (a few seconds per process once Inductor's on-disk cache is warm, ~20 s on a cold one).
          A compilation that fails is logged once; the process then keeps to the eager torch path.
    on    always compile, whatever the size; a failure raises (the tests use this to check the compiled path).
    off   never compile.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
from collections.abc import Callable

import torch

MODES = ("auto", "on", "off")
COMPILERS = ("c++", "g++", "clang++")
log = logging.getLogger(__name__)
_failed = threading.Event()  # set when a compilation failed under "auto": the process stays eager


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


def fused(fn: Callable) -> Callable:
    """`fn` compiled on first call (dynamic shapes, one graph for every tile size); under "auto" a failed
    compilation falls back to running `fn` eagerly, which gives the same results more slowly."""
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
            if mode() == "on":
                raise
            log.warning("torch.compile of %s failed (%s: %s); the CPU torch path stays eager from now on.",
                        fn.__name__, type(error).__name__, str(error).splitlines()[0] if str(error) else "")
            _failed.set()
            return fn(*args, **kwargs)

    return call
