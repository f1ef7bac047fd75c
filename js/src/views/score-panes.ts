/**
 * What the panes that colour positions by one value each share (attributions, patching effects): the token
 * strip, whose text tokens carry the value as a background colour. Their images are `ImagePane`s
 * (`image-pane.ts`) painted with the same colours. Colours come from the caller (`scoreColor` and its scale).
 */
import type { TableState } from "../model";
import type { Table } from "../render/matrix";
import { h } from "./dom";
import type { ColorOf } from "./image-pane";
import sharedCss from "./score-panes.css";

/** Styles of the shared token strip; a pane adds them before its own (`paneHeading(root, title, SCORE_CSS + css)`). */
export const SCORE_CSS = sharedCss;

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
