"""A real JupyterLab 4 and Notebook 7 on localhost: run a cell that shows an AttentionView, then check that
it renders, links on hover, fetches attention maps from the kernel, and syncs selections both ways."""

from __future__ import annotations

import uuid

import pytest

from tests.browser.browser_helpers import ROOT, jupyter_server, run_first_cell, write_notebook

CELLS = [
    "import sys\n"
    f"sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tests' / 'fixtures')!r}]\n"
    "try:  # a captured tiny LLaVA where torch is installed, else a synthetic trace of the same shape\n"
    "    from tiny_models import tiny_llava_trace\n"
    "    trace = tiny_llava_trace()\n"
    "except ImportError:\n"
    "    from synthetic import make_trace\n"
    "    trace = make_trace()\n"
    "view = trace.show(layer=1, head=0)\n"
    "view",
    "print('selection', view.layer, view.aggregate, view.head)",
    "view.layer = 0",
]


@pytest.fixture(scope="module", params=["jupyterlab", "notebook"])
def lab(request, tmp_path_factory):
    app = request.param
    pytest.importorskip(app)
    pytest.importorskip("ipykernel")
    root = tmp_path_factory.mktemp("lab")
    write_notebook(root / "view.ipynb", CELLS)
    with jupyter_server(app, root, dark=True) as url:  # dark: the view must follow the theme variables
        yield app, url


@pytest.mark.slow
def test_view_in_jupyter(lab, browser, shots):
    app, url = lab
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    if app == "jupyterlab":
        page.goto(f"{url}/lab/workspaces/{uuid.uuid4().hex}/tree/view.ipynb")
    else:
        page.goto(f"{url}/notebooks/view.ipynb")
    page.wait_for_selector(".jp-Notebook", timeout=60000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60000)
    if app == "jupyterlab":
        page.wait_for_selector("text=Python 3 (ipykernel) | Idle", timeout=60000)
    root = page.locator(".mmviz-root")
    run_first_cell(page, root, ".mmviz-root[data-state='ready']", shots / f"{app}-failed.png")

    token = root.locator(".mmviz-tok").last
    token.hover()
    assert root.get_attribute("data-source") == token.get_attribute("data-pos")
    assert root.locator(".mmviz-heatmap-overlay").get_attribute("data-rows") == token.get_attribute("data-pos")
    page.screenshot(path=str(shots / f"{app}-hover.png"))

    # a map that is not in the initial state comes from the kernel over a custom message
    thumbs = root.locator(".mmviz-thumbs")
    left, top, step = (float(v) for v in thumbs.get_attribute("data-cell").split(","))
    thumbs.click(position={"x": left + step * 1.5, "y": top + step * 3.5})  # layer 1, head 3
    page.wait_for_selector(".mmviz-root[data-state='ready']", timeout=30000)
    assert thumbs.get_attribute("data-selected") == "layer 1 head 3"

    # the browser's selection reached Python
    page.keyboard.press("Escape")
    page.locator(".jp-Cell .jp-InputArea-editor").nth(1).click()
    page.keyboard.press("Shift+Enter")
    page.wait_for_selector("text=selection 1 head 3", timeout=30000)

    # Python's assignment reached the browser
    page.locator(".jp-Cell .jp-InputArea-editor").nth(2).click()
    page.keyboard.press("Shift+Enter")
    page.wait_for_function("() => document.querySelector('.mmviz-c-layer select')?.value === '0'", timeout=30000)
    page.wait_for_selector(".mmviz-root[data-state='ready']", timeout=30000)
    page.screenshot(path=str(shots / f"{app}-final.png"))
    # dark theme: the view's text colour comes from JupyterLab's variables (light text on dark)
    colour = root.evaluate("el => getComputedStyle(el).color")
    assert sum(int(c) for c in colour[colour.index("(") + 1 : colour.index(")")].split(",")[:3]) > 3 * 150, colour
    assert not [e for e in errors if "mmviz" in e]
    context.close()
