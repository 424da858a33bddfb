"""How long each page's default study takes on the packaged SmolLM2, timed in one process, each computed from scratch.

Every page runs the library's studies unit by unit (attnscope.studies through the app's cached Source); here the same
entry points run through the library's own Source with no disk cache, so each figure is what a visitor waits for the
first time a page opens with its default settings (later visits come from the caches). Each study runs once after a
warm-up pass, so the CPU tile's one-off compilation (about 20 s on a fresh machine, kept on disk by Inductor) is
timed on its own, not inside the first study. Texts: the sidebar's default example, and where a page's README figure
is about a longer text, the start of the built-in document (pydoc_data.topics) at that length.

Run it on a quiet machine: the load average before and after each study is recorded, and other work slows
everything here.

    python benchmarks/bench_pages.py                 # writes benchmarks/results/pages-cpu.json
    python benchmarks/bench_pages.py --only maps stats --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["ATTNSCOPE_RESULT_CACHE_MB"] = "0"  # every unit computed, none read from an earlier run

import attnscope  # noqa: E402
from attnscope import api  # noqa: E402
from attnscope.analyses.collapse import builtin_text  # noqa: E402
from attnscope.app.state import EXAMPLES  # noqa: E402

DEFAULT_TEXT = EXAMPLES["Capital cities"]
GRID_CELLS = 24  # the all-layers grid's thumbnails (app/app_pages/attention_maps.py)


def _prefix(model, n_tokens: int) -> list[int]:
    """The first n_tokens token ids of the built-in document."""
    return list(model.tokenize(builtin_text()[: n_tokens * 16], max_tokens=n_tokens).ids)


def _corpus(model, folder: Path, documents: int = 8) -> Path:
    """The page's default atlas run reads 8 documents: the built-in document's first long paragraphs."""
    corpus = folder / "corpus"
    corpus.mkdir()
    paragraphs = [p for p in builtin_text().split("\n\n") if len(p) > 1500][:documents]
    for index, paragraph in enumerate(paragraphs):
        (corpus / f"{index}.txt").write_text(paragraph)
    return corpus


def _grid(model, ids: list[int], n_layers: int) -> list:
    """The all-layers grid as the page computes it: every layer's maps from one capture (one Source keeps it)."""
    from attnscope.studies import maps as study

    source, cut = api.source(model), model.cut(None, "start")
    return [study.maps(source, ids, cut=cut, layer=layer, cell_limit=GRID_CELLS) for layer in range(n_layers)]


def studies(model, folder: Path) -> dict:
    """Page -> (what is timed, the call). Defaults are the settings table's, as on the pages."""
    long_text, taylor_text = _prefix(model, 2048), _prefix(model, 512)
    n_layers = model.info["n_layers"]
    return {
        "maps": ("Attention maps, one head: capture and the head's map, default text",
                 lambda: attnscope.maps(model, DEFAULT_TEXT, layer=0, heads=[0], cell_limit=256)),
        "maps_2048": ("Attention maps, one head, a 2,048-token text (the default Max tokens), pooled",
                      lambda: attnscope.maps(model, long_text, layer=0, heads=[0], cell_limit=256)),
        "grid_2048": ("All heads of all layers, 2,048 tokens: one capture (as the page's cache holds it) and 30 "
                      "layers' thumbnails", lambda: _grid(model, long_text, n_layers)),
        "stats": ("Head statistics (with head-type scores), default text",
                  lambda: attnscope.stats(model, DEFAULT_TEXT)),
        "stats_2048": ("Head statistics (with head-type scores), 2,048 tokens",
                       lambda: attnscope.stats(model, long_text)),
        "taylor": ("Softmax vs Taylor, default text (19 tokens)", lambda: attnscope.taylor(model, DEFAULT_TEXT)),
        "taylor_512": ("Softmax vs Taylor at its defaults: 512 tokens, orders 0-10, every denominator",
                       lambda: attnscope.taylor(model, taylor_text)),
        "collapse": ("Context collapse at its defaults: built-in document, 3 windows, L up to 2,048",
                     lambda: attnscope.collapse(model)),
        "generation": ("Generation: 48 new tokens (greedy, chat template) and every step's attention",
                       lambda: attnscope.generate(model, DEFAULT_TEXT)),
        "compare": ("Compare: the default text against another, statistics and one head's maps",
                    lambda: attnscope.compare(model, DEFAULT_TEXT, text_b=EXAMPLES["Agreement over distance"])),
        "batch": ("Batch: head statistics of the four example prompts",
                  lambda: attnscope.batch(model, list(EXAMPLES.values()), study="stats")),
        "atlas": ("Head atlas run in the app: 8 documents of 128 tokens",
                  lambda: attnscope.atlas(model, _corpus(model, folder), folder / "atlas", max_tokens=128)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="time only these studies (names as in the output)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pages-cpu.json"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    start = time.perf_counter()
    model = attnscope.load("smollm2-135m")
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    attnscope.stats(model, _prefix(model, 2048))  # compiles the CPU tile for this process (and warms the caches)
    warm_up = time.perf_counter() - start
    print(f"model loaded in {loaded:.1f} s; warm-up pass (compiles the CPU tile) {warm_up:.1f} s")
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, (what, call) in studies(model, Path(folder)).items():
            if args.only and name not in args.only:
                continue
            load_before = os.getloadavg()[0]
            start = time.perf_counter()
            call()
            seconds = time.perf_counter() - start
            results[name] = {"what": what, "seconds": round(seconds, 2), "load_average_before": load_before,
                             "load_average_after": os.getloadavg()[0]}
            print(f"{name:12s} {seconds:7.1f} s  {what}")
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores ({platform.platform()})",
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"), "model": "smollm2-135m", "model_load_seconds": round(loaded, 2),
        "warm_up_seconds": round(warm_up, 2), "studies": results,
    }
    if not args.no_write:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
