"""benchmarks/h100_estimates.py: the work counts follow the textbook formulas, and a floor is the slowest resource."""

import importlib.util
import sys
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "h100_estimates", Path(__file__).resolve().parents[2] / "benchmarks" / "h100_estimates.py")
estimates = importlib.util.module_from_spec(SPEC)
sys.modules.setdefault("h100_estimates", estimates)  # benchmarks/ is no package; its dataclasses look it up here
SPEC.loader.exec_module(estimates)


def test_flash_attention_is_four_t_squared_d_flops_per_head_halved_by_the_causal_rule():
    flash = estimates.estimate("flash", tokens=8192)
    assert flash.work["tensor_flops"] == pytest.approx(4 * 32 * 8192**2 * 128 / 2)
    assert flash.work["bytes"] == pytest.approx(2 * (32 + 8) * 8192 * 128 * 2)  # q and o; k and v once per kv head
    assert flash.bound == "tensor_flops" and flash.ratio_to_flash == 1.0
    assert flash.floor_s == pytest.approx(flash.work["tensor_flops"] / 989.4e12)


@pytest.mark.parametrize("op", estimates.OPS)
def test_the_floor_is_the_slowest_resource_and_scales_with_the_square_of_the_length(op):
    short, long = (estimates.estimate(op, tokens=tokens) for tokens in (8192, 32768))
    assert short.floor_s == max(short.seconds(resource) for resource in short.work)
    assert short.seconds(short.bound) == short.floor_s
    assert long.floor_s / short.floor_s == pytest.approx(16, rel=0.05)  # compute-bound: T^2 work
    assert short.ratio_to_flash == pytest.approx(long.ratio_to_flash, rel=0.05)


def test_the_readme_table_has_every_op_at_every_length():
    table = estimates.markdown(estimates.table())
    assert len(table.splitlines()) == 2 + len(estimates.OPS) * len(estimates.TOKENS)
