"""Shared test set-up. TRITON_INTERPRET must be set before any kernels module is imported."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# No disk cache of results unless a test makes its own: every test computes what it checks (and servers the tests
# start inherit this).
os.environ.setdefault("ATTNSCOPE_RESULT_CACHE_MB", "0")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

OUTPUT = Path(__file__).parent / "output"


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """tests/output/: screenshots and other artefacts a person may want to look at after a run."""
    OUTPUT.mkdir(exist_ok=True)
    return OUTPUT
