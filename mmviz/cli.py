"""The ``mmviz`` command line: ``mmviz demo``, ``mmviz info`` and ``mmviz export``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mmviz.errors import MMVizError


def _info(path: str) -> int:
    from mmviz.data import load

    trace = load(path)
    print(f"{path}: {type(trace).__name__}")
    print(repr(trace))
    return 0


_SELECTION = ("module", "layer", "head", "aggregate", "token", "direction", "hide_special", "merge_words", "cmap")


def _export(args: argparse.Namespace) -> int:
    from mmviz.data import AttentionTrace, Attribution, load
    from mmviz.export.figures import check_format, save_figure

    kind = check_format(args.out, ("html", "png", "svg", "pdf"))  # before loading: a typo fails fast
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
    parser = argparse.ArgumentParser(prog="mmviz", description="Linked views of attention in multimodal models.")
    sub = parser.add_subparsers(dest="command", required=True)
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
    export.add_argument("--cmap", help="colormap: viridis (default), cividis, magma, blues, greys")
    export.add_argument("--title", help="page or figure title")
    export.add_argument("--dpi", type=float, help="PNG resolution (default 200)")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args.out, args.open, args.models)
        if args.command == "export":
            return _export(args)
        return _info(args.path)
    except (MMVizError, FileNotFoundError, ImportError, ValueError, KeyError) as exc:
        print(f"mmviz: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
