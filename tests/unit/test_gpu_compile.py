"""benchmarks/gpu_compile.py: it compiles kernels for sm_80 / sm_90a without a GPU, writes one row per compile, reuses
its cache, and fails on a spill or a shared-memory overflow in a default configuration (issue 27).

The script runs in subprocesses: it must import the kernels compiled (TRITON_INTERPRET=0), which this test session
imports interpreted."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_compile.py"
KEYS = {"kernel", "variant", "dtype", "head_dim", "arch", "block_m", "block_n", "num_warps", "num_stages", "constexprs",
        "registers", "spill_bytes", "shared_bytes", "default"}


def run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def test_a_small_subset_compiles_without_spills_and_a_rerun_uses_the_cache(tmp_path):
    out = tmp_path / "compile.json"
    arguments = [str(SCRIPT), "--subset", "ci", "--kernel", "pooled_map_packed", "--arch", "sm_90a", "--out", str(out)]
    done = run(*arguments, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 4  # bf16 and fp32 at head dims 128 and 256
    for row in rows:
        assert KEYS <= set(row) and row["default"] and row["error"] is None
        assert row["kernel"] == "pooled_map_packed" and row["arch"] == "sm_90a"
        assert 0 < row["registers"] <= 255 and row["spill_bytes"] == 0 and 0 < row["shared_bytes"] <= 227 * 1024
        assert row["constexprs"]["BP"] == 16 and row["constexprs"]["PR"] == row["block_m"] // 16
    assert (tmp_path / "compile.cache.json").exists()
    again = run(*arguments, timeout=300)
    assert again.returncode == 0 and "4 compiles, 4 cached, 0 to run" in again.stdout
    assert json.loads(out.read_text())["rows"] == rows


def test_ptxas_reports_are_read_and_defaults_that_spill_or_overflow_fail():
    check = """
import sys
sys.path.insert(0, "benchmarks")
import gpu_compile as g
log = '''ptxas info    : Compiling entry function 'k' for 'sm_90a'
ptxas info    : Function properties for k
    176 bytes stack frame, 236 bytes spill stores, 196 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 176 bytes cumulative stack size'''
assert g.read_ptxas(log) == {"registers": 255, "spill_bytes": 236, "spill_load_bytes": 196, "stack_bytes": 176}
row = dict(kernel="k", variant="v", dtype="bf16", head_dim=128, arch="sm_80", block_m=64, block_n=64, num_warps=4,
           num_stages=2, registers=200, spill_bytes=0, shared_bytes=64 * 1024, default=True, error=None)
assert g.problems([row]) == []
assert "spills 8 bytes" in g.problems([dict(row, spill_bytes=8)])[0]
assert g.problems([dict(row, spill_bytes=8, default=False)]) == []  # an alternative may spill
assert "over sm_86" in g.problems([dict(row, shared_bytes=120 * 1024)])[0]
assert "over 232448" in g.problems([dict(row, arch="sm_90a", shared_bytes=240 * 1024)])[0]
assert "compile error" in g.problems([dict(row, default=False, error="CompilationError: x")])[0]
keys = {(c.kernel, g.ARCHS[c.arch][0], c.head_dim, g.launch.precision(g.DTYPES[c.dtype]), c.variant.table)
        for c in g.matrix("defaults", sorted(g.ARCHS), list(g.KERNELS))}
assert keys == set(g.launch.TABLE), set(g.launch.TABLE) ^ keys  # the matrix compiles every table entry
print("ok")
"""
    done = run("-c", check, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout[-2000:] + done.stderr[-3000:]
