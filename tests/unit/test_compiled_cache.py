"""kernels.compiled's packages: one build serves every length, it lands in the attnscope cache folder, and a fresh
process loads it without compiling (so a CLI command's first call costs what a warm one does)."""

import json
import os
import shutil
import subprocess
import sys
import threading

import pytest
import torch

from attnscope.kernels import compiled
from attnscope.kernels.attention_stats import chunked

pytestmark = pytest.mark.skipif(not compiled.has_compiler(), reason="building a package needs a C++ compiler")

STEP_DIMS = {"scores": "N R C", "ref": "N R", "weights": "N R C", "distance": "C"}
FIELDS = ("lse", "entropy", "max_weight", "sink_mass", "mean_distance", "output")


def _stats(n_tokens: int, policy: str, patch: pytest.MonkeyPatch):
    """The torch path's statistics of a causal layer (6 query heads on 2 key/value heads), without an argmax: the
    engine's case, whose tile step is softmax_step."""
    patch.setenv("ATTNSCOPE_CPU_COMPILE", policy)
    generator = torch.Generator().manual_seed(n_tokens)
    q, k, v = (torch.randn(1, heads, n_tokens, 16, generator=generator) for heads in (6, 2, 2))
    return chunked.attention_stats(q, k, v, causal=True, scale=0.25, topk=0, argmax=False)


