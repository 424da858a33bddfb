"""Cooperative cancellation: long computations stop at the next unit of work when their caller asks.

Model work calls :func:`checkpoint` at every unit boundary: each attention layer of every forward pass (the
registered attention function, so captures, the streaming engine, generation steps and the loss sweeps all stop
within one layer), each unit of a study (attnscope.studies.base.Source.unit: one layer's Taylor sweep, one window at
one length, one map), each fold of the collapse analysis, and each step of a wait for a model's lock
(:func:`acquire`). A checkpoint runs the checks installed in the current context by :func:`checking`; a check that
wants the work to end raises, and the exception unwinds through `with` blocks and `finally` clauses, which release
every lock on the way out.

The dashboard installs a check that reads Streamlit's session state, which is where Streamlit itself stops a script
whose user pressed Stop, started a new run or closed the tab (it raises its own StopException or RerunException
there). A notebook or script can install any check, e.g. one that raises when a deadline has passed. With no check
installed a checkpoint costs one context-variable lookup.

Checks live in a contextvars.ContextVar, so each thread (each Streamlit session's script thread) has its own.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator

Check = Callable[[], None]  # returns when the work may go on, raises to end it

POLL_SECONDS = 0.2  # how often a wait for a lock looks at the checks
_CHECKS: contextvars.ContextVar[tuple[Check, ...]] = contextvars.ContextVar("attnscope_cancel_checks", default=())


@contextlib.contextmanager
def checking(check: Check) -> Iterator[None]:
    """Within the block, every checkpoint in this context also runs `check`."""
    token = _CHECKS.set((*_CHECKS.get(), check))
    try:
        yield
    finally:
        _CHECKS.reset(token)


def checkpoint() -> None:
    """Run the installed checks; one of them raises when the work should end."""
    for check in _CHECKS.get():
        check()


@contextlib.contextmanager
def acquire(lock: threading.Lock) -> Iterator[None]:
    """Hold `lock` for the block, waiting for it in steps of POLL_SECONDS with a checkpoint between steps, so a wait
    can be cancelled too. The lock is released in `finally`, whatever ends the block."""
    if not lock.acquire(blocking=False):
        while True:
            checkpoint()
            if lock.acquire(timeout=POLL_SECONDS):
                break
    try:
        yield
    finally:
        lock.release()
