// @vitest-environment happy-dom
// Smoke tests of the whole view with a fake anywidget model (happy-dom has no canvas: a no-op 2D
// context stands in, so these tests check the DOM, the store and the model traffic, not pixels).
import { beforeAll, describe, expect, it, vi } from "vitest";
import { AttentionApp } from "../src/app";
import type { TensorPayload } from "../src/codecs";
import { renderView } from "../src/index";
import { createLink } from "../src/link";
import type { AttentionViewState, TableState } from "../src/model";
import { StandaloneModel } from "../src/standalone";

beforeAll(() => {
  const noop = () => undefined;
  const ctx = new Proxy(
    {},
    {
      get: (_t, key) => {
        if (key === "createImageData")
          return (w: number, h: number) => ({ data: new Uint8ClampedArray(w * h * 4) });
        return noop;
      },
      set: () => true,
    },
  );
  HTMLCanvasElement.prototype.getContext = (() => ctx) as never;
});

function u8(values: number[], shape: number[], axes = 0): TensorPayload {
  const rows = shape.slice(0, axes).reduce((a, b) => a * b, 1);
  const ones = new DataView(new Float32Array(rows).fill(1 / 255).buffer);
  const zeros = new DataView(new Float32Array(rows).buffer);
  return {
    dtype: "uint8",
    shape,
    data: new DataView(Uint8Array.from(values).buffer),
    axes,
    scale: axes ? ones : 1 / 255,
    offset: axes ? zeros : 0,
  };
}

function i32(values: number[]): TensorPayload {
  return {
    dtype: "int32",
    shape: [values.length],
    data: new DataView(Int32Array.from(values).buffer),
    axes: 0,
    scale: 1,
    offset: 0,
  };
}

const EVIL = "<img src=x onerror=alert(1)>";

function state(): AttentionViewState {
  const text = ["<s>", "a", EVIL, " cat"];
  const table: TableState = {
    text,
    kind: ["special", "text", "text", "text"],
    generated: u8([0, 0, 0, 1], [4]),
    word_id: i32([0, 1, 2, 3]),
    image_index: i32([-1, -1, -1, -1]),
    patch_row: i32([-1, -1, -1, -1]),
    patch_col: i32([-1, -1, -1, -1]),
    images: [],
    grids: [],
  };
  const matrix = [255, 0, 0, 0, 128, 127, 0, 0, 85, 85, 85, 0, 10, 20, 30, 195];
  return {
    module: "lm",
    layer: 0,
    head: 0,
    aggregate: "head",
    token: -1,
    direction: "from",
    hide_special: false,
    merge_words: false,
    cmap: "viridis",
    batch_index: 0,
    _title: "</script><b>title</b>",
    _modules: [
      {
        name: "lm",
        layers: [0, 1],
        heads: [0, 1],
        query_table: "t",
        key_table: "t",
        n_query: 4,
        n_key: 4,
        q_step: 1,
        k_step: 1,
        self_attention: true,
      },
    ],
    _tables: { t: table },
    _thumbs: {
      lm: {
        heads: u8(new Array(2 * 2 * 4 * 4).fill(7), [2, 2, 4, 4], 2),
        mean: u8(new Array(2 * 16).fill(3), [2, 4, 4], 1),
        max: u8(new Array(2 * 16).fill(9), [2, 4, 4], 1),
      },
    },
    _slices: { "lm|0|0": u8(matrix, [4, 4], 1) },
    _notes: ["a note"],
    _standalone: false,
  };
}

function setup(overrides: Partial<AttentionViewState> = {}) {
  const model = new StandaloneModel({ ...state(), ...overrides } as unknown as Record<string, unknown>);
  const save = vi.spyOn(model, "save_changes");
  const el = document.createElement("div");
  document.body.append(el);
  const cleanup = renderView({ model: model as never, el });
  const root = el.querySelector(".mmviz-root") as HTMLElement;
  return { model, el, root, save, cleanup };
}

