"""The installable package: one top-level name, attnscope, and Triton imported only when a Triton kernel runs."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # builds a wheel with pip (tens of seconds)
def test_wheel_installs_only_the_attnscope_package(tmp_path):
    source = tmp_path / "source"  # a copy, so no build/ folder is left in the checkout (nor a stale one read)
    for name in ("core", "kernels", "app"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("attnscope-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert {t for t in top_level if not t.endswith(".dist-info")} == {"attnscope"}
    for module in ("attnscope/api.py", "attnscope/cli.py", "attnscope/kernels/attention_stats/fused.py",
                   "attnscope/app/streamlit_app.py", "attnscope/app/app_pages/attention_maps.py",
                   "attnscope/studies/maps.py"):
        assert module in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "attnscope = attnscope.cli:main" in entry_points


# Run in a fresh interpreter in which triton cannot be imported, as where it has no wheel: a finder ahead of every
# other one answers any `import triton...` with ModuleNotFoundError and records the attempt. TRITON_INTERPRET=1 lets
# backend="triton" get past its CUDA check on this CPU, so that the last call reaches the import of the Triton kernel.
WITHOUT_TRITON = """
import importlib.abc, json, sys


class NoTriton(importlib.abc.MetaPathFinder):
    attempts = []

    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            self.attempts.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoTriton())
import torch
import attnscope, attnscope.api, attnscope.capture, attnscope.analyses.maps, attnscope.analyses.taylor
import attnscope.analyses.collapse, attnscope.cli
from attnscope import kernels

report = {"after_import": list(NoTriton.attempts)}
q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 1, 5, 8), torch.randn(1, 1, 5, 8)
report["stats_shape"] = list(kernels.attention_stats(q, k, v, backend="torch").output.shape)
report["auto_shape"] = list(kernels.attention_stats(q, k, v).output.shape)  # "auto" is torch on the CPU
report["map_shape"] = list(kernels.pooled_attention_map(q, k, block=2, backend="torch").shape)
report["taylor_shape"] = list(kernels.taylor_attention(q, k, v, order=2, backend="torch").shape)
report["after_torch_path"] = list(NoTriton.attempts)
try:
    kernels.attention_stats(q, k, v, backend="triton")
    report["triton_backend"] = "ran"
except Exception as error:
    report["triton_backend"] = [type(error).__name__, getattr(error, "name", None), str(error)]
report["after_triton_backend"] = list(NoTriton.attempts)
print(json.dumps(report))
"""


def test_everything_but_the_triton_backend_works_without_triton():
    """With triton unimportable, the library imports and the kernels' torch path runs without asking for it; only
    backend='triton' needs it, and fails for want of triton itself (not for a missing GPU)."""
    out = subprocess.run([sys.executable, "-c", WITHOUT_TRITON], capture_output=True, text=True,
                         env={"PATH": "/usr/bin", "TRITON_INTERPRET": "1"})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["after_import"] == [], "importing attnscope asked for triton"
    assert report["stats_shape"] == report["auto_shape"] == [1, 2, 5, 8]
    assert report["map_shape"] == [1, 2, 3, 3] and report["taylor_shape"] == [1, 2, 5, 8]
    assert report["after_torch_path"] == [], "the torch path asked for triton"
    assert report["triton_backend"] != "ran", "backend='triton' ran without triton"
    kind, missing, message = report["triton_backend"]
    assert (kind, missing) == ("ModuleNotFoundError", "triton"), message
    assert report["after_triton_backend"][0] == "triton"


def test_import_attnscope_is_quick_and_loads_no_model_code():
    code = "import sys, attnscope; print(sorted(m for m in ('torch', 'transformers', 'triton', 'streamlit') " \
           "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