# A fresh process in which building is impossible: at a length the package was never called with, the compiled
# statistics must match the eager ones; it prints whether Inductor's compiler was imported.
FRESH_PROCESS = f"""
import json, os, sys
import torch
from attnscope.kernels import compiled
from attnscope.kernels.attention_stats import chunked

def refuse(*args):
    raise AssertionError("the package was built again")

compiled._AheadOfTime.build = refuse
generator = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, heads, 257, 16, generator=generator) for heads in (6, 2, 2))
runs = {{}}
for policy in ("off", "on"):
    os.environ["ATTNSCOPE_CPU_COMPILE"] = policy
    runs[policy] = chunked.attention_stats(q, k, v, causal=True, scale=0.25, topk=0, argmax=False)
for field in {FIELDS!r}:
    torch.testing.assert_close(getattr(runs["on"], field), getattr(runs["off"], field), rtol=2e-5, atol=1e-6)
print(json.dumps({{"compiler_imported": "torch._inductor.compile_fx" in sys.modules}}))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The engine's tile step compiled from nothing into a fresh attnscope cache folder, then called at two more
    lengths (one of a single token): (the cache folder, the packages each build wrote, eager and compiled stats)."""
    cache = tmp_path_factory.mktemp("attnscope-cache")
    builds = []
    build = compiled._AheadOfTime.build

    def counted(self, path, *args):
        builds.append(path.name)
        return build(self, path, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ATTNSCOPE_CACHE", str(cache))
        patch.setattr(compiled._AheadOfTime, "build", counted)
        patch.setattr(chunked, "_compiled_softmax_step", compiled.fused(chunked.softmax_step, dims=STEP_DIMS))
        runs = {n: (_stats(n, "off", patch), _stats(n, "on", patch)) for n in (150, 333, 1)}
    return cache, builds, runs


def test_one_package_serves_every_length_and_lands_in_the_attnscope_cache_folder(built):
    cache, builds, runs = built
    assert len(builds) == 1 and builds[0].startswith("softmax_step-")
    assert [path.name for path in (cache / "compiled").iterdir()] == builds  # no half-written copy left behind
    for n_tokens, (eager, fused) in runs.items():
        for field in FIELDS:
            torch.testing.assert_close(getattr(fused, field), getattr(eager, field), rtol=2e-5, atol=1e-6,
                                       msg=lambda m: f"T={n_tokens} {field}: {m}")  # noqa: B023


def test_a_fresh_process_loads_the_package_without_compiling(built):
    """Another process, with building made impossible: the package comes off the disk, Inductor's compiler is never
    imported, and the statistics at a length never seen before match the eager path."""
    cache, _, _ = built
    env = {**os.environ, "ATTNSCOPE_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", FRESH_PROCESS], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert not report["compiler_imported"]


def test_a_package_that_does_not_load_is_built_again(built, tmp_path, monkeypatch):
    cache, builds, _ = built
    good = cache / "compiled" / builds[0]
    (tmp_path / "compiled").mkdir()
    (tmp_path / "compiled" / good.name).write_bytes(b"left by a crash")
    rebuilt = []

    def copy_good(self, path, *args):  # stands in for the C++ build, which the first test has timed already
        rebuilt.append(path.name)
        shutil.copyfile(good, path)
        return path

    monkeypatch.setenv("ATTNSCOPE_CACHE", str(tmp_path))
    monkeypatch.setattr(compiled._AheadOfTime, "build", copy_good)
    monkeypatch.setattr(chunked, "_compiled_softmax_step", compiled.fused(chunked.softmax_step, dims=STEP_DIMS))
    fused = _stats(150, "on", monkeypatch)
    assert rebuilt == [good.name]
    torch.testing.assert_close(fused.entropy, built[2][150][1].entropy)


def test_a_failed_build_falls_back_to_eager_under_auto_and_raises_under_on(tmp_path, monkeypatch, caplog):
    def broken(self, path, *args):
        raise RuntimeError("no C++ compiler\nmore detail")

    monkeypatch.setenv("ATTNSCOPE_CACHE", str(tmp_path))
    monkeypatch.setattr(compiled._AheadOfTime, "build", broken)
    monkeypatch.setattr(compiled, "_failed", threading.Event())
    row_sums = compiled.fused(lambda x: x.sum(-1), dims={"x": "R C"})
    monkeypatch.setenv("ATTNSCOPE_CPU_COMPILE", "on")
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        row_sums(torch.ones(2, 3))
    monkeypatch.setenv("ATTNSCOPE_CPU_COMPILE", "auto")
    with caplog.at_level("WARNING", logger=compiled.__name__):
        assert torch.equal(row_sums(torch.ones(2, 3)), torch.full((2,), 3.0))
        assert torch.equal(row_sums(torch.ones(4, 1)), torch.ones(4))
    assert [record.getMessage() for record in caplog.records] == [
        "Compiling <lambda> ahead of time failed (RuntimeError: no C++ compiler); the CPU torch path stays eager "
        "from now on."]


def test_calls_that_do_not_fit_the_declared_dimensions_are_refused_and_empty_ones_run_eagerly(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_CACHE", str(tmp_path))
    monkeypatch.setenv("ATTNSCOPE_CPU_COMPILE", "on")
    step = compiled.fused(chunked.exp_entropy, dims={"scores": "N R C", "ref": "N R", "weights": "N R C"})
    scores = torch.zeros(2, 4, 8)
    with pytest.raises(ValueError, match=r"ref must be a contiguous CPU tensor of sizes \(N, R\)"):
        step(scores, torch.zeros(2, 5), torch.zeros(2, 4, 8))  # R is 4 in scores
    with pytest.raises(ValueError, match=r"scores must be a contiguous CPU tensor.*got \(2, 8, 4\)"):
        step(scores.transpose(1, 2), torch.zeros(2, 8), torch.zeros(2, 8, 4))
    with pytest.raises(ValueError, match="not arguments of exp_entropy"):
        compiled.fused(chunked.exp_entropy, dims={"logits": "R C"})
    assert step(torch.zeros(2, 0, 8), torch.zeros(2, 0), torch.zeros(2, 0, 8)).shape == (2, 0)
    assert not (tmp_path / "compiled").exists()


def test_the_package_folder_is_compiled_in_the_attnscope_cache_folder(tmp_path, monkeypatch):
    from attnscope.models import cache_dir

    monkeypatch.setenv("ATTNSCOPE_CACHE", str(tmp_path / "mine"))
    assert compiled.cache_folder() == cache_dir() / "compiled"
    monkeypatch.delenv("ATTNSCOPE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compiled.cache_folder() == cache_dir() / "compiled" == tmp_path / "xdg" / "attnscope" / "compiled"


def test_the_compiled_next_token_logprobs_match_the_eager_ones(tmp_path, monkeypatch):
    """core.logprobs's row function, built into a package: at two lengths (one block of rows and three, the last
    short) the log-probabilities agree with the eager path to a few ulps."""
    from attnscope import logprobs

    monkeypatch.setenv("ATTNSCOPE_CACHE", str(tmp_path))
    monkeypatch.setattr(logprobs, "_compiled_picked_logprobs",
                        compiled.fused(logprobs.picked_logprobs, dims={"logits": "R V", "targets": "R"}))
    for n_tokens in (40, 600):
        generator = torch.Generator().manual_seed(n_tokens)
        logits = torch.randn(1, n_tokens, 97, generator=generator) * 4
        ids = torch.randint(0, 97, (1, n_tokens), generator=generator)
        monkeypatch.setenv("ATTNSCOPE_CPU_COMPILE", "off")
        eager = logprobs.next_token_logprobs(logits, ids)
        monkeypatch.setenv("ATTNSCOPE_CPU_COMPILE", "on")
        fused = logprobs.next_token_logprobs(logits, ids)
        torch.testing.assert_close(fused, eager, rtol=1e-12, atol=1e-12)
    assert [path.name.split("-")[0] for path in (tmp_path / "compiled").iterdir()] == ["picked_logprobs"]
