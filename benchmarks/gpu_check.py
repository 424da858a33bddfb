"""GPU check (issue 12): attnscope's kernels and engine compiled on a CUDA GPU, checked and timed in one run.

Four parts, each a section of the results file:
    kernel_tests  tests/kernels run compiled on the GPU (TRITON_INTERPRET=0) in a pytest subprocess, with
                  ATTNSCOPE_TEST_DEVICE=cuda so tests/kernels/helpers.py puts every tensor there; the tests already
                  run each case in fp32, fp16 and bf16, and the pass / fail counts are read per dtype from pytest's
                  JUnit report ("no dtype" for the tests that run in one precision only).
    engine        attnscope.engine.run(model, ids, backend="triton") against backend="torch" on the same GPU, on
                  random-weight bf16 models built from benchmarks/configs/ (SmolLM2-135M, Llama-3.2-1B,
                  Llama-3.1-8B with every layer; no download: only the architecture is copied): every layer's head
                  means, and the row statistics of the first and last layer recomputed by both backends from the
                  same captured q/k/v. Tolerances are in TOLERANCES and written beside each comparison.
    logits        the plain forward's logits (the "attnscope" attention with nothing active) against the same
                  forward under capture.capturing() and, for SmolLM2, against attn_implementation="sdpa" with the
                  same weights: capture must change nothing, so these must be equal bit for bit.
    timings       triton.testing.do_bench (median, 20th and 80th percentile), after a warm-up, side by side in one
                  run, with torch.cuda.max_memory_allocated: attention_stats with v against SDPA (flash) at 16k
                  tokens on SmolLM2's and Llama-8B's head shapes; Taylor order 10 against attention_stats; the
                  whole-model head statistics (engine.run) of the 8B model against its plain bf16 forward at 32k
                  tokens; pooled maps of every head of one 8B-shaped layer at 128k tokens (256 x 256 tiles).
                  Random bf16 inputs (randn; never zeros).
    targets       the issue's targets, met or not, with the measured ratio: attention_stats <= 1.5x SDPA, Taylor
                  order 10 <= 2x attention_stats, engine.run <= 1.3x the forward's time and <= 1.2x its peak memory.
    estimates     each timed kernel (SDPA as FlashAttention, attention_stats, Taylor order 10, pooled maps) against
                  its floor on an H100 SXM at the shape it was timed (benchmarks/h100_estimates.py, issue 27):
                  measured time / floor, which resource bounds it, and the ratio to FlashAttention expected on paper
                  beside the one measured against SDPA. On another GPU the floors are still an H100's.

Results go to benchmarks/results/<GPU name>.json (<GPU name>-partial.json with --quick or --skip-tests) and a table
is printed last. It needs torch, triton and transformers only (no streamlit, no network): where attnscope is not
installed, core/ and kernels/ are laid out as the package in a temporary folder of links. Without a CUDA GPU it
exits with status 2, unless --smoke: the same steps on the CPU at tiny shapes (Triton's interpreter, 2-layer narrow
models, 3 of the kernel tests, time.perf_counter instead of do_bench, no memory figures), so CI can check that
this script still runs; --smoke writes only where --out says.

    python benchmarks/gpu_check.py                   # on a CUDA machine: everything (not yet timed on a GPU)
    python benchmarks/gpu_check.py --quick           # 4k / 8k / 32k tokens instead of 16k / 32k / 128k
    python benchmarks/gpu_check.py --skip-tests      # engine, logits and timings only
    python benchmarks/gpu_check.py --smoke --out /tmp/smoke.json   # CPU, tiny shapes: checks the script itself
"""

from __future__ import annotations

import argparse
import atexit
import copy
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "benchmarks" / "configs"
SECTIONS = ("kernel_tests", "engine", "logits", "timings", "targets", "estimates")
NEEDS_CUDA = ("gpu_check needs a CUDA GPU and torch finds none here; run it on a GPU machine, or pass --smoke to "
              "check the script itself on the CPU.")

