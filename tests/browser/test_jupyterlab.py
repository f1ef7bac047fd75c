"""A real JupyterLab 4 and Notebook 7 on localhost: run a cell that shows an AttentionView, then check that
it renders, links on hover, fetches attention maps from the kernel, and syncs selections both ways."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module", params=["jupyterlab", "notebook"])
def lab(request, tmp_path_factory):
    app = request.param
    pytest.importorskip(app)
    pytest.importorskip("ipykernel")
    root = tmp_path_factory.mktemp("lab")
    notebook = {
        "cells": [
            {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": src}
            for src in CELLS
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (root / "view.ipynb").write_text(json.dumps(notebook), encoding="utf-8")
    # the dark theme: the view must follow JupyterLab's theme variables
    themes = root / "settings" / "@jupyterlab" / "apputils-extension"
    themes.mkdir(parents=True)
    (themes / "themes.jupyterlab-settings").write_text(json.dumps({"theme": "JupyterLab Dark"}), encoding="utf-8")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JUPYTER_CONFIG_DIR": str(root / "config")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            app,
            "--no-browser",
            "--allow-root",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--ServerApp.token=",
            "--ServerApp.password=",
            "--ServerApp.disable_check_xsrf=True",
            f"--ServerApp.root_dir={root}",
            f"--LabApp.workspaces_dir={root / 'workspaces'}",
            f"--LabApp.user_settings_dir={root / 'settings'}",
            f"--JupyterNotebookApp.user_settings_dir={root / 'settings'}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start")
        yield app, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


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
    try:
        for _ in range(3):  # a keystroke sent while the editor is still attaching can be lost
            page.locator(".jp-Cell .jp-InputArea-editor").first.click()
            page.keyboard.press("Shift+Enter")
            try:
                root.wait_for(timeout=30000)
                break
            except Exception:
                continue
        page.wait_for_selector(".mmviz-root[data-state='ready']", timeout=30000)
    except Exception:
        page.screenshot(path=str(shots / f"{app}-failed.png"))
        raise

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
