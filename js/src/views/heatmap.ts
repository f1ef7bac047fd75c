/**
 * Attention matrix heatmap on canvas: rows are queries, columns keys. The matrix is rendered once into
 * an offscreen canvas at one pixel per cell; the visible canvas shows a zoomed window of it (wheel to
 * zoom, drag to pan, double-click to reset). The hover highlight is a pair of positioned boxes above it,
 * so linking moves two elements and never redraws or re-uploads a canvas. Labels appear once cells are big enough to read.
 */
import { lutIndex } from "../render/colormap";
import type { Unit } from "../render/matrix";
import { h, sizeCanvas, themeColors } from "./dom";

const LEFT = 84;
const TOP = 64;
const LABEL_MIN_CELL = 9;

export interface HeatmapHandlers {
  hover(row: number | null, col: number | null, event: MouseEvent): void;
  click(row: number, col: number): void;
}

export interface Highlight {
  rows: number[];
  cols: number[];
}

export class Heatmap {
  readonly el: HTMLElement;
  private readonly wrap = h("div", "mmviz-heatmap-wrap");
  private readonly canvas = h("canvas", "mmviz-heatmap");
  private readonly overlay = h("div", "mmviz-heatmap-overlay");
  private readonly clip = h("div", "mmviz-heatmap-clip");
  private readonly boxes: HTMLElement[] = [];
  private readonly ctx: CanvasRenderingContext2D;
  private readonly offscreen = document.createElement("canvas");
  private rows = 0;
  private cols = 0;
  private rowLabels: string[] = [];
  private colLabels: string[] = [];
  private view = { x: 0, y: 0, w: 1, h: 1 };
  private highlight: Highlight = { rows: [], cols: [] };
  private drag: { x: number; y: number; vx: number; vy: number; moved: boolean } | null = null;
  private readonly size: number;

  constructor(
    title: string,
    private readonly handlers: HeatmapHandlers,
    size = 460,
  ) {
    this.size = size;
    this.el = h("section", "mmviz-heatmap-pane");
    const head = h("div", "mmviz-pane-title", title);
    const hint = h("span", "mmviz-hint", " wheel: zoom · drag: pan · double-click: reset");
    head.append(hint);
    this.overlay.append(this.clip);
    this.wrap.append(this.canvas, this.overlay);
    this.el.append(head, this.wrap);
    const w = LEFT + size + 8;
    const hgt = TOP + size + 8;
    this.ctx = sizeCanvas(this.canvas, w, hgt);
    this.overlay.style.width = `${w}px`;
    this.overlay.style.height = `${hgt}px`;
    Object.assign(this.clip.style, {
      left: `${LEFT}px`,
      top: `${TOP}px`,
      width: `${size}px`,
      height: `${size}px`,
    });
    this.wrap.style.width = `${w}px`;
    this.wrap.style.height = `${hgt}px`;
    this.overlay.addEventListener("mousemove", (e) => this.onMove(e));
    this.overlay.addEventListener("mouseleave", (e) => {
      this.drag = null;
      this.handlers.hover(null, null, e);
    });
    this.overlay.addEventListener("mousedown", (e) => {
      this.drag = { x: e.clientX, y: e.clientY, vx: this.view.x, vy: this.view.y, moved: false };
    });
    this.overlay.addEventListener("mouseup", (e) => {
      const wasDrag = this.drag?.moved;
      this.drag = null;
      if (wasDrag) return;
      const cell = this.cellAt(e);
      if (cell) this.handlers.click(cell[0], cell[1]);
    });
    this.overlay.addEventListener("wheel", (e) => this.onWheel(e), { passive: false });
    this.overlay.addEventListener("dblclick", () => {
      this.resetView();
      this.draw();
    });
  }

