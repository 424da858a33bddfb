"""Stop and resume: the progress bar and Stop button around a computation (working), the cancellation check every
forward pass and study unit makes (check_stop), and which computations the user stopped (stopped, resume)."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import streamlit as st

import attnscope
from attnscope.app import cached, state
from attnscope.app.messages import literal
from attnscope.studies.base import ProgressFn

ModelSpec = attnscope.ModelSpec


def _digest(request) -> str:
    """A widget key for `request`'s Stop and Run-again buttons: keys must differ between computations of one run."""
    return hashlib.sha256(repr(request).encode()).hexdigest()[:16]


def check_stop() -> None:
    """The dashboard's cancellation check (attnscope.cancel): reading session state is where Streamlit raises its
    StopException (Stop, a closed tab) or RerunException (a new run) in the script's thread."""
    st.session_state.get(state.STOPPED)


def stopped(request) -> bool:
    """True when the user pressed Stop on the computation of `request` (anything hashable that says what a page
    computes) and has not asked for it again: the page then shows why nothing is drawn instead of starting over."""
    return request in st.session_state.get(state.STOPPED, ())


def resume(request) -> None:
    """Forget that `request` was stopped, so the page computes it again (completed units come from the caches)."""
    st.session_state[state.STOPPED] = [r for r in st.session_state[state.STOPPED] if r != request]


def _stop(request) -> None:
    st.session_state[state.STOPPED] = [*st.session_state[state.STOPPED][-state.KEPT_STOPS + 1:], request]


@contextlib.contextmanager
def working(label: str, request, *, models: tuple[ModelSpec, ...] = ()) -> Iterator[ProgressFn]:
    """Around a computation that may take more than a second or two: a progress bar, a Stop button and, when another
    session is running one of `models` (its lock is held), "Waiting for the model". Yields progress(fraction, message).

    Stop (the button, a new run, a closed tab) ends the computation at its next cancellation point (attnscope.cancel:
    every layer of a forward pass, every unit of a study, every step of a wait for a model's lock): Streamlit raises
    its StopException or RerunException there, and every lock on the way out is released in `finally`. The Stop
    button also marks `request` as stopped: a stopped request is not started again unasked, the page says so here
    with "Run it again" and ends (st.stop). The wait itself happens where the lock is taken (app.cached), only for
    work that needs the model: what the caches hold comes at once.
    """
    if stopped(request):
        st.info(f"Stopped ({label[:1].lower()}{label[1:]}). What was finished is kept and is not computed again.",
                icon="⏹️")
        st.button("Run it again", key=f"resume_{_digest(request)}", on_click=resume, args=(request,), type="primary")
        st.stop()
    box = st.empty()
    with box.container():
        bar = st.progress(0.0, literal(label))
        st.button("Stop", key=f"stop_{_digest(request)}", on_click=_stop, args=(request,),
                  icon=":material/stop_circle:",
                  help="Stops at the next layer or unit; what is finished stays cached, so running it again resumes.")
        busy = [spec.name for spec in models if cached.model_lock(spec).locked()]
        if busy:
            st.info(f"Waiting for the model: another session is running {literal(busy[0])}. What is already "
                    "computed comes at once; the rest waits its turn.", icon="⏳")
    try:
        yield lambda fraction, message: bar.progress(min(max(float(fraction), 0.0), 1.0), literal(message))
    finally:
        box.empty()
