"""The `attnscope` command."""

from __future__ import annotations

import argparse
import sys

from attnscope.models import DEFAULT_MODEL, PACKAGED_MODELS, ModelSpec, cache_dir, needs_preparation, \
    prepare_packaged_model, prepared_folder


def _prepare(args) -> int:
    spec = ModelSpec(name=args.model)
    if not needs_preparation(spec):
        print(f"{args.model}: ready")
        return 0
    print(f"{args.model}: preparing once into {prepared_folder(args.model)}")
    folder = prepare_packaged_model(args.model,
                                    progress=lambda fraction, message: print(f"  [{fraction:4.0%}] {message}"))
    if folder is None:
        print(f"{args.model}: {cache_dir()} cannot be written, so nothing was saved; set ATTNSCOPE_CACHE to a "
              "writable folder.", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attnscope")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="dequantize a packaged model once, ahead of the first start")
    prepare.add_argument("model", nargs="?", default=DEFAULT_MODEL, choices=sorted(PACKAGED_MODELS))
    prepare.set_defaults(run=_prepare)
    args = parser.parse_args(argv)
    return args.run(args)
