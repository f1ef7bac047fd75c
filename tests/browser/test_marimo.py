"""marimo smoke test: an AttentionView wrapped in ``mo.ui.anywidget`` renders in a marimo app and links
on hover (marimo hosts anywidgets itself, with its own handling of binary traits)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.browser.browser_helpers import ROOT

APP = f"""
import marimo

app = marimo.App()


@app.cell
def _():
    import sys
    sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "tests" / "fixtures")!r}]
    import marimo as mo
    from synthetic import make_trace
    widget = mo.ui.anywidget(make_trace().show(layer=1, head=0))
    widget
    return


if __name__ == "__main__":
    app.run()
"""


@pytest.mark.slow
def test_view_in_marimo(tmp_path, browser, shots):
    pytest.importorskip("marimo")
    app = tmp_path / "app.py"
    app.write_text(APP, encoding="utf-8")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    command = [sys.executable, "-m", "marimo", "run", str(app), "--headless", "--no-token", "--host", "127.0.0.1"]
    proc = subprocess.Popen([*command, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(120):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector(".mmviz-root[data-state='ready']", timeout=60000)
        token = page.locator(".mmviz-tok", has_text="red")
        token.hover()
        root = page.locator(".mmviz-root")
        assert root.get_attribute("data-source") == token.get_attribute("data-pos")
        assert page.locator(".mmviz-image-canvas").get_attribute("data-painted") == "attention"
        page.screenshot(path=str(shots / "marimo-hover.png"))
        context.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