describe("AttentionView front end", () => {
  it("renders token text as text, never as markup", () => {
    const { el, root, cleanup } = setup();
    const toks = [...el.querySelectorAll(".mmviz-tok")].map((s) => s.textContent);
    expect(toks).toEqual(["<s>", "a", EVIL, " cat"]);
    expect(el.querySelectorAll(".mmviz-generated").length).toBe(1);
    expect(el.querySelector("img")).toBeNull();
    expect(el.querySelector("b")).toBeNull();
    expect(el.querySelector(".mmviz-title")?.textContent).toBe("</script><b>title</b>");
    expect(root.dataset.state).toBe("ready");
    cleanup();
    expect(el.querySelector(".mmviz-root")).toBeNull();
  });

  it("links a hovered token to the matrix row", () => {
    const { el, root } = setup();
    const cat = el.querySelectorAll(".mmviz-tok")[3] as HTMLElement;
    cat.dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    expect(root.dataset.source).toBe("3");
    const overlay = el.querySelector(".mmviz-heatmap-overlay") as HTMLCanvasElement;
    expect(overlay.dataset.rows).toBe("3");
    // the hovered token's own attention colours the strip: "cat" attends most to itself
    const values = [...el.querySelectorAll<HTMLElement>(".mmviz-tok")].map((s) => Number(s.dataset.value));
    expect(values[3]).toBeGreaterThan(values[0] ?? 1);
    expect(el.querySelector(".mmviz-tooltip")?.textContent).toContain("#3");
  });

  it("pins a clicked token into the durable `token` trait", () => {
    const { el, model, save } = setup();
    (el.querySelectorAll(".mmviz-tok")[1] as HTMLElement).dispatchEvent(
      new MouseEvent("click", { bubbles: true }),
    );
    expect(model.get("token")).toBe(1);
    expect(save).toHaveBeenCalled();
  });

  it("switches direction to columns", () => {
    const { el, model } = setup();
    model.set("direction", "to");
    (el.querySelectorAll(".mmviz-tok")[0] as HTMLElement).dispatchEvent(
      new MouseEvent("mouseover", { bubbles: true }),
    );
    const overlay = el.querySelector(".mmviz-heatmap-overlay") as HTMLCanvasElement;
    expect(overlay.dataset.cols).toBe("0");
    expect(overlay.dataset.rows).toBe("");
  });

  it("fetches a missing map from Python and draws the reply", () => {
    const { model, root } = setup();
    model.set("layer", 1);
    expect(root.dataset.state).toBe("loading");
    expect(model.sent).toContainEqual(expect.objectContaining({ type: "slice", key: "lm|1|0", layer: 1 }));
    const reply = u8(new Array(16).fill(50), [4, 4], 1);
    model.emit("msg:custom", { type: "slice", key: "lm|1|0", dtype: "uint8", shape: [4, 4], axes: 1 }, [
      reply.data,
      reply.scale,
      reply.offset,
    ]);
    expect(root.dataset.state).toBe("ready");
  });

  it("writes control changes back to the model", () => {
    const { el, model, save } = setup();
    const head = el.querySelector(".mmviz-c-head select") as HTMLSelectElement;
    head.value = "mean";
    head.dispatchEvent(new Event("change"));
    expect(model.get("aggregate")).toBe("mean");
    expect(save).toHaveBeenCalled();
  });

  it("says when an exported page lacks a map", () => {
    const { model, root } = setup({ _standalone: true });
    model.set("layer", 1);
    expect(root.dataset.state).toBe("missing");
    expect(model.sent).toEqual([]);
  });

  it("hides special tokens and merges words on request", () => {
    const { el, model } = setup();
    model.set("hide_special", true);
    expect([...el.querySelectorAll(".mmviz-tok")].map((s) => s.textContent)).toEqual(["a", EVIL, " cat"]);
  });

  it("marks the layer and head another pane points at, and writes its own", () => {
    const link = createLink();
    const model = new StandaloneModel(state() as unknown as Record<string, unknown>);
    const app = new AttentionApp(model as never, link);
    const thumbs = app.root.querySelector(".mmviz-thumbs") as HTMLCanvasElement;
    link.set({ layer: 1, head: 0, module: "", source: "decomposition-9" });
    expect(thumbs.dataset.marked).toBe("layer 1 head 0");
    link.set({ layer: 0, head: -1, module: "lm", source: "patching-9" });
    expect(thumbs.dataset.marked).toBe("layer 0");
    link.set({ layer: 1, head: 1, module: "vision_model", source: "other" }); // another stack: no mark
    expect(thumbs.dataset.marked).toBe("");
    link.set({ layer: 7, head: 0, module: "", source: "other" }); // a layer this view does not have
    expect(thumbs.dataset.marked).toBe("");
    thumbs.dispatchEvent(new MouseEvent("mousemove", { clientX: 45, clientY: 20 }));
    expect(link.get()).toMatchObject({ layer: 0, head: 0, module: "lm" });
    thumbs.dispatchEvent(new MouseEvent("mouseleave"));
    expect(link.get()).toMatchObject({ layer: -1, head: -1 });
    app.destroy();
  });
});
