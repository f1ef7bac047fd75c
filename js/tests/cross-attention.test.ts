import { describe, expect, it } from "vitest";
import type { TensorPayload } from "../src/codecs";
import { addBilinear, decodeGroup, groupSlice, heatRGBA, wordMap } from "../src/views/cross-attention-maps";

function float32Payload(shape: number[], values: number[]): TensorPayload {
  const data = new DataView(Float32Array.from(values).buffer);
  return { dtype: "float32", shape, data, axes: 0, scale: 1, offset: 0 };
}

// 2 steps × 2 words × 2×2 maps; word 0 on the left column, word 1 on the right, stronger at step 1.
const values = [1, 0, 1, 0, 0, 1, 0, 1, 3, 0, 3, 0, 0, 3, 0, 3];
const group = decodeGroup({
  key: "2x2",
  resolution: [2, 2],
  layers: ["a", "b"],
  maps: float32Payload([2, 2, 2, 2], values),
});

describe("cross-attention maps", () => {
  it("decodes groups and sums steps", () => {
    expect([group.steps, group.words, group.h, group.w]).toEqual([2, 2, 2, 2]);
    expect(Array.from(groupSlice(group, 0, 1))).toEqual([3, 0, 3, 0]);
    expect(Array.from(groupSlice(group, 1, -1))).toEqual([0, 4, 0, 4]);
  });

  it("upsamples bilinearly with half-pixel centres", () => {
    const out = new Float32Array(16);
    addBilinear(Float32Array.from([0, 1, 0, 1]), 2, 2, out, 4, 4);
    expect(Array.from(out.slice(0, 4))).toEqual([0, 0.25, 0.75, 1]);
    const same = new Float32Array(4);
    addBilinear(Float32Array.from([1, 2, 3, 4]), 2, 2, same, 2, 2);
    expect(Array.from(same)).toEqual([1, 2, 3, 4]);
  });

  it("sums the switched-on groups only, and puts words where they belong", () => {
    const left = wordMap([group], new Set(["2x2"]), 0, -1, 4, 4);
    expect(left[0]).toBeGreaterThan(left[3] ?? 0);
    const right = wordMap([group], new Set(["2x2"]), 1, 0, 4, 4);
    expect(right[3]).toBeGreaterThan(right[0] ?? 0);
    expect(Array.from(wordMap([group], new Set(), 0, 0, 2, 2))).toEqual([0, 0, 0, 0]);
  });

  it("colours min-max normalised values with opacity-weighted alpha", () => {
    const table = new Uint8ClampedArray(768);
    for (let i = 0; i < 256; i++) table[i * 3] = i;
    const rgba = heatRGBA(Float32Array.from([2, 4]), table, 0.8);
    expect([rgba[0], rgba[3], rgba[4], rgba[7]]).toEqual([0, 51, 255, 204]);
  });
});