MODELS = ("smollm2-135m", "llama-3.2-1b", "llama-3.1-8b")  # benchmarks/configs/<name>.json
HEAD_SHAPES = ("smollm2-135m", "llama-3.1-8b")  # the kernel timings use these models' attention shapes
WHOLE_MODEL = "llama-3.1-8b"
STAT_FIELDS = ("entropy", "normalized_entropy", "max_weight", "sink_mass", "mean_distance")  # engine.FIELDS
ROW_FIELDS = ("lse", "entropy", "max_weight", "sink_mass", "mean_distance")  # of kernels.AttentionStats
# Triton against torch. Head means, elementwise |triton - torch| <= atol + rtol |torch|: each backend's layer output
# feeds the next layer, so later layers see inputs that differ by bf16 rounding. Row statistics, elementwise: both
# backends read the same q/k/v and accumulate the logits and sums in fp32. The attention output, normwise
# ||triton - torch|| / ||torch|| <= limit: the compiled kernel rounds the weights to bf16 before P @ V (as flash
# attention does) where the torch path keeps them in fp32, so small outputs differ by several bf16 steps; METHOD.md's
# range for bf16 operands is 1e-3 to 1e-2.
TOLERANCES = {
    "head_means": {"rtol": 1e-2, "atol": 1e-3},
    "rows": {"rtol": 1e-3, "atol": 1e-4},
    "rows_output": {"normwise": 1e-2},
}
TARGETS = {  # name -> (what is divided by what, largest ratio allowed)
    "attention_stats_vs_sdpa": ("attention_stats time / SDPA time", 1.5),
    "taylor10_vs_attention_stats": ("Taylor order 10 time / attention_stats time", 2.0),
    "engine_vs_forward_time": ("engine.run time / plain forward time", 1.3),
    "engine_vs_forward_memory": ("engine.run peak memory / plain forward peak memory", 1.2),
}
NO_FIGURES = ("peak_bytes", "peak_extra_bytes", "median_ms", "p20_ms", "p80_ms")
DTYPE_IN_ID = re.compile(r"(?<![A-Za-z0-9])(fp32|fp16|bf16)(?![A-Za-z0-9])")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one run; the full check, --quick and --smoke differ only here."""

    kernel_tokens: int  # attention_stats / SDPA / Taylor timings
    model_tokens: int  # whole-model timing of the 8B shape
    pooled_tokens: int  # pooled maps of one layer
    compare_tokens: int  # engine triton vs torch, and the logits check
    tiny: bool = False  # 2-layer narrow models and head_dim 16 (--smoke)
    pooled_tiles: int = 256  # tiles per side of a pooled map (the dashboard's default cell limit)


FULL = Plan(kernel_tokens=16384, model_tokens=32768, pooled_tokens=131072, compare_tokens=4096)
QUICK = Plan(kernel_tokens=4096, model_tokens=8192, pooled_tokens=32768, compare_tokens=1024)
SMOKE = Plan(kernel_tokens=64, model_tokens=64, pooled_tokens=128, compare_tokens=48, tiny=True, pooled_tiles=16)


# --- set-up ------------------------------------------------------------------------------------------------------


def make_importable() -> Path | None:
    """Make `import attnscope` work from this tree when the package is not installed (a bare GPU machine).

    The installed layout is core/ as attnscope with kernels/ as attnscope.kernels (pyproject.toml); the same layout
    is made of symbolic links in a temporary folder, put first on sys.path. Returns that folder (for the pytest
    subprocess's PYTHONPATH), or None when attnscope is importable already.
    """
    if importlib.util.find_spec("attnscope") is not None:
        return None
    folder = Path(tempfile.mkdtemp(prefix="attnscope-tree-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # the links only, never what they point to
    package = folder / "attnscope"
    package.mkdir()
    for entry in (ROOT / "core").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    (package / "kernels").symlink_to(ROOT / "kernels")
    sys.path.insert(0, str(folder))
    return folder


def load_config(name: str, *, tiny: bool):
    """The transformers config of benchmarks/configs/<name>.json; tiny: 2 layers, head_dim 16 (so the hidden size
    is 16 x the query heads), 256 tokens of vocabulary, the same head counts and rope settings."""
    from transformers import AutoConfig

    values = {key: value for key, value in json.loads((CONFIGS / f"{name}.json").read_text()).items()
              if not key.startswith("_") and key not in ("architectures", "torch_dtype")}
    if tiny:
        values.update(num_hidden_layers=2, hidden_size=16 * values["num_attention_heads"], head_dim=16,
                      intermediate_size=128, vocab_size=256, bos_token_id=0, eos_token_id=0)
    return AutoConfig.for_model(values.pop("model_type"), **values)


def head_shape(config) -> tuple[int, int, int]:
    """(query heads, key/value heads, head_dim) of a config."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_attention_heads, config.num_key_value_heads, head_dim


def build_model(config, device: torch.device, *, attn_implementation: str | None = None, seed: int = 0):
    """Random bf16 weights built on `device` (no download), the "attnscope" attention unless told otherwise."""
    from transformers import AutoModelForCausalLM

    from attnscope.capture import ATTENTION_NAME, register_attention

    register_attention()
    torch.manual_seed(seed)
    with torch.device(device):  # a copy: each model keeps its own config (and attention implementation)
        model = AutoModelForCausalLM.from_config(copy.deepcopy(config), dtype=torch.bfloat16,
                                                 attn_implementation=attn_implementation or ATTENTION_NAME)
    return model.eval()


def random_ids(n_tokens: int, vocab: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (1, n_tokens), generator=torch.Generator().manual_seed(seed)).to(device)


def random_qkv(n_heads: int, n_kv: int, head_dim: int, n_tokens: int, device: torch.device, seed: int = 0):
    """(1, H, T, D) queries and (1, Hkv, T, D) keys and values, standard normal, bf16."""
    generator = torch.Generator(device=device).manual_seed(seed)
    shapes = ((1, n_heads, n_tokens, head_dim), (1, n_kv, n_tokens, head_dim), (1, n_kv, n_tokens, head_dim))
    return tuple(torch.randn(shape, generator=generator, device=device, dtype=torch.bfloat16) for shape in shapes)


def release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# --- measuring ---------------------------------------------------------------------------------------------------


def timed(fn, device: torch.device) -> dict:
    """Median and 20th / 80th percentile in ms of `fn`, already warmed up: do_bench on CUDA, perf_counter (3 calls)
    on the CPU."""
    if device.type == "cuda":
        import triton.testing

        median, low, high = triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
        return {"median_ms": median, "p20_ms": low, "p80_ms": high}
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {"median_ms": times[1], "p20_ms": times[0], "p80_ms": times[2]}


def peak_memory(fn, device: torch.device) -> dict:
    """One call's peak of torch.cuda.max_memory_allocated (everything held, the model too) and that peak less what
    was held before the call; None on the CPU."""
    if device.type != "cuda":
        fn()
        return {"peak_bytes": None, "peak_extra_bytes": None}
    release(device)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del result
    return {"peak_bytes": peak, "peak_extra_bytes": peak - before}


def measure(fn, device: torch.device) -> dict:
    """Warm-up (compilation, autotuning, allocator), then memory, then time. An op that raises is recorded with its
    error (and the traceback printed), so the other figures of the run still come out."""
    try:
        fn()
        release(device)
        return {**peak_memory(fn, device), **timed(fn, device), "error": None}
    except Exception as error:  # out of memory, a Triton compile error: a finding of the check, not its end
        return {**dict.fromkeys(NO_FIGURES), "error": failure(error)}


def ms(row: dict) -> str:
    return f"{row['median_ms']:10.3f} ms" if row["error"] is None else f"FAILED: {row['error']}"


def failure(error: Exception) -> str:
    traceback.print_exc()
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def attempt(part, *args, **kwargs) -> dict:
    """part(*args, **kwargs), or its error as a failed result."""
    try:
        return part(*args, **kwargs)
    except Exception as error:
        return {"error": failure(error), "passed": False}


def sdpa_function(q, k, v, device: torch.device):
    """SDPA's causal forward with grouped-query heads, pinned to the flash kernel on CUDA where it takes the shape;
    returns (function, backend name)."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def default():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    if device.type != "cuda":
        return default, "default (CPU)"

    def flash():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return default()

    try:
        flash()
    except RuntimeError as error:
        print(f"SDPA flash refused the shape ({str(error).splitlines()[0]}); timing SDPA's own choice", flush=True)
        return default, "default"
    return flash, "flash"


def worst_ratio(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> dict:
    """max |actual - expected| and the largest |actual - expected| / (atol + rtol |expected|): <= 1 passes."""
    actual, expected = actual.double(), expected.double()
    difference = (actual - expected).abs()
    ratio = (difference / (atol + rtol * expected.abs())).max().item()
    return {"max_abs_diff": difference.max().item(), "worst_ratio": ratio, "rtol": rtol, "atol": atol,
            "passed": bool(ratio <= 1.0)}  # a NaN anywhere makes the ratio NaN, which fails


def normwise(actual: torch.Tensor, expected: torch.Tensor, limit: float) -> dict:
    """||actual - expected|| / ||expected|| over the whole tensor, and its ratio to `limit` (<= 1 passes)."""
    actual, expected = actual.double(), expected.double()
    error = ((actual - expected).norm() / expected.norm()).item()
    return {"max_abs_diff": (actual - expected).abs().max().item(), "relative_error": error,
            "worst_ratio": error / limit, "limit": limit, "passed": bool(error <= limit)}


# --- the parts ---------------------------------------------------------------------------------------------------


def kernel_tests(*, smoke: bool, tree: Path | None) -> dict:
    """tests/kernels in a pytest subprocess, compiled on CUDA (or, --smoke, 3 cases on the CPU interpreter)."""
    env = dict(os.environ, TRITON_INTERPRET="1" if smoke else "0", ATTNSCOPE_TEST_DEVICE="cpu" if smoke else "cuda")
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    selection = (["tests/kernels/test_attention_stats.py::test_triton_matches_reference", "-k", "T63"] if smoke
                 else ["tests/kernels"])
    workers = []
    if not smoke and importlib.util.find_spec("xdist") is not None:
        workers = ["-n", str(min(8, os.cpu_count() or 1))]
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "junit.xml"
        command = [sys.executable, "-m", "pytest", *selection, "-q", "-p", "no:cacheprovider", *workers,
                   f"--junit-xml={report}"]
        print("kernel tests:", " ".join(command[2:]), flush=True)
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        by_dtype, failures = read_junit(report) if report.exists() else ({}, [])
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else done.stderr.strip()[-500:]
    print(f"kernel tests: {summary} ({seconds:.0f} s)", flush=True)
    failed = sum(counts["failed"] + counts["errors"] for counts in by_dtype.values())
    return {"command": " ".join(["pytest", *command[3:-1]]),
            "environment": {name: env[name] for name in ("TRITON_INTERPRET", "ATTNSCOPE_TEST_DEVICE")},
            "returncode": done.returncode, "summary": summary, "seconds": seconds, "by_dtype": by_dtype,
            "failures": failures[:30], "passed": done.returncode == 0 and failed == 0 and bool(by_dtype)}


def read_junit(report: Path) -> tuple[dict, list[str]]:
    """Outcome counts per dtype named in the test id, and the failed tests with the first line of their message."""
    by_dtype: dict[str, dict[str, int]] = {}
    failures = []
    for case in ElementTree.parse(report).iter("testcase"):
        name = case.get("name", "")
        match = DTYPE_IN_ID.search(name)
        counts = by_dtype.setdefault(match.group(1) if match else "no dtype",
                                     dict.fromkeys(("passed", "failed", "errors", "skipped"), 0))
        problem = next((case.find(tag) for tag in ("failure", "error") if case.find(tag) is not None), None)
        if problem is not None:
            counts["failed" if problem.tag == "failure" else "errors"] += 1
            message = (problem.get("message") or "").splitlines()
            failures.append(f"{case.get('classname')}::{name}: {message[0] if message else problem.tag}")
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return dict(sorted(by_dtype.items())), failures


def compare_engine(name: str, model, ids: torch.Tensor) -> dict:
    """engine.run with backend="triton" against backend="torch": every layer's head means, and the rows of the
    first and last layer (and their attention output) recomputed by both backends from the q/k/v the Triton run
    captured."""
    from attnscope import engine, kernels

    n_layers = model.config.num_hidden_layers
    keep = sorted({0, n_layers - 1})
    fast = engine.run(model, ids, backend="triton", keep_layers=keep)
    slow = engine.run(model, ids, backend="torch")
    head_means = {field: worst_ratio(fast.stacked(field), slow.stacked(field), **TOLERANCES["head_means"])
                  for field in STAT_FIELDS}
    failing_layers = sorted({
        layer for field in STAT_FIELDS for layer in range(n_layers)
        if not worst_ratio(fast.stacked(field)[layer], slow.stacked(field)[layer], **TOLERANCES["head_means"])["passed"]
    })
    rows = {}
    for index in keep:
        layer = fast.layer(index)
        options = dict(causal=layer.causal, scale=layer.scale, argmax=False)
        triton_rows = kernels.attention_stats(layer.q, layer.k, layer.v, backend="triton", **options)
        torch_rows = kernels.attention_stats(layer.q, layer.k, layer.v, backend="torch", **options)
        rows[str(index)] = {
            field: worst_ratio(getattr(triton_rows, field), getattr(torch_rows, field), **TOLERANCES["rows"])
            for field in ROW_FIELDS
        }
        rows[str(index)]["output"] = normwise(triton_rows.output, torch_rows.output,
                                              TOLERANCES["rows_output"]["normwise"])
    logprob_diff = (fast.token_logprobs - slow.token_logprobs).abs()
    passed = all(c["passed"] for c in head_means.values()) and all(
        c["passed"] for layer in rows.values() for c in layer.values())
    result = {
        "config": name, "layers": n_layers, "heads": head_shape(model.config), "tokens": ids.shape[1],
        "head_means": head_means, "failing_layers": failing_layers, "rows": rows,
        # How peaked the random model's attention is (1 = uniform over the visible keys), so the comparison can be
        # judged: random weights give broad attention.
        "normalized_entropy_mean": slow.stacked("normalized_entropy").mean().item(),
        "max_weight_mean": slow.stacked("max_weight").mean().item(),
        "token_logprob_max_abs_diff": logprob_diff.max().item(),  # reported, not judged: bf16 logits
        "token_logprob_mean_abs_diff": logprob_diff.mean().item(),
        "passed": passed,
    }
    worst = max(c["worst_ratio"] for c in head_means.values())
    print(f"engine {name} ({n_layers} layers, {ids.shape[1]} tokens): triton vs torch head means worst "
          f"{worst:.3g} of tolerance, {'passed' if passed else 'FAILED'}", flush=True)
    return result


def compare_logits(name: str, config, model, ids: torch.Tensor, *, with_sdpa_twin: bool) -> dict:
    """The plain forward's logits against the same forward under capture.capturing() (and an SDPA twin)."""
    from attnscope import capture

    with torch.no_grad():
        plain = model(input_ids=ids, use_cache=False).logits
        with capture.capturing() as captured:
            recorded = model(input_ids=ids, use_cache=False).logits
        result = {"config": name, "tokens": ids.shape[1], "layers_captured": len(captured),
                  "capture_equal": torch.equal(plain, recorded),
                  "capture_max_abs_diff": (plain.float() - recorded.float()).abs().max().item()}
        del recorded, captured
        passed = result["capture_equal"] and result["layers_captured"] == model.config.num_hidden_layers
        if with_sdpa_twin:
            twin = build_model(config, ids.device, attn_implementation="sdpa")
            twin.load_state_dict(model.state_dict())
            reference = twin(input_ids=ids, use_cache=False).logits
            result.update(sdpa_equal=torch.equal(plain, reference),
                          sdpa_max_abs_diff=(plain.float() - reference.float()).abs().max().item())
            passed = passed and result["sdpa_equal"]
            del twin, reference
    result["passed"] = passed
    print(f"logits {name}: capture {'changes nothing' if result['capture_equal'] else 'CHANGES them'}"
          + ("" if not with_sdpa_twin else f", sdpa twin {'equal' if result['sdpa_equal'] else 'DIFFERS'}"),
          flush=True)
    return result


def kernel_timings(plan: Plan, device: torch.device, backend: str) -> list[dict]:
    """attention_stats with v, SDPA and Taylor order 10 on each model's attention shape at plan.kernel_tokens."""
    from attnscope import kernels

    rows = []
    for name in HEAD_SHAPES:
        n_heads, n_kv, head_dim = head_shape(load_config(name, tiny=plan.tiny))
        n_tokens = plan.kernel_tokens
        q, k, v = random_qkv(n_heads, n_kv, head_dim, n_tokens, device)
        sdpa, sdpa_backend = sdpa_function(q, k, v, device)
        ops = {
            "sdpa": sdpa,
            "attention_stats": lambda: kernels.attention_stats(q, k, v, backend=backend),
            "taylor_order10": lambda: kernels.taylor_attention(q, k, v, order=10, backend=backend),
        }
        for op, fn in ops.items():
            row = {"op": op, "shape": name, "heads": [n_heads, n_kv, head_dim], "tokens": n_tokens,
                   "backend": sdpa_backend if op == "sdpa" else backend, **measure(fn, device)}
            rows.append(row)
            print(f"{op:16s} {name:13s} T={n_tokens:6d} {ms(row)}", flush=True)
        del q, k, v
        release(device)
    return rows


def model_timings(plan: Plan, model, device: torch.device, backend: str) -> list[dict]:
    """The 8B-shaped model's plain bf16 forward (SDPA inside) against engine.run at plan.model_tokens."""
    from attnscope import engine

    ids = random_ids(plan.model_tokens, model.config.vocab_size, device, seed=1)

    def forward():
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False).logits

    rows = []
    for op, fn in (("forward", forward), ("engine.run", lambda: engine.run(model, ids, backend=backend))):
        row = {"op": op, "shape": WHOLE_MODEL, "layers": model.config.num_hidden_layers, "tokens": plan.model_tokens,
               "backend": "sdpa" if op == "forward" else backend, **measure(fn, device)}
        rows.append(row)
        print(f"{op:16s} {WHOLE_MODEL:13s} T={plan.model_tokens:6d} {ms(row)}", flush=True)
        release(device)
    return rows