  /** Sets a new matrix `[rows, cols]`, colour-scaled to `vmax`. Keeps the zoom when the shape is unchanged. */
  setMatrix(data: Float32Array, rows: number, cols: number, vmax: number, table: Uint8ClampedArray): void {
    const reshaped = rows !== this.rows || cols !== this.cols;
    this.rows = rows;
    this.cols = cols;
    this.offscreen.width = Math.max(1, cols);
    this.offscreen.height = Math.max(1, rows);
    const octx = this.offscreen.getContext("2d");
    if (octx && rows > 0 && cols > 0) {
      const img = octx.createImageData(cols, rows);
      const px = img.data;
      for (let i = 0, n = rows * cols; i < n; i++) {
        const idx = lutIndex(data[i] ?? 0, vmax) * 3;
        px[i * 4] = table[idx] ?? 0;
        px[i * 4 + 1] = table[idx + 1] ?? 0;
        px[i * 4 + 2] = table[idx + 2] ?? 0;
        px[i * 4 + 3] = 255;
      }
      octx.putImageData(img, 0, 0);
    }
    if (reshaped) this.resetView();
    this.draw();
  }

  /** Labels of the rows and columns (drawn once cells are large enough). */
  setLabels(qUnits: Unit[], kUnits: Unit[], qRow: Int32Array, kCol: Int32Array): void {
    this.rowLabels = new Array(this.rows).fill("");
    this.colLabels = new Array(this.cols).fill("");
    qUnits.forEach((u, i) => {
      const r = qRow[i] ?? 0;
      if (this.rowLabels[r] === "") this.rowLabels[r] = u.label;
    });
    kUnits.forEach((u, i) => {
      const c = kCol[i] ?? 0;
      if (this.colLabels[c] === "") this.colLabels[c] = u.label;
    });
    this.draw();
  }

  private resetView(): void {
    this.view = { x: 0, y: 0, w: Math.max(1, this.cols), h: Math.max(1, this.rows) };
  }

  private cellAt(e: MouseEvent): [number, number] | null {
    const box = this.overlay.getBoundingClientRect();
    const px = e.clientX - box.left - LEFT;
    const py = e.clientY - box.top - TOP;
    if (px < 0 || py < 0 || px >= this.size || py >= this.size) return null;
    const col = Math.floor(this.view.x + (px / this.size) * this.view.w);
    const row = Math.floor(this.view.y + (py / this.size) * this.view.h);
    if (row < 0 || col < 0 || row >= this.rows || col >= this.cols) return null;
    return [row, col];
  }

  private onMove(e: MouseEvent): void {
    if (this.drag) {
      const dx = ((e.clientX - this.drag.x) / this.size) * this.view.w;
      const dy = ((e.clientY - this.drag.y) / this.size) * this.view.h;
      if (Math.abs(e.clientX - this.drag.x) + Math.abs(e.clientY - this.drag.y) > 3) this.drag.moved = true;
      if (this.drag.moved) {
        this.view.x = clamp(this.drag.vx - dx, 0, this.cols - this.view.w);
        this.view.y = clamp(this.drag.vy - dy, 0, this.rows - this.view.h);
        this.draw();
        return;
      }
    }
    const cell = this.cellAt(e);
    this.handlers.hover(cell ? cell[0] : null, cell ? cell[1] : null, e);
  }

  private onWheel(e: WheelEvent): void {
    const box = this.overlay.getBoundingClientRect();
    const fx = clamp((e.clientX - box.left - LEFT) / this.size, 0, 1);
    const fy = clamp((e.clientY - box.top - TOP) / this.size, 0, 1);
    const factor = e.deltaY < 0 ? 0.8 : 1.25;
    const w = clamp(this.view.w * factor, Math.min(4, this.cols), this.cols);
    const hgt = clamp(this.view.h * factor, Math.min(4, this.rows), this.rows);
    if (w === this.view.w && hgt === this.view.h) return;
    e.preventDefault();
    const cx = this.view.x + fx * this.view.w;
    const cy = this.view.y + fy * this.view.h;
    this.view = {
      x: clamp(cx - fx * w, 0, this.cols - w),
      y: clamp(cy - fy * hgt, 0, this.rows - hgt),
      w,
      h: hgt,
    };
    this.draw();
  }

  /** Outlines rows and columns (matrix indices) on the overlay. */
  setHighlight(hl: Highlight): void {
    this.highlight = hl;
    this.drawOverlay();
  }

