/**
 * The AttributionView application (`mmviz/widgets/attribution_view.py`): text tokens coloured by score,
 * each image with its pixel map (or patch scores) over it, and, when an attribution has several targets
 * (an answer explained token by token), the `[generated, source]` matrix whose rows pick the target.
 * Signed methods use a diverging blue–red scale centred at 0; unsigned ones the selected colormap.
 * Hovering a token, patch or matrix column writes the position (and patch) to the link store; what other
 * panes point at is highlighted here. All in the browser.
 */
import type { AnyModel } from "@anywidget/types";
import { decodeTensor, type Tensor, type TensorPayload } from "../codecs";
import { createLink, type LinkState, type LinkStore, linkedPosition, type PatchIndex, paneId } from "../link";
import type { TableState } from "../model";
import { COLORMAPS, formatValue, lut } from "../render/colormap";
import { decodeTable, gridPositions, tablePatches } from "../table";
import css from "./attribution.css";
import { fillSelect, h, labelled, sizeCanvas, themeColors } from "./dom";
import { ImagePane } from "./image-pane";
import { onChanges, paneHeading } from "./pane";
import { paintSpans, SCORE_CSS, tokenStrip } from "./score-panes";

export interface AttributionEntry {
  label: string;
  method: string;
  signed: boolean;
  targets: string[];
  scores: TensorPayload;
  pixels: TensorPayload[];
}

/** The synced state, mirroring `AttributionView`'s traits. */
export interface AttributionState {
  entry: number;
  target: number;
  opacity: number;
  cmap: string;
  _view: "attribution";
  _title: string;
  _tokens: TableState;
  _entries: AttributionEntry[];
  _notes: string[];
  _standalone: boolean;
}

type Model = AnyModel<AttributionState>;

const IMAGE_SIDE = 260;
const SYNCED = ["entry", "target", "opacity", "cmap"] as const;

/** RGBA of a score: diverging blue (negative) – transparent – red (positive), or a colormap ramp. */
export function scoreColor(
  value: number,
  vmax: number,
  signed: boolean,
  table: Uint8ClampedArray,
): [number, number, number, number] {
  if (!(vmax > 0) || !Number.isFinite(value)) return [0, 0, 0, 0];
  const x = Math.max(-1, Math.min(1, value / vmax));
  if (signed) {
    const a = Math.abs(x) ** 0.8;
    return x >= 0 ? [214, 39, 40, a] : [31, 119, 180, a];
  }
  if (x <= 0) return [0, 0, 0, 0];
  const i = Math.min(255, Math.round(x * 255));
  return [table[i * 3] ?? 0, table[i * 3 + 1] ?? 0, table[i * 3 + 2] ?? 0, 0.15 + 0.85 * x ** 0.8];
}

/** Largest absolute finite value. */
export function absMax(values: ArrayLike<number>, from = 0, to = values.length): number {
  let m = 0;
  for (let i = from; i < to; i++) {
    const v = Math.abs(values[i] ?? 0);
    if (Number.isFinite(v) && v > m) m = v;
  }
  return m;
}

export class AttributionApp {
  readonly root = h("div", "mmviz-root mmviz-attr");
  private readonly cleanups: (() => void)[] = [];
  private readonly notes = h("ul", "mmviz-notes");
  private readonly entrySelect = h("select", "mmviz-attr-entry");
  private readonly targetSelect = h("select", "mmviz-attr-target");
  private readonly opacityInput = h("input", "mmviz-attr-opacity");
  private readonly cmapSelect = h("select", "mmviz-attr-cmap");
  private readonly status = h("div", "mmviz-attr-status");
  private readonly strip = h("div", "mmviz-attr-strip");
  private readonly imagesEl = h("div", "mmviz-attr-images");
  private readonly matrixFigure = h("figure", "mmviz-attr-matrix");
  private readonly matrixCanvas = h("canvas", "mmviz-attr-matrix-canvas");
  private spans: (HTMLSpanElement | null)[] = [];
  private images: ImagePane[] = [];
  private scores: Tensor | null = null;
  private pixels: Tensor[] = [];
  private text: string[] = [];
  private entry = 0;
  private target = 0;
  private opacity = 0.6;
  private cmap = "viridis";
  /** Position under the pointer (-1: none); set by this view's panes or by a linked pane. */
  private hover = -1;
  private patches: PatchIndex | null = null;
  private readonly id = paneId("attribution");

