/** Small DOM helpers. Text goes in through `textContent` only: token text is data, never markup. */

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className?: string,
  text?: string,
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

/** Sizes a canvas for the device pixel ratio and returns its 2D context, scaled to CSS pixels. */
export function sizeCanvas(
  canvas: HTMLCanvasElement,
  width: number,
  height: number,
): CanvasRenderingContext2D {
  const ratio = typeof window !== "undefined" ? Math.max(1, Math.min(3, window.devicePixelRatio || 1)) : 1;
  canvas.width = Math.max(1, Math.round(width * ratio));
  canvas.height = Math.max(1, Math.round(height * ratio));
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const ctx = canvas.getContext("2d");
  if (!ctx) throw new Error("mmviz: a 2D canvas is not available in this browser");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  return ctx;
}

/** The theme's foreground and muted colours, read from CSS so canvases follow light and dark themes. */
export function themeColors(el: Element): { fg: string; muted: string; accent: string; bg: string } {
  const style = getComputedStyle(el);
  const read = (name: string, fallback: string) => style.getPropertyValue(name).trim() || fallback;
  return {
    fg: read("--mmviz-fg", "#1f2328"),
    muted: read("--mmviz-muted", "#6e7781"),
    accent: read("--mmviz-accent", "#d1242f"),
    bg: read("--mmviz-bg", "#ffffff"),
  };
}

/** A `width × height` canvas whose RGBA bytes (`[height, width, 4]`, row-major) `fill` writes. */
export function pixelCanvas(
  width: number,
  height: number,
  fill: (rgba: Uint8ClampedArray) => void,
): HTMLCanvasElement {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  if (ctx) {
    const image = ctx.createImageData(width, height);
    fill(image.data);
    ctx.putImageData(image, 0, 0);
  }
  return canvas;
}

/** An `iw × ih` canvas holding an RGB image (`[ih, iw, 3]` values 0–255, row-major). */
export function rgbCanvas(data: ArrayLike<number>, ih: number, iw: number): HTMLCanvasElement {
  return pixelCanvas(iw, ih, (rgba) => {
    for (let i = 0, n = iw * ih; i < n; i++) {
      rgba[i * 4] = data[i * 3] ?? 0;
      rgba[i * 4 + 1] = data[i * 3 + 1] ?? 0;
      rgba[i * 4 + 2] = data[i * 3 + 2] ?? 0;
      rgba[i * 4 + 3] = 255;
    }
  });
}

/** A labelled control (`<label><span>name</span>control</label>`) for a pane's control bar. */
export function labelled(name: string, control: HTMLElement): HTMLLabelElement {
  const label = h("label", "mmviz-control");
  label.append(h("span", undefined, name), control);
  return label;
}

/** Fills a `<select>` with the given option names. */
export function fillSelect(select: HTMLSelectElement, names: readonly string[]): void {
  select.replaceChildren(
    ...names.map((name) => {
      const option = h("option", undefined, name);
      option.value = name;
      return option;
    }),
  );
}

/** Makes `input` a range slider from `min` to `max` in steps of `step`, calling `onInput` with its value. */
export function slider(
  input: HTMLInputElement,
  min: number,
  max: number,
  step: number,
  onInput: (value: number) => void,
): HTMLInputElement {
  input.type = "range";
  input.min = String(min);
  input.max = String(max);
  input.step = String(step);
  input.addEventListener("input", () => onInput(Number(input.value)));
  return input;
}
