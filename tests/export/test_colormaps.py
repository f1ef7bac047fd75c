"""One colormap definition (mmviz/colormaps.json) drives the widget and matplotlib."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mmviz.data.display import COLORMAP_FILE, colormap_lut, colormap_names
from mmviz.export.figures import colormap
from mmviz.widgets import COLORMAPS

ROOT = Path(__file__).resolve().parents[2]
COLORMAP_TS = ROOT / "js" / "src" / "render" / "colormap.ts"

# Bundles js/src/render/colormap.ts with the project's esbuild and prints every lut() as JSON.
LUTS_JS = """
const esbuild = require("esbuild");
const out = esbuild.buildSync({ entryPoints: [process.argv[1]], bundle: true, format: "cjs", write: false });
const mod = { exports: {} };
new Function("module", "exports", out.outputFiles[0].text)(mod, mod.exports);
const luts = {};
for (const name of mod.exports.COLORMAPS) luts[name] = Array.from(mod.exports.lut(name));
process.stdout.write(JSON.stringify({ names: mod.exports.COLORMAPS, luts }));
"""


def test_front_end_reads_the_shared_definition():
    source = COLORMAP_TS.read_text(encoding="utf-8")
    assert "mmviz/colormaps.json" in source
    assert not __import__("re").search(r'"[0-9a-fA-F]{6}"', source), "colormap stops belong in mmviz/colormaps.json"
    assert list(json.loads(COLORMAP_FILE.read_text(encoding="utf-8"))) == list(COLORMAPS) == list(colormap_names())


@pytest.mark.skipif(
    shutil.which("node") is None or not (ROOT / "js" / "node_modules" / "esbuild").is_dir(),
    reason="needs node and js/node_modules (npm --prefix js ci)",
)
def test_widget_lut_equals_matplotlib_colormap():
    result = subprocess.run(
        ["node", "-e", LUTS_JS, str(COLORMAP_TS)],
        cwd=ROOT / "js",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    js = json.loads(result.stdout)
    assert js["names"] == list(colormap_names())
    for name in colormap_names():
        js_lut = np.asarray(js["luts"][name], dtype=np.uint8).reshape(256, 3)
        assert np.array_equal(js_lut, colormap_lut(name)), name
        mpl_rgb = np.rint(colormap(name)(np.arange(256) / 255)[:, :3] * 255).astype(np.uint8)
        assert np.array_equal(mpl_rgb, js_lut), name


def test_shared_stops_approximate_matplotlib_originals():
    import matplotlib

    for name in ("viridis", "cividis", "magma"):
        ours = colormap(name)(np.linspace(0, 1, 64))[:, :3]
        theirs = matplotlib.colormaps[name](np.linspace(0, 1, 64))[:, :3]
        assert np.abs(ours - theirs).max() < 0.08, name  # 10 linear stops approximate 256 entries
    with pytest.raises(ValueError, match="viridis"):
        colormap("jet")