  constructor(
    private readonly model: Model,
    private readonly link: LinkStore = createLink(),
  ) {
    paneHeading(this.root, model.get("_title"), SCORE_CSS + css);
    this.root.append(this.notes, this.buildControls(), this.status);
    const body = h("div", "mmviz-attr-body");
    const left = h("div", "mmviz-attr-left");
    left.append(h("div", "mmviz-pane-title", "tokens"), this.strip, this.imagesEl);
    this.matrixFigure.append(this.matrixCanvas, h("figcaption", "mmviz-pane-title", "targets × positions"));
    body.append(left, this.matrixFigure);
    this.root.append(body);
    this.strip.addEventListener("mouseover", (e) => this.setHover(posOf(e.target), true));
    this.strip.addEventListener("mouseleave", () => this.setHover(-1, true));
    this.matrixCanvas.addEventListener("mousemove", (e) => this.onMatrix(e, false));
    this.matrixCanvas.addEventListener("mouseleave", () => this.setHover(-1, true));
    this.matrixCanvas.addEventListener("click", (e) => this.onMatrix(e, true));
    this.load();
    this.cleanups.push(link.subscribe((state, changed) => this.fromLink(state, changed)));
    this.cleanups.push(
      onChanges(model, SYNCED, () => this.fromModel()),
      onChanges(model, ["_tokens", "_entries", "_notes"], () => this.load()),
    );
  }

  destroy(): void {
    for (const fn of this.cleanups.splice(0)) fn();
  }

  /** Redraws what reads theme colours (after attaching, on theme changes). */
  themeChanged(): void {
    for (const im of this.images) im.resetTheme();
    this.paint();
  }

  /** Highlights a position; `notify` writes it (and its patch) to the link store for the other panes. */
  private setHover(position: number | null, notify: boolean): void {
    const pos = position ?? -1;
    if (pos === this.hover) return;
    this.hover = pos;
    this.root.dataset.hover = String(pos);
    this.paint();
    if (notify) this.link.set({ position: pos, patch: this.patches?.patchOf(pos) ?? null, source: this.id });
  }

  private fromLink(state: LinkState, changed: ReadonlySet<keyof LinkState>): void {
    if (state.source === this.id || !(changed.has("position") || changed.has("patch"))) return;
    if (this.patches) this.setHover(linkedPosition(state, this.patches, this.text.length), false);
  }

  // -- building --------------------------------------------------------------------------------------
  private buildControls(): HTMLElement {
    const controls = h("div", "mmviz-controls");
    const entry = h("label", "mmviz-control");
    entry.append(h("span", undefined, "attribution"), this.entrySelect);
    this.entrySelect.addEventListener("change", () =>
      this.update({ entry: Number(this.entrySelect.value), target: 0 }),
    );
    const target = h("label", "mmviz-control");
    target.append(h("span", undefined, "target"), this.targetSelect);
    this.targetSelect.addEventListener("change", () =>
      this.update({ target: Number(this.targetSelect.value) }),
    );
    this.opacityInput.type = "range";
    this.opacityInput.min = "0";
    this.opacityInput.max = "1";
    this.opacityInput.step = "0.05";
    this.opacityInput.addEventListener("input", () =>
      this.update({ opacity: Number(this.opacityInput.value) }),
    );
    const opacity = labelled("opacity", this.opacityInput);
    fillSelect(this.cmapSelect, COLORMAPS);
    this.cmapSelect.addEventListener("change", () => this.update({ cmap: this.cmapSelect.value }));
    const cmap = h("label", "mmviz-control");
    cmap.append(h("span", undefined, "colormap"), this.cmapSelect);
    controls.append(entry, target, opacity, cmap);
    return controls;
  }

  /** (Re)reads the data traits and rebuilds the panes. */
  private load(): void {
    const m = this.model;
    const tokens = m.get("_tokens");
    const table = decodeTable(tokens);
    this.patches = tablePatches(table);
    this.text = tokens.text;
    this.notes.replaceChildren(...m.get("_notes").map((n) => h("li", undefined, n)));
    const strip = tokenStrip(tokens, table, "mmviz-attr-tok");
    this.spans = strip.spans;
    this.strip.replaceChildren(...strip.children);
    this.images = tokens.images.map((payload, i) => {
      const grid = table.grids[i] ?? [1, 1];
      return new ImagePane(decodeTensor(payload), grid, gridPositions(table, i), {
        caption: `image ${i} (${grid[0]}×${grid[1]} patches)`,
        figureClass: "mmviz-attr-image",
        canvasClass: "mmviz-attr-image-canvas",
        index: i,
        side: IMAGE_SIDE,
        zoom: 16,
        hover: (pos) => this.setHover(pos, true),
      });
    });
    this.imagesEl.replaceChildren(...this.images.map((im) => im.el));
    this.entrySelect.replaceChildren(
      ...m.get("_entries").map((e, i) => {
        const option = h("option", undefined, e.label);
        option.value = String(i);
        return option;
      }),
    );
    this.fromModel();
  }

