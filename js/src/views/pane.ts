/**
 * What every pane application does the same way: its heading (scoped styles and title) and listening to
 * changes of its model's traits.
 */
import { h } from "./dom";

interface Observable {
  get(key: never): unknown;
  on(event: string, handler: () => void): void;
  off(event: string, handler: () => void): void;
}

/** Appends the pane's own styles (when it has any) and its title to `root`. */
export function paneHeading(root: HTMLElement, title: string, css?: string): void {
  if (css) {
    const style = h("style");
    style.textContent = css;
    root.append(style);
  }
  if (title) root.append(h("div", "mmviz-title", title));
}

/** Calls `handler` whenever one of `keys` changes on the model; returns the function that stops listening. */
export function onChanges(model: Observable, keys: readonly string[], handler: () => void): () => void {
  for (const key of keys) model.on(`change:${key}`, handler);
  return () => {
    for (const key of keys) model.off(`change:${key}`, handler);
  };
}
