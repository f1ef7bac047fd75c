"""A real JupyterLab 4 on localhost: a cell shows a CrossAttentionView; it renders, and word and step
selections sync both ways between the browser and the kernel."""

from __future__ import annotations

import pytest

from tests.browser.browser_helpers import ROOT, jupyter_server, open_in_lab, run_first_cell, write_notebook

CELLS = [
    "import sys\n"
    f"sys.path[:0] = [{str(ROOT)!r}]\n"
    "from tests.widgets.test_cross_attention_view import synthetic_cross_trace\n"
    "view = synthetic_cross_trace().show(word='circle', step=-1)\n"
    "view",
    "print('selection', view.word, view.step)",
    "view.word = 6",
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    pytest.importorskip("jupyterlab")
    pytest.importorskip("ipykernel")
    root = tmp_path_factory.mktemp("lab")
    write_notebook(root / "view.ipynb", CELLS)
    with jupyter_server("jupyterlab", root, dark=True) as url:  # dark: the view must follow the theme variables
        yield url


@pytest.mark.slow
def test_cross_attention_view_in_jupyterlab(lab, browser, shots):
    context, page, errors = open_in_lab(browser, lab, "view.ipynb", {"width": 1500, "height": 1100})
    root = page.locator(".mmviz-root.mmviz-xattn")
    run_first_cell(page, root, ".mmviz-xattn-canvas[data-painted='map']", shots / "jupyterlab-xattn-failed.png")
    assert root.get_attribute("data-word") == "2"

    # the browser's selection reaches Python
    root.locator(".mmviz-xattn-word", has_text="square").click()
    root.locator(".mmviz-xattn-step").fill("3")
    page.keyboard.press("Escape")
    page.locator(".jp-Cell .jp-InputArea-editor").nth(1).click()
    page.keyboard.press("Shift+Enter")
    page.wait_for_selector("text=selection 7 3", timeout=30000)

    # Python's assignment reaches the browser
    page.locator(".jp-Cell .jp-InputArea-editor").nth(2).click()
    page.keyboard.press("Shift+Enter")
    page.wait_for_function("() => document.querySelector('.mmviz-xattn')?.dataset.word === '6'", timeout=30000)
    assert root.locator(".mmviz-xattn-word.is-selected").text_content() == "blue"
    page.screenshot(path=str(shots / "jupyterlab-xattn.png"))
    assert not [e for e in errors if "mmviz" in e]
    context.close()
