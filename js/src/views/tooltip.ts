/** One floating tooltip per view, showing values under the pointer. */
import { h } from "./dom";

export class Tooltip {
  readonly el = h("div", "mmviz-tooltip");

  constructor(private readonly root: HTMLElement) {
    this.el.hidden = true;
    this.el.setAttribute("role", "status");
    root.append(this.el);
  }

  /** Shows lines of text near a pointer event (text only; never parsed as markup). */
  show(lines: string[], event: { clientX: number; clientY: number }): void {
    this.el.replaceChildren(...lines.map((line) => h("div", undefined, line)));
    this.el.hidden = false;
    const box = this.root.getBoundingClientRect();
    const x = event.clientX - box.left + 14;
    const y = event.clientY - box.top + 14;
    const maxX = Math.max(0, box.width - this.el.offsetWidth - 4);
    this.el.style.left = `${Math.min(x, maxX)}px`;
    this.el.style.top = `${y}px`;
  }

  hide(): void {
    this.el.hidden = true;
  }
}