  // -- state -----------------------------------------------------------------------------------------
  private fromModel(): void {
    const m = this.model;
    const entries = m.get("_entries");
    this.entry = Math.max(0, Math.min(entries.length - 1, m.get("entry")));
    const entry = entries[this.entry];
    this.target = entry ? Math.max(0, Math.min(entry.targets.length - 1, m.get("target"))) : 0;
    this.opacity = m.get("opacity");
    this.cmap = m.get("cmap");
    this.scores = entry ? decodeTensor(entry.scores) : null;
    this.pixels = entry ? entry.pixels.map(decodeTensor) : [];
    this.entrySelect.value = String(this.entry);
    this.entrySelect.parentElement?.classList.toggle("mmviz-hidden", entries.length < 2);
    this.targetSelect.replaceChildren(
      ...(entry?.targets ?? []).map((t, i) => {
        const option = h("option", undefined, t);
        option.value = String(i);
        return option;
      }),
    );
    this.targetSelect.value = String(this.target);
    this.opacityInput.value = String(this.opacity);
    this.cmapSelect.value = this.cmap;
    this.cmapSelect.parentElement?.classList.toggle("mmviz-hidden", Boolean(entry?.signed));
    this.root.dataset.entry = String(this.entry);
    this.root.dataset.target = String(this.target);
    this.root.dataset.signed = entry?.signed ? "1" : "0";
    this.matrixFigure.classList.toggle("mmviz-hidden", (entry?.targets.length ?? 0) < 2);
    this.paint();
  }

  private update(patch: Partial<Pick<AttributionState, "entry" | "target" | "opacity" | "cmap">>): void {
    const m = this.model;
    for (const [key, value] of Object.entries(patch)) m.set(key as keyof AttributionState, value as never);
    m.save_changes();
    this.fromModel();
  }

  private onMatrix(e: MouseEvent, click: boolean): void {
    const scores = this.scores;
    if (!scores) return;
    const [rows = 1, cols = 1] = scores.shape;
    const box = this.matrixCanvas.getBoundingClientRect();
    const c = Math.floor(((e.clientX - box.left) / box.width) * cols);
    const r = Math.floor(((e.clientY - box.top) / box.height) * rows);
    if (r < 0 || c < 0 || r >= rows || c >= cols) return;
    if (click) this.update({ target: r });
    else this.setHover(c, true);
  }

  // -- painting --------------------------------------------------------------------------------------
  private paint(): void {
    const scores = this.scores;
    if (!scores) return;
    const entry = this.model.get("_entries")[this.entry];
    const signed = Boolean(entry?.signed);
    const [, cols = 0] = scores.shape;
    const row = scores.data.subarray(this.target * cols, (this.target + 1) * cols);
    const vmax = absMax(row);
    const table = lut(this.cmap);
    paintSpans(this.spans, row, (value) => scoreColor(value, vmax, signed, table), this.hover);
    this.images.forEach((im, i) => {
      this.paintImage(im, i, row, vmax, signed, table);
    });
    this.paintMatrix(signed, table);
    const pos = this.hover;
    if (pos >= 0 && pos < cols) {
      this.status.textContent = `${this.text[pos] ?? ""} (position ${pos}): ${formatValue(row[pos] ?? 0)}`;
    } else {
      const target = entry?.targets[this.target] ?? "";
      this.status.textContent = `${entry?.label ?? ""}${target && target !== entry?.label ? ` — ${target}` : ""}`;
    }
  }

  private paintImage(
    im: ImagePane,
    index: number,
    row: Float32Array,
    vmax: number,
    signed: boolean,
    table: Uint8ClampedArray,
  ): void {
    const options = { opacity: this.opacity };
    const pixels = this.pixels[index];
    if (pixels) {
      const [, ph = 1, pw = 1] = pixels.shape;
      const plane = pixels.data.subarray(this.target * ph * pw, (this.target + 1) * ph * pw);
      const pmax = absMax(plane);
      im.paintPixels(plane, [ph, pw], (v) => scoreColor(v, pmax, signed, table), this.hover, options);
    } else {
      im.paint(row, (v) => scoreColor(v, vmax, signed, table), this.hover, {
        ...options,
        painted: "patches",
      });
    }
  }

  private paintMatrix(signed: boolean, table: Uint8ClampedArray): void {
    const scores = this.scores;
    if (!scores) return;
    const [rows = 1, cols = 1] = scores.shape;
    if (rows < 2) return;
    const cell = Math.max(3, Math.min(18, Math.floor(520 / cols)));
    const width = cols * cell;
    const height = rows * cell;
    const ctx = sizeCanvas(this.matrixCanvas, width, height);
    ctx.clearRect(0, 0, width, height);
    for (let r = 0; r < rows; r++) {
      const vmax = absMax(scores.data, r * cols, (r + 1) * cols);
      for (let c = 0; c < cols; c++) {
        const [red, g, b, a] = scoreColor(scores.data[r * cols + c] ?? 0, vmax, signed, table);
        if (a <= 0) continue;
        ctx.fillStyle = `rgba(${red},${g},${b},${a.toFixed(3)})`;
        ctx.fillRect(c * cell, r * cell, cell, cell);
      }
    }
    const accent = themeColors(this.root).accent;
    ctx.strokeStyle = accent;
    ctx.lineWidth = 2;
    ctx.strokeRect(1, this.target * cell + 1, width - 2, cell - 2);
    if (this.hover >= 0 && this.hover < cols) ctx.strokeRect(this.hover * cell + 1, 1, cell - 2, height - 2);
  }
}

function posOf(target: EventTarget | null): number {
  if (!(target instanceof HTMLElement)) return -1;
  const pos = target.dataset.pos;
  return pos === undefined ? -1 : Number(pos);
}
