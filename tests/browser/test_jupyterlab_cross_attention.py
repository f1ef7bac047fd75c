"""A real JupyterLab 4 on localhost: a cell shows a CrossAttentionView; it renders, and word and step
selections sync both ways between the browser and the kernel."""

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
    f"sys.path[:0] = [{str(ROOT)!r}]\n"
    "from tests.widgets.test_cross_attention_view import synthetic_cross_trace\n"
    "view = synthetic_cross_trace().show(word='circle', step=-1)\n"
    "view",
    "print('selection', view.word, view.step)",
    "view.word = 6",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    pytest.importorskip("jupyterlab")
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
            "jupyterlab",
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
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_cross_attention_view_in_jupyterlab(lab, browser, shots):
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{lab}/lab/workspaces/{uuid.uuid4().hex}/tree/view.ipynb")
    page.wait_for_selector(".jp-Notebook", timeout=60000)
    page.wait_for_selector("text=Python 3 (ipykernel) | Idle", timeout=60000)
    root = page.locator(".mmviz-root.mmviz-xattn")
    try:
        for _ in range(3):  # a keystroke sent while the editor is still attaching can be lost
            page.locator(".jp-Cell .jp-InputArea-editor").first.click()
            page.keyboard.press("Shift+Enter")
            try:
                root.wait_for(timeout=30000)
                break
            except Exception:
                continue
        page.wait_for_selector(".mmviz-xattn-canvas[data-painted='map']", timeout=30000)
    except Exception:
        page.screenshot(path=str(shots / "jupyterlab-xattn-failed.png"))
        raise
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
