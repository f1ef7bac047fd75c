/**
 * anywidget entry (AFM): `export default { render }`. Bundled by esbuild into `mmviz/static/widget.js`,
 * which every view in `mmviz/widgets/` points `_esm` at; the `_view` trait picks the application
 * (absent: the AttentionView).
 */
import type { AnyModel, RenderProps } from "@anywidget/types";
import { AttentionApp } from "./app";
import type { AttentionViewState } from "./model";
import { AttributionApp, type AttributionState } from "./views/attribution";
import { CrossAttentionApp, type CrossAttentionState } from "./views/cross-attention";
import { DashboardApp, type DashboardState } from "./views/dashboard";

export function renderView({ model, el }: Pick<RenderProps<AttentionViewState>, "model" | "el">): () => void {
  const view = (model as unknown as AnyModel<{ _view?: string }>).get("_view");
  const app =
    view === "cross_attention"
      ? new CrossAttentionApp(model as unknown as AnyModel<CrossAttentionState>)
      : view === "attribution"
        ? new AttributionApp(model as unknown as AnyModel<AttributionState>)
        : view === "dashboard"
          ? new DashboardApp(model as unknown as AnyModel<DashboardState>)
          : new AttentionApp(model);
  el.classList.add("mmviz-host");
  el.append(app.root);
  const stopWatching = "themeChanged" in app ? watchTheme(() => app.themeChanged()) : () => undefined;
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
