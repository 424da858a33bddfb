"""Hosted mode: what a public deployment allows, read from the environment.

ATTNSCOPE_HOSTED=1 turns it on. Then only the packaged models and the hub ids in ATTNSCOPE_ALLOWED_MODELS
(comma-separated) load, never with remote code and never from a local path; texts are cut at ATTNSCOPE_MAX_TOKENS
tokens (default 1024) and uploads at ATTNSCOPE_MAX_UPLOAD_MB (default 2). Off, nothing is restricted beyond the
model's own context window and the upload limit of .streamlit/config.toml.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from core.models import PACKAGED_MODELS, ModelLoadError, ModelSpec
from core.prompts import MAX_BYTES


@dataclass(frozen=True)
class Policy:
    hosted: bool = False
    allowed_models: tuple[str, ...] = ()  # hub ids allowed besides the packaged models (hosted only)
    max_tokens: int | None = None  # longest text analysed; None: the model's window
    max_upload_bytes: int = MAX_BYTES

    def check(self, spec: ModelSpec) -> None:
        """Raise ModelLoadError with one sentence if this deployment does not load `spec`."""
        if not self.hosted:
            return
        if spec.trust_remote_code:
            raise ModelLoadError("This hosted demo never runs remote code; untick 'Trust remote code'.")
        if spec.name in PACKAGED_MODELS or spec.name in self.allowed_models:
            return
        allowed = ", ".join([*PACKAGED_MODELS, *self.allowed_models])
        if spec.name.startswith(("/", ".", "~")) or os.path.exists(spec.name):
            raise ModelLoadError(f"This hosted demo does not open local folders; choose one of: {allowed}.")
        raise ModelLoadError(f"'{spec.name}' is not offered by this hosted demo; choose one of: {allowed}.")


def policy_from_env(environ=None) -> Policy:
    environ = os.environ if environ is None else environ
    if environ.get("ATTNSCOPE_HOSTED", "").strip().lower() not in ("1", "true", "yes", "on"):
        return Policy()
    allowed = tuple(m.strip() for m in environ.get("ATTNSCOPE_ALLOWED_MODELS", "").split(",") if m.strip())
    max_tokens = int(environ.get("ATTNSCOPE_MAX_TOKENS", "1024"))
    upload_mb = float(environ.get("ATTNSCOPE_MAX_UPLOAD_MB", "2"))
    return Policy(hosted=True, allowed_models=allowed, max_tokens=max_tokens,
                  max_upload_bytes=int(upload_mb * 2**20))
