/**
 * The LensView application (`mmviz/widgets/lens_view.py`): the logit lens as a layer × position grid (the
 * last layer on top) whose cells hold each layer's most probable token, coloured by its probability or by
 * a named token's probability; each image with its patches coloured by the same value at the hovered layer
 * (else the pinned one). Hovering a cell lists its top-k and writes its position (and patch) to the link
 * store; what other panes point at is outlined here. Clicking a row pins its layer. All in the browser.
 */
import type { AnyModel } from "@anywidget/types";
import { decodeInts, decodeTensor, type Tensor, type TensorPayload } from "../codecs";
import { createLink, type LinkState, type LinkStore, linkedPosition, type PatchIndex, paneId } from "../link";
import type { TableState } from "../model";
import { COLORMAPS, formatValue, luminance, lut, lutIndex } from "../render/colormap";
import { decodeTable, gridPositions, tablePatches } from "../table";
import { fillSelect, h, labelled, sizeCanvas, themeColors } from "./dom";
import { attentionColor, ImagePane } from "./image-pane";
import css from "./lens.css";
import { onChanges, paneHeading } from "./pane";
import { Tooltip } from "./tooltip";

export interface LensData {
  method: string;
  layers: number[];
  positions: TensorPayload;
  top_ids: TensorPayload;
  top_probs: TensorPayload;
  entropy: TensorPayload;
  named: string[];
  named_probs: TensorPayload;
  vocab_ids: TensorPayload;
  vocab_text: string[];
}

/** The synced state, mirroring `LensView`'s traits. */
export interface LensState {
  token: number;
  layer: number;
  cmap: string;
  _view: "lens";
  _title: string;
  _tokens: TableState;
  _lens: LensData;
  _notes: string[];
  _standalone: boolean;
}

type Model = AnyModel<LensState>;

const SYNCED = ["token", "layer", "cmap"] as const;
const LEFT = 40;
const BOTTOM = 64;

/** Cell size of a grid of `rows × cols` cells: wide enough for a word when there is room. */
export function cellSize(rows: number, cols: number): [number, number] {
  const width = Math.max(3, Math.min(48, Math.floor(760 / Math.max(1, cols))));
  const height = Math.max(4, Math.min(18, Math.floor(560 / Math.max(1, rows))));
  return [width, height];
}

export class LensApp {
  readonly root = h("div", "mmviz-root mmviz-lens");
  private readonly cleanups: (() => void)[] = [];
  private readonly notes = h("ul", "mmviz-notes");
  private readonly tokenSelect = h("select", "mmviz-lens-token");
  private readonly cmapSelect = h("select", "mmviz-lens-cmap");
  private readonly status = h("div", "mmviz-lens-status");
  private readonly gridBox = h("div", "mmviz-lens-grid");
  private readonly canvas = h("canvas", "mmviz-lens-canvas");
  private readonly imagesEl = h("div", "mmviz-lens-images");
  private readonly tooltip: Tooltip;
  private readonly id = paneId("lens");
  private text: string[] = [];
  private layers: number[] = [];
  private named: string[] = [];
  private positions: Int32Array = new Int32Array(0);
  private columnOf = new Map<number, number>();
  private topIds: Int32Array = new Int32Array(0);
  private topProbs: Tensor = { shape: [0, 0, 1], data: new Float32Array(0) };
  private entropy: Float32Array = new Float32Array(0);
  private namedProbs: Tensor = { shape: [0, 0, 0], data: new Float32Array(0) };
  private vocab = new Map<number, string>();
  private images: ImagePane[] = [];
  private patches: PatchIndex | null = null;
  private token = -1;
  private layer = 0;
  private cmap = "viridis";
  /** Lens column under the pointer, here or in a linked pane (-1: none). */
  private column = -1;
  /** Layer row under the pointer (-1: none; the images then show the pinned layer). */
  private hoverRow = -1;

