"""This deployment's limits and what a page builds under them for the API: the policy (limits), whether the server
may serve under it (check_deployment), how much of a text a run reads (cut_for, cut_settings) and the model handle the
API runs (source)."""

from __future__ import annotations

import streamlit as st

import attnscope
from attnscope import settings as S
from attnscope.app import cached, state
from attnscope.hosting import Policy, PolicyError, policy_from_env, upload_limit_mismatch
from attnscope.tokens import Cut

Model, ModelSpec = attnscope.Model, attnscope.ModelSpec


def policy() -> Policy:
    """This deployment's limits (hosted mode or not), from the environment; a bad ATTNSCOPE_* value stops the page
    with the sentence that names it."""
    try:
        return policy_from_env()
    except PolicyError as error:
        st.error(f"attnscope is misconfigured: {error}")
        st.stop()


def check_deployment(limits: Policy) -> None:
    """Refuse to serve hosted when Streamlit's own upload limit (server.maxUploadSize) is larger than the policy's:
    the server stores an upload before any page sees it, and a page cannot set that limit (st.set_option takes only
    client.* options), so the app stops every page with the sentence that says how to start it (`attnscope app`,
    deploy/start.sh or the flag). Not hosted, the mismatch is only written to the server log."""
    mismatch = upload_limit_mismatch(limits, int(st.get_option("server.maxUploadSize")))
    if mismatch is None:
        return
    cached.tell_operator(mismatch)
    if limits.hosted:
        st.error(f"attnscope is misconfigured: {mismatch}")
        st.stop()


def cut_for(loaded: Model, requested: int | None = None) -> Cut:
    """How much of a text a run of `loaded` reads (Max tokens unless `requested`), through the one rule in
    core.hosting.Policy.cut: this deployment's limit and the model's positions."""
    requested = int(st.session_state[state.MAX_TOKENS]) if requested is None else requested
    return policy().cut(requested, max_positions=loaded.info.get("max_positions"), keep=st.session_state[state.KEEP])


def source(spec: ModelSpec) -> cached.AppSource:
    """What the pages hand to the API (attnscope.maps(source, ...)): the model through Streamlit's caches and its
    lock, with this deployment's token limit."""
    return cached.AppSource(spec, ceiling=policy().max_tokens)


def cut_settings(cut: Cut) -> dict:
    """A page's cut as the API's settings (max_tokens, keep); the API cuts by the same rule, so the tokens are the
    same. A cut below the table's least max_tokens (a generated text of a few tokens) asks for that least, which
    reads the same whole text."""
    return {"max_tokens": max(S.setting("max_tokens").domain.low, cut.max_tokens), "keep": cut.keep}
