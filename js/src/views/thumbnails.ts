/**
 * Layers × heads grid of thumbnails (block means of each head's attention map), with rows for the head
 * mean and the head max. Columns are layers, rows are heads; clicking a cell selects it. A layer or head
 * another pane points at is marked with a dashed outline (a head's cell, or a whole layer's column).
 */
import type { Tensor } from "../codecs";
import type { Aggregate } from "../model";
import { lutIndex } from "../render/colormap";
import { h, sizeCanvas, themeColors } from "./dom";

const LEFT = 40;
const TOP = 18;
const GAP = 2;

export interface ThumbSelection {
  layer: number;
  aggregate: Aggregate;
  head: number;
}

export interface ThumbHandlers {
  select(sel: ThumbSelection): void;
  hover(sel: ThumbSelection | null, event: MouseEvent): void;
}

export class ThumbnailGrid {
  readonly el: HTMLElement;
  private readonly canvas = h("canvas", "mmviz-thumbs");
  private ctx: CanvasRenderingContext2D | null = null;
  private cell = 24;
  private layers: number[] = [];
  private heads: number[] = [];
  private selected: ThumbSelection | null = null;
  private marked = { layer: -1, head: -1 };
  private tiles: HTMLCanvasElement | null = null;
  private thumbSize = 1;

  constructor(private readonly handlers: ThumbHandlers) {
    this.el = h("section", "mmviz-thumbs-pane");
    this.el.append(h("div", "mmviz-pane-title", "layers × heads"), this.canvas);
    this.canvas.addEventListener("click", (e) => {
      const sel = this.at(e);
      if (sel) this.handlers.select(sel);
    });
    this.canvas.addEventListener("mousemove", (e) => {
      this.handlers.hover(this.at(e), e);
    });
    this.canvas.addEventListener("mouseleave", (e) => this.handlers.hover(null, e));
  }

  /**
   * @param heads `[layers, heads, s, s]` thumbnails; `mean`, `max`: `[layers, s, s]`.
   */
  setThumbs(
    layers: number[],
    headLabels: number[],
    heads: Tensor,
    mean: Tensor,
    max: Tensor,
    table: Uint8ClampedArray,
  ): void {
    this.layers = layers;
    this.heads = headLabels;
    const nl = layers.length;
    const nh = headLabels.length;
    const rows = nh + 2;
    this.cell = Math.max(10, Math.min(40, Math.floor(560 / Math.max(nl, rows))));
    const s = heads.shape[2] ?? 1;
    const t = heads.shape[3] ?? 1;
    this.thumbSize = Math.max(s, t);
    // One atlas of all tiles at thumbnail resolution, drawn scaled onto the visible canvas.
    const atlas = document.createElement("canvas");
    atlas.width = nl * t;
    atlas.height = rows * s;
    const actx = atlas.getContext("2d");
    if (actx) {
      const img = actx.createImageData(atlas.width, atlas.height);
      const put = (src: Float32Array, offset: number, col: number, row: number) => {
        let vmax = 0;
        for (let i = 0; i < s * t; i++) vmax = Math.max(vmax, src[offset + i] ?? 0);
        for (let y = 0; y < s; y++) {
          for (let x = 0; x < t; x++) {
            const idx = lutIndex(src[offset + y * t + x] ?? 0, vmax) * 3;
            const o = ((row * s + y) * atlas.width + col * t + x) * 4;
            img.data[o] = table[idx] ?? 0;
            img.data[o + 1] = table[idx + 1] ?? 0;
            img.data[o + 2] = table[idx + 2] ?? 0;
            img.data[o + 3] = 255;
          }
        }
      };
      for (let l = 0; l < nl; l++) {
        for (let hd = 0; hd < nh; hd++) put(heads.data, (l * nh + hd) * s * t, l, hd);
        put(mean.data, l * s * t, l, nh);
        put(max.data, l * s * t, l, nh + 1);
      }
      actx.putImageData(img, 0, 0);
    }
    this.tiles = atlas;
    this.ctx = sizeCanvas(
      this.canvas,
      LEFT + nl * (this.cell + GAP),
      TOP + rows * (this.cell + GAP) + GAP * 2,
    );
    this.draw();
  }

  select(sel: ThumbSelection): void {
    this.selected = sel;
    this.draw();
  }

  /** Marks what another pane points at: a head's cell, a layer's column (`head` -1), nothing (`layer` -1). */
  mark(layer: number, head: number): void {
    if (layer === this.marked.layer && head === this.marked.head) return;
    this.marked = { layer, head };
    this.draw();
  }

