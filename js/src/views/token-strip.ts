/**
 * Token strip: the text tokens (or words) of one side, coloured by the linked attention vector.
 * Image patches are shown in the image pane; the strip marks where each image sits with a chip.
 */
import { luminance, lutIndex } from "../render/colormap";
import type { Unit } from "../render/matrix";
import { h } from "./dom";

export interface StripHandlers {
  hover(unit: number | null, event: MouseEvent): void;
  click(unit: number): void;
}

export class TokenStrip {
  readonly el: HTMLElement;
  private readonly body: HTMLElement;
  private spans: (HTMLSpanElement | null)[] = [];
  private shown: Int16Array = new Int16Array(0);
  private active = -1;
  private pinned = -1;

  constructor(
    title: string,
    private readonly handlers: StripHandlers,
  ) {
    this.el = h("section", "mmviz-strip");
    this.el.append(h("div", "mmviz-pane-title", title));
    this.body = h("div", "mmviz-strip-body");
    this.el.append(this.body);
    this.body.addEventListener("mouseover", (e) => {
      const unit = unitOf(e.target);
      if (unit !== null) this.handlers.hover(unit, e);
    });
    this.body.addEventListener("mousemove", (e) => {
      const unit = unitOf(e.target);
      if (unit !== null) this.handlers.hover(unit, e);
    });
    this.body.addEventListener("mouseleave", (e) => this.handlers.hover(null, e));
    this.body.addEventListener("click", (e) => {
      const unit = unitOf(e.target);
      if (unit !== null) this.handlers.click(unit);
    });
  }

  /** Rebuilds the strip for a new list of units. */
  setUnits(units: Unit[], grids: [number, number][]): void {
    const children: HTMLElement[] = [];
    this.spans = new Array(units.length).fill(null);
    const chipped = new Set<string>();
    units.forEach((unit, i) => {
      if (unit.kind === "image") {
        const image = /^img(\d+)/.exec(unit.label)?.[1] ?? "0";
        if (!chipped.has(image)) {
          chipped.add(image);
          const grid = grids[Number(image)];
          const size = grid ? ` ${grid[0]}×${grid[1]}` : "";
          children.push(h("span", "mmviz-chip", `image ${image}${size}`));
        }
        return;
      }
      const span = h("span", `mmviz-tok mmviz-kind-${unit.kind}`, unit.label);
      span.dataset.unit = String(i);
      span.dataset.pos = String(unit.positions[0] ?? -1);
      this.spans[i] = span;
      children.push(span);
    });
    this.body.replaceChildren(...children);
    this.shown = new Int16Array(units.length).fill(-1);
    this.active = -1;
    this.pinned = -1;
  }

  /**
   * Colours the strip: `values` over this side's units (null clears), scaled to `vmax`.
   * `active` is outlined (the source of the painted vector), `pinned` marked.
   */
  paint(
    values: Float32Array | null,
    vmax: number,
    table: Uint8ClampedArray,
    active: number,
    pinned: number,
  ): void {
    for (let i = 0; i < this.spans.length; i++) {
      const span = this.spans[i];
      if (!span) continue;
      const idx = values ? lutIndex(values[i] ?? 0, vmax) : -1;
      if (idx === this.shown[i]) continue;
      this.shown[i] = idx;
      if (idx <= 0) {
        span.style.backgroundColor = "";
        span.style.color = "";
      } else {
        // Low values fade into the background, so the strip stays readable with any colormap.
        const alpha = Math.min(1, 0.12 + 0.88 * (idx / 255) ** 0.8);
        const r = table[idx * 3];
        const g = table[idx * 3 + 1];
        const b = table[idx * 3 + 2];
        span.style.backgroundColor = `rgba(${r},${g},${b},${alpha.toFixed(3)})`;
        span.style.color = alpha > 0.55 ? (luminance(table, idx) < 0.5 ? "#ffffff" : "#000000") : "";
      }
      span.dataset.value = values ? String(values[i] ?? 0) : "";
    }
    if (active !== this.active) {
      this.spans[this.active]?.classList.remove("mmviz-active");
      this.spans[active]?.classList.add("mmviz-active");
      this.active = active;
    }
    if (pinned !== this.pinned) {
      this.spans[this.pinned]?.classList.remove("mmviz-pinned");
      this.spans[pinned]?.classList.add("mmviz-pinned");
      this.pinned = pinned;
    }
  }
}

function unitOf(target: EventTarget | null): number | null {
  if (!(target instanceof HTMLElement)) return null;
  const unit = target.dataset.unit;
  return unit === undefined ? null : Number(unit);
}