  constructor(
    private readonly model: Model,
    private readonly link: LinkStore = createLink(),
  ) {
    paneHeading(this.root, model.get("_title"), css);
    this.tooltip = new Tooltip(this.root);
    this.root.append(this.notes, this.buildControls(), this.status);
    const body = h("div", "mmviz-lens-body");
    this.gridBox.append(this.canvas);
    body.append(this.gridBox, this.imagesEl);
    this.root.append(body);
    this.canvas.addEventListener("mousemove", (e) => this.onGrid(e, false));
    this.canvas.addEventListener("click", (e) => this.onGrid(e, true));
    this.canvas.addEventListener("mouseleave", () => this.leave());
    this.load();
    this.cleanups.push(link.subscribe((state, changed) => this.fromLink(state, changed)));
    this.cleanups.push(
      onChanges(model, SYNCED, () => this.fromModel()),
      onChanges(model, ["_tokens", "_lens", "_notes"], () => this.load()),
      () => this.tooltip.destroy(),
    );
  }

  destroy(): void {
    for (const fn of this.cleanups.splice(0)) fn();
  }

  themeChanged(): void {
    for (const pane of this.images) pane.resetTheme();
    this.paint();
  }

  private buildControls(): HTMLElement {
    const controls = h("div", "mmviz-controls");
    this.tokenSelect.addEventListener("change", () => this.update({ token: Number(this.tokenSelect.value) }));
    fillSelect(this.cmapSelect, COLORMAPS);
    this.cmapSelect.addEventListener("change", () => this.update({ cmap: this.cmapSelect.value }));
    controls.append(labelled("colour by", this.tokenSelect), labelled("colormap", this.cmapSelect));
    return controls;
  }

  /** (Re)reads the data traits. */
  private load(): void {
    const m = this.model;
    const tokens = m.get("_tokens");
    const lens = m.get("_lens");
    const table = decodeTable(tokens);
    this.patches = tablePatches(table);
    this.text = tokens.text;
    this.layers = lens.layers;
    this.named = lens.named;
    this.positions = decodeInts(lens.positions);
    this.columnOf = new Map(Array.from(this.positions, (p, c) => [p, c] as [number, number]));
    this.topIds = decodeInts(lens.top_ids);
    this.topProbs = decodeTensor(lens.top_probs);
    this.entropy = decodeTensor(lens.entropy).data;
    this.namedProbs = decodeTensor(lens.named_probs);
    const ids = decodeInts(lens.vocab_ids);
    this.vocab = new Map(
      Array.from(ids, (id, i) => [id, lens.vocab_text[i] ?? `#${id}`] as [number, string]),
    );
    this.notes.replaceChildren(...m.get("_notes").map((n) => h("li", undefined, n)));
    const what = lens.method === "text_lens" ? "top caption" : "top-1 probability";
    this.tokenSelect.replaceChildren(
      ...[what, ...lens.named.map((n) => `p(${n})`)].map((label, i) => {
        const option = h("option", undefined, label);
        option.value = String(i - 1);
        return option;
      }),
    );
    const unitOfPos = new Int32Array(tokens.text.length).fill(-1);
    this.positions.forEach((p, c) => {
      if (p >= 0 && p < unitOfPos.length) unitOfPos[p] = c;
    });
    this.images = tokens.images.map((payload, i) => {
      const pane = new ImagePane(decodeTensor(payload), table.grids[i] ?? [1, 1], gridPositions(table, i), {
        caption: `image ${i}`,
        shaded: true,
        hover: (position, event) => this.onPatch(position ?? -1, event),
      });
      pane.setUnits(unitOfPos);
      return pane;
    });
    this.imagesEl.replaceChildren(...this.images.map((pane) => pane.el));
    this.fromModel();
  }

  private fromModel(): void {
    const m = this.model;
    this.token = Math.max(-1, Math.min(this.named.length - 1, m.get("token")));
    this.layer = Math.max(0, Math.min(this.layers.length - 1, m.get("layer")));
    this.cmap = m.get("cmap");
    this.tokenSelect.value = String(this.token);
    this.cmapSelect.value = this.cmap;
    this.root.dataset.token = String(this.token);
    this.root.dataset.layer = String(this.layer);
    this.paint();
  }

