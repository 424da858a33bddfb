"""Compile every Triton kernel attnscope launches for real GPUs, on a machine without one (issue 27).

Each kernel is compiled as Triton compiles it at launch: triton.compile of the kernel's source with the compile-time
constants its launcher passes (the *_constexprs helpers in each fused.py, which the launchers call too) and Triton's
runtime specialisation mimicked: stride arguments equal to 1 become the constant 1; pointers, the other strides and
the head dims carry tt.divisibility 16 (every head dim here is a multiple of 16, and so is contribution_l1's width,
d_model: 384, 576, 640, 4096); sequence lengths and other ints are plain i32 (the general case); floats are fp32.
Targets sm_80 (A100) and sm_90a (H100, H200), through the ptxas that Triton ships and runs itself. Read per compile:
    registers     registers per thread (ptxas "Used N registers")
    spill_bytes   bytes of spill stores per thread (ptxas "N bytes spill stores"): a flash-style kernel that spills
                  loses a large part of its speed
    shared_bytes  shared memory per block (Triton's metadata.shared), against SHARED_LIMITS: 163 KB on sm_80 (whose
                  table entries cards of capability 8.6 and 8.9 take too, with 99 KB) and 227 KB on sm_90

The matrix (matrix()): every kernel in each variant the product launches (causal or not, sliding window, softcap,
learned sinks, with or without V, top-k, the pooled block sizes, the Taylor denominators and orders, clamps) in bf16,
each kernel's main variant also in fp16 and fp32, at head dims 64, 128 and 256 (contribution_l1, whose tiles do not
depend on its width, once, with head_dim 0: launch.ANY_HEAD_DIM), for both targets, at the configuration
kernels/launch.py launches (default: true), plus the alternatives considered for each table entry (default: false).
One row per compile in the JSON ({"rows": [...]}, keys kernel, variant, dtype, head_dim, arch, block_m, block_n,
num_warps, num_stages, constexprs, registers, spill_bytes, shared_bytes, default, and spill_load_bytes, stack_bytes,
seconds, error). The exit status is 1 when a compile fails, or when a default row spills a register or needs more
shared memory than its target has (an sm_80 default over 99 KB too); a table of the rows is printed last.

    python benchmarks/gpu_compile.py --out benchmarks/results/gpu-compile.json     # the whole matrix
    python benchmarks/gpu_compile.py --subset ci --out /tmp/gpu-compile-ci.json    # what CI runs
    python benchmarks/gpu_compile.py --subset defaults --arch sm_90a --kernel taylor_attention --out F.json

The whole matrix is 618 compiles (278 of them defaults), about 25 minutes with 2 workers on 2 CPU cores: 1-20 s
each, most of it ptxas, and up to 2 minutes for the alternatives that spill heavily (74 minutes on cores shared with
a test run; contribution_l1's 36 take 20 s). The CI subset is the default configuration of every launch-table entry
at head dims 128 and 256 (contribution_l1: its one width) for bf16 and fp32, in the kernel's main variant
(attention_stats in both of its table variants), on both targets: 52 compiles, about 2 minutes. Results are cached
in <out>.cache.json, keyed by the kernel's Triton cache key (its source, its first line's number and the device
functions it calls), Triton's version, the constants, the options and the target, so a rerun compiles only what
changed.
"""

from __future__ import annotations

import argparse
import atexit
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import inspect
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Read by Triton when it is imported: compile even when Triton's cache holds the kernel (so that ptxas runs), print
# ptxas's report, never interpret; FP fusion as Triton 3.9 defaults to (set, to silence its warning).
os.environ.update(TRITON_ALWAYS_COMPILE="1", TRITON_DUMP_PTXAS_LOG="1", TRITON_INTERPRET="0",
                  TRITON_DEFAULT_FP_FUSION="1")
if "TRITON_CACHE_DIR" not in os.environ:  # Triton's own cache, of no use here: a folder removed at exit
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="attnscope-gpu-compile-")
    atexit.register(shutil.rmtree, os.environ["TRITON_CACHE_DIR"], ignore_errors=True)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import make_importable  # noqa: E402

