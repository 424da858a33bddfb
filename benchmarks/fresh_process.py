"""What the benchmarks that measure each call in a fresh process share: their common options, the child's entry,
and the record of the machine and versions every results file starts with."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from collections.abc import Callable

import torch


def add_options(parser: argparse.ArgumentParser, rounds: int = 3) -> None:
    """--rounds, --threads (torch thread counts to compare at) and the hidden --child NAME TOKENS THREADS."""
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()],
                        help="torch thread counts to compare at (default: torch's default)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)


def run_child(args: argparse.Namespace, child: Callable[[str, int, int], dict]) -> bool:
    """In a child process (--child given): run child(name, tokens, threads), print its record as JSON, return True."""
    if not args.child:
        return False
    name, n_tokens, threads = args.child
    print(json.dumps(child(name, int(n_tokens), int(threads))))
    return True


def record(rounds: int, **fields) -> dict:
    """The machine, the versions, the date and the model, then `fields`, and an empty list of comparisons."""
    import transformers

    return {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
                   f"({platform.platform()}); shared with other work while measured, see load_average_before",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": datetime.date.today().isoformat(),
        "model": "smollm2-135m",
        **fields,
        "rounds": rounds,
        "comparisons": [],
    }
