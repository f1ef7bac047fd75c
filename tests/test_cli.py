from __future__ import annotations

import numpy as np

from mmviz.cli import main
from mmviz.data import AttentionTrace, ModuleAttention, TokenTable


def test_info_describes_a_saved_trace(tmp_path, capsys):
    table = TokenTable.build(["a", "b"])
    module = ModuleAttention(
        "language_model", (0,), (0, 1), "text", "text", dense=np.full((1, 1, 2, 2, 2), 0.5, np.float16)
    )
    path = tmp_path / "run.mmviz"
    AttentionTrace({"language_model": module}, {"text": [table]}).save(path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "AttentionTrace" in out
    assert "language_model: 1 layers × 2 heads, 2×2 (dense), batch 1" in out


def test_info_refuses_a_foreign_file(tmp_path, capsys):
    path = tmp_path / "x.mmviz"
    path.write_text("not a trace")
    assert main(["info", str(path)]) == 2
    assert "not an mmviz file" in capsys.readouterr().err
