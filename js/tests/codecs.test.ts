// Golden fixtures written by tests/fixtures/make_codec_fixtures.py (the Python codec), decoded here.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { decodeInts, decodeTensor, halfToFloat, reviveBinary, type TensorPayload } from "../src/codecs";
import type { TableState } from "../src/model";

const fixture = JSON.parse(
  readFileSync(join(__dirname, "..", "..", "tests", "fixtures", "codec_cases.json"), "utf8"),
);
const cases = reviveBinary(fixture) as Record<string, { payload: unknown; expected: number[] | null }>;

describe("golden codec fixtures", () => {
  for (const [name, { payload, expected }] of Object.entries(cases)) {
    if (!expected) continue;
    it(`decodes ${name} like Python`, () => {
      const t = decodeTensor(payload as TensorPayload);
      expect(t.shape).toEqual((payload as TensorPayload).shape);
      expect(t.data.length).toBe(expected.length);
      expected.forEach((v, i) => {
        // float32 rounding may differ in the last bit between numpy and JS.
        expect(Math.abs((t.data[i] ?? 0) - v)).toBeLessThanOrEqual(1e-6 * Math.abs(v) + 1e-12);
      });
    });
  }

  it("decodes a token table", () => {
    const table = cases.table?.payload as TableState;
    expect(table.text[1]).toBe("<img src=x onerror=alert(1)>");
    expect(Array.from(decodeInts(table.image_index))).toEqual([-1, -1, 0]);
    expect(Array.from(decodeInts(table.patch_col))).toEqual([-1, -1, 1]);
    const image = decodeTensor(table.images[0] as TensorPayload);
    expect(image.shape).toEqual([2, 2, 3]);
    expect(Array.from(image.data)).toEqual(Array.from({ length: 12 }, (_, i) => i));
  });
});

describe("decodeTensor", () => {
  it("honours the DataView byteOffset", () => {
    const buffer = new ArrayBuffer(16);
    new Uint8Array(buffer).set([9, 9, 9, 1, 2, 3, 4], 0);
    const data = new DataView(buffer, 3, 4);
    const t = decodeTensor({ dtype: "uint8", shape: [4], data, axes: 0, scale: 0.5, offset: 1 });
    expect(Array.from(t.data)).toEqual([1.5, 2, 2.5, 3]);
  });

  it("reads unaligned float32 and float16", () => {
    const buffer = new ArrayBuffer(9);
    const view = new DataView(buffer, 1, 8);
    view.setFloat32(0, 2.5, true);
    view.setFloat32(4, -1, true);
    expect(
      Array.from(
        decodeTensor({ dtype: "float32", shape: [2], data: view, axes: 0, scale: 1, offset: 0 }).data,
      ),
    ).toEqual([2.5, -1]);
    expect(halfToFloat(0x3c00)).toBe(1);
    expect(halfToFloat(0xc000)).toBe(-2);
    expect(halfToFloat(0x7c00)).toBe(Number.POSITIVE_INFINITY);
  });

  it("rejects unknown dtypes", () => {
    const data = new DataView(new ArrayBuffer(4));
    expect(() =>
      decodeTensor({ dtype: "int8" as never, shape: [4], data, axes: 0, scale: 1, offset: 0 }),
    ).toThrow();
  });
});
