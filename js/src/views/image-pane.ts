/**
 * The image pane every view paints an image with: the picture and its patch grid on a canvas, values painted
 * over the patches (or a per-pixel map over the picture), the hovered or linked patch outlined in the theme's
 * accent, and the position under the pointer reported. Values are indexed by unit: a unit is a sequence
 * position unless `setUnits` maps positions to the units a view colours (merged tokens, lens columns).
 */
import type { Tensor } from "../codecs";
import { lutIndex } from "../render/colormap";
import { h, pixelCanvas, rgbCanvas, sizeCanvas, themeColors } from "./dom";

/** RGBA (alpha 0–1) of a value. */
export type ColorOf = (value: number) => [number, number, number, number];

export interface ImagePaneOptions {
  /** Text under the image (`caption` can be rewritten later). */
  caption: string;
  /** Class of the `<figure>`; default `mmviz-image`. */
  figureClass?: string;
  /** Class of the canvas (CSS and the browser tests select it); default `mmviz-image-canvas`. */
  canvasClass?: string;
  /** The image's index, written to the canvas as `data-image`. */
  index?: number;
  /** Largest side of the drawn image in CSS pixels (default 280) and largest magnification (default 8). */
  side?: number;
  zoom?: number;
  /** Darkens the picture under painted values and draws the patch grid (the attention panes' look). */
  shaded?: boolean;
  /** Pointer over a patch (its sequence position, -1 for a cell without one) or off the image (null). */
  hover?(position: number | null, event: MouseEvent): void;
  /** Click on a patch that has a position. */
  click?(position: number): void;
}

export interface PaintOptions {
  /** Opacity of the painted values (default 1). */
  opacity?: number;
  /** The canvas's `data-painted` when values are painted (default `values`; `image` when none are). */
  painted?: string;
}

const CLEAR: [number, number, number, number] = [0, 0, 0, 0];

/** Colour of a value on a colormap `table` scaled to `vmax`, translucent even at the maximum so the image stays
 * visible under uniform attention; values at or below 0 are not painted. */
export function attentionColor(vmax: number, table: Uint8ClampedArray): ColorOf {
  return (value) => {
    const idx = lutIndex(value, vmax);
    if (idx === 0) return CLEAR;
    const alpha = 0.12 + 0.58 * (idx / 255) ** 0.8;
    return [table[idx * 3] ?? 0, table[idx * 3 + 1] ?? 0, table[idx * 3 + 2] ?? 0, alpha];
  };
}

export class ImagePane {
  readonly el: HTMLElement;
  readonly canvas: HTMLCanvasElement;
  readonly caption: HTMLElement;
  /** The picture at its own resolution. */
  readonly base: HTMLCanvasElement;
  /** Size of the drawn image in CSS pixels. */
  readonly width: number;
  readonly height: number;
  private readonly ctx: CanvasRenderingContext2D;
  private cellUnit: Int32Array;
  private accent = "";

  /**
   * @param image uint8 `[height, width, 3]`.
   * @param grid `(rows, cols)` patch grid.
   * @param positions `[rows * cols]` sequence position of each patch, -1 where none.
   */
  constructor(
    image: Tensor,
    readonly grid: [number, number],
    readonly positions: Int32Array,
    private readonly options: ImagePaneOptions,
  ) {
    this.el = h("figure", options.figureClass ?? "mmviz-image");
    this.canvas = h("canvas", options.canvasClass ?? "mmviz-image-canvas");
    if (options.index !== undefined) this.canvas.dataset.image = String(options.index);
    this.caption = h("figcaption", "mmviz-pane-title", options.caption);
    const [ih = 1, iw = 1] = image.shape;
    const side = options.side ?? 280;
    const f = Math.min(side / iw, side / ih, options.zoom ?? 8);
    this.width = Math.max(32, Math.round(iw * f));
    this.height = Math.max(32, Math.round(ih * f));
    this.ctx = sizeCanvas(this.canvas, this.width, this.height);
    this.base = rgbCanvas(image.data, ih, iw);
    this.cellUnit = positions;
    this.el.append(this.canvas, this.caption);
    const { hover, click } = options;
    if (hover) {
      this.canvas.addEventListener("mousemove", (e) => hover(this.positionAt(e), e));
      this.canvas.addEventListener("mouseleave", (e) => hover(null, e));
    }
    if (click) {
      this.canvas.addEventListener("click", (e) => {
        const pos = this.positionAt(e);
        if (pos !== null && pos >= 0) click(pos);
      });
    }
    this.paint(null, () => CLEAR, -1);
  }

