import pytest

from attnscope.kernels.utils import poisoned_outputs


@pytest.fixture(autouse=True)
def poison():
    """Every kernel output starts as NaN (or a sentinel integer): a missed store fails the comparison."""
    with poisoned_outputs():
        yield
