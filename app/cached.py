"""Every st.cache_* wrapper of the app. Cached objects are never mutated after they are returned.

Models and captures are resources (shared, unpicklable tensors, bounded in number); the small arrays the views draw
are data keyed by everything that determines them, so revisiting a view is instant.

Every function here that runs the model holds the model's lock (`model_lock`, through `holding_model`) for its
forward passes, and only for them: a cached view whose capture was evicted runs the model again from inside another
cached function, and that pass must wait its turn like any other. The order of locks is fixed (see model_lock).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import threading

import streamlit as st

import attnscope
from attnscope import cancel
from attnscope.cache import ResultCache
from attnscope.tokens import Cut, Tokens

Source, Model, ModelSpec = attnscope.Source, attnscope.Model, attnscope.ModelSpec


@st.cache_resource(show_spinner=False)
def tell_operator(message: str) -> None:
    """Write `message` to the server log once per server, however many sessions meet it."""
    logging.getLogger("attnscope").warning(message)


@st.cache_resource(show_spinner=False, max_entries=3)
def get_model(spec: ModelSpec) -> Model:
    """The loaded model; its weights' fingerprint (the disk cache's key) is computed once, here."""
    model = attnscope.load(spec)
    _ = model.fingerprint
    return model


@st.cache_resource(show_spinner=False)
def model_lock(spec: ModelSpec) -> threading.Lock:
    """One lock per model, shared by every session: forward passes run one session at a time.

    Lock order, the same in every session, so no two sessions can each hold what the other waits for:
    1. Streamlit's own per-key lock of a cached function (st.cache_data / st.cache_resource take it while they compute
       a missing value, so two sessions asking for the same capture compute it once);
    2. then, innermost, this lock, only around forward passes and the work on their live tensors.
    Nothing that holds this lock calls a cached function (get_model and get_tokens are called before it
    is taken). It is only ever taken through attnscope.cancel.acquire (holding_model, run_control.working): released in
    `finally` whatever ends the block (an exception, Streamlit's StopException on Stop or a closed tab, its
    RerunException on a new run), and waited for in steps with a cancellation check between them, so a session that
    stops or reruns while waiting leaves the queue at once instead of taking the lock later. One wait cannot be
    cancelled: on Streamlit's per-key lock, while another session computes the same capture; it ends when that
    computation does (or is stopped), and the waiting session's own computation then stops at its first layer.
    """
    return threading.Lock()


@contextlib.contextmanager
def holding_model(spec: ModelSpec):
    """Hold `spec`'s model lock for the block (cancellable wait, released in `finally`)."""
    with cancel.acquire(model_lock(spec)):
        yield


@st.cache_data(show_spinner=False, max_entries=64)
def get_tokens(spec: ModelSpec, text: str | tuple[int, ...], cut: Cut) -> Tokens:
    """Tokens of a text, or of token ids taken as they are (a generated text: prompt and continuation)."""
    return get_model(spec).tokenize(text, cut)


@st.cache_resource(show_spinner=False, max_entries=4, ttl=3600)
def get_capture(spec: ModelSpec, text: str, cut: Cut):
    """Every layer's captured q/k/v of the model on the text (attnscope.capture.Capture), under the model's lock."""
    return Source.capture(AppSource(spec), text, cut)


# ---- the studies' units, through Streamlit's caches ----------------------------------------------------------------


class AppSource(Source):
    """The Source the pages hand to attnscope.studies: the same units as the API, cached per unit, and every forward
    pass under the model's lock."""

    def __init__(self, spec: ModelSpec, ceiling: int | None = None):
        super().__init__(get_model(spec), cache=ResultCache.default(), ceiling=ceiling)
        self.spec = spec

    def tokens(self, text, cut: Cut) -> Tokens:
        return get_tokens(self.spec, text, cut)

    def capture(self, text, cut: Cut):
        return get_capture(self.spec, text, cut)

    def run_ids(self, ids: tuple[int, ...], *, hidden_states: bool = False):
        return capture_ids(self.spec, tuple(ids), hidden_states)

    @contextlib.contextmanager
    def turn(self):
        with holding_model(self.spec):
            yield

    def unit(self, fn, *args):
        return study_unit(self.spec, f"{fn.__module__}:{fn.__qualname__}", args)


@st.cache_resource(show_spinner=False, max_entries=1, ttl=1800)
def capture_ids(spec: ModelSpec, ids: tuple[int, ...], hidden_states: bool):
    """One capture on explicit ids at a time: a 2048-token capture holds a few hundred MB, and the units computed
    from it are cached on their own."""
    return Source.run_ids(AppSource(spec), ids, hidden_states=hidden_states)


@st.cache_data(show_spinner=False, max_entries=2048)
def study_unit(spec: ModelSpec, name: str, args: tuple):
    """One unit of a study (attnscope.studies.<study>:<function>) with its arguments, cached by all of them: in
    memory here, and on disk (attnscope.cache) so a restart or another server does not compute it again."""
    module, _, function = name.partition(":")
    if not module.startswith("attnscope.studies."):
        raise ValueError(f"{name} is not a study unit.")
    return Source.unit(AppSource(spec), getattr(importlib.import_module(module), function), *args)
