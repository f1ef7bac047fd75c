from __future__ import annotations

from matplotlib.image import imread

from mmviz.cli import main


def test_export_round_trip_from_a_saved_trace(trace, tmp_path, capsys):
    run = tmp_path / "run.mmviz"
    trace.save(run)
    png = tmp_path / "fig.png"
    argv = ["export", str(run), "--out", str(png), "--layer", "0", "--head", "1", "--token", "20", "--dpi", "50"]
    assert main(argv) == 0
    assert imread(png)[..., :3].std() > 0.05
    svg = tmp_path / "fig.svg"
    assert main(["export", str(run), "--out", str(svg), "--module", "vision_tower", "--aggregate", "max"]) == 0
    assert "vision_tower · layer 1 · max over 2 heads" in svg.read_text(encoding="utf-8")
    pdf = tmp_path / "fig.pdf"
    assert main(["export", str(run), "--out", str(pdf), "--merge-words", "--hide-special"]) == 0
    assert pdf.read_bytes().startswith(b"%PDF")
    page = tmp_path / "fig.html"
    assert main(["export", str(run), "--out", str(page), "--layer", "1", "--title", "Run <1>"]) == 0
    assert "<h1>Run &lt;1&gt;</h1>" in page.read_text(encoding="utf-8")
    assert capsys.readouterr().out.count("wrote ") == 4


def test_export_errors_are_clear(trace, tmp_path, capsys):
    run = tmp_path / "run.mmviz"
    trace.save(run)
    assert main(["export", str(run), "--out", str(tmp_path / "fig.jpg")]) == 2
    assert "give a path ending in .html, .png, .svg, .pdf" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(tmp_path / "fig.png"), "--layer", "7"]) == 2
    assert "layer 7 was not captured" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.mmviz"), "--out", str(tmp_path / "fig.png")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "fig.png").exists()


def test_export_of_a_saved_attribution(tmp_path, capsys):
    from tests.export.test_attribution_figures import make_attribution

    run = tmp_path / "attr.mmviz"
    make_attribution().save(run)
    assert main(["export", str(run), "--out", str(tmp_path / "a.svg"), "--title", "IG of $x$"]) == 0
    assert "IG of $x$" in (tmp_path / "a.svg").read_text(encoding="utf-8")
    assert main(["export", str(run), "--out", str(tmp_path / "a.html")]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "b.png"), "--layer", "1"]) == 2
    assert "--layer apply to attention traces" in capsys.readouterr().err


def test_export_of_a_saved_cross_attention_trace(tmp_path):
    from tests.data.test_cross_attention import make_trace as make_cross

    run = tmp_path / "cross.mmviz"
    make_cross().save(run)
    assert main(["export", str(run), "--out", str(tmp_path / "c.pdf")]) == 0
    assert (tmp_path / "c.pdf").read_bytes().startswith(b"%PDF")
