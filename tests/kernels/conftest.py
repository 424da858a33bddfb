import pytest
import torch

from attnscope.kernels.utils import poisoned_outputs
from tests.kernels.helpers import DEVICE

if DEVICE != "cpu":  # ATTNSCOPE_TEST_DEVICE (benchmarks/gpu_check.py): tensors a test builds itself go there too
    torch.set_default_device(DEVICE)


@pytest.fixture(autouse=True)
def poison():
    """Every kernel output starts as NaN (or a sentinel integer): a missed store fails the comparison."""
    with poisoned_outputs():
        yield