  /** The sequence position of the patch under the pointer (-1: a cell without one; null: off the grid). */
  positionAt(e: MouseEvent): number | null {
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

  /** Maps each patch to the unit it belongs to on this pane's side (default: its position). */
  setUnits(unitOfPos: Int32Array): void {
    this.cellUnit = this.positions.map((p) => (p >= 0 ? (unitOfPos[p] ?? -1) : -1));
  }

  /** Paints the picture, `values` (one per unit) over its patches, and outlines the `active` unit's patches. */
  paint(values: ArrayLike<number> | null, color: ColorOf, active: number, options: PaintOptions = {}): void {
    const [rows, cols] = this.grid;
    const overlay = values
      ? colorCanvas(cols, rows, (i) => {
          const unit = this.cellUnit[i] ?? -1;
          return unit >= 0 ? color(values[unit] ?? Number.NaN) : CLEAR;
        })
      : null;
    this.draw(overlay, false, active, options.opacity ?? 1);
    this.canvas.dataset.painted = values ? (options.painted ?? "values") : "image";
  }

  /** Paints the picture, a per-pixel map (`plane`: `[height, width]`, row-major) smoothed over it, and
   * outlines the `active` unit's patches. */
  paintPixels(
    plane: ArrayLike<number>,
    [height, width]: [number, number],
    color: ColorOf,
    active: number,
    options: PaintOptions = {},
  ): void {
    this.draw(
      colorCanvas(width, height, (i) => color(plane[i] ?? 0)),
      true,
      active,
      options.opacity ?? 1,
    );
    this.canvas.dataset.painted = options.painted ?? "pixels";
  }

  private draw(overlay: HTMLCanvasElement | null, smooth: boolean, active: number, opacity: number): void {
    const { ctx, width, height } = this;
    const shaded = Boolean(this.options.shaded);
    ctx.clearRect(0, 0, width, height);
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(this.base, 0, 0, width, height);
    if (overlay) {
      if (shaded) {
        ctx.fillStyle = "rgba(0,0,0,0.25)";
        ctx.fillRect(0, 0, width, height);
      }
      ctx.globalAlpha = opacity;
      ctx.imageSmoothingEnabled = smooth;
      ctx.drawImage(overlay, 0, 0, width, height);
      ctx.globalAlpha = 1;
    }
    if (shaded) this.drawGrid();
    if (active >= 0) this.outline(active);
  }

  /** Thin lines between the patches, when they are at least 5 pixels wide. */
  private drawGrid(): void {
    const { ctx, width, height } = this;
    const [rows, cols] = this.grid;
    const cw = width / cols;
    const ch = height / rows;
    if (cw < 5 || ch < 5) return;
    ctx.strokeStyle = "rgba(255,255,255,0.28)";
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let c = 1; c < cols; c++) {
      ctx.moveTo(Math.round(c * cw) + 0.5, 0);
      ctx.lineTo(Math.round(c * cw) + 0.5, height);
    }
    for (let r = 1; r < rows; r++) {
      ctx.moveTo(0, Math.round(r * ch) + 0.5);
      ctx.lineTo(width, Math.round(r * ch) + 0.5);
    }
    ctx.stroke();
  }

  /** The theme's accent, cached once the pane is attached (before that the theme's variables are unset). */
  private accentColor(): string {
    if (this.accent) return this.accent;
    const accent = themeColors(this.el).accent;
    if (this.el.isConnected) this.accent = accent;
    return accent;
  }

  /** Outlines the patches of a unit in the theme's accent colour. */
  private outline(unit: number): void {
    const { ctx } = this;
    const [rows, cols] = this.grid;
    const cw = this.width / cols;
    const ch = this.height / rows;
    ctx.strokeStyle = this.accentColor();
    ctx.lineWidth = 2.5;
    for (let i = 0; i < this.cellUnit.length; i++) {
      if (this.cellUnit[i] !== unit) continue;
      ctx.strokeRect((i % cols) * cw + 1, Math.floor(i / cols) * ch + 1, cw - 2, ch - 2);
    }
  }
}

/** A `width × height` canvas whose pixel `i` (row-major) has the colour `colorAt(i)`. */
function colorCanvas(
  width: number,
  height: number,
  colorAt: (i: number) => readonly number[],
): HTMLCanvasElement {
  return pixelCanvas(width, height, (rgba) => {
    for (let i = 0; i < width * height; i++) {
      const [r = 0, g = 0, b = 0, a = 0] = colorAt(i);
      rgba.set([r, g, b, Math.round(a * 255)], i * 4);
    }
  });
}
