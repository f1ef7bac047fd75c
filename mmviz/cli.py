"""The ``mmviz`` command line: ``mmviz demo``, ``mmviz info`` and ``mmviz export``.

Every mistake (a bad argument, an unreadable file, a layer the trace does not hold) ends in one
``mmviz: error: …`` line on stderr and exit status 2; no traceback, and the input is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from mmviz.errors import MMVizError

EXIT_ERROR = 2
"""Exit status of every failed command (as argparse uses for usage errors)."""
DPI_RANGE = (10.0, 1200.0)
"""Resolutions ``--dpi`` accepts."""
_CMAPS = tuple(json.loads((Path(__file__).with_name("colormaps.json")).read_text()))


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one ``mmviz: error: …`` line (usage via ``--help``)."""

    def error(self, message: str) -> NoReturn:
        print(f"mmviz: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


class _UsageError(ValueError):
    """An argument that parses but cannot be used."""


def _info(path: str) -> int:
    from mmviz.data.io import inspect

    for line in inspect(path).lines():  # metadata and array headers only: no array is loaded
        print(line)
    return 0


def _check_export_args(args: argparse.Namespace) -> None:
    """Refuses unusable export arguments before the trace is read."""
    out = Path(args.out)
    if out.is_dir():
        raise _UsageError(f"--out {args.out!r} is a directory; give a file name ending in .html, .png, .svg or .pdf")
    if out.exists() and Path(args.path).exists() and out.resolve() == Path(args.path).resolve():
        raise _UsageError(f"--out {args.out!r} is the input file; give another name, the input is never overwritten")
    if not out.resolve().parent.is_dir():
        raise _UsageError(f"--out {args.out!r}: the folder {str(out.parent)!r} does not exist")
    if args.dpi is not None and not DPI_RANGE[0] <= args.dpi <= DPI_RANGE[1]:
        low, high = DPI_RANGE
        raise _UsageError(f"--dpi {args.dpi:g} is out of range; give {low:g} to {high:g} (default 200)")
    if args.cmap is not None and args.cmap not in _CMAPS:
        raise _UsageError(f"--cmap {args.cmap!r} is not one of mmviz's colormaps: {', '.join(_CMAPS)}")
    if args.batch_index is not None and args.batch_index < 0:
        raise _UsageError(f"--batch-index {args.batch_index} is negative; give 0 for the first batch item")


_SELECTION = ("module", "layer", "head", "aggregate", "token", "direction", "hide_special", "merge_words", "cmap")


def _export(args: argparse.Namespace) -> int:
    from mmviz.data import AttentionTrace, Attribution, load
    from mmviz.export.figures import check_format, save_figure

    kind = check_format(args.out, ("html", "png", "svg", "pdf"))  # before loading: a typo fails fast
    _check_export_args(args)
    trace = load(args.path)
    selection = {name: getattr(args, name) for name in _SELECTION if getattr(args, name) not in (None, False)}
    if args.batch_index:
        selection["batch_index"] = args.batch_index
    if isinstance(trace, AttentionTrace):
        if kind == "html":
            out = trace.show(**selection).save(args.out, title=args.title)
        else:
            fig = trace.figure(**selection, **({"title": args.title} if args.title else {}))
            out = save_figure(fig, args.out, dpi=args.dpi)
    else:
        if selection:
            names = ", ".join(f"--{n.replace('_', '-')}" for n in selection)
            raise ValueError(f"{names} apply to attention traces; {args.path!r} holds a {type(trace).__name__}")
        titled = {"title": args.title} if args.title else {}
        if kind == "html":
            out = trace.show().save(args.out, **titled)
        elif isinstance(trace, Attribution):
            from mmviz.export.attribution_figures import attribution_figure

            out = save_figure(attribution_figure(trace, **titled), args.out, dpi=args.dpi)
        else:  # cross-attention: its own figure (image, then each word's heat map)
            fig = trace.figure()
            if args.title:
                fig.suptitle(args.title)
            out = save_figure(fig, args.out, dpi=args.dpi)
    print(f"wrote {out}")
    return 0


def _demo(out: str, open_browser: bool, models: str) -> int:
    from mmviz.demo import run_demo

    path = run_demo(out, models=models)
    print(f"wrote {path}")
    if open_browser:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``mmviz`` command."""
    parser = _Parser(prog="mmviz", description="Linked views of attention in multimodal models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = sub.add_parser("demo", help="capture attention of the teaching models, write an offline HTML report")
    demo.add_argument("--out", default="mmviz-demo.html", help="report file to write (default: mmviz-demo.html)")
    demo.add_argument("--open", action="store_true", help="open the report in a browser when done")
    demo.add_argument(
        "--models",
        choices=("auto", "teaching", "random"),
        default="auto",
        help="teaching: the trained teaching models; random: tiny random models; auto: teaching when shipped",
    )
    info = sub.add_parser("info", help="describe a saved .mmviz file")
    info.add_argument("path")
    export = sub.add_parser(
        "export",
        help="draw a saved .mmviz trace as an offline HTML page or a PNG/SVG/PDF figure",
        description="Writes a saved trace as one offline HTML page (.html) or a matplotlib figure of one "
        "selection (.png, .svg, .pdf).",
    )
    export.add_argument("path", help="a .mmviz file (trace.save(...))")
    export.add_argument("--out", required=True, help="file to write: .html, .png, .svg or .pdf")
    export.add_argument("--module", help="module to show (default: the language model, else the first)")
    export.add_argument("--layer", type=int, help="model layer (default: the last captured)")
    export.add_argument("--head", type=int, help="model head (default: the mean over heads)")
    export.add_argument("--aggregate", choices=("head", "mean", "max", "rollout"), help="a head or a reduction")
    export.add_argument("--token", type=int, help="query position whose attention the image panels show")
    export.add_argument("--batch-index", type=int, default=0, help="batch item (default 0)")
    export.add_argument("--direction", choices=("from", "to"), help="attention paid (from) or received (to)")
    export.add_argument("--hide-special", action="store_true", help="hide special and padding tokens")
    export.add_argument("--merge-words", action="store_true", help="merge subword tokens into words")
    export.add_argument("--cmap", help=f"colormap: {', '.join(_CMAPS)} (default {_CMAPS[0]})")
    export.add_argument("--title", help="page or figure title")
    export.add_argument("--dpi", type=float, help="PNG resolution (default 200)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error (already printed as one line) or --help
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    try:
        if args.command == "demo":
            return _demo(args.out, args.open, args.models)
        if args.command == "export":
            return _export(args)
        return _info(args.path)
    except (MMVizError, OSError, ImportError, ValueError, KeyError, IndexError, TypeError) as exc:
        return _fail(exc)


def _fail(exc: BaseException) -> int:
    """Prints one ``mmviz: error: …`` line; returns the exit status, 2."""
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        message = f"{exc.strerror}: {exc.filename!r}" if exc.filename else exc.strerror
    message = " ".join(str(message).split()) or type(exc).__name__
    print(f"mmviz: error: {message}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
