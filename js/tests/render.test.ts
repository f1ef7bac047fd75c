import { describe, expect, it } from "vitest";
import { COLORMAPS, formatValue, lut, lutIndex, robustMax } from "../src/render/colormap";
import { buildDisplay, buildUnits, colVector, rowVector, type Table } from "../src/render/matrix";

function table(text: string[], kind: string[], wordId: number[]): Table {
  const n = text.length;
  return {
    text,
    kind,
    generated: new Uint8Array(n),
    wordId: Int32Array.from(wordId),
    imageIndex: new Int32Array(n).fill(-1),
    patchRow: new Int32Array(n).fill(-1),
    patchCol: new Int32Array(n).fill(-1),
    grids: [],
  };
}

// 4 positions: <s>, "un", "do", "it"; "un"+"do" form one word.
const t = table(["<s>", "un", "do", " it"], ["special", "text", "text", "text"], [0, 1, 1, 2]);
const probs = Float32Array.from([1, 0, 0, 0, 0.5, 0.5, 0, 0, 0.4, 0.2, 0.4, 0, 0.1, 0.2, 0.3, 0.4]);
const slice = { shape: [4, 4], data: probs };

describe("colormaps", () => {
  it("builds 256-entry tables for every map, viridis first", () => {
    expect(COLORMAPS[0]).toBe("viridis");
    for (const name of COLORMAPS) expect(lut(name).length).toBe(768);
    expect(Array.from(lut("viridis").slice(0, 3))).toEqual([0x44, 0x01, 0x54]);
    expect(Array.from(lut("viridis").slice(765))).toEqual([0xfd, 0xe7, 0x25]);
  });

  it("scales and formats values", () => {
    expect(lutIndex(0.5, 1)).toBe(128);
    expect(lutIndex(2, 1)).toBe(255);
    expect(lutIndex(1, 0)).toBe(0);
    expect(robustMax(Float32Array.from([0, 0.1, 0.2, 0.3]), 1)).toBeCloseTo(0.3);
    expect(formatValue(0.123456)).toBe("0.123");
    expect(formatValue(0.00001)).toBe("1.0e-5");
  });
});

describe("display", () => {
  it("passes the slice through without options", () => {
    const d = buildDisplay(slice, t, t, { hideSpecial: false, mergeWords: false, qStep: 1, kStep: 1 });
    expect(d.rows).toBe(4);
    expect(d.data).toBe(probs);
    expect(Array.from(rowVector(d, 2))).toEqual([0.4, 0.2, 0.4, 0].map((v) => Math.fround(v)));
    expect(Array.from(colVector(d, 0))).toEqual([1, 0.5, 0.4, 0.1].map((v) => Math.fround(v)));
  });

  it("hides special tokens and renormalises rows", () => {
    const d = buildDisplay(slice, t, t, { hideSpecial: true, mergeWords: false, qStep: 1, kStep: 1 });
    expect(d.rows).toBe(3);
    expect(d.qUnitOfPos[0]).toBe(-1);
    for (let r = 0; r < d.rows; r++) {
      const sum = Array.from(rowVector(d, r)).reduce((a, b) => a + b, 0);
      expect(sum).toBeCloseTo(r === 0 ? 1 : 1);
    }
    // row "do" = [0.2, 0.4, 0] / 0.6 over (un, do, it)
    expect(rowVector(d, 1)[0]).toBeCloseTo(0.2 / 0.6);
  });

  it("merges subwords: sums keys, averages queries", () => {
    const d = buildDisplay(slice, t, t, { hideSpecial: false, mergeWords: true, qStep: 1, kStep: 1 });
    expect(d.qUnits.map((u) => u.label)).toEqual(["<s>", "undo", " it"]);
    // word "undo" as query = mean of rows 1 and 2; as key = sum of columns 1 and 2.
    const undo = rowVector(d, 1);
    expect(undo[0]).toBeCloseTo((0.5 + 0.4) / 2);
    expect(undo[1]).toBeCloseTo((0.5 + 0 + 0.2 + 0.4) / 2);
    expect(Array.from(undo).reduce((a, b) => a + b, 0)).toBeCloseTo(1);
  });

  it("maps positions to blocks of a downsampled matrix", () => {
    const small = { shape: [2, 2], data: Float32Array.from([1, 2, 3, 4]) };
    const d = buildDisplay(small, t, t, { hideSpecial: true, mergeWords: true, qStep: 2, kStep: 2 });
    expect(d.qUnits.length).toBe(4);
    expect(Array.from(d.qRow)).toEqual([0, 0, 1, 1]);
    expect(Array.from(rowVector(d, 3))).toEqual([3, 3, 4, 4]);
  });

  it("keeps image patches as single units when merging", () => {
    const img = table(["a", "b"], ["image", "image"], [5, 5]);
    expect(buildUnits(img, false, true).units.length).toBe(2);
  });
});