make_importable()

from attnscope.kernels import launch  # noqa: E402
from attnscope.kernels.attention_stats import fused as stats_fused  # noqa: E402
from attnscope.kernels.contributions import fused as contributions_fused  # noqa: E402
from attnscope.kernels.launch import LaunchConfig  # noqa: E402
from attnscope.kernels.pooled_map import fused as pooled_fused  # noqa: E402
from attnscope.kernels.taylor import fused as taylor_fused  # noqa: E402

ARCHS = {"sm_80": ("sm80", 80), "sm_90a": ("sm90", 90)}  # target -> (launch-table family, Triton's capability)
SHARED_LIMITS = {"sm_80": 163 * 1024, "sm_90a": 227 * 1024}  # shared memory a block may take, bytes
SHARED_SM86 = 99 * 1024  # sm_86 / sm_89 (RTX 30xx / 40xx, A10, L4), which launch the sm80 entries
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FLOAT_ARGUMENTS = ("scale", "softcap", "clamp_low", "clamp_high")
DIVISIBLE_INTS = ("head_dim", "value_dim", "width")  # 64, 128 or 256; width: d_model (384, 576, 640, 4096, ...)


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str  # the row's variant, what the launch asks for
    table: str  # its launch-table variant key
    flags: tuple  # (name, value) pairs: the *_constexprs keyword arguments beside dtype, head dim and config
    main: bool = False  # the product's main variant: also in fp16 and fp32, and with the alternatives


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    fn: object  # the @triton.jit function
    constexprs: Callable[..., dict]  # (dtype, head_dim, config, **flags) -> the launch's constexprs
    input_pointers: tuple[str, ...]  # pointers to tensors of the input dtype; the others are fp32 ...
    int64_pointers: tuple[str, ...]  # ... except these
    variants: tuple[Variant, ...]
    alternatives: dict[str, tuple[LaunchConfig, ...]]  # by precision: the configurations considered besides the
    # table's, compiled for the main variant in bf16 and fp32


def _variant(name: str, table: str = "", main: bool = False, **flags) -> Variant:
    return Variant(name, table, tuple(sorted(flags.items())), main)


_RULE = dict(causal=True, window=False, softcap=False)


def _stats(name, table, main=False, **rule):
    return _variant(name, table, main, with_v=table == "with_v", **{**_RULE, "sinks": False, **rule})


def _pooled(name, block, main=False, reduce="mean", hide_sink=False, **rule):
    return _variant(name, "", main, block=block, reduce=reduce, hide_sink=hide_sink, **{**_RULE, **rule})


def _taylor(name, order, denominator, main=False, clamp_low=False, clamp_high=False, **rule):
    return _variant(name, "", main, order=order, denominator=denominator, clamp_low=clamp_low, clamp_high=clamp_high,
                    **{**_RULE, "sinks": False, **rule})


