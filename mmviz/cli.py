"""The ``mmviz`` command line: ``mmviz demo`` and ``mmviz info``."""

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
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args.out, args.open, args.models)
        return _info(args.path)
    except (MMVizError, FileNotFoundError, ImportError) as exc:
        print(f"mmviz: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