  private update(patch: Partial<Pick<LensState, "token" | "layer" | "cmap">>): void {
    for (const [key, value] of Object.entries(patch)) this.model.set(key as keyof LensState, value as never);
    this.model.save_changes();
    this.fromModel();
  }

  // -- reading the lens ------------------------------------------------------------------------------
  private get nPositions(): number {
    return this.positions.length;
  }

  /** The value that colours cell (layer row, column). */
  private value(row: number, column: number): number {
    const cell = row * this.nPositions + column;
    if (this.token < 0) return this.topProbs.data[cell * (this.topProbs.shape[2] ?? 1)] ?? 0;
    return this.namedProbs.data[cell * (this.namedProbs.shape[2] ?? 1) + this.token] ?? 0;
  }

  private topText(row: number, column: number, rank = 0): string {
    const k = this.topProbs.shape[2] ?? 1;
    const id = this.topIds[(row * this.nPositions + column) * k + rank] ?? -1;
    return this.vocab.get(id) ?? `#${id}`;
  }

  /** The top-k list of one cell, as tooltip lines (text only). */
  private cellLines(row: number, column: number): string[] {
    const k = this.topProbs.shape[2] ?? 1;
    const position = this.positions[column] ?? -1;
    const cell = row * this.nPositions + column;
    const lines = [
      `layer ${this.layers[row]} · position ${position} ${JSON.stringify(this.text[position] ?? "")}`,
      `entropy ${formatValue(this.entropy[cell] ?? 0)} nats`,
    ];
    if (this.token >= 0) lines.push(`p(${this.named[this.token]}) = ${formatValue(this.value(row, column))}`);
    for (let r = 0; r < k; r++) {
      const p = this.topProbs.data[cell * k + r] ?? 0;
      lines.push(`${formatValue(p).padStart(7)}  ${JSON.stringify(this.topText(row, column, r))}`);
    }
    return lines;
  }

  private vmax(): number {
    let m = 0;
    for (let r = 0; r < this.layers.length; r++) {
      for (let c = 0; c < this.nPositions; c++) m = Math.max(m, this.value(r, c));
    }
    return m > 0 ? m : 1;
  }

  // -- pointer ---------------------------------------------------------------------------------------
  private onGrid(e: MouseEvent, click: boolean): void {
    const rows = this.layers.length;
    const [cw, ch] = cellSize(rows, this.nPositions);
    const box = this.canvas.getBoundingClientRect();
    const c = Math.floor((e.clientX - box.left - LEFT) / cw);
    const r = rows - 1 - Math.floor((e.clientY - box.top) / ch);
    if (c < 0 || c >= this.nPositions || r < 0 || r >= rows) {
      this.leave();
      return;
    }
    if (click) this.update({ layer: r });
    this.point(c, r, true);
    this.tooltip.show(this.cellLines(r, c), e);
  }

  private onPatch(position: number, e: MouseEvent): void {
    const column = position >= 0 ? (this.columnOf.get(position) ?? -1) : -1;
    this.point(column, -1, true);
    if (column >= 0) this.tooltip.show(this.cellLines(this.layer, column), e);
    else this.tooltip.hide();
  }

  private leave(): void {
    this.tooltip.hide();
    this.point(-1, -1, true);
  }

  /** Points at a column (and layer row); `notify` writes the position and patch to the link store. */
  private point(column: number, row: number, notify: boolean): void {
    if (column === this.column && row === this.hoverRow) return;
    this.column = column;
    this.hoverRow = row;
    this.root.dataset.hover = String(column);
    this.paint();
    if (!notify) return;
    const position = column >= 0 ? (this.positions[column] ?? -1) : -1;
    this.link.set({ position, patch: this.patches?.patchOf(position) ?? null, source: this.id });
  }

  private fromLink(state: LinkState, changed: ReadonlySet<keyof LinkState>): void {
    if (state.source === this.id || !(changed.has("position") || changed.has("patch")) || !this.patches)
      return;
    const position = linkedPosition(state, this.patches, this.text.length);
    this.point(position >= 0 ? (this.columnOf.get(position) ?? -1) : -1, -1, false);
  }