_C = LaunchConfig
KERNELS: dict[str, KernelSpec] = {
    "attention_stats": KernelSpec(
        stats_fused.attention_stats_kernel,
        lambda dtype, head_dim, config, with_v, **rule: stats_fused.stats_constexprs(
            dtype=dtype, head_dim=head_dim, value_dim=head_dim if with_v else 1, with_v=with_v, config=config, **rule),
        ("q_ptr", "k_ptr", "v_ptr", "o_ptr"), ("argmax_ptr",),
        (
            _stats("causal+v", "with_v", main=True),  # engine.run, generation, taylor_error's target
            _stats("full+v", "with_v", causal=False),  # bidirectional encoders
            _stats("window+v", "with_v", window=True),  # Mistral, Gemma 3 local layers
            _stats("window+softcap+v", "with_v", window=True, softcap=True),  # Gemma 2
            _stats("window+sinks+v", "with_v", window=True, sinks=True),  # gpt-oss
            _stats("causal", "no_v", main=True),  # head_stats, pooled maps' first pass, collapse's top-k pass
            _stats("full", "no_v", causal=False),
            _stats("window+softcap+sinks", "no_v", window=True, softcap=True, sinks=True),
        ),
        # 64 x 64, 4 warps, 3 stages first: the launch before the table (the pooled maps' too)
        {"16-bit": (_C(64, 64, 4, 3), _C(64, 64, 4, 2), _C(64, 64, 8, 2), _C(128, 64, 8, 2), _C(128, 64, 8, 3),
                    _C(128, 32, 8, 2), _C(64, 32, 8, 2)),
         "fp32": (_C(64, 64, 4, 3), _C(64, 64, 8, 2), _C(64, 32, 4, 2), _C(64, 32, 8, 2), _C(32, 32, 4, 2),
                  _C(32, 32, 8, 2), _C(16, 32, 8, 2))},
    ),
    "attention_topk": KernelSpec(
        stats_fused.attention_topk_kernel,
        lambda dtype, head_dim, config, **rule: stats_fused.topk_constexprs(
            dtype=dtype, head_dim=head_dim, config=config, **rule),
        ("q_ptr", "k_ptr"), ("topk_i_ptr",),
        (
            _variant("causal", main=True, **_RULE),  # collapse's top-k (k up to 256): k is not a constant
            _variant("full", **{**_RULE, "causal": False}),
            _variant("window+softcap", **{**_RULE, "window": True, "softcap": True}),
        ),
        {"16-bit": (_C(64, 64, 4, 2), _C(64, 32, 4, 2), _C(64, 64, 8, 2), _C(128, 64, 8, 2), _C(64, 64, 8, 3)),
         "fp32": (_C(64, 64, 8, 2), _C(64, 32, 8, 2), _C(32, 32, 8, 2), _C(16, 32, 8, 2))},
    ),
    "pooled_map": KernelSpec(
        pooled_fused.pooled_map_kernel,
        lambda dtype, head_dim, config, **flags: pooled_fused.pooled_constexprs(
            dtype=dtype, head_dim=head_dim, config=config, **flags),
        ("q_ptr", "k_ptr"), (),
        (
            _pooled("causal mean block 512", 512, main=True),  # 256 x 256 tiles of 128k tokens
            _pooled("causal max hide_sink block 512", 512, reduce="max", hide_sink=True),
            _pooled("full mean block 512", 512, causal=False),
            _pooled("window+softcap mean block 100", 100, window=True, softcap=True),
        ),
        {"16-bit": (_C(64, 64, 4, 3), _C(64, 64, 8, 2), _C(128, 64, 8, 2), _C(64, 128, 8, 2), _C(128, 64, 8, 3)),
         "fp32": (_C(64, 64, 8, 2), _C(64, 32, 8, 2), _C(32, 32, 8, 2))},
    ),
    "pooled_map_packed": KernelSpec(
        pooled_fused.pooled_map_packed_kernel,
        lambda dtype, head_dim, config, **flags: pooled_fused.pooled_constexprs(
            dtype=dtype, head_dim=head_dim, config=config, **flags),
        ("q_ptr", "k_ptr"), (),
        (
            *(_pooled(f"causal mean block {block}", block, main=block == 16) for block in (1, 2, 4, 8, 16, 32, 64)),
            _pooled("causal max hide_sink block 3", 3, reduce="max", hide_sink=True),
            _pooled("window+softcap mean block 10", 10, window=True, softcap=True),
        ),
        {"16-bit": (_C(64, 64, 4, 3), _C(64, 64, 8, 2), _C(128, 64, 8, 2), _C(64, 128, 8, 2)),
         "fp32": (_C(64, 64, 8, 2), _C(64, 64, 16, 2), _C(32, 32, 4, 2), _C(32, 32, 8, 2))},
    ),
    "taylor_attention": KernelSpec(
        taylor_fused.taylor_attention_kernel,
        lambda dtype, head_dim, config, **flags: taylor_fused.taylor_constexprs(
            dtype=dtype, head_dim=head_dim, value_dim=head_dim, config=config, **flags),
        ("q_ptr", "k_ptr", "v_ptr"), (),
        (
            _taylor("order 10 taylor", 10, "taylor", main=True),  # the pages' default order; taylor_sweep: 0..20
            _taylor("order 10 softmax", 10, "softmax"),
            _taylor("order 10 l2", 10, "l2"),
            _taylor("order 10 none", 10, "none"),
            *(_taylor(f"order {order} taylor", order, "taylor") for order in (0, 1, 2, 20)),
            _taylor("order 10 softmax window+softcap+sinks+clamp", 10, "softmax", window=True, softcap=True,
                    sinks=True, clamp_low=True, clamp_high=True),
        ),
        # 32 x 32, 4 warps, 3 stages first: the launch before the table
        {"16-bit": (_C(32, 32, 4, 3), _C(32, 32, 4, 2), _C(64, 32, 4, 2), _C(64, 32, 8, 2), _C(64, 32, 8, 1),
                    _C(32, 32, 8, 2), _C(16, 32, 4, 2), _C(16, 32, 8, 2)),
         "fp32": (_C(64, 32, 8, 2), _C(32, 32, 8, 2), _C(16, 32, 8, 2))},
    ),
    "contribution_l1": KernelSpec(
        contributions_fused.l1_scores_kernel,
        lambda dtype, head_dim, config, **flags: contributions_fused.l1_constexprs(config=config, **flags),
        ("whole_ptr", "values_ptr", "weights_ptr", "factor_ptr", "out_ptr"), (),
        (
            # The heavier form (one more load and multiply per step) as the main variant: a norm after attention
            # (Gemma 2 / 3); the analysis passes fp32 tensors, bf16 where it runs in a GPU model's dtype.
            _variant("factor", main=True, factor=True),
            _variant("no factor", factor=False),  # pre-norm models (Llama, SmolLM2, Qwen)
        ),
        {"16-bit": (_C(32, 32, 8, 2), _C(32, 32, 4, 1), _C(32, 32, 4, 3), _C(16, 32, 4, 2), _C(64, 32, 8, 2),
                    _C(32, 64, 8, 2), _C(64, 64, 8, 2)),
         "fp32": (_C(32, 32, 8, 2), _C(32, 32, 4, 1), _C(32, 32, 4, 3), _C(16, 32, 4, 2), _C(64, 32, 8, 2),
                  _C(32, 64, 8, 2), _C(64, 64, 8, 2))},
    ),
}


