/**
 * Image pane: one image with its patch grid. Attention over the image's patches is painted as a
 * translucent colormap overlay; hovering a patch makes that patch the source of linking.
 */
import type { Tensor } from "../codecs";
import { lutIndex } from "../render/colormap";
import { h, rgbCanvas, sizeCanvas, themeColors } from "./dom";

const MAX_SIDE = 280;

export interface ImageHandlers {
  /** Pointer over a patch (its sequence position, -1 for a grid cell without token) or off the image. */
  hover(position: number | null, event: MouseEvent): void;
  click(position: number): void;
}

export class ImagePane {
  readonly el: HTMLElement;
  private readonly canvas = h("canvas", "mmviz-image-canvas");
  private readonly ctx: CanvasRenderingContext2D;
  private readonly base: HTMLCanvasElement;
  private readonly width: number;
  private readonly height: number;
  private cellUnit: Int32Array;
  private accent = "";

  /**
   * @param image uint8 `[height, width, 3]`.
   * @param grid `(rows, cols)` patch grid.
   * @param positions `[rows * cols]` sequence position of each patch, -1 where none.
   */
  constructor(
    title: string,
    image: Tensor,
    private readonly grid: [number, number],
    private readonly positions: Int32Array,
    private readonly handlers: ImageHandlers,
  ) {
    this.el = h("figure", "mmviz-image");
    const [ih = 1, iw = 1] = image.shape;
    const f = Math.min(MAX_SIDE / iw, MAX_SIDE / ih, 8);
    this.width = Math.max(32, Math.round(iw * f));
    this.height = Math.max(32, Math.round(ih * f));
    this.ctx = sizeCanvas(this.canvas, this.width, this.height);
    this.base = rgbCanvas(image.data, ih, iw);
    this.cellUnit = new Int32Array(positions.length).fill(-1);
    this.el.append(this.canvas, h("figcaption", "mmviz-pane-title", title));
    this.canvas.addEventListener("mousemove", (e) => this.handlers.hover(this.positionAt(e), e));
    this.canvas.addEventListener("mouseleave", (e) => this.handlers.hover(null, e));
    this.canvas.addEventListener("click", (e) => {
      const pos = this.positionAt(e);
      if (pos !== null && pos >= 0) this.handlers.click(pos);
    });
    this.paint(null, 0, new Uint8ClampedArray(768), -1);
  }

  private positionAt(e: MouseEvent): number | null {
    const box = this.canvas.getBoundingClientRect();
    const [rows, cols] = this.grid;
    const c = Math.floor(((e.clientX - box.left) / box.width) * cols);
    const r = Math.floor(((e.clientY - box.top) / box.height) * rows);
    if (r < 0 || c < 0 || r >= rows || c >= cols) return null;
    return this.positions[r * cols + c] ?? -1;
  }

  /** Forgets the cached theme colour (the theme changed). */
  resetTheme(): void {
    this.accent = "";
  }

  /** Maps each patch to the unit it belongs to on this pane's side. */
  setUnits(unitOfPos: Int32Array): void {
    this.cellUnit = this.positions.map((p) => (p >= 0 ? (unitOfPos[p] ?? -1) : -1));
  }

  /** Paints the image, then `values` (over units) on the patches, outlining the `active` unit. */
  paint(values: Float32Array | null, vmax: number, table: Uint8ClampedArray, active: number): void {
    const ctx = this.ctx;
    const [rows, cols] = this.grid;
    const cw = this.width / cols;
    const ch = this.height / rows;
    ctx.clearRect(0, 0, this.width, this.height);
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(this.base, 0, 0, this.width, this.height);
    if (values) {
      ctx.fillStyle = "rgba(0,0,0,0.25)";
      ctx.fillRect(0, 0, this.width, this.height);
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) {
          const unit = this.cellUnit[r * cols + c] ?? -1;
          if (unit < 0) continue;
          const idx = lutIndex(values[unit] ?? 0, vmax);
          if (idx === 0) continue;
          // Translucent even at the maximum, so the image stays visible under uniform attention.
          const alpha = 0.12 + 0.58 * (idx / 255) ** 0.8;
          ctx.fillStyle = `rgba(${table[idx * 3]},${table[idx * 3 + 1]},${table[idx * 3 + 2]},${alpha.toFixed(3)})`;
          ctx.fillRect(c * cw, r * ch, cw + 0.5, ch + 0.5);
        }
      }
    }
    if (cw >= 5 && ch >= 5) {
      ctx.strokeStyle = "rgba(255,255,255,0.28)";
      ctx.lineWidth = 1;
      ctx.beginPath();
      for (let c = 1; c < cols; c++) {
        ctx.moveTo(Math.round(c * cw) + 0.5, 0);
        ctx.lineTo(Math.round(c * cw) + 0.5, this.height);
      }
      for (let r = 1; r < rows; r++) {
        ctx.moveTo(0, Math.round(r * ch) + 0.5);
        ctx.lineTo(this.width, Math.round(r * ch) + 0.5);
      }
      ctx.stroke();
    }
    if (active >= 0) {
      if (!this.accent) this.accent = themeColors(this.el).accent;
      ctx.strokeStyle = this.accent;
      ctx.lineWidth = 2.5;
      for (let i = 0; i < this.cellUnit.length; i++) {
        if (this.cellUnit[i] !== active) continue;
        const r = Math.floor(i / cols);
        const c = i % cols;
        ctx.strokeRect(c * cw + 1, r * ch + 1, cw - 2, ch - 2);
      }
    }
    this.canvas.dataset.painted = values ? "attention" : "image";
  }
}
