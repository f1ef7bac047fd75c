"""A real JupyterLab 4 on localhost: a cell shows a Dashboard of three kinds of pane (cross-attention, the
text encoder's attention, an attribution); hovering in one pane repaints the others, in both directions,
through the browser's link store (no kernel round trip)."""

from __future__ import annotations

import hashlib

import pytest

from tests.browser.browser_helpers import (
    CANVAS_STATS,
    ROOT,
    jupyter_server,
    open_in_lab,
    run_first_cell,
    write_notebook,
)

CELLS = [
    "import sys\n"
    f"sys.path[:0] = [{str(ROOT)!r}]\n"
    "from tests.browser.test_linked_panes import three_pane_board\n"
    "board = three_pane_board()\n"
    "board",
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    pytest.importorskip("jupyterlab")
    pytest.importorskip("ipykernel")
    root = tmp_path_factory.mktemp("lab")
    write_notebook(root / "board.ipynb", CELLS)
    with jupyter_server("jupyterlab", root) as url:
        yield url


@pytest.mark.slow
def test_three_pane_dashboard_links_in_jupyterlab(lab, browser, shots):
    context, page, errors = open_in_lab(browser, lab, "board.ipynb", {"width": 1500, "height": 3200})
    board = page.locator(".mmviz-root.mmviz-dashboard")
    run_first_cell(page, board, ".mmviz-dashboard-attention .mmviz-tok", shots / "jupyterlab-dashboard-failed.png")
    attention = page.locator(".mmviz-dashboard-pane.mmviz-dashboard-attention")
    xattn_canvas = page.locator(".mmviz-xattn-canvas")
    page.mouse.move(0, 0)
    still = hashlib.sha1(attention.screenshot()).hexdigest()

    page.locator(".mmviz-xattn-word", has_text="circle").hover()  # cross-attention → attention
    assert attention.locator(".mmviz-tok.mmviz-active").get_attribute("data-pos") == "3"
    assert hashlib.sha1(attention.screenshot()).hexdigest() != still

    page.mouse.move(0, 0)
    before = xattn_canvas.evaluate(CANVAS_STATS)["checksum"]
    attention.locator(".mmviz-tok[data-pos='8']").hover()  # attention → cross-attention ("square")
    assert page.locator(".mmviz-root.mmviz-xattn").get_attribute("data-word") == "7"
    assert xattn_canvas.evaluate(CANVAS_STATS)["checksum"] != before
    page.locator(".mmviz-attr-tok[data-pos='2']").hover()  # attribution → both
    assert page.locator(".mmviz-root.mmviz-xattn").get_attribute("data-word") == "1"
    page.screenshot(path=str(shots / "jupyterlab-dashboard.png"))
    assert not [e for e in errors if "mmviz" in e]
    context.close()
