/**
 * Token strip: the text tokens (or words) of one side, coloured by the linked attention vector.
 * Image patches are shown in the image pane; the strip marks where each image sits with a chip.
 * Only spans on screen are restyled on hover (an IntersectionObserver tracks them; spans that scroll
 * into view are painted then), which keeps a hover cheap at thousands of tokens.
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
  private values: Float32Array | null = null;
  private vmax = 0;
  private table: Uint8ClampedArray = new Uint8ClampedArray(768);
  /** Units whose spans are on screen; until the observer first reports, every span counts as visible. */
  private readonly visible = new Set<number>();
  private observed = false;
  private readonly observer: IntersectionObserver | null;

  constructor(
    title: string,
    private readonly handlers: StripHandlers,
  ) {
    this.el = h("section", "mmviz-strip");
    this.el.append(h("div", "mmviz-pane-title", title));
    this.body = h("div", "mmviz-strip-body");
    this.el.append(this.body);
    this.observer =
      typeof IntersectionObserver === "undefined"
        ? null
        : new IntersectionObserver((entries) => this.onVisible(entries), {
            root: this.body,
            rootMargin: "120px",
          });
    const over = (e: MouseEvent) => {
      const unit = unitOf(e.target);
      if (unit !== null) this.handlers.hover(unit, e);
    };
    this.body.addEventListener("mouseover", over);
    this.body.addEventListener("mousemove", over);
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
      const span = h(
        "span",
        `mmviz-tok mmviz-kind-${unit.kind}${unit.generated ? " mmviz-generated" : ""}`,
        unit.label,
      );
      if (unit.generated) span.title = "generated";
      span.dataset.unit = String(i);
      span.dataset.pos = String(unit.positions[0] ?? -1);
      this.spans[i] = span;
      children.push(span);
    });
    this.observer?.disconnect();
    this.visible.clear();
    this.observed = false;
    this.body.replaceChildren(...children);
    for (const span of this.spans) if (span) this.observer?.observe(span);
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
    this.values = values;
    this.vmax = vmax;
    this.table = table;
    if (this.observed) for (const i of this.visible) this.paintSpan(i);
    else for (let i = 0; i < this.spans.length; i++) this.paintSpan(i);
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

  destroy(): void {
    this.observer?.disconnect();
  }

  private onVisible(entries: IntersectionObserverEntry[]): void {
    this.observed = true;
    for (const entry of entries) {
      const unit = Number((entry.target as HTMLElement).dataset.unit);
      if (entry.isIntersecting) {
        this.visible.add(unit);
        this.paintSpan(unit);
      } else {
        this.visible.delete(unit);
      }
    }
  }

  private paintSpan(i: number): void {
    const span = this.spans[i];
    if (!span) return;
    const values = this.values;
    const table = this.table;
    const idx = values ? lutIndex(values[i] ?? 0, this.vmax) : -1;
    if (idx === this.shown[i]) return;
    this.shown[i] = idx;
    if (idx <= 0) {
      span.style.backgroundColor = "";
      span.style.color = "";
    } else {
      // Low values fade into the background, so the strip stays readable with any colormap.
      const alpha = Math.min(1, 0.12 + 0.88 * (idx / 255) ** 0.8);
      span.style.backgroundColor = `rgba(${table[idx * 3]},${table[idx * 3 + 1]},${table[idx * 3 + 2]},${alpha.toFixed(3)})`;
      span.style.color = alpha > 0.55 ? (luminance(table, idx) < 0.5 ? "#ffffff" : "#000000") : "";
    }
    span.dataset.value = values ? String(values[i] ?? 0) : "";
  }
}

function unitOf(target: EventTarget | null): number | null {
  if (!(target instanceof HTMLElement)) return null;
  const unit = target.dataset.unit;
  return unit === undefined ? null : Number(unit);
}
