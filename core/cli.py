"""The `attnscope` command (also `python -m attnscope`): the API's studies from a shell.

    attnscope prepare [MODEL]
    attnscope stats    --model M --text-file F|- [--tokens N] --out FILE.{json,csv,parquet,html}
    attnscope maps     ... [--layer L] [--heads 0,3] [--cell-limit N] [--reduce mean|max] [--hide-sink 1]
                       [--queries 100:356 --keys 0:256] [--map-scale linear|log|row]
    attnscope taylor   ... [--max-order N] [--n-tokens N] [--clamp none|upper|both] [--clamp-value C] [--tolerance T]
    attnscope collapse ... [--max-length L] [--windows W] [--rows R] [--vectors values|hidden]  (no text: built-in)
    attnscope generate --model M --text "..."|--text-file F --max-new-tokens N [--sample 1 --temperature T --top-p P
                       --seed S] [--chat auto|on|off] --out FILE   (without --out: the continuation and findings)
    attnscope compare  --model M [--model-b M2] --text "..."|--text-file F [--text-b "..."|--text-file-b F2]
                       [--layer L --head H] --out FILE   (side B defaults to side A's model and text)
    attnscope atlas --corpus PATH --out DIR [--model M ...] [--engine local|ray] [--address A] [--tokens N ...]
                    [--limit N] [--report FILE]   (the findings on stdout; the summary in DIR/atlas.parquet; several
                    models or lengths: one atlas each in DIR/<model>-<N>tok)
    attnscope atlas-diff A B [--out FILE]   (two atlases of same-shape models, B - A per head)
    attnscope app [streamlit options]

Options and their defaults come from attnscope.settings, the table the dashboard's widgets and links read. Progress
goes to stderr (tqdm); without --out the findings are printed. Errors are one line on stderr: exit status 2 for a
usage error (argparse), 1 for anything that went wrong while running.

argparse (standard library) rather than click or typer: subcommands with options generated from the settings table
need nothing more, and the library keeps one dependency fewer.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from attnscope import settings as S
from attnscope.models import (DEFAULT_MODEL, DTYPES, PACKAGED_MODELS, QUANTIZE, ModelLoadError, ModelSpec, cache_dir,
                              needs_preparation, prepare_packaged_model, prepared_folder)

STUDY_SETTINGS = {  # study -> settings it takes (beyond model, text and the token cut)
    "stats": (),
    "maps": ("layer", "cell_limit", "reduce", "hide_sink", "queries", "keys", "map_scale"),
    "taylor": ("max_order", "n_tokens", "clamp", "clamp_value", "tolerance"),
    "collapse": ("max_length", "windows", "rows", "vectors"),
    "generate": ("max_new_tokens", "sample", "temperature", "top_p", "seed", "chat"),
    "compare": ("layer", "head", "cell_limit", "reduce", "hide_sink"),
}
HELP = {
    "stats": "every head's entropy, max weight, sink mass, mean distance, and head-type scores (previous token, "
             "duplicate token, induction)",
    "maps": "attention maps of one layer's heads, pooled into tiles when long",
    "taylor": "softmax against its order-n Taylor expansion, every head",
    "collapse": "context collapse over context lengths, each figure against its bound",
    "generate": "continue the text and measure each generated token's attention",
    "compare": "two texts, two models, or both, side by side: every head's statistics, one head's maps, and B - A",
}


class CommandError(Exception):
    """A sentence for the user; the command exits with status 1."""


def _type(setting: S.Setting):
    def parse(text: str):
        try:
            return setting.parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    parse.__name__ = setting.key
    return parse


def _add_setting(parser: argparse.ArgumentParser, key: str) -> None:
    setting = S.setting(key)
    choices = getattr(setting.domain, "values", None) if isinstance(setting.domain, S.Choice) else None
    described = f"{setting.label}" + (f": {setting.help}" if setting.help else "")
    parser.add_argument(setting.option, dest=key, type=_type(setting), default=setting.default,
                        metavar="|".join(map(str, choices)) if choices else key.upper(),
                        help=f"{described} (default: {setting.format(setting.default)})".replace("%", "%%"))


def _heads(text: str) -> tuple[int, ...]:
    try:
        heads = tuple(int(h) for h in text.split(",") if h.strip())
    except ValueError:
        raise argparse.ArgumentTypeError("must be head numbers separated by commas, e.g. 0,3,5") from None
    if not heads or min(heads) < 0:
        raise argparse.ArgumentTypeError("must be head numbers separated by commas, e.g. 0,3,5")
    return heads


def _read_text(text: str | None, text_file: str | None) -> str | None:
    """The text of --text, or of --text-file (- : standard input); None when neither was given."""
    if text is not None:
        return text
    if text_file is None:
        return None
    if text_file == "-":
        return sys.stdin.read()
    path = Path(text_file)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CommandError(f"Cannot read {path}: {error.strerror or error}.") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CommandError(f"{path} is not UTF-8 text (byte {error.start} is 0x{data[error.start]:02x}).") from None


class _Progress:
    """progress(fraction, message) as a tqdm bar on stderr."""

    def __init__(self, quiet: bool):
        from tqdm import tqdm

        self.bar = None if quiet else tqdm(total=1000, file=sys.stderr, leave=False, dynamic_ncols=True,
                                           bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}")

    def __call__(self, fraction: float, message: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(message, refresh=False)
            self.bar.update(max(0, round(fraction * 1000) - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run_study(args) -> int:
    import transformers

    import attnscope

    transformers.utils.logging.disable_progress_bar()  # attnscope's own bar says what is happening
    text = _read_text(args.text, args.text_file)
    if text is None and args.command != "collapse":
        raise CommandError("Give a text: --text-file FILE (or - for standard input), or --text '...'.")
    text_b = _text_b(args) if args.command == "compare" else None
    if args.out is not None and Path(args.out).suffix.lower() not in (".json", ".csv", ".parquet", ".html"):
        raise CommandError(f"--out {args.out}: the file must end in .json, .csv, .parquet or .html.")
    progress = _Progress(args.quiet)
    try:
        model = attnscope.load(args.model, revision=args.revision, device=args.device, dtype=args.dtype,
                               quantize=args.quantize, trust_remote_code=args.trust_remote_code, progress=progress)
        options = {key: getattr(args, key) for key in STUDY_SETTINGS[args.command]}
        common = {"max_tokens": getattr(args, "tokens", None), "progress": progress,
                  "cache": not getattr(args, "no_cache", True)}
        if args.command == "stats":
            result = attnscope.stats(model, text, keep=args.keep, **common)
        elif args.command == "maps":
            result = attnscope.maps(model, text, heads=args.heads, keep=args.keep, **options, **common)
        elif args.command == "taylor":
            result = attnscope.taylor(model, text, keep=args.keep, **options, **common)
        elif args.command == "generate":
            result = attnscope.generate(model, text, progress=progress, **options)
        elif args.command == "compare":
            result = attnscope.compare(model, text, model_b=_model_b(args, model, progress), keep=args.keep,
                                       text_b=text_b, **options, **common)
        else:
            result = attnscope.collapse(model, text, **options, **common)
    finally:
        progress.close()
    if args.out is None:
        if args.command == "generate":
            print(result.generated_text)
        for finding in result.findings():
            print(finding.text())
    else:
        path = result.save(args.out)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _model_b(args, model, progress):
    """Side B's model: --model-b placed like side A, or side A's own model."""
    import attnscope

    if args.model_b is None or args.model_b == args.model:
        return model
    return attnscope.load(args.model_b, device=args.device, dtype=args.dtype, quantize=args.quantize,
                          progress=progress)


def _text_b(args) -> str | None:
    """Side B's text (None: side A's)."""
    if args.text_file == args.text_file_b == "-":
        raise CommandError("Only one of --text-file and --text-file-b can be standard input (-).")
    return _read_text(args.text_b, args.text_file_b)


def _atlas(args) -> int:
    """One atlas, or one per model and --tokens value in out/<model>-<tokens>tok when several are given."""
    import transformers

    import attnscope
    from attnscope.studies.atlas import safe_label

    transformers.utils.logging.disable_progress_bar()
    grid = len(args.model) * len(args.tokens) > 1
    for name in args.model:
        for tokens in args.tokens:
            label = f"{safe_label(name)}-{tokens}tok"
            out = Path(args.out) / label if grid else Path(args.out)
            progress = _Progress(args.quiet)
            try:
                model = attnscope.load(name, revision=args.revision, device=args.device, dtype=args.dtype,
                                       progress=progress)
                result = attnscope.atlas(model, args.corpus, out, engine=args.engine, address=args.address,
                                         workers=args.workers, max_tokens=tokens, limit=args.limit, seed=args.seed,
                                         shard_size=args.shard_size, text_column=args.text_column,
                                         taylor_tokens=args.taylor_tokens, progress=progress)
            finally:
                progress.close()
            print(f"{name}, {tokens} tokens: {result.meta['documents']} documents under {out} (summary: "
                  f"{out / 'atlas.parquet'}); {len(result.problems)} left out", file=sys.stderr)
            for reason in result.problems[:20]:
                print(f"  left out: {reason}", file=sys.stderr)
            report = args.report
            if report is not None and grid:
                report = str(Path(report).with_name(f"{Path(report).stem}-{label}{Path(report).suffix}"))
            _show(result, report)
    return 0


def _atlas_diff(args) -> int:
    import attnscope

    _show(attnscope.open(args.a).diff(attnscope.open(args.b)), args.out)
    return 0


def _show(result, out: str | None) -> None:
    """The findings on stdout, or the result saved to `out`."""
    if out is None:
        for finding in result.findings():
            print(finding.text())
    else:
        print(f"wrote {result.save(out)}", file=sys.stderr)


def _prepare(args) -> int:
    spec = ModelSpec(name=args.model)
    if not needs_preparation(spec):
        print(f"{args.model}: ready")
        return 0
    print(f"{args.model}: preparing once into {prepared_folder(args.model)}")
    folder = prepare_packaged_model(args.model,
                                    progress=lambda fraction, message: print(f"  [{fraction:4.0%}] {message}"))
    if folder is None:
        raise CommandError(f"{args.model}: {cache_dir()} cannot be written, so nothing was saved; set "
                           "ATTNSCOPE_CACHE to a writable folder.")
    return 0


def _app(args, extra: list[str]) -> int:
    import attnscope.app

    script = Path(attnscope.app.__file__).parent / "streamlit_app.py"
    command = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(args.port), *extra]
    try:
        return subprocess.call(command, env=os.environ.copy())
    except KeyboardInterrupt:
        return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="attnscope", description="See what attention really does in real "
                                   "transformers: attention maps, softmax vs Taylor, context collapse.")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prepare = commands.add_parser("prepare", help="dequantize a packaged model once, ahead of the first start")
    prepare.add_argument("model", nargs="?", default=DEFAULT_MODEL, choices=sorted(PACKAGED_MODELS))
    prepare.set_defaults(run=_prepare)

    atlas = commands.add_parser("atlas", help="every head's fingerprint over a corpus, as resumable Parquet shards")
    atlas.add_argument("--model", nargs="+", default=[DEFAULT_MODEL], help=f"packaged alias, hub id or folder; "
                       f"several give one atlas each under --out (default: {DEFAULT_MODEL})")
    atlas.add_argument("--revision", default=None, help="hub branch, tag or commit")
    atlas.add_argument("--device", default="auto", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or map")
    atlas.add_argument("--dtype", default="auto", choices=tuple(DTYPES))
    atlas.add_argument("--corpus", required=True, metavar="PATH", help="a folder of .txt/.md, a .jsonl/.csv/.parquet "
                       "file with a text column, or a datasets folder (save_to_disk)")
    atlas.add_argument("--text-column", default="text", help="the text column of a table (default: text)")
    atlas.add_argument("--engine", default="local", choices=("local", "ray"),
                       help="local: in this process; ray: Ray actors that hold the model once (default: local)")
    atlas.add_argument("--address", default=None, help="with --engine ray: join this cluster (default: start a local "
                                                       "Ray instance)")
    atlas.add_argument("--workers", type=int, default=2, help="Ray actors (default: 2)")
    atlas.add_argument("--tokens", type=int, nargs="+", default=[512], help="tokens analysed per document, from "
                       "its start; several context lengths give one atlas each under --out (default: 512)")
    atlas.add_argument("--limit", type=int, default=None, help="read at most this many documents")
    atlas.add_argument("--seed", type=int, default=0, help="the induction test's random tokens (default: 0)")
    atlas.add_argument("--shard-size", type=int, default=16, help="documents per Parquet shard (default: 16)")
    atlas.add_argument("--taylor-tokens", type=int, default=128, help="tokens of each document the Taylor order is "
                                                                      "measured on (default: 128)")
    atlas.add_argument("--out", required=True, metavar="DIR", help="the atlas folder; an existing one is resumed")
    atlas.add_argument("--report", default=None, metavar="FILE", help="also save the summary as .html, .csv, .json "
                                                                      "or .parquet (default: print the findings)")
    atlas.add_argument("--quiet", action="store_true", help="no progress bar")
    atlas.set_defaults(run=_atlas)

    atlas_diff = commands.add_parser("atlas-diff", help="two atlases of models of the same shape, B - A head by head")
    atlas_diff.add_argument("a", metavar="A", help="an atlas folder or its atlas.parquet")
    atlas_diff.add_argument("b", metavar="B", help="the other atlas")
    atlas_diff.add_argument("--out", default=None, metavar="FILE", help="save as .html, .csv, .json or .parquet "
                                                                        "(default: print the findings)")
    atlas_diff.set_defaults(run=_atlas_diff)

    app = commands.add_parser("app", help="start the dashboard (further options go to streamlit run)")
    app.add_argument("--port", type=int, default=8501)
    app.set_defaults(run=None)

    for name, keys in STUDY_SETTINGS.items():
        study = commands.add_parser(name, help=HELP[name], description=HELP[name] + ".")
        study.add_argument("--model", default=DEFAULT_MODEL,
                           help=f"packaged alias ({', '.join(PACKAGED_MODELS)}), hub id or local folder "
                                f"(default: {DEFAULT_MODEL})")
        study.add_argument("--revision", default=None, help="hub branch, tag or commit")
        study.add_argument("--trust-remote-code", action="store_true", help="run code shipped with a hub model")
        study.add_argument("--device", default="auto", metavar="DEVICE",
                           help="auto (a GPU when there is one, else the CPU), cpu, cuda, cuda:N, or map (layers "
                                "spread over every GPU, then the CPU) (default: auto)")
        study.add_argument("--dtype", default="auto", choices=tuple(DTYPES),
                           help="auto is bfloat16 on a GPU, float32 on the CPU (default: auto)")
        study.add_argument("--quantize", default="none", choices=QUANTIZE,
                           help="8bit or 4bit weights through bitsandbytes, on a GPU (default: none)")
        texts = study.add_mutually_exclusive_group()
        texts.add_argument("--text-file", metavar="FILE", help="UTF-8 text to analyse; - reads standard input"
                           + (" (default: the built-in long document)" if name == "collapse" else ""))
        texts.add_argument("--text", help="the text itself")
        if name == "compare":
            study.add_argument("--model-b", default=None, help="side B's model, loaded at its default revision "
                               "without remote code and placed like side A (default: side A's model)")
            texts_b = study.add_mutually_exclusive_group()
            texts_b.add_argument("--text-file-b", metavar="FILE", help="side B's text; - reads standard input "
                                 "(default: side A's text)")
            texts_b.add_argument("--text-b", help="side B's text itself")
        if name != "generate":  # a prompt is read whole (up to the model's positions)
            tokens = S.setting("max_tokens")
            study.add_argument("--tokens", type=_type(tokens), default=None, metavar="N",
                               help="analyse at most N tokens of the text (default: the model's positions)")
        if name not in ("collapse", "generate"):
            _add_setting(study, "keep")
        if name == "maps":
            study.add_argument("--heads", type=_heads, default=None, help="heads to draw, e.g. 0,3 (default: all)")
        for key in keys:
            _add_setting(study, key)
        study.add_argument("--out", metavar="FILE", help="write the result: .json (reopen with attnscope.open), "
                           ".parquet (the table; reopens too), .csv (the table), .html (findings and figures)")
        if name != "generate":
            study.add_argument("--no-cache", action="store_true", help="compute again instead of reading the result "
                               "cache")
        study.add_argument("--quiet", action="store_true", help="no progress bar")
        study.set_defaults(run=_run_study)
    return root


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    known, extra = parser().parse_known_args(argv)
    if known.command == "app":
        return _app(known, extra)
    if extra:
        parser().error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return known.run(known)
    except (CommandError, ModelLoadError, ValueError, FileNotFoundError) as error:
        print(f"attnscope {known.command}: {error}", file=sys.stderr)
        return 1
