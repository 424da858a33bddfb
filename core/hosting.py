"""What a deployment allows, read from the environment: hosted mode and the limit on every input.

ATTNSCOPE_HOSTED=1 turns hosted mode on. Then only the packaged models and the hub models in ATTNSCOPE_ALLOWED_MODELS
load, never with remote code and never from a local path. An entry of the allowlist is `id` (the hub's default
revision only) or `id@revision` (that revision only); any other revision is refused, so a link or a visitor cannot
point an allowed id at a pull-request ref that carries other weights or code.

Every input has a limit, applied before work is done on it (hosted default / local default):

| variable | limit | hosted | local |
|---|---|---|---|
| ATTNSCOPE_MAX_TOKENS | tokens analysed per text (text boxes hold CHARS_PER_TOKEN times as many chars) | 1024 | 32768 |
| ATTNSCOPE_MAX_UPLOAD_MB | megabytes per uploaded file (whole MB, as Streamlit's server.maxUploadSize) | 2 | 20 |
| ATTNSCOPE_MAX_FILES | files taken from one upload | 10 | 100 |
| ATTNSCOPE_MAX_PROMPTS | prompts in one session's library | 200 | 2000 |
| ATTNSCOPE_MAX_LIBRARY_MB | megabytes of text in one session's library | 20 | 2000 |
| ATTNSCOPE_MAX_BATCH | prompts one batch run analyses | 20 | 500 |
| ATTNSCOPE_MAX_NEW_TOKENS | tokens one generation may add | 64 | 1024 |
| ATTNSCOPE_GENERATION_SECONDS | seconds one generation may run (it stops after the step in progress) | 60 | 3600 |
| ATTNSCOPE_MAX_ATLAS_DOCUMENTS | documents one head atlas run in the app reads | 16 | 1000 |
| ATTNSCOPE_MAX_ATLAS_TOKENS | tokens per document of an atlas run in the app | 256 | 2048 |
| ATTNSCOPE_ATLAS_SECONDS | seconds an atlas run in the app may take (it stops after the running batch) | 120 | 3600 |

Every file a visitor gives is read under `Policy.file_budget` (attnscope.reader.Budget): in hosted mode nothing in it
may hold more than an upload does, even once uncompressed.

In hosted mode the Head atlas page opens only atlases the visitor uploads and runs only corpora the visitor uploads,
in this process: it never reads a path typed on the page and never starts or joins a Ray cluster.

The server must refuse larger uploads before reading them, which only Streamlit's own `server.maxUploadSize` can do,
and no page can set it. `attnscope app` (attnscope.app.launch) and deploy/start.sh (the Docker image's command) pass
ATTNSCOPE_MAX_UPLOAD_MB as that limit when hosted; started any other way (a plain `streamlit run`, which reads the 20 MB
of app/.streamlit/config.toml), `upload_limit_mismatch` is the sentence with which a hosted app refuses to serve.
Streamlit stores an upload to any file id a session makes up, whether or not a page ever takes it; only a reverse
proxy in front of the server bounds those (deploy/nginx.conf).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from attnscope.models import PACKAGED_MODELS, ModelLoadError, ModelSpec
from attnscope.reader import Budget
from attnscope.settings import NEW_TOKEN_CEILING, TOKEN_CEILING
from attnscope.studies.base import RESULT_BUDGET
from attnscope.tokens import Cut, cut_rule, max_chars

HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")  # use with fullmatch
REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}")  # use with fullmatch
_PATH = re.compile(r"file://\S+|(?<![\w.:/])(?:/|~/)[^\s'\"`,;:()]+")  # an absolute path inside a message


class PolicyError(ValueError):
    """An ATTNSCOPE_* variable holds a value that cannot be used; the message names it and what it must be."""


@dataclass(frozen=True)
class Policy:
    hosted: bool = False
    allowed_models: tuple[str, ...] = ()  # hub entries "id" or "id@revision" allowed besides the packaged models
    max_tokens: int = TOKEN_CEILING  # most tokens analysed from one text
    max_upload_mb: int = 20  # largest uploaded file, in megabytes
    max_files: int = 100  # files taken from one upload
    max_prompts: int = 2000  # prompts in one session's library
    max_library_mb: int = 2000  # megabytes of text (UTF-8) in one session's library
    max_batch: int = 500  # prompts one batch run analyses
    max_new_tokens: int = 1024  # tokens one generation may add
    generation_seconds: int = 3600  # seconds one generation may run
    max_atlas_documents: int = 1000  # documents one atlas run in the app reads
    max_atlas_tokens: int = 2048  # tokens per document of an atlas run in the app
    atlas_seconds: int = 3600  # seconds an atlas run in the app may take

    @property
    def max_upload_bytes(self) -> int:
        """The largest file accepted: megabytes of 10^6 bytes, as Streamlit's uploader counts them in the browser
        (its server, counting 2^20, refuses only larger requests)."""
        return self.max_upload_mb * 10**6

    @property
    def file_budget(self) -> Budget:
        """What reading one file a visitor gives may take in (an atlas or another result, a corpus), for
        attnscope.studies.atlas.read_atlas and the atlas run's `budget`: in hosted mode no more than one upload
        holds, as stored and once uncompressed, for the file and for any one value in it; locally the library's
        limits for a result file (attnscope.studies.base.RESULT_BUDGET: 2 GB a file, 1 GB a value)."""
        if not self.hosted:
            return RESULT_BUDGET
        return Budget(total_bytes=self.max_upload_bytes, value_bytes=self.max_upload_bytes)

    @property
    def max_chars(self) -> int:
        """Characters a text box holds: enough for max_tokens tokens of any real text."""
        return max_chars(self.max_tokens)

    def hub_models(self) -> list[ModelSpec]:
        """The allowlisted hub models, each pinned to its revision (None: the hub's default)."""
        return [_entry_spec(entry) for entry in self.allowed_models]

    def check(self, spec: ModelSpec) -> None:
        """Raise ModelLoadError with one sentence if this deployment does not load `spec`."""
        if not self.hosted:
            return
        if spec.trust_remote_code:
            raise ModelLoadError("This hosted demo never runs remote code; untick 'Trust remote code'.")
        offered = ", ".join([*PACKAGED_MODELS, *self.allowed_models])
        if spec.name in PACKAGED_MODELS and spec.revision is None:
            return
        pinned = [allowed for allowed in self.hub_models() if allowed.name == spec.name]
        if any(allowed.revision == spec.revision for allowed in pinned):
            return
        if pinned or spec.name in PACKAGED_MODELS:
            raise ModelLoadError(f"This hosted demo offers '{spec.name}' only at the revision it pins, not at "
                                 f"'{spec.revision}'; choose one of: {offered}.")
        if spec.name.startswith(("/", ".", "~")) or os.path.exists(spec.name):
            raise ModelLoadError(f"This hosted demo does not open local folders; choose one of: {offered}.")
        raise ModelLoadError(f"'{spec.name}' is not offered by this hosted demo; choose one of: {offered}.")

    def cut(self, requested: int, *, max_positions: int | None, keep: str = "start") -> Cut:
        """The one rule for how many tokens a model run reads: what was asked for, at most this deployment's limit
        and at most the model's positions."""
        return cut_rule(requested, keep=keep, max_positions=max_positions, ceiling=self.max_tokens)

    def public(self, message: str) -> str:
        """A message fit for whoever sees the page: in hosted mode, with server paths taken out. Only for sentences
        attnscope wrote, whose paths contain no spaces; an unforeseen error is not shown whole in hosted mode."""
        return _PATH.sub("(a server path)", message) if self.hosted else message


def _entry_spec(entry: str) -> ModelSpec:
    name, _, revision = entry.partition("@")
    return ModelSpec(name=name, revision=revision or None)


def _number(environ, name: str, default: int, *, low: int = 1) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise PolicyError(f"{name} must be a whole number; got '{raw}'.") from None
    if value < low:
        raise PolicyError(f"{name} must be at least {low}; got {value}.")
    return value


def _allowlist(environ) -> tuple[str, ...]:
    entries = tuple(m.strip() for m in environ.get("ATTNSCOPE_ALLOWED_MODELS", "").split(",") if m.strip())
    for entry in entries:
        name, at, revision = entry.partition("@")
        if not HUB_ID.fullmatch(name) or (at and not REVISION.fullmatch(revision)):
            raise PolicyError(f"ATTNSCOPE_ALLOWED_MODELS entries must be 'org/name' or 'org/name@revision'; "
                              f"got '{entry}'.")
    return entries


def policy_from_env(environ=None) -> Policy:
    """This deployment's policy. Raises PolicyError naming a variable that holds an unusable value."""
    environ = os.environ if environ is None else environ
    hosted = environ.get("ATTNSCOPE_HOSTED", "").strip().lower() in ("1", "true", "yes", "on")
    defaults = Policy(max_tokens=1024, max_upload_mb=2, max_files=10, max_prompts=200, max_library_mb=20,
                      max_batch=20, max_new_tokens=64, generation_seconds=60, max_atlas_documents=16,
                      max_atlas_tokens=256, atlas_seconds=120) if hosted else Policy()
    return Policy(
        hosted=hosted,
        allowed_models=_allowlist(environ) if hosted else (),
        max_tokens=min(_number(environ, "ATTNSCOPE_MAX_TOKENS", defaults.max_tokens, low=8), TOKEN_CEILING),
        max_upload_mb=_number(environ, "ATTNSCOPE_MAX_UPLOAD_MB", defaults.max_upload_mb),
        max_files=_number(environ, "ATTNSCOPE_MAX_FILES", defaults.max_files),
        max_prompts=_number(environ, "ATTNSCOPE_MAX_PROMPTS", defaults.max_prompts),
        max_library_mb=_number(environ, "ATTNSCOPE_MAX_LIBRARY_MB", defaults.max_library_mb),
        max_batch=_number(environ, "ATTNSCOPE_MAX_BATCH", defaults.max_batch),
        max_new_tokens=min(_number(environ, "ATTNSCOPE_MAX_NEW_TOKENS", defaults.max_new_tokens), NEW_TOKEN_CEILING),
        generation_seconds=_number(environ, "ATTNSCOPE_GENERATION_SECONDS", defaults.generation_seconds),
        max_atlas_documents=_number(environ, "ATTNSCOPE_MAX_ATLAS_DOCUMENTS", defaults.max_atlas_documents),
        max_atlas_tokens=min(_number(environ, "ATTNSCOPE_MAX_ATLAS_TOKENS", defaults.max_atlas_tokens, low=8),
                             TOKEN_CEILING),
        atlas_seconds=_number(environ, "ATTNSCOPE_ATLAS_SECONDS", defaults.atlas_seconds),
    )


def upload_limit_mismatch(policy: Policy, server_max_upload_mb: int) -> str | None:
    """A sentence for the operator when the server stores larger uploads than the policy accepts, saying how to
    start it; else None."""
    if server_max_upload_mb <= policy.max_upload_mb:
        return None
    return (f"Streamlit's server.maxUploadSize is {server_max_upload_mb} MB but ATTNSCOPE_MAX_UPLOAD_MB is "
            f"{policy.max_upload_mb}, so the server would store uploads up to {server_max_upload_mb} MB; start it with "
            "`attnscope app` or deploy/start.sh, which pass the limit, or add "
            f"`--server.maxUploadSize {policy.max_upload_mb}` to `streamlit run`.")
