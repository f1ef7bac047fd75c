/**
 * What the panes that colour positions by one value each share (attributions, patching effects): the token
 * strip, whose text tokens carry the value as a background colour, and the images, each drawn with one value
 * per patch over it. Colours come from the caller (`scoreColor` and its scale); hovering reports positions.
 */
import { decodeTensor, type TensorPayload } from "../codecs";
import type { TableState } from "../model";
import type { Table } from "../render/matrix";
import { h, rgbCanvas, sizeCanvas } from "./dom";
import sharedCss from "./score-panes.css";

/** Styles of the shared token strip; a pane adds them before its own (`paneHeading(root, title, SCORE_CSS + css)`). */
export const SCORE_CSS = sharedCss;

/** RGBA (alpha 0–1) of a value. */
export type ColorOf = (value: number) => [number, number, number, number];

/** An image pane: the picture, its patch grid and the canvas it is drawn on. */
export interface ScoreImage {
  base: HTMLCanvasElement;
  grid: [number, number];
  positions: Int32Array;
  canvas: HTMLCanvasElement;
  width: number;
  height: number;
}

/** The token strip: one span per text token (`data-pos`), one chip per image; image positions have no span. */
export function tokenStrip(
  tokens: TableState,
  table: Table,
  tokClass: string,
): { children: HTMLElement[]; spans: (HTMLSpanElement | null)[] } {
  const spans: (HTMLSpanElement | null)[] = [];
  const children: HTMLElement[] = [];
  const chipped = new Set<number>();
  tokens.text.forEach((text, pos) => {
    const kind = tokens.kind[pos] ?? "text";
    if (kind === "image") {
      const image = table.imageIndex[pos] ?? 0;
      if (!chipped.has(image)) {
        chipped.add(image);
        children.push(h("span", "mmviz-chip", `image ${image}`));
      }
      spans.push(null);
      return;
    }
    const span = h(
      "span",
      `mmviz-score-tok ${tokClass} mmviz-kind-${kind}${table.generated[pos] ? " mmviz-generated" : ""}`,
    );
    span.textContent = text;
    span.dataset.pos = String(pos);
    spans.push(span);
    children.push(span);
  });
  return { children, spans };
}

/** Colours the strip's spans by `row` and outlines the hovered one. */
export function paintSpans(
  spans: readonly (HTMLSpanElement | null)[],
  row: ArrayLike<number>,
  colorOf: ColorOf,
  hover: number,
): void {
  spans.forEach((span, pos) => {
    if (!span) return;
    const value = row[pos] ?? Number.NaN;
    const [r, g, b, a] = colorOf(value);
    span.style.backgroundColor = a > 0 ? `rgba(${r},${g},${b},${a.toFixed(3)})` : "";
    span.style.color = a > 0.6 ? "#ffffff" : "";
    span.dataset.value = String(value);
    span.classList.toggle("mmviz-active", pos === hover);
  });
}

/** An image pane at most `side` CSS pixels wide; `onPosition` gets the position under the pointer (-1: none). */
export function scoreImage(
  payload: TensorPayload,
  grid: [number, number],
  positions: Int32Array,
  index: number,
  canvasClass: string,
  side: number,
  onPosition: (position: number) => void,
): ScoreImage {
  const image = decodeTensor(payload);
  const [ih = 1, iw = 1] = image.shape;
  const f = Math.min(side / iw, side / ih, 16);
  const canvas = h("canvas", canvasClass);
  canvas.dataset.image = String(index);
  const im: ScoreImage = {
    base: rgbCanvas(image.data, ih, iw),
    grid,
    positions,
    canvas,
    width: Math.max(32, Math.round(iw * f)),
    height: Math.max(32, Math.round(ih * f)),
  };
  canvas.addEventListener("mousemove", (e) => {
    const box = canvas.getBoundingClientRect();
    const [rows, cols] = im.grid;
    const c = Math.floor(((e.clientX - box.left) / box.width) * cols);
    const r = Math.floor(((e.clientY - box.top) / box.height) * rows);
    onPosition(r >= 0 && c >= 0 && r < rows && c < cols ? (im.positions[r * cols + c] ?? -1) : -1);
  });
  canvas.addEventListener("mouseleave", () => onPosition(-1));
  return im;
}

/** Clears the pane's canvas and draws the picture; returns the context for the overlay. */
export function drawBase(im: ScoreImage): CanvasRenderingContext2D {
  const ctx = sizeCanvas(im.canvas, im.width, im.height);
  ctx.clearRect(0, 0, im.width, im.height);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(im.base, 0, 0, im.width, im.height);
  return ctx;
}

/** A `cols × rows` canvas with each patch coloured by its position's value in `row`. */
export function patchOverlay(im: ScoreImage, row: ArrayLike<number>, colorOf: ColorOf): HTMLCanvasElement {
  const [rows, cols] = im.grid;
  const overlay = document.createElement("canvas");
  overlay.width = cols;
  overlay.height = rows;
  const octx = overlay.getContext("2d");
  if (octx) {
    const rgba = octx.createImageData(cols, rows);
    for (let i = 0; i < rows * cols; i++) {
      const pos = im.positions[i] ?? -1;
      const [r, g, b, a] = pos >= 0 ? colorOf(row[pos] ?? Number.NaN) : [0, 0, 0, 0];
      rgba.data.set([r, g, b, Math.round(a * 255)], i * 4);
    }
    octx.putImageData(rgba, 0, 0);
  }
  return overlay;
}

/** Outlines the hovered position's patch, when this image holds it. */
export function outlinePatch(
  ctx: CanvasRenderingContext2D,
  im: ScoreImage,
  hover: number,
  color: string,
): void {
  const cell = hover >= 0 ? im.positions.indexOf(hover) : -1;
  if (cell < 0) return;
  const [rows, cols] = im.grid;
  const cw = im.width / cols;
  const ch = im.height / rows;
  ctx.strokeStyle = color;
  ctx.lineWidth = 2.5;
  ctx.strokeRect((cell % cols) * cw + 1, Math.floor(cell / cols) * ch + 1, cw - 2, ch - 2);
}
