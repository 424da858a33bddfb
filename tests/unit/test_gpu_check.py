"""benchmarks/gpu_check.py: its --smoke run (CPU, Triton interpreter, tiny shapes) writes every section and the
Triton engine matches the torch one; without a CUDA GPU the real check refuses in one sentence."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
RESULTS = ROOT / "benchmarks" / "results"
SECTIONS = ("kernel_tests", "engine", "logits", "timings", "targets")


def run_script(*args: str, timeout: float, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})


@pytest.mark.slow  # runs benchmarks/gpu_check.py --smoke in a subprocess: up to 110 s on the CPU
def test_smoke_run_writes_every_section_and_the_backends_agree(tmp_path):
    out = tmp_path / "smoke.json"
    before = sorted(RESULTS.iterdir())
    done = run_script("--smoke", "--out", str(out), timeout=110)
    assert done.returncode == 0, done.stderr[-4000:]
    assert sorted(RESULTS.iterdir()) == before, "--smoke writes only to --out"
    result = json.loads(out.read_text())
    assert result["mode"] == "smoke" and all(result[key] for key in ("device", "date", "torch", "transformers"))
    for section in SECTIONS:
        assert section in result, section

    tests = result["kernel_tests"]
    assert tests["passed"] and tests["environment"] == {"TRITON_INTERPRET": "1", "ATTNSCOPE_TEST_DEVICE": "cpu"}
    for dtype in ("fp32", "fp16", "bf16"):
        assert tests["by_dtype"][dtype] == {"passed": 1, "failed": 0, "errors": 0, "skipped": 0}, dtype

    engine = result["engine"]
    assert engine["passed"], json.dumps(engine, indent=1)[:4000]
    assert [model["config"] for model in engine["models"]] == ["smollm2-135m", "llama-3.2-1b", "llama-3.1-8b"]
    for model in engine["models"]:
        assert model["layers"] == 2 and set(model["rows"]) == {"0", "1"}
        assert all(0 <= check["worst_ratio"] <= 1 for check in model["head_means"].values())
    logits = result["logits"]
    assert logits["passed"] and logits["models"][0]["sdpa_equal"]
    assert all(model["capture_equal"] and model["layers_captured"] == 2 for model in logits["models"])

    ops = {(row["op"], row["shape"]) for row in result["timings"]}
    for shape in ("smollm2-135m", "llama-3.1-8b"):
        assert {("sdpa", shape), ("attention_stats", shape), ("taylor_order10", shape)} <= ops
    assert {("forward", "llama-3.1-8b"), ("engine.run", "llama-3.1-8b"), ("pooled_map", "llama-3.1-8b")} <= ops
    assert all(row["median_ms"] > 0 and row["peak_bytes"] is None for row in result["timings"])
    targets = {target["target"]: target for target in result["targets"]}
    assert len(targets) == 6 and targets["engine_vs_forward_memory[llama-3.1-8b]"]["ratio"] is None
    assert all(target["ratio"] > 0 for name, target in targets.items() if "memory" not in name)


def test_without_cuda_it_refuses_in_one_sentence():
    done = run_script(timeout=60, CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip() == ("gpu_check needs a CUDA GPU and torch finds none here; run it on a GPU machine, or "
                                   "pass --smoke to check the script itself on the CPU.")