def pooled_timing(plan: Plan, device: torch.device, backend: str) -> dict:
    """Pooled maps of every head of one 8B-shaped layer at plan.pooled_tokens, plan.pooled_tiles tiles a side."""
    from attnscope import kernels

    n_heads, n_kv, head_dim = head_shape(load_config(WHOLE_MODEL, tiny=plan.tiny))
    q, k, _ = random_qkv(n_heads, n_kv, head_dim, plan.pooled_tokens, device)
    block = -(-plan.pooled_tokens // plan.pooled_tiles)
    row = {"op": "pooled_map", "shape": WHOLE_MODEL, "heads": [n_heads, n_kv, head_dim], "tokens": plan.pooled_tokens,
           "block": block, "backend": backend,
           **measure(lambda: kernels.pooled_attention_map(q, k, block=block, backend=backend), device)}
    print(f"{'pooled_map':16s} {WHOLE_MODEL:13s} T={plan.pooled_tokens:6d} {ms(row)}", flush=True)
    del q, k
    release(device)
    return row


def targets(timings: list[dict]) -> list[dict]:
    """Each target of the issue with the ratio measured in this run."""
    def find(op, shape):
        return next(row for row in timings if row["op"] == op and row["shape"] == shape)

    pairs = [(f"attention_stats_vs_sdpa[{shape}]", "attention_stats_vs_sdpa", find("attention_stats", shape),
              find("sdpa", shape), "median_ms") for shape in HEAD_SHAPES]
    pairs += [(f"taylor10_vs_attention_stats[{shape}]", "taylor10_vs_attention_stats", find("taylor_order10", shape),
               find("attention_stats", shape), "median_ms") for shape in HEAD_SHAPES]
    pairs += [(f"engine_vs_forward_time[{WHOLE_MODEL}]", "engine_vs_forward_time", find("engine.run", WHOLE_MODEL),
               find("forward", WHOLE_MODEL), "median_ms"),
              (f"engine_vs_forward_memory[{WHOLE_MODEL}]", "engine_vs_forward_memory", find("engine.run", WHOLE_MODEL),
               find("forward", WHOLE_MODEL), "peak_bytes")]
    results = []
    for label, kind, measured, baseline, key in pairs:
        what, limit = TARGETS[kind]
        ratio = None if measured[key] is None or baseline[key] is None else measured[key] / baseline[key]
        results.append({"target": label, "what": what, "limit": limit, "ratio": ratio,
                        "met": None if ratio is None else bool(ratio <= limit), "tokens": measured["tokens"]})
    return results


ESTIMATED = {"sdpa": "flash", "attention_stats": "attention_stats", "taylor_order10": "taylor",
             "pooled_map": "pooled_map"}  # timed op -> its op in benchmarks/h100_estimates.py


def against_estimates(timings: list[dict], plan: Plan) -> list[dict]:
    """Each timed kernel against its H100 floor at the shape it was timed: measured / floor (>= 1; how far from what
    the card allows), and its ratio to SDPA beside the ratio to FlashAttention on paper."""
    import h100_estimates  # beside this file

    sdpa = {(row["shape"], row["tokens"]): row["median_ms"] for row in timings if row["op"] == "sdpa"}
    results = []
    for row in timings:
        if row["op"] not in ESTIMATED:
            continue
        heads, kv_heads, head_dim = row["heads"]
        extra = {"tiles": plan.pooled_tiles} if row["op"] == "pooled_map" else {}
        paper = h100_estimates.estimate(ESTIMATED[row["op"]], tokens=row["tokens"], heads=heads, kv_heads=kv_heads,
                                        head_dim=head_dim, batch=1, **extra)
        measured = row["median_ms"]
        baseline = sdpa.get((row["shape"], row["tokens"]))
        results.append({
            "op": row["op"], "shape": row["shape"], "tokens": row["tokens"], "floor_ms": paper.floor_s * 1e3,
            "bound": paper.bound, "measured_ms": measured,
            "measured_over_floor": None if measured is None else measured / (paper.floor_s * 1e3),
            "paper_ratio_to_flash": paper.ratio_to_flash,
            "measured_ratio_to_sdpa": None if measured is None or not baseline else measured / baseline,
        })
    return results


# --- the run -----------------------------------------------------------------------------------------------------


def versions() -> dict:
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"torch": torch.__version__, "triton": triton_version, "transformers": transformers.__version__,
            "python": platform.python_version()}


