/**
 * One floating tooltip per view, showing values under the pointer. It is positioned inside the view's
 * root (absolute), from the pointer's viewport coordinates minus the root's origin. The origin is
 * measured once per pointer entry or scroll, not per hover, so showing the tooltip adds no layout work
 * to a hover (a fixed position would break inside JupyterLab panels, which are containing blocks).
 */
import { h } from "./dom";

export class Tooltip {
  readonly el = h("div", "mmviz-tooltip");
  private text = "";
  private origin: { x: number; y: number; width: number } | null = null;
  private readonly forget = () => {
    this.origin = null;
  };

  constructor(private readonly root: HTMLElement) {
    this.el.hidden = true;
    this.el.setAttribute("role", "status");
    root.append(this.el);
    root.addEventListener("pointerenter", this.forget);
    if (typeof window !== "undefined") {
      window.addEventListener("scroll", this.forget, { capture: true, passive: true });
      window.addEventListener("resize", this.forget, { passive: true });
    }
  }

  /** Shows lines of text near a pointer event (text only; never parsed as markup). */
  show(lines: string[], event: { clientX: number; clientY: number }): void {
    const text = lines.join("\n");
    if (text !== this.text) {
      this.el.textContent = text;
      this.text = text;
    }
    this.el.hidden = false;
    if (!this.origin) {
      const box = this.root.getBoundingClientRect();
      this.origin = { x: box.left, y: box.top, width: box.width };
    }
    const x = event.clientX - this.origin.x;
    const y = event.clientY - this.origin.y;
    // Near the right edge the tooltip ends at the pointer: translateX(-100%) moves it by its own width,
    // which CSS knows without a layout read here.
    const flip = x + 300 > this.origin.width;
    const at = `translate(${Math.round(flip ? x - 14 : x + 14)}px, ${Math.round(y + 14)}px)`;
    this.el.style.transform = flip ? `${at} translateX(-100%)` : at;
  }

  hide(): void {
    this.el.hidden = true;
  }

  destroy(): void {
    this.root.removeEventListener("pointerenter", this.forget);
    if (typeof window !== "undefined") {
      window.removeEventListener("scroll", this.forget, { capture: true });
      window.removeEventListener("resize", this.forget);
    }
  }
}
