"""One self-contained HTML file for one or more views: opens from ``file://`` with no network.

The page holds the front-end bundle (``mmviz/static/standalone.js``, base64), each view's state as
JSON (``<`` escaped) whose binary leaves are ``{"__b64__": ...}``, and a few lines that import the bundle from a
Blob URL and mount each view into its own shadow root. Titles, notes, headings, captions and token text are data:
they are HTML-escaped here and rendered with ``textContent`` by the front end, so nothing in them runs.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from mmviz._static import read_asset

__all__ = ["Exportable", "render_html", "save_html"]


class Exportable(Protocol):
    """Anything with an ``export_state(budget)`` (every mmviz view)."""

    def export_state(self, budget: int | None = ...) -> dict[str, Any]: ...  # noqa: D102


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"__b64__": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _script_json(state: dict[str, Any]) -> str:
    """JSON safe inside a ``<script>`` element: every ``<`` is escaped, so no ``</script>`` can occur."""
    text = json.dumps(_jsonable(state), separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return text.replace("<", "\\u003c")


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="mmviz {version}">
<title>{title}</title>
<style>
  :root {{ color-scheme: light dark; }}
  body {{ margin: 24px; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }}
  body {{ background: #fff; color: #1f2328; }}
  @media (prefers-color-scheme: dark) {{ body {{ background: #0d1117; color: #e6edf3; }} }}
  h1 {{ font-size: 20px; margin: 0 0 6px; }}
  .mmviz-page-notes {{ white-space: pre-wrap; margin: 0 0 16px; max-width: 70em; opacity: 0.85; }}
  .mmviz-export {{ display: block; margin: 0 0 28px; }}
  h2.mmviz-heading {{ font-size: 16px; margin: 20px 0 4px; }}
  .mmviz-caption {{ white-space: pre-wrap; margin: -20px 0 28px; max-width: 70em; font-size: 14px; opacity: 0.85; }}
  noscript {{ display: block; padding: 12px; border: 1px solid #d1d9e0; }}
</style>
</head>
<body>
{header}
<noscript>This page needs JavaScript to draw its attention views.</noscript>
{views}
<script type="application/octet-stream" id="mmviz-bundle">{bundle}</script>
{states}
<script type="module">
const text = (id) => document.getElementById(id).textContent;
const bytes = Uint8Array.from(atob(text("mmviz-bundle").trim()), (c) => c.charCodeAt(0));
const url = URL.createObjectURL(new Blob([bytes], {{ type: "text/javascript" }}));
const mmviz = await import(url);
for (const host of document.querySelectorAll("[data-mmviz-state]")) {{
  try {{
    mmviz.mount(host, text(host.dataset.mmvizState));
  }} catch (err) {{
    host.textContent = "mmviz could not draw this view: " + err;
    throw err;
  }}
}}
document.body.dataset.mmvizReady = "1";
requestAnimationFrame(() => {{ document.body.dataset.mmvizPaintedMs = performance.now().toFixed(1); }});
</script>
</body>
</html>
"""


def _per_view(values: Sequence[str | None] | None, n: int, what: str) -> list[str | None]:
    if values is None:
        return [None] * n
    if isinstance(values, str) or len(values) != n:
        raise ValueError(f"save_html: give {what} as a list with one entry (or None) per view ({n})")
    return [None if v is None else str(v) for v in values]


def render_html(
    views: Sequence[Exportable],
    *,
    title: str | None = None,
    notes: str | None = None,
    budget: int | None = None,
    headings: Sequence[str | None] | None = None,
    captions: Sequence[str | None] | None = None,
) -> str:
    """The page's HTML text (see ``save_html``)."""
    from mmviz import __version__

    if not views:
        raise ValueError("save_html needs at least one view")
    heads = _per_view(headings, len(views), "headings")
    caps = _per_view(captions, len(views), "captions")
    page_title = title or "mmviz"
    header = [f"<h1>{html.escape(page_title)}</h1>"] if title else []
    if notes:
        header.append(f'<p class="mmviz-page-notes">{html.escape(notes)}</p>')
    hosts, states = [], []
    for i, view in enumerate(views):
        if not hasattr(view, "export_state"):
            raise TypeError(f"save_html: item {i} ({type(view).__name__}) is not an mmviz view")
        state = _script_json(view.export_state() if budget is None else view.export_state(budget=budget))
        if heads[i]:
            hosts.append(f'<h2 class="mmviz-heading">{html.escape(str(heads[i]))}</h2>')
        hosts.append(f'<div class="mmviz-export" id="mmviz-view-{i}" data-mmviz-state="mmviz-state-{i}"></div>')
        if caps[i]:
            hosts.append(f'<p class="mmviz-caption">{html.escape(str(caps[i]))}</p>')
        states.append(f'<script type="application/json" id="mmviz-state-{i}">{state}</script>')
    bundle = base64.b64encode(read_asset("standalone.js").encode("utf-8")).decode("ascii")
    return _PAGE.format(
        version=html.escape(__version__),
        title=html.escape(page_title),
        header="\n".join(header),
        views="\n".join(hosts),
        bundle=bundle,
        states="\n".join(states),
    )


def save_html(
    views: Exportable | Sequence[Exportable],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    notes: str | None = None,
    budget: int | None = None,
    headings: Sequence[str | None] | None = None,
    captions: Sequence[str | None] | None = None,
) -> Path:
    """Writes views to one self-contained HTML file that works offline (``file://``, no network).

    Args:
        views: a view or a list of views (``trace.show(...)`` results).
        path: file to write.
        title: page heading.
        notes: text shown under the heading (plain text, not markup).
        headings: one heading per view (``None`` for none), shown above it; plain text.
        captions: one caption per view (``None`` for none), shown under it; plain text, line breaks kept.
        budget: bytes of attention maps embedded per view (default 16 MB); a trace over it embeds the most useful
            maps (current selection, head means, the current layer's heads, ...) and the page lists
            what it left out.

    Returns:
        The path written.
    """
    items = [views] if hasattr(views, "export_state") else list(views)
    out = Path(path)
    page = render_html(items, title=title, notes=notes, budget=budget, headings=headings, captions=captions)
    out.write_text(page, encoding="utf-8")
    return out
