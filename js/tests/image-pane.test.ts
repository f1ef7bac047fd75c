// @vitest-environment happy-dom
// The image pane every view draws images with (happy-dom has no canvas: a 2D context that records the calls
// stands in, so these tests check the pointer mapping, the outlined patches, the overlay's pixels and the
// data attributes; what it looks like is checked in tests/browser).
import { beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { Tensor } from "../src/codecs";
import { lut } from "../src/render/colormap";
import { attentionColor, ImagePane } from "../src/views/image-pane";

interface Call {
  name: string;
  args: unknown[];
  canvas: HTMLCanvasElement;
}

let calls: Call[] = [];
/** Every `createImageData` result, in order: the last one holds the overlay's pixels after a paint. */
let images: Uint8ClampedArray[] = [];

beforeAll(() => {
  HTMLCanvasElement.prototype.getContext = function getContext(this: HTMLCanvasElement) {
    return new Proxy(
      {},
      {
        get:
          (_t, key) =>
          (...args: unknown[]) => {
            calls.push({ name: String(key), args, canvas: this });
            if (key === "createImageData") {
              const data = new Uint8ClampedArray((args[0] as number) * (args[1] as number) * 4);
              images.push(data);
              return { data };
            }
            return undefined;
          },
        set: () => true,
      },
    );
  } as never;
});

beforeEach(() => {
  calls = [];
  images = [];
});

/** A 4×4 grey image with a 2×2 patch grid; patch positions 5, 6, -1, 8. */
function pane(options: Partial<ConstructorParameters<typeof ImagePane>[3]> = {}): ImagePane {
  const image: Tensor = { data: new Uint8Array(4 * 4 * 3).fill(128), shape: [4, 4, 3] } as unknown as Tensor;
  return new ImagePane(image, [2, 2], Int32Array.from([5, 6, -1, 8]), { caption: "image 0", ...options });
}

function pointAt(p: ImagePane, x: number, y: number): MouseEvent {
  p.canvas.getBoundingClientRect = () => ({ left: 10, top: 20, width: 100, height: 100 }) as DOMRect;
  return new MouseEvent("mousemove", { clientX: 10 + x, clientY: 20 + y });
}

function strokes(p: ImagePane): number[][] {
  return calls.filter((c) => c.name === "strokeRect" && c.canvas === p.canvas).map((c) => c.args as number[]);
}

describe("attentionColor", () => {
  const table = lut("viridis");
  it("leaves values at or below 0 (and NaN) unpainted", () => {
    const color = attentionColor(2, table);
    expect(color(0)).toEqual([0, 0, 0, 0]);
    expect(color(-1)).toEqual([0, 0, 0, 0]);
    expect(color(Number.NaN)).toEqual([0, 0, 0, 0]);
    expect(attentionColor(0, table)(1)).toEqual([0, 0, 0, 0]);
  });
  it("takes the colormap's colour and stays translucent at the maximum", () => {
    const [r, g, b, a] = attentionColor(2, table)(2);
    expect([r, g, b]).toEqual([table[255 * 3], table[255 * 3 + 1], table[255 * 3 + 2]]);
    expect(a).toBeCloseTo(0.7, 6);
    const half = attentionColor(2, table)(1);
    expect(half[3]).toBeCloseTo(0.12 + 0.58 * (128 / 255) ** 0.8, 6);
  });
});

describe("ImagePane", () => {
  it("builds the figure with the given classes, caption and image index", () => {
    const p = pane({ figureClass: "mmviz-x", canvasClass: "mmviz-x-canvas", index: 3 });
    expect(p.el.className).toBe("mmviz-x");
    expect(p.canvas.className).toBe("mmviz-x-canvas");
    expect(p.canvas.dataset.image).toBe("3");
    expect(p.caption.textContent).toBe("image 0");
    expect(p.canvas.dataset.painted).toBe("image");
    // 4 px scaled by at most 8 (default) but never under 32 px.
    expect([p.width, p.height]).toEqual([32, 32]);
    expect([pane({ side: 100, zoom: 16 }).width]).toEqual([64]);
  });

  it("maps the pointer to the patch's position (-1: no position there, null: off the grid)", () => {
    const seen: (number | null)[] = [];
    const clicked: number[] = [];
    const p = pane({ hover: (pos) => seen.push(pos), click: (pos) => clicked.push(pos) });
    expect(p.positionAt(pointAt(p, 10, 10))).toBe(5);
    expect(p.positionAt(pointAt(p, 60, 10))).toBe(6);
    expect(p.positionAt(pointAt(p, 10, 60))).toBe(-1);
    expect(p.positionAt(pointAt(p, 99, 99))).toBe(8);
    expect(p.positionAt(pointAt(p, 100, 10))).toBeNull();
    p.canvas.dispatchEvent(pointAt(p, 60, 60));
    p.canvas.dispatchEvent(new MouseEvent("mouseleave"));
    expect(seen).toEqual([8, null]);
    p.canvas.getBoundingClientRect = () => ({ left: 0, top: 0, width: 100, height: 100 }) as DOMRect;
    p.canvas.dispatchEvent(new MouseEvent("click", { clientX: 10, clientY: 60 }));
    p.canvas.dispatchEvent(new MouseEvent("click", { clientX: 60, clientY: 10 }));
    expect(clicked).toEqual([6]);
  });

  it("paints one colour per patch from the values of its position, with the opacity asked for", () => {
    const p = pane({ index: 0 });
    const values = [0, 0, 0, 0, 0, 1, 2, 0, 3];
    p.paint(values, (v) => [v * 10, 0, 0, v / 4], -1, { opacity: 0.5, painted: "patches" });
    const overlay = images.at(-1);
    // Patches (row-major): positions 5, 6, none, 8.
    expect(Array.from(overlay ?? [])).toEqual([10, 0, 0, 64, 20, 0, 0, 128, 0, 0, 0, 0, 30, 0, 0, 191]);
    expect(p.canvas.dataset.painted).toBe("patches");
    expect(strokes(p)).toEqual([]);
    p.paint(null, () => [0, 0, 0, 0], -1);
    expect(p.canvas.dataset.painted).toBe("image");
  });

  it("outlines the active position's patch, or every patch of a unit after setUnits", () => {
    const p = pane();
    p.paint(null, () => [0, 0, 0, 0], 6);
    expect(strokes(p)).toEqual([[17, 1, 14, 14]]);
    calls = [];
    // Positions 5 and 6 merged into unit 0, 8 is unit 1.
    p.setUnits(Int32Array.from([-1, -1, -1, -1, -1, 0, 0, -1, 1]));
    p.paint(null, () => [0, 0, 0, 0], 0);
    expect(strokes(p)).toEqual([
      [1, 1, 14, 14],
      [17, 1, 14, 14],
    ]);
  });

  it("draws the patch grid and darkens the picture under values only when shaded", () => {
    const lines = (p: ImagePane) => calls.filter((c) => c.canvas === p.canvas && c.name === "moveTo").length;
    const plain = pane();
    plain.paint([0, 0, 0, 0, 0, 1], () => [1, 1, 1, 1], -1);
    expect(lines(plain)).toBe(0);
    const shaded = pane({ shaded: true });
    calls = [];
    shaded.paint([0, 0, 0, 0, 0, 1], () => [1, 1, 1, 1], -1);
    expect(lines(shaded)).toBe(2);
    expect(calls.filter((c) => c.canvas === shaded.canvas && c.name === "fillRect")).toHaveLength(1);
  });

  it("paints a per-pixel map at its own resolution", () => {
    const p = pane();
    p.paintPixels([1, 2, 3, 4, 5, 6], [2, 3], (v) => [v, 0, 0, 1], -1);
    const overlay = images.at(-1);
    expect(overlay?.length).toBe(2 * 3 * 4);
    expect(overlay?.[5 * 4]).toBe(6);
    expect(p.canvas.dataset.painted).toBe("pixels");
  });
});
