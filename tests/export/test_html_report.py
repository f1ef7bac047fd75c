from __future__ import annotations

import pytest

from mmviz.export import render_html
from mmviz.widgets import AttentionView


def test_headings_and_captions_are_text(trace):
    views = [AttentionView(trace, layer=0), AttentionView(trace, module="vision_tower")]
    page = render_html(
        views,
        title="Report",
        notes="two views",
        headings=["Language model", None],
        captions=["Hover <b>photograph</b>\nsecond line", "Vision & patches"],
        budget=200_000,
    )
    assert '<h2 class="mmviz-heading">Language model</h2>' in page
    assert '<p class="mmviz-caption">Hover &lt;b&gt;photograph&lt;/b&gt;\nsecond line</p>' in page
    assert '<p class="mmviz-caption">Vision &amp; patches</p>' in page
    assert page.index("mmviz-view-0") < page.index("Hover &lt;b&gt;") < page.index("mmviz-view-1")


def test_captions_need_one_per_view(trace):
    with pytest.raises(ValueError, match="one entry"):
        render_html([AttentionView(trace)], captions=["a", "b"])
    with pytest.raises(ValueError, match="one entry"):
        render_html([AttentionView(trace)], captions="a")