@dataclasses.dataclass(frozen=True)
class Case:
    kernel: str
    variant: Variant
    dtype: str
    head_dim: int
    arch: str
    config: LaunchConfig
    default: bool


def table_config(kernel: str, variant: Variant, dtype: str, head_dim: int, arch: str) -> LaunchConfig:
    """The configuration the launcher takes for this shape on this target (kernels/launch.py)."""
    return launch.TABLE[launch.table_key(kernel, arch=ARCHS[arch][0], dtype=DTYPES[dtype], head_dim=head_dim,
                                         variant=variant.table)]


def matrix(subset: str, archs, kernels) -> list[Case]:
    """The compiles of a subset: "all" (defaults and alternatives), "defaults", or "ci" (see the docstring)."""
    cases = []
    for kernel in kernels:
        spec = KERNELS[kernel]
        for arch in archs:
            for head_dim in launch.head_dims(kernel):
                ci_width = head_dim >= 128 or head_dim == launch.ANY_HEAD_DIM
                for variant in spec.variants:
                    for dtype in ("bf16", "fp16", "fp32") if variant.main else ("bf16",):
                        if subset == "ci" and not (variant.main and dtype != "fp16" and ci_width):
                            continue
                        chosen = table_config(kernel, variant, dtype, head_dim, arch)
                        cases.append(Case(kernel, variant, dtype, head_dim, arch, chosen, True))
                        if subset != "all" or not variant.main or dtype == "fp16":
                            continue
                        cases += [Case(kernel, variant, dtype, head_dim, arch, other, False)
                                  for other in spec.alternatives[launch.precision(DTYPES[dtype])] if other != chosen]
    return cases