  // -- painting --------------------------------------------------------------------------------------
  private paint(): void {
    const rows = this.layers.length;
    const cols = this.nPositions;
    if (!rows || !cols) return;
    const [cw, ch] = cellSize(rows, cols);
    const width = LEFT + cols * cw + 4;
    const height = rows * ch + BOTTOM;
    const ctx = sizeCanvas(this.canvas, width, height);
    const theme = themeColors(this.root);
    const table = lut(this.cmap);
    const vmax = this.vmax();
    ctx.clearRect(0, 0, width, height);
    ctx.textBaseline = "middle";
    const writes = cw >= 26 && ch >= 12;
    ctx.font = "10px ui-monospace, SFMono-Regular, Menlo, monospace";
    for (let r = 0; r < rows; r++) {
      const y = (rows - 1 - r) * ch;
      for (let c = 0; c < cols; c++) {
        const i = lutIndex(this.value(r, c), vmax);
        ctx.fillStyle = `rgb(${table[i * 3]},${table[i * 3 + 1]},${table[i * 3 + 2]})`;
        ctx.fillRect(LEFT + c * cw, y, cw, ch);
        if (writes) {
          ctx.fillStyle = luminance(table, i) < 0.5 ? "#ffffff" : "#000000";
          ctx.fillText(fitText(ctx, this.topText(r, c), cw - 4), LEFT + c * cw + 2, y + ch / 2);
        }
      }
    }
    ctx.fillStyle = theme.fg;
    ctx.textAlign = "right";
    const every = Math.max(1, Math.ceil(12 / ch));
    for (let r = 0; r < rows; r += every)
      ctx.fillText(String(this.layers[r]), LEFT - 4, (rows - 1 - r) * ch + ch / 2);
    const labelEvery = Math.max(1, Math.ceil(12 / cw));
    for (let c = 0; c < cols; c += labelEvery) {
      ctx.save();
      ctx.translate(LEFT + c * cw + cw / 2, rows * ch + 4);
      ctx.rotate(-Math.PI / 3);
      ctx.fillText(fitText(ctx, this.text[this.positions[c] ?? 0] ?? "", BOTTOM - 8), 0, 0);
      ctx.restore();
    }
    ctx.textAlign = "left";
    ctx.strokeStyle = theme.accent;
    ctx.lineWidth = 2;
    ctx.strokeRect(LEFT + 1, (rows - 1 - this.layer) * ch + 1, cols * cw - 2, ch - 2);
    if (this.column >= 0) ctx.strokeRect(LEFT + this.column * cw + 1, 1, cw - 2, rows * ch - 2);
    const shown = this.hoverRow >= 0 ? this.hoverRow : this.layer;
    const row = Float32Array.from({ length: cols }, (_, c) => this.value(shown, c));
    const color = attentionColor(vmax, table);
    for (const pane of this.images) pane.paint(row, color, this.column, { painted: "attention" });
    const position = this.column >= 0 ? (this.positions[this.column] ?? -1) : -1;
    const what = this.token < 0 ? "top-1 probability" : `p(${this.named[this.token]})`;
    this.status.textContent =
      position >= 0
        ? `${JSON.stringify(this.text[position] ?? "")} (position ${position}) at layer ${this.layers[shown]}: ` +
          `${what} ${formatValue(this.value(shown, this.column))}, top ${JSON.stringify(this.topText(shown, this.column))}`
        : `${what}, colour scale 0 – ${formatValue(vmax)}; hover a cell for its top tokens, click a row to pin its layer`;
  }
}

/** `text` cut with an ellipsis to fit `width` pixels in the context's font. */
function fitText(ctx: CanvasRenderingContext2D, text: string, width: number): string {
  if (ctx.measureText(text).width <= width) return text;
  let cut = text;
  while (cut.length > 1 && ctx.measureText(`${cut}…`).width > width) cut = cut.slice(0, -1);
  return `${cut}…`;
}
