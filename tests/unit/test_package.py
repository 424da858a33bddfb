"""The installable package: one top-level name, attnscope, and Triton imported only when a Triton kernel runs."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_installs_only_the_attnscope_package(tmp_path):
    source = tmp_path / "source"  # a copy, so no build/ folder is left in the checkout (nor a stale one read)
    for name in ("core", "kernels", "app"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
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


def test_everything_but_the_triton_backend_works_without_triton():
    """With triton unimportable, the library imports and the kernels' torch path runs; only backend='triton'
    needs it."""
    code = """
import sys
sys.modules["triton"] = None  # import triton now raises ImportError
import torch
import attnscope, attnscope.api, attnscope.capture, attnscope.analyses.maps, attnscope.analyses.taylor
import attnscope.analyses.collapse, attnscope.cli
from attnscope import kernels
q = torch.randn(1, 2, 5, 8); k = torch.randn(1, 1, 5, 8); v = torch.randn(1, 1, 5, 8)
stats = kernels.attention_stats(q, k, v, backend="torch")
assert stats.output.shape == (1, 2, 5, 8)
kernels.pooled_attention_map(q, k, block=2, backend="torch")
kernels.taylor_attention(q, k, v, order=2, backend="torch")
try:
    kernels.attention_stats(q.cuda() if torch.cuda.is_available() else q, k, backend="triton")
except (ImportError, ValueError):
    print("triton needed only here")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PATH": "/usr/bin"})
    assert out.returncode == 0, out.stderr
    assert "triton needed only here" in out.stdout


def test_import_attnscope_is_quick_and_loads_no_model_code():
    code = "import sys, attnscope; print(sorted(m for m in ('torch', 'transformers', 'triton', 'streamlit') " \
           "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
