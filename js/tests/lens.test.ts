// @vitest-environment happy-dom
// The LensView front end with a fake model (happy-dom has no canvas: a no-op 2D context stands in, so
// these tests check the DOM, the link store and the model traffic; pixels are checked in tests/browser).
import { beforeAll, describe, expect, it, vi } from "vitest";
import type { TensorPayload } from "../src/codecs";
import { createLink } from "../src/link";
import type { TableState } from "../src/model";
import { StandaloneModel } from "../src/standalone";
import { cellSize, LensApp, type LensState } from "../src/views/lens";

beforeAll(() => {
  const noop = () => undefined;
  const ctx = new Proxy(
    {},
    {
      get: (_t, key) => {
        if (key === "createImageData")
          return (w: number, h: number) => ({ data: new Uint8ClampedArray(w * h * 4) });
        if (key === "measureText") return (s: string) => ({ width: s.length * 6 });
        return noop;
      },
      set: () => true,
    },
  );
  HTMLCanvasElement.prototype.getContext = (() => ctx) as never;
});

function tensor(dtype: "int32" | "float32" | "uint8", values: number[], shape: number[]): TensorPayload {
  const data =
    dtype === "int32"
      ? Int32Array.from(values)
      : dtype === "float32"
        ? Float32Array.from(values)
        : Uint8Array.from(values);
  return { dtype, shape, data: new DataView(data.buffer), axes: 0, scale: 1, offset: 0 };
}

const EVIL = "<img src=x onerror=alert(1)>";

function state(): LensState {
  const table: TableState = {
    text: ["<s>", "img0[0,0]", "img0[0,1]", "red"],
    kind: ["special", "image", "image", "text"],
    word_id: tensor("int32", [0, 1, 2, 3], [4]),
    image_index: tensor("int32", [-1, 0, 0, -1], [4]),
    patch_row: tensor("int32", [-1, 0, 0, -1], [4]),
    patch_col: tensor("int32", [-1, 0, 1, -1], [4]),
    images: [tensor("uint8", new Array(2 * 2 * 3).fill(9), [2, 2, 3])],
    grids: [[1, 2]],
  };
  return {
    token: -1,
    layer: 1,
    cmap: "viridis",
    _view: "lens",
    _title: "",
    _tokens: table,
    _lens: {
      method: "logit_lens",
      layers: [0, 1],
      positions: tensor("int32", [0, 1, 2, 3], [4]),
      top_ids: tensor("int32", [0, 1, 0, 1, 0, 1, 0, 1], [2, 4, 1]),
      top_probs: tensor("float32", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], [2, 4, 1]),
      entropy: tensor("float32", new Array(8).fill(1), [2, 4]),
      named: [EVIL],
      named_probs: tensor("float32", [0, 0, 0, 0, 0.1, 0.9, 0.2, 0], [2, 4, 1]),
      vocab_ids: tensor("int32", [0, 1], [2]),
      vocab_text: ["red", EVIL],
    },
    _notes: [],
    _standalone: true,
  };
}

describe("LensView front end", () => {
  it("sizes cells to fit: words when few, slivers when many", () => {
    expect(cellSize(13, 8)).toEqual([48, 18]);
    expect(cellSize(13, 1024)).toEqual([3, 18]);
    expect(cellSize(200, 4)[1]).toBe(4);
  });

  it("lists named tokens as text and writes the choice to the model", () => {
    const model = new StandaloneModel(state() as unknown as Record<string, unknown>);
    const save = vi.spyOn(model, "save_changes");
    const app = new LensApp(model as never);
    const select = app.root.querySelector("select.mmviz-lens-token") as HTMLSelectElement;
    expect(Array.from(select.options, (o) => o.textContent)).toEqual(["top-1 probability", `p(${EVIL})`]);
    expect(app.root.querySelector("img")).toBeNull();
    select.value = "0";
    select.dispatchEvent(new Event("change"));
    expect(model.get("token")).toBe(0);
    expect(save).toHaveBeenCalled();
    expect(app.root.dataset.token).toBe("0");
    app.destroy();
  });

  it("follows a patch another pane points at", () => {
    const link = createLink();
    const model = new StandaloneModel(state() as unknown as Record<string, unknown>);
    const app = new LensApp(model as never, link);
    link.set({ position: -1, patch: { image: 0, row: 0, col: 1 }, source: "other" });
    expect(app.root.dataset.hover).toBe("2");
    link.set({ position: 3, patch: null, source: "other" });
    expect(app.root.dataset.hover).toBe("3");
    app.destroy();
  });
});
