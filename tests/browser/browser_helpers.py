"""Helpers shared by the browser tests and the latency benchmark."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def write_notebook(path: Path, cells: list[str]) -> Path:
    """Writes a notebook of code cells (Python 3 kernel)."""
    notebook = {
        "cells": [
            {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": src}
            for src in cells
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook), encoding="utf-8")
    return path


@contextmanager
def jupyter_server(app: str, root: Path, dark: bool = False) -> Iterator[str]:
    """Runs ``python -m jupyterlab`` or ``python -m notebook`` on a free loopback port, serving ``root``.

    Args:
        app: ``"jupyterlab"`` or ``"notebook"`` (Notebook 7).
        root: the folder served; settings, workspaces and config go under it.
        dark: start in the JupyterLab Dark theme.

    Yields:
        The server's base URL (no token, loopback only).
    """
    if dark:
        themes = root / "settings" / "@jupyterlab" / "apputils-extension"
        themes.mkdir(parents=True, exist_ok=True)
        (themes / "themes.jupyterlab-settings").write_text(json.dumps({"theme": "JupyterLab Dark"}), encoding="utf-8")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JUPYTER_CONFIG_DIR": str(root / "config")}
    command = [
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
    ]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError(f"{app} did not start")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


CANVAS_STATS = """
c => {
  const ctx = c.getContext('2d');
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  const colours = new Set();
  let painted = 0, sum = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] > 0) painted++;
    colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    sum = (sum + d[i] * 7 + d[i + 1] * 13 + d[i + 2] * 17 + i) % 1000000007;
  }
  return {painted, colours: colours.size, checksum: sum, pixels: d.length / 4};
}
"""
"""JS for ``locator.evaluate``: painted pixels, distinct colours and a checksum of a canvas."""


def open_in_lab(browser: Any, url: str, notebook: str, viewport: dict[str, int]) -> tuple[Any, Any, list[str]]:
    """Opens ``notebook`` in a fresh JupyterLab workspace and waits for an idle kernel.

    Returns:
        The browser context, its page and the list the page's script errors are collected into.
    """
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}/lab/workspaces/{uuid.uuid4().hex}/tree/{notebook}")
    page.wait_for_selector(".jp-Notebook", timeout=60000)
    page.wait_for_selector("text=Python 3 (ipykernel) | Idle", timeout=60000)
    return context, page, errors


def run_first_cell(page: Any, root: Any, ready: str, failed_shot: Path) -> None:
    """Runs the notebook's first cell until ``root`` shows, then waits for the selector ``ready``.

    A keystroke sent while the editor is still attaching can be lost, so the cell is sent up to three times.
    If the view never gets ready, the page is saved to ``failed_shot`` before the error is raised.
    """
    try:
        for _ in range(3):
            page.locator(".jp-Cell .jp-InputArea-editor").first.click()
            page.keyboard.press("Shift+Enter")
            try:
                root.wait_for(timeout=30000)
                break
            except Exception:
                continue
        page.wait_for_selector(ready, timeout=30000)
    except Exception:
        page.screenshot(path=str(failed_shot))
        raise
