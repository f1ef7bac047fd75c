/** One floating tooltip per view, showing values under the pointer. */
import { h } from "./dom";

export class Tooltip {
  readonly el = h("div", "mmviz-tooltip");
  private text = "";

  constructor(root: HTMLElement) {
    this.el.hidden = true;
    this.el.setAttribute("role", "status");
    root.append(this.el);
  }

  /**
   * Shows lines of text near a pointer event (text only; never parsed as markup). Positioned with
   * `position: fixed` from the event's viewport coordinates, so showing it reads no layout.
   */
  show(lines: string[], event: { clientX: number; clientY: number }): void {
    const text = lines.join("\n");
    if (text !== this.text) {
      this.el.textContent = text;
      this.text = text;
    }
    this.el.hidden = false;
    const width = typeof window === "undefined" ? 1e9 : window.innerWidth;
    const x = event.clientX + 14 + 360 > width ? Math.max(0, event.clientX - 374) : event.clientX + 14;
    this.el.style.transform = `translate(${Math.round(x)}px, ${Math.round(event.clientY + 14)}px)`;
  }

  hide(): void {
    this.el.hidden = true;
  }
}