def run_check(plan: Plan, device: torch.device, *, skip_tests: bool, tree: Path | None) -> dict:
    smoke = device.type != "cuda"
    backend = "triton"  # compiled on CUDA; Triton's interpreter on the CPU (--smoke)
    results: dict = {
        "device": torch.cuda.get_device_name(device) if not smoke else f"cpu ({platform.machine()}), smoke",
        "mode": "smoke" if smoke else "cuda",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **versions(), "plan": dataclasses.asdict(plan), "tolerances": TOLERANCES,
    }
    if not smoke:
        properties = torch.cuda.get_device_properties(device)
        results.update(gpu_memory_bytes=properties.total_memory, multiprocessors=properties.multi_processor_count)
    results["kernel_tests"] = {"skipped": True} if skip_tests else kernel_tests(smoke=smoke, tree=tree)

    comparisons, logits, timings = [], [], []
    for name in MODELS:
        config = load_config(name, tiny=plan.tiny)
        model = build_model(config, device)
        ids = random_ids(plan.compare_tokens, config.vocab_size, device)
        comparisons.append({"config": name, **attempt(compare_engine, name, model, ids)})
        logits.append({"config": name, **attempt(compare_logits, name, config, model, ids,
                                                   with_sdpa_twin=name == MODELS[0])})
        if name == WHOLE_MODEL:
            timings += model_timings(plan, model, device, backend)
        del model, ids
        release(device)
    results["engine"] = {"models": comparisons, "passed": all(c["passed"] for c in comparisons)}
    results["logits"] = {"models": logits, "passed": all(c["passed"] for c in logits)}
    timings = kernel_timings(plan, device, backend) + timings + [pooled_timing(plan, device, backend)]
    results["timings"] = timings
    results["targets"] = targets(timings)
    results["estimates"] = against_estimates(timings, plan)
    return results