  private rowOf(sel: ThumbSelection): number {
    if (sel.aggregate === "mean") return this.heads.length;
    if (sel.aggregate === "max") return this.heads.length + 1;
    return this.heads.indexOf(sel.head);
  }

  private y(row: number): number {
    return TOP + row * (this.cell + GAP) + (row >= this.heads.length ? GAP * 2 : 0);
  }

  private at(e: MouseEvent): ThumbSelection | null {
    const box = this.canvas.getBoundingClientRect();
    const x = e.clientX - box.left - LEFT;
    const yy = e.clientY - box.top;
    const col = Math.floor(x / (this.cell + GAP));
    if (x < 0 || col >= this.layers.length) return null;
    const rows = this.heads.length + 2;
    for (let row = 0; row < rows; row++) {
      const top = this.y(row);
      if (yy >= top && yy < top + this.cell) {
        const layer = this.layers[col] ?? 0;
        if (row === this.heads.length) return { layer, aggregate: "mean", head: -1 };
        if (row === this.heads.length + 1) return { layer, aggregate: "max", head: -1 };
        return { layer, aggregate: "head", head: this.heads[row] ?? 0 };
      }
    }
    return null;
  }

  /** Redraws with the current theme colours (also after the theme changes). */
  draw(): void {
    const ctx = this.ctx;
    if (!ctx || !this.tiles) return;
    const { fg, muted, accent } = themeColors(this.el);
    const c = this.cell;
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.imageSmoothingEnabled = c < this.thumbSize;
    ctx.font = "10px var(--jp-ui-font-family, system-ui, sans-serif)";
    ctx.textBaseline = "middle";
    const rows = this.heads.length + 2;
    const s = this.tiles.height / rows;
    const t = this.tiles.width / Math.max(1, this.layers.length);
    const labelEvery = c < 16 ? Math.ceil(16 / c) : 1;
    this.layers.forEach((layer, col) => {
      const x = LEFT + col * (c + GAP);
      if (col % labelEvery === 0) {
        ctx.fillStyle = muted;
        ctx.textAlign = "center";
        ctx.fillText(`L${layer}`, x + c / 2, TOP / 2);
      }
      for (let row = 0; row < rows; row++) {
        ctx.drawImage(this.tiles as HTMLCanvasElement, col * t, row * s, t, s, x, this.y(row), c, c);
      }
    });
    ctx.textAlign = "right";
    for (let row = 0; row < rows; row++) {
      const label =
        row < this.heads.length ? `H${this.heads[row]}` : row === this.heads.length ? "mean" : "max";
      if (row >= this.heads.length || row % labelEvery === 0) {
        ctx.fillStyle = row >= this.heads.length ? fg : muted;
        ctx.fillText(label, LEFT - 4, this.y(row) + c / 2);
      }
    }
    if (this.selected) {
      const col = this.layers.indexOf(this.selected.layer);
      const row = this.rowOf(this.selected);
      if (col >= 0 && row >= 0) {
        ctx.strokeStyle = accent;
        ctx.lineWidth = 2;
        ctx.strokeRect(LEFT + col * (c + GAP) - 1, this.y(row) - 1, c + 2, c + 2);
      }
    }
    this.drawMark(ctx, fg);
    this.canvas.dataset.selected = this.selected ? describe(this.selected) : "";
    this.canvas.dataset.cell = `${LEFT},${TOP},${c + GAP}`;
  }

  private drawMark(ctx: CanvasRenderingContext2D, color: string): void {
    const { layer, head } = this.marked;
    const col = this.layers.indexOf(layer);
    const row = head >= 0 ? this.heads.indexOf(head) : -1;
    const shown = col >= 0 && (head < 0 || row >= 0);
    this.canvas.dataset.marked = shown ? (head >= 0 ? `layer ${layer} head ${head}` : `layer ${layer}`) : "";
    if (!shown) return;
    const c = this.cell;
    const x = LEFT + col * (c + GAP) - 2;
    const top = head >= 0 ? this.y(row) - 2 : TOP - 2;
    const bottom = head >= 0 ? this.y(row) + c + 2 : this.y(this.heads.length + 1) + c + 2;
    ctx.save();
    ctx.setLineDash([3, 2]);
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ctx.strokeRect(x, top, c + 4, bottom - top);
    ctx.restore();
  }
}

export function describe(sel: ThumbSelection): string {
  return sel.aggregate === "head"
    ? `layer ${sel.layer} head ${sel.head}`
    : `layer ${sel.layer} ${sel.aggregate}`;
}
