"""Before/after check for a refactor: every study's numbers from another revision beside this working tree's.

Exports core/ and kernels/ of the revision (`git archive`, nothing checked out) and of the working tree into two
temporary `attnscope` packages, then runs the same script with each in a fresh process on the packaged models: stats,
maps (a whole layer, and a zoomed window of another at a small cell limit), taylor (its recurrent check on layer 5,
a global layer of Gemma 3, whose sliding-window layers have no recurrent form), collapse (the built-in document),
compare (a second text), batch, generate (decoders) and a three-document head atlas, each result saved with
Result.save. Every array and value of the two results must be equal, bit for bit, except the run's metadata and
timings ("meta", "seconds"). Prints SAME or the first differences per result; the exit status is 1 when anything
differs.

    python benchmarks/before_after.py                    # HEAD against the working tree, SmolLM2 and MiniLM
    python benchmarks/before_after.py --against bb0f0cd --models smollm2-135m

Both revisions must offer the API the script calls (attnscope.load, .stats, .maps, .taylor, .collapse, .compare,
.batch, .generate, .atlas with these settings). About 10 minutes for both models on two cores.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IGNORED = ("meta", "seconds")  # differ between any two runs

SNAPSHOT = r'''
import pathlib, sys
import attnscope
out = pathlib.Path(sys.argv[1])
text = ("The cat sat on the mat. The dog sat on the log. The cat sat on the mat again, and the dog "
        "watched it from the log while the rain fell on the town. ") * 6
for name in sys.argv[2:]:
    m = attnscope.load(name)
    attnscope.stats(m, text).save(out / f"{name}-stats.json")
    attnscope.maps(m, text, layer=1).save(out / f"{name}-maps.json")
    attnscope.maps(m, text, layer=2, cell_limit=32, queries=(10, 40), keys=(0, 30)).save(out / f"{name}-zoom.json")
    attnscope.taylor(m, text, taylor_layer=5, max_order=4).save(out / f"{name}-taylor.json")
    attnscope.collapse(m, None, max_length=256, windows=2, rows=4).save(out / f"{name}-collapse.json")
    attnscope.compare(m, text, text_b=text.replace("cat", "bird")).save(out / f"{name}-compare.json")
    attnscope.batch(m, [text, text[:200]], study="stats").save(out / f"{name}-batch.json")
    if m.kind == "decoder":
        attnscope.generate(m, "Tell me about cats.", max_new_tokens=6).save(out / f"{name}-generate.json")
    corpus = out / f"corpus-{name}"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"d{i}.txt").write_text(text[i * 40:] + " end.")
    attnscope.atlas(m, corpus, out / f"atlas-{name}", max_tokens=64, taylor_tokens=32).save(out / f"{name}-atlas.json")
'''


def package(into: Path, revision: str | None) -> Path:
    """An importable attnscope (core/ as attnscope, kernels/ as attnscope.kernels) from `revision`, or from the
    working tree when None; returns the folder to put on PYTHONPATH."""
    tree = into / "tree"
    tree.mkdir(parents=True)
    if revision is None:
        for folder in ("core", "kernels"):
            subprocess.run(["cp", "-r", str(ROOT / folder), str(tree / folder)], check=True)
    else:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", revision, "core", "kernels"],
                                 check=True, capture_output=True).stdout
        with tempfile.TemporaryFile() as handle:
            handle.write(archive)
            handle.seek(0)
            with tarfile.open(fileobj=handle) as tar:
                tar.extractall(tree, filter="data")
    (tree / "core").rename(into / "attnscope")
    (tree / "kernels").rename(into / "attnscope" / "kernels")
    return into


def snapshot(path: Path, out: Path, models: list[str]) -> None:
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(path)}
    subprocess.run([sys.executable, "-c", SNAPSHOT, str(out), *models], check=True, env=env, cwd=out)


def _array(value: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(value["data"]), dtype=np.dtype(value["__ndarray__"])).reshape(
        value["shape"])


def differences(a, b, path: str = "") -> list[str]:
    """Where two saved results differ, ignoring IGNORED fields."""
    if isinstance(a, dict) and "__ndarray__" in a:
        if not (isinstance(b, dict) and "__ndarray__" in b):
            return [f"{path}: an array before, {type(b).__name__} after"]
        x, y = _array(a), _array(b)
        if x.shape != y.shape or x.dtype != y.dtype:
            return [f"{path}: {x.dtype}{x.shape} before, {y.dtype}{y.shape} after"]
        if np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"):
            return []
        gap = np.nanmax(np.abs(x.astype(float) - y.astype(float))) if x.dtype.kind in "fiub" else "?"
        return [f"{path}: {np.count_nonzero(x != y)} of {x.size} values differ, by up to {gap}"]
    if isinstance(a, dict):
        if not isinstance(b, dict):
            return [f"{path}: a mapping before, {type(b).__name__} after"]
        fields_a, fields_b = (a["fields"], b.get("fields", {})) if "__dataclass__" in a else (a, b)
        found = [f"{path}/{key}: gone" for key in fields_a if key not in fields_b and key not in IGNORED]
        for key in fields_a:
            if key in fields_b and key not in IGNORED:
                found += differences(fields_a[key], fields_b[key], f"{path}/{key}")
        return found
    if isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            return [f"{path}: {len(a)} items before, {len(b) if isinstance(b, list) else type(b).__name__} after"]
        return [gap for i, (x, y) in enumerate(zip(a, b)) for gap in differences(x, y, f"{path}[{i}]")]
    same = a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)
    return [] if same else [f"{path}: {str(a)[:60]!r} before, {str(b)[:60]!r} after"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="HEAD", help="the git revision before the change (default HEAD)")
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "minilm-l6"], help="packaged models")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="attnscope-before-after-") as work:
        work = Path(work)
        before, after = package(work / "before", args.against), package(work / "after", None)
        print(f"before: {args.against}; after: the working tree; models: {', '.join(args.models)}", flush=True)
        snapshot(before, work / "before-results", args.models)
        snapshot(after, work / "after-results", args.models)
        failed = False
        for saved in sorted((work / "before-results").glob("*.json")):
            other = work / "after-results" / saved.name
            found = (["missing after"] if not other.exists() else
                     differences(json.loads(saved.read_text())["result"], json.loads(other.read_text())["result"]))
            failed |= bool(found)
            print(f"{saved.stem:28s} {'SAME' if not found else '; '.join(found[:4])}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