def print_table(results: dict) -> None:
    gib = lambda n: "-" if n is None else f"{n / 2**30:.2f} GiB"  # noqa: E731
    print(f"\n{results['device']}: torch {results['torch']}, triton {results['triton']}, "
          f"transformers {results['transformers']}, {results['date']}")
    tests = results["kernel_tests"]
    if tests.get("skipped"):
        print("kernel tests: skipped (--skip-tests)")
    else:
        print(f"kernel tests ({tests['environment']}): {tests['summary']}")
        for dtype, counts in tests["by_dtype"].items():
            print(f"  {dtype:9s} " + "  ".join(f"{key} {value}" for key, value in counts.items()))
        for failure in tests["failures"][:10]:
            print(f"  FAILED {failure}")
    print("engine, backend triton vs torch (worst |diff| / tolerance; <= 1 passes):")
    for c in results["engine"]["models"]:
        if c.get("error"):
            print(f"  {c['config']:13s} FAILED: {c['error']}")
            continue
        means = max(x["worst_ratio"] for x in c["head_means"].values())
        rows = max(x["worst_ratio"] for layer in c["rows"].values() for x in layer.values())
        print(f"  {c['config']:13s} {c['layers']:2d} layers T={c['tokens']:5d}  head means {means:8.3g}  "
              f"rows {rows:8.3g}  logprob max diff {c['token_logprob_max_abs_diff']:.3g}  "
              f"{'passed' if c['passed'] else 'FAILED'}")
    for c in results["logits"]["models"]:
        if c.get("error"):
            print(f"  logits {c['config']:13s} FAILED: {c['error']}")
            continue
        twin = "" if "sdpa_equal" not in c else f"  sdpa twin {'equal' if c['sdpa_equal'] else 'DIFFERENT'}"
        print(f"  logits {c['config']:13s} capture {'equal' if c['capture_equal'] else 'DIFFERENT'}{twin}")
    print(f"{'op':16s} {'shape':13s} {'T':>7s} {'median ms':>11s} {'p20':>10s} {'p80':>10s} {'peak':>11s} "
          f"{'peak extra':>11s}")
    for row in results["timings"]:
        if row["error"]:
            print(f"{row['op']:16s} {row['shape']:13s} {row['tokens']:7d} FAILED: {row['error']}")
            continue
        print(f"{row['op']:16s} {row['shape']:13s} {row['tokens']:7d} {row['median_ms']:11.3f} {row['p20_ms']:10.3f} "
              f"{row['p80_ms']:10.3f} {gib(row['peak_bytes']):>11s} {gib(row['peak_extra_bytes']):>11s}")
    for target in results["targets"]:
        if target["ratio"] is None:
            verdict = "not measured" if results["mode"] == "smoke" else "no figure (see the errors above)"
        else:
            verdict = f"{target['ratio']:.2f}x (limit {target['limit']}x) {'met' if target['met'] else 'NOT MET'}"
        print(f"target {target['target']:42s} {verdict}")
    h100 = "" if "H100" in results["device"] else " (this device is no H100: the floors are an H100 SXM's)"
    print(f"against the H100 floors of benchmarks/h100_estimates.py{h100}:")
    for e in results["estimates"]:
        if e["measured_ms"] is None:
            print(f"  {e['op']:16s} {e['shape']:13s} T={e['tokens']:6d} floor {e['floor_ms']:.3g} ms: not measured")
            continue
        to_sdpa = "-" if e["measured_ratio_to_sdpa"] is None else f"{e['measured_ratio_to_sdpa']:.2f}x"
        print(f"  {e['op']:16s} {e['shape']:13s} T={e['tokens']:6d} {e['measured_ms']:9.3f} ms = "
              f"{e['measured_over_floor']:7.2f}x its floor {e['floor_ms']:.3g} ms ({e['bound']}); vs flash "
              f"{e['paper_ratio_to_flash']:.2f}x on paper, {to_sdpa} measured against SDPA")
    if results["mode"] == "smoke":
        print("(smoke: CPU, Triton interpreter, tiny shapes; the figures check the script, not the GPU targets)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter lengths (4k / 8k / 32k tokens)")
    parser.add_argument("--skip-tests", action="store_true", help="leave out the compiled kernel tests")
    parser.add_argument("--out", type=Path, help="write the results here instead of benchmarks/results/")
    parser.add_argument("--smoke", action="store_true",
                        help="run every step on the CPU at tiny shapes (Triton interpreter): checks the script")
    args = parser.parse_args()
    # Read when a @triton.jit function first runs, so before anything imports attnscope.kernels.
    os.environ["TRITON_INTERPRET"] = "1" if args.smoke else "0"
    if not args.smoke and not torch.cuda.is_available():
        print(NEEDS_CUDA, file=sys.stderr)
        sys.exit(2)
    tree = make_importable()
    plan = SMOKE if args.smoke else QUICK if args.quick else FULL
    device = torch.device("cpu" if args.smoke else "cuda")
    results = run_check(plan, device, skip_tests=args.skip_tests, tree=tree)
    print_table(results)
    out = args.out
    if out is None and not args.smoke:
        slug = re.sub(r"[^a-z0-9]+", "-", results["device"].lower()).strip("-")
        out = ROOT / "benchmarks" / "results" / f"{slug}{'-partial' if args.quick or args.skip_tests else ''}.json"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
