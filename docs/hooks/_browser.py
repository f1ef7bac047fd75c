"""Headless Chromium for the docs build: open an exported page, wait until it has painted, take screenshots.

The same set-up as the browser tests (``tests/browser/conftest.py``): Debian's Chromium driven by
Playwright's sync API (the pip package carries the driver; no browser download), pages opened from
``file://`` with every other request blocked. A page that logs an error, or asks for anything from the
network, fails the build: the gallery's pages must work offline.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path(os.environ.get("MMVIZ_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

INSTALL_HINT = (
    "install Chromium (`apt-get install chromium`, or point MMVIZ_CHROMIUM at a Chromium binary) and the "
    "Playwright package (`pip install playwright`; it drives the system Chromium, nothing is downloaded), "
    "or build without screenshots: MMVIZ_DOCS_SCREENSHOTS=0 mkdocs build"
)

# True once every visible canvas of the page (inside the views' shadow roots too) has a painted pixel.
_PAINTED = """
() => {
  const canvases = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll("*")) {
      if (el.tagName === "CANVAS") canvases.push(el);
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  const shown = canvases.filter((c) => c.width > 0 && c.height > 0 && c.getClientRects().length > 0);
  if (shown.length === 0) return false;
  return shown.every((c) => {
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) return true;
    return false;
  });
}
"""

_TWO_FRAMES = "() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))"


def missing() -> str | None:
    """Why screenshots cannot be taken here (``None`` when Chromium and Playwright are both there)."""
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM}"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed"
    return None


class PageError(RuntimeError):
    """An exported page failed in the browser (script error, network request, nothing painted)."""


@contextmanager
def chromium(width: int = 1300, height: int = 1100, scale: float = 1.5) -> Iterator[Callable[..., Any]]:
    """Starts Chromium; yields ``open(path)``, which loads a page, waits for it to paint and returns it.

    Args:
        width: viewport width in CSS pixels.
        height: viewport height in CSS pixels (full-page shots grow past it).
        scale: device pixels per CSS pixel of the screenshots.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=scale)
        problems: list[str] = []

        def route(r: Any) -> None:
            if r.request.url.startswith(("file:", "blob:", "data:")):
                r.continue_()
            else:
                problems.append(f"network request {r.request.url}")
                r.abort()

        context.route("**/*", route)

        def open_page(path: Path) -> Any:
            page = context.new_page()
            page.on("pageerror", lambda e: problems.append(f"script error: {e}"))
            page.on("console", lambda m: problems.append(f"console error: {m.text}") if m.type == "error" else None)
            page.goto(path.resolve().as_uri())
            try:
                page.wait_for_selector("body[data-mmviz-ready]", timeout=20_000)
                page.wait_for_function(_PAINTED, timeout=20_000)
            except Exception as exc:  # playwright's TimeoutError
                seen = f"; {'; '.join(problems)}" if problems else ""
                raise PageError(f"{path.name} did not paint its views in Chromium ({exc}){seen}") from exc
            check(path)
            return page

        def check(path: Path) -> None:
            if problems:
                raise PageError(f"{path.name} in Chromium: {'; '.join(problems)}")

        open_page.check = check  # type: ignore[attr-defined]
        try:
            yield open_page
        finally:
            context.close()
            browser.close()


def clip(page: Any, selector: str, pad: int = 2) -> dict[str, float]:
    """The page-coordinate rectangle of an element, ``pad`` pixels wider on each side."""
    box = page.locator(selector).bounding_box()
    scroll_x, scroll_y = page.evaluate("() => [window.scrollX, window.scrollY]")
    x, y = max(0.0, box["x"] + scroll_x - pad), max(0.0, box["y"] + scroll_y - pad)
    return {"x": x, "y": y, "width": box["width"] + 2 * pad, "height": box["height"] + 2 * pad}


def settle(page: Any) -> None:
    """Waits two animation frames (after a hover or a click the views repaint on the next frame)."""
    page.evaluate(_TWO_FRAMES)