def signature(case: Case) -> tuple[dict, dict, dict, dict]:
    """(signature, constexprs by argument index, attributes by index, constexprs by name) of one compile."""
    spec = KERNELS[case.kernel]
    constants = spec.constexprs(DTYPES[case.dtype], case.head_dim, case.config, **dict(case.variant.flags))
    pointee = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}[case.dtype]
    names = list(inspect.signature(spec.fn.fn).parameters)
    types, by_index, attrs = {}, {}, {}
    divisible = [["tt.divisibility", 16]]
    for index, name in enumerate(names):
        if name in constants:
            types[name], by_index[(index,)] = "constexpr", constants[name]
        elif name.endswith("_ptr"):
            kind = pointee if name in spec.input_pointers else "i64" if name in spec.int64_pointers else "fp32"
            types[name], attrs[(index,)] = f"*{kind}", divisible
        elif name.startswith("stride_") and name.endswith("d"):  # the last dim's stride of a contiguous tensor
            types[name], by_index[(index,)] = "constexpr", 1
        elif name.startswith("stride_") or name in DIVISIBLE_INTS:
            types[name], attrs[(index,)] = "i32", divisible
        else:
            types[name] = "fp32" if name in FLOAT_ARGUMENTS else "i32"
    missing = set(constants) - set(names)
    if missing:
        raise ValueError(f"{case.kernel} takes no constexprs {sorted(missing)}")
    return types, by_index, attrs, constants