  /** Redraws with the current theme colours (also after the theme changes). */
  draw(): void {
    const ctx = this.ctx;
    const { fg, muted } = themeColors(this.el);
    ctx.clearRect(0, 0, LEFT + this.size + 8, TOP + this.size + 8);
    if (this.rows > 0 && this.cols > 0) {
      // Averaging when several cells share a pixel keeps 1000+ token matrices readable.
      ctx.imageSmoothingEnabled = this.view.w > this.size || this.view.h > this.size;
      ctx.imageSmoothingQuality = "high";
      ctx.drawImage(
        this.offscreen,
        this.view.x,
        this.view.y,
        this.view.w,
        this.view.h,
        LEFT,
        TOP,
        this.size,
        this.size,
      );
    }
    ctx.strokeStyle = muted;
    ctx.lineWidth = 1;
    ctx.strokeRect(LEFT - 0.5, TOP - 0.5, this.size + 1, this.size + 1);
    ctx.fillStyle = muted;
    ctx.font = "11px var(--jp-ui-font-family, system-ui, sans-serif)";
    ctx.textBaseline = "alphabetic";
    ctx.fillText("key →", LEFT, 12);
    ctx.fillText("query ↓", 4, TOP - 6);
    const cw = this.size / this.view.w;
    const ch = this.size / this.view.h;
    ctx.fillStyle = fg;
    if (ch >= LABEL_MIN_CELL) {
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      const first = Math.floor(this.view.y);
      for (let r = first; r < Math.min(this.rows, this.view.y + this.view.h); r++) {
        const y = TOP + (r - this.view.y + 0.5) * ch;
        if (y < TOP || y > TOP + this.size) continue;
        ctx.fillText(clip(this.rowLabels[r] ?? "", 11), LEFT - 4, y);
      }
    }
    if (cw >= LABEL_MIN_CELL) {
      ctx.textAlign = "left";
      ctx.textBaseline = "middle";
      const first = Math.floor(this.view.x);
      for (let c = first; c < Math.min(this.cols, this.view.x + this.view.w); c++) {
        const x = LEFT + (c - this.view.x + 0.5) * cw;
        if (x < LEFT || x > LEFT + this.size) continue;
        ctx.save();
        ctx.translate(x, TOP - 4);
        ctx.rotate(-Math.PI / 2);
        ctx.fillText(clip(this.colLabels[c] ?? "", 8), 0, 0);
        ctx.restore();
      }
    }
    ctx.textAlign = "left";
    this.canvas.dataset.zoom = (this.cols / this.view.w).toFixed(2);
    this.drawOverlay();
  }

  private drawOverlay(): void {
    const cw = this.size / this.view.w;
    const ch = this.size / this.view.h;
    const rects: [number, number, number, number][] = [];
    if (this.rows > 0) {
      for (const r of this.highlight.rows)
        rects.push([0, (r - this.view.y) * ch, this.size, Math.max(ch, 3)]);
      for (const c of this.highlight.cols)
        rects.push([(c - this.view.x) * cw, 0, Math.max(cw, 3), this.size]);
    }
    while (this.boxes.length < rects.length) {
      const box = h("div", "mmviz-heatmap-hl");
      this.boxes.push(box);
      this.clip.append(box);
    }
    this.boxes.forEach((box, i) => {
      const rect = rects[i];
      box.hidden = !rect;
      if (!rect) return;
      const [x, y, w, hgt] = rect;
      box.style.width = `${w}px`;
      box.style.height = `${hgt}px`;
      box.style.transform = `translate(${x}px, ${y}px)`;
    });
    this.overlay.dataset.rows = this.highlight.rows.join(",");
    this.overlay.dataset.cols = this.highlight.cols.join(",");
  }
}

function clamp(v: number, lo: number, hi: number): number {
  return Math.max(lo, Math.min(hi, v));
}

function clip(text: string, n: number): string {
  const t = text.replace(/\s/g, "·");
  return t.length > n ? `${t.slice(0, n - 1)}…` : t;
}
