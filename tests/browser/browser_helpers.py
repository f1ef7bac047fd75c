"""Helpers shared by the browser tests and the latency benchmark."""

from __future__ import annotations

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
