// The FeatureView front end's pure helpers (the pane itself is checked in tests/browser/test_feature_page.py).
import { describe, expect, it } from "vitest";
import { topPositions } from "../src/views/features";

describe("topPositions", () => {
  it("ranks positive values, largest first, ties by position", () => {
    expect(topPositions(Float32Array.from([0, 2, 0.5, 2, -1, 3]), 3)).toEqual([5, 1, 3]);
  });

  it("leaves out zeros and negatives, and never returns more than there are", () => {
    expect(topPositions(Float32Array.from([0, -2, 0.25]), 8)).toEqual([2]);
    expect(topPositions(new Float32Array(4), 8)).toEqual([]);
  });
});
