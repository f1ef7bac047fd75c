"""mkdocs hook: the gallery's offline HTML pages and the guides' screenshots, made during the build.

On every build (``mkdocs build`` or the first build of ``mkdocs serve``) this hook

1. captures the shipped teaching models (``mmviz.teaching``) on one shapes scene and exports the views
   to offline HTML pages (``_exhibits.py``);
2. opens each page from ``file://`` in headless Chromium with the network blocked, waits until every
   visible canvas has painted, and takes the screenshots the guides show (``_browser.py``);
3. adds the pages (``exports/*.html``) and the screenshots (``screenshots/*.png``) to the site as
   generated files, so ``--strict`` checks the links to them like any other file.

Screenshots need Chromium (``/usr/bin/chromium``, or ``MMVIZ_CHROMIUM``) and the ``playwright`` package.
Without them the build fails and says what to install; ``MMVIZ_DOCS_SCREENSHOTS=0`` builds anyway, with
placeholder images (the HTML pages are still exported). The hook needs mmviz with its ``torch`` extra and
the built front end (``npm --prefix js run build``).
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import _browser  # siblings: mkdocs puts this folder on sys.path while it loads a hook
import _exhibits
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.mmviz")

EXPORTS = "exports"
"""Site folder of the exported HTML pages."""
SCREENSHOTS = "screenshots"
"""Site folder of the screenshots."""


def _screenshots_wanted() -> bool:
    value = os.environ.get("MMVIZ_DOCS_SCREENSHOTS", "1").strip().lower()
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("", "1", "true", "yes", "on"):
        return True
    raise PluginError(f"MMVIZ_DOCS_SCREENSHOTS={value!r}: use 1 (take screenshots, the default) or 0 (placeholders)")


def _placeholder(name: str) -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 1.2))
    fig.text(0.5, 0.6, f"{name}: screenshot not taken", ha="center", va="center", fontsize=12)
    fig.text(0.5, 0.3, "this site was built with MMVIZ_DOCS_SCREENSHOTS=0", ha="center", va="center", fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _build_pages(out: Path) -> list[_exhibits.Exhibit]:
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        return _exhibits.build(out)
    except ImportError as exc:
        raise PluginError(
            f"the docs build runs the teaching models to make its screenshots and needs mmviz's torch extra "
            f"(pip install -e '.[all]'): {exc}"
        ) from exc
    except Exception as exc:  # MissingBundleError names the JS build command; anything else is a real failure
        raise PluginError(f"the docs build could not make its example views: {type(exc).__name__}: {exc}") from exc


def _take_screenshots(out: Path, exhibits: list[_exhibits.Exhibit]) -> dict[str, bytes]:
    shots: dict[str, bytes] = {}
    with _browser.chromium() as open_page:
        for exhibit in exhibits:
            for shot in exhibit.shots:
                page = open_page(out / exhibit.name)
                try:
                    if shot.action is not None:
                        shot.action(page)
                        _browser.settle(page)
                    # Full-page shots (clipped to the view) never scroll, so a hover stays where it is.
                    clip = None if shot.view is None else _browser.clip(page, f"#mmviz-view-{shot.view}")
                    png = page.screenshot(full_page=True, clip=clip)
                    open_page.check(out / exhibit.name)
                except _browser.PageError:
                    raise
                except Exception as exc:
                    raise PluginError(f"screenshot {shot.name} of {exhibit.name} failed: {exc}") from exc
                finally:
                    page.close()
                shots[shot.name] = png
    return shots


def _generate() -> dict[str, bytes]:
    """Site path → content of every generated file."""
    started = time.perf_counter()
    take = _screenshots_wanted()
    why_not = _browser.missing() if take else None
    if why_not:  # fail before the minutes of work, not after
        raise PluginError(f"the docs build takes screenshots in Chromium, but {why_not}: {_browser.INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="mmviz-docs-") as tmp:
        out = Path(tmp)
        exhibits = _build_pages(out)
        files = {f"{EXPORTS}/{e.name}": (out / e.name).read_bytes() for e in exhibits}
        names = [s.name for e in exhibits for s in e.shots]
        if take:
            try:
                shots = _take_screenshots(out, exhibits)
            except _browser.PageError as exc:
                raise PluginError(str(exc)) from exc
        else:
            log.info("MMVIZ_DOCS_SCREENSHOTS=0: placeholder images instead of screenshots")
            shots = {name: _placeholder(name) for name in names}
        files.update({f"{SCREENSHOTS}/{name}": png for name, png in shots.items()})
    log.info(
        f"mmviz: {len(exhibits)} exported pages and {len(shots)} {'screenshots' if take else 'placeholders'} in "
        f"{time.perf_counter() - started:.1f} s"
    )
    return files


def on_files(files: Files, config: Any) -> Files:
    """Adds the exported pages and the screenshots to the site."""
    if not _exhibits.SITE_FILES:  # once per process: `mkdocs serve` rebuilds reuse them
        _exhibits.SITE_FILES.update(_generate())
    for uri, content in _exhibits.SITE_FILES.items():
        files.append(File.generated(config, uri, content=content))
    return files
