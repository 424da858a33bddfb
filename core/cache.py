"""Results that survive a restart: a bounded, content-addressed disk cache of the studies' units.

A unit's key is the SHA-256 of the model's fingerprint (id, revision and a digest of its weights, see
attnscope.api.Model.fingerprint), the unit function's name, its arguments (text, cut, settings) and a digest of
attnscope's own source code, so a changed analysis never reads an old number. Values are what the unit returned
(small numpy dataclasses). The store is diskcache (SQLite plus files; safe between the threads of one server and the
processes of several servers and CLI runs) with its least-recently-used eviction under a size limit.

The folder is <attnscope cache>/results (ATTNSCOPE_CACHE), bounded by ATTNSCOPE_RESULT_CACHE_MB (default 512);
ATTNSCOPE_RESULT_CACHE_MB=0 turns the cache off. A folder that cannot be written turns it off too, with a warning in
the log: results are then computed as if there were no cache.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from attnscope.models import cache_dir

DEFAULT_MB = 512
_log = logging.getLogger(__name__)


@functools.cache
def code_digest() -> str:
    """SHA-256 of every Python file of attnscope's core and kernels, read once per process."""
    import attnscope
    import attnscope.kernels

    digest = hashlib.sha256()
    for package in (attnscope, attnscope.kernels):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def unit_key(fingerprint: str, fn: Callable, args: tuple) -> str:
    name = f"{fn.__module__}:{fn.__qualname__}"
    return hashlib.sha256(f"{code_digest()}\n{fingerprint}\n{name}\n{args!r}".encode()).hexdigest()


class ResultCache:
    """get_or_compute(fingerprint, fn, args, compute): the cached value, or compute() stored under its key."""

    def __init__(self, folder: Path, *, size_mb: int = DEFAULT_MB):
        import diskcache

        self.folder = Path(folder)
        self._store = diskcache.Cache(str(self.folder), size_limit=size_mb * 2**20,
                                      eviction_policy="least-recently-used")

    @classmethod
    def default(cls) -> ResultCache | None:
        """The cache under the attnscope cache folder, or None when it is turned off or cannot be opened."""
        return _default_cache()

    def get_or_compute(self, fingerprint: str, fn: Callable, args: tuple, compute: Callable[[], object]):
        key = unit_key(fingerprint, fn, args)
        try:
            value = self._store.get(key, default=_MISSING)
        except Exception as error:  # a damaged entry: compute it again
            _log.warning("attnscope result cache: could not read an entry (%s); computing it again.", error)
            value = _MISSING
        if value is not _MISSING:
            return value
        value = compute()
        try:
            self._store.set(key, value)
        except Exception as error:  # full disk, read-only folder: the result is still returned
            _log.warning("attnscope result cache: could not store a result (%s).", error)
        return value

    def __len__(self) -> int:
        return len(self._store)

    def volume(self) -> int:
        """Bytes on disk."""
        return self._store.volume()

    def clear(self) -> None:
        self._store.clear()


_MISSING = object()


@functools.cache
def _default_cache() -> ResultCache | None:
    raw = os.environ.get("ATTNSCOPE_RESULT_CACHE_MB", "").strip()
    try:
        size_mb = int(raw) if raw else DEFAULT_MB
    except ValueError:
        _log.warning("ATTNSCOPE_RESULT_CACHE_MB must be a whole number of megabytes; got '%s'. Using %d.", raw,
                     DEFAULT_MB)
        size_mb = DEFAULT_MB
    if size_mb <= 0:
        return None
    try:
        return ResultCache(cache_dir() / "results", size_mb=size_mb)
    except Exception as error:  # unwritable folder, broken SQLite file
        _log.warning("attnscope result cache is off: %s", error)
        return None
