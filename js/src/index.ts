/**
 * anywidget entry (AFM): `export default { render }`. Bundled by esbuild into `mmviz/static/widget.js`,
 * which every view in `mmviz/widgets/` points `_esm` at; the `_view` trait (the view's `KIND`) picks the
 * pane application from `views/registry.ts` (absent: the AttentionView).
 */
import type { AnyModel, RenderProps } from "@anywidget/types";
import { createLink } from "./link";
import type { AttentionViewState } from "./model";
import { DashboardApp, type DashboardState } from "./views/dashboard";
import { createPane, type PaneApp } from "./views/registry";

export function renderView({ model, el }: Pick<RenderProps<AttentionViewState>, "model" | "el">): () => void {
  const kind = (model as unknown as AnyModel<{ _view?: string }>).get("_view") || "attention";
  const app: PaneApp =
    kind === "dashboard"
      ? new DashboardApp(model as unknown as AnyModel<DashboardState>)
      : createPane(kind, model as unknown as AnyModel<never>, createLink());
  el.classList.add("mmviz-host");
  el.append(app.root);
  const stopWatching = app.themeChanged ? watchTheme(() => app.themeChanged?.()) : () => undefined;
  return () => {
    stopWatching();
    app.destroy();
  };
}

/**
 * Calls `redraw` once the view is attached (canvases read theme colours from CSS, which a detached
 * element does not have) and whenever the theme changes: JupyterLab's theme attributes on `<body>`, or
 * the system colour scheme that exported pages follow. Returns the function that stops watching.
 */
function watchTheme(redraw: () => void): () => void {
  if (typeof window === "undefined" || typeof MutationObserver === "undefined") return () => undefined;
  const frame = requestAnimationFrame(redraw);
  const observer = new MutationObserver(redraw);
  observer.observe(document.body, {
    attributes: true,
    attributeFilter: ["data-jp-theme-light", "data-jp-theme-name"],
  });
  const scheme = window.matchMedia?.("(prefers-color-scheme: dark)");
  scheme?.addEventListener?.("change", redraw);
  return () => {
    cancelAnimationFrame(frame);
    observer.disconnect();
    scheme?.removeEventListener?.("change", redraw);
  };
}

export default {
  render(props: RenderProps<AttentionViewState>) {
    return renderView(props);
  },
};