def cache_key(case: Case) -> str:
    types, _, attrs, constants = signature(case)
    text = json.dumps([KERNELS[case.kernel].fn.cache_key, triton.__version__, case.arch, types, constants,
                       sorted(str(key) for key in attrs), dataclasses.astuple(case.config)], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


PTXAS = {
    "registers": re.compile(r"Used (\d+) registers"),
    "spill_bytes": re.compile(r"(\d+) bytes spill stores"),
    "spill_load_bytes": re.compile(r"(\d+) bytes spill loads"),
    "stack_bytes": re.compile(r"(\d+) bytes stack frame"),
}


def read_ptxas(log: str) -> dict:
    """registers, spill_bytes, spill_load_bytes and stack_bytes from ptxas -v's report of one kernel."""
    found = {}
    for key, pattern in PTXAS.items():
        values = [int(value) for value in pattern.findall(log)]
        if not values:
            raise ValueError(f"ptxas's report has no {key}: {log[-400:]!r}")
        found[key] = max(values)
    return found


def compile_case(case: Case) -> dict:
    """Compile one case; its measurements, or its error."""
    types, by_index, attrs, _ = signature(case)
    start = time.perf_counter()
    report = io.StringIO()
    try:
        with contextlib.redirect_stdout(report):  # where Triton prints ptxas's report (TRITON_DUMP_PTXAS_LOG)
            compiled = triton.compile(
                ASTSource(fn=KERNELS[case.kernel].fn, signature=types, constexprs=by_index, attrs=attrs),
                target=GPUTarget("cuda", ARCHS[case.arch][1], 32),
                options={"num_warps": case.config.num_warps, "num_stages": case.config.num_stages})
        measured = {**read_ptxas(report.getvalue()), "shared_bytes": int(compiled.metadata.shared), "error": None}
    except Exception as error:  # a compile error is a finding: recorded in its row, and the run fails
        lines = str(error).strip().splitlines()
        measured = {**dict.fromkeys(("registers", "spill_bytes", "spill_load_bytes", "stack_bytes", "shared_bytes")),
                    "error": f"{type(error).__name__}: {lines[0] if lines else ''}"}
    return {**measured, "seconds": round(time.perf_counter() - start, 2)}


def row(case: Case, measured: dict) -> dict:
    _, _, _, constants = signature(case)
    return {"kernel": case.kernel, "variant": case.variant.name, "dtype": case.dtype, "head_dim": case.head_dim,
            "arch": case.arch, **dataclasses.asdict(case.config), "constexprs": constants,
            "registers": measured["registers"], "spill_bytes": measured["spill_bytes"],
            "shared_bytes": measured["shared_bytes"], "default": case.default,
            "spill_load_bytes": measured["spill_load_bytes"], "stack_bytes": measured["stack_bytes"],
            "seconds": measured["seconds"], "error": measured["error"]}


def problems(rows: list[dict]) -> list[str]:
    """What fails the check: compile errors anywhere; spills or too much shared memory in a default row."""
    found = []
    for r in rows:
        what = f"{r['kernel']} {r['variant']} {r['dtype']} D={r['head_dim']} {r['arch']} {config_text(r)}"
        if r["error"]:
            found.append(f"{what}: compile error {r['error']}")
        elif r["default"] and r["spill_bytes"] > 0:
            found.append(f"{what}: spills {r['spill_bytes']} bytes per thread ({r['registers']} registers)")
        elif r["default"] and r["shared_bytes"] > SHARED_LIMITS[r["arch"]]:
            found.append(f"{what}: {r['shared_bytes']} bytes of shared memory, over {SHARED_LIMITS[r['arch']]}")
        elif r["default"] and r["arch"] == "sm_80" and r["shared_bytes"] > SHARED_SM86:
            found.append(f"{what}: {r['shared_bytes']} bytes of shared memory, over sm_86's {SHARED_SM86}")
    return found


def config_text(r: dict) -> str:
    return f"{r['block_m']}x{r['block_n']} w{r['num_warps']} s{r['num_stages']}"


def print_table(rows: list[dict]) -> None:
    print(f"{'kernel':18s} {'variant':34s} {'dtype':5s} {'D':>3s} {'arch':6s} {'config':16s} {'regs':>4s} "
          f"{'spill':>5s} {'shared':>7s}  default")
    for r in rows:
        if r["error"]:
            print(f"{r['kernel']:18s} {r['variant']:34s} {r['dtype']:5s} {r['head_dim']:3d} {r['arch']:6s} "
                  f"{config_text(r):16s} ERROR {r['error']}")
            continue
        print(f"{r['kernel']:18s} {r['variant']:34s} {r['dtype']:5s} {r['head_dim']:3d} {r['arch']:6s} "
              f"{config_text(r):16s} {r['registers']:4d} {r['spill_bytes']:5d} {r['shared_bytes'] / 1024:6.0f}K  "
              f"{'default' if r['default'] else ''}")


def markdown(rows: list[dict]) -> str:
    """The README's table: each kernel's main variant in bf16 and fp32 at its default configurations, both targets
    side by side, and a line on every default row."""
    main = [(kernel, variant.name) for kernel, spec in KERNELS.items() for variant in spec.variants if variant.main]
    cells = {(r["kernel"], r["variant"], r["dtype"], r["head_dim"], r["arch"]): r for r in rows
             if r["default"] and (r["kernel"], r["variant"]) in main and not r["error"]}
    lines = ["| kernel (variant) | dtype | D | sm_80: tile, warps, stages | regs | spill | shared | "
             "sm_90a: tile, warps, stages | regs | spill | shared |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for kernel, variant in main:
        for dtype in ("bf16", "fp32"):
            for head_dim in launch.head_dims(kernel):
                found = [cells.get((kernel, variant, dtype, head_dim, arch)) for arch in ARCHS]
                if None in found:
                    continue
                lines.append(f"| {kernel} ({variant}) | {dtype} | {head_dim or 'any'} | " + " | ".join(
                    f"{config_text(r)} | {r['registers']} | {r['spill_bytes']} | {r['shared_bytes'] / 1024:.0f} KB"
                    for r in found) + " |")
    defaults = [r for r in rows if r["default"] and not r["error"]]
    if defaults:
        most = {arch: (max(r["registers"] for r in defaults if r["arch"] == arch),
                       max(r["shared_bytes"] for r in defaults if r["arch"] == arch) / 1024)
                for arch in ARCHS if any(r["arch"] == arch for r in defaults)}
        lines.append(f"\nAll {len(defaults)} default rows (every variant, fp16 too) spill "
                     f"{sum(r['spill_bytes'] for r in defaults)} bytes; at most\n" + ", ".join(
                         f"{registers} registers and {shared:.0f} KB of shared memory on {arch}"
                         for arch, (registers, shared) in most.items()) + ".")
    return "\n".join(lines)


def run(cases: list[Case], *, cache_path: Path, jobs: int) -> list[dict]:
    """Every case's row, from the cache where it has the case, else compiled (jobs processes at a time)."""
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    keys = [cache_key(case) for case in cases]
    todo = [(case, key) for case, key in zip(cases, keys) if key not in cache]
    print(f"{len(cases)} compiles, {len(cases) - len(todo)} cached, {len(todo)} to run with {jobs} workers",
          flush=True)
    start = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(compile_case, case): (case, key) for case, key in todo}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            case, key = futures[future]
            measured = future.result()
            if measured["error"] is None:  # errors are not cached: the next run tries again
                cache[key] = measured
                cache_path.write_text(json.dumps(cache, indent=0, sort_keys=True))
            else:
                cache.setdefault("_errors", {})[key] = measured
            print(f"[{done}/{len(todo)} {time.perf_counter() - start:5.0f} s] {case.kernel} {case.variant.name} "
                  f"{case.dtype} D={case.head_dim} {case.arch} {config_text(dataclasses.asdict(case.config))}: "
                  + (measured["error"] or f"{measured['registers']} regs, {measured['spill_bytes']} B spilled, "
                                           f"{measured['shared_bytes']} B shared ({measured['seconds']:.0f} s)"),
                  flush=True)
    errors = cache.pop("_errors", {})
    return [row(case, cache.get(key) or errors[key]) for case, key in zip(cases, keys)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="the JSON to write ({'rows': [...]})")
    parser.add_argument("--markdown", type=Path, metavar="JSON", help="print the README's table of a results JSON")
    parser.add_argument("--arch", action="append", choices=sorted(ARCHS), help="target (repeatable; default both)")
    parser.add_argument("--kernel", action="append", choices=sorted(KERNELS), help="kernel (repeatable; default all)")
    parser.add_argument("--subset", choices=("all", "defaults", "ci"), default="all",
                        help="all: defaults and alternatives; defaults: the launch table's configurations; ci: see "
                             "the docstring")
    parser.add_argument("--jobs", type=int, default=2, help="compiles at a time (default 2)")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())["rows"]))
        return
    if args.out is None:
        parser.error("--out is required (or --markdown)")
    cases = matrix(args.subset, args.arch or sorted(ARCHS), args.kernel or list(KERNELS))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = run(cases, cache_path=args.out.with_suffix(".cache.json"), jobs=args.jobs)
    seconds = time.perf_counter() - start
    result = {"triton": triton.__version__, "subset": args.subset,
              "seconds": round(seconds),  # this run's, cached rows included
              "compile_seconds": round(sum(r["seconds"] for r in rows)),  # the rows' compiles one after another
              "shared_limits": {**SHARED_LIMITS, "sm_86": SHARED_SM86}, "rows": rows}
    args.out.write_text(json.dumps(result, indent=1))
    print_table(rows)
    found = problems(rows)
    print(f"\n{len(rows)} compiles ({sum(r['default'] for r in rows)} default) in {seconds:.0f} s; wrote {args.out}")
    for problem in found:
        print(f"FAILED {problem}")
    if found:
        sys.exit(1)
    print("every default configuration compiles without spilling and fits in shared memory")


if __name__ == "__main__":
    main()
