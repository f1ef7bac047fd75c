/**
 * anywidget entry (AFM): `export default { render }`. Bundled by esbuild into `mmviz/static/widget.js`,
 * which every view in `mmviz/widgets/` points `_esm` at; the `_view` trait picks the application
 * (absent: the AttentionView).
 */
import type { AnyModel, RenderProps } from "@anywidget/types";
import { AttentionApp } from "./app";
import type { AttentionViewState } from "./model";
import { CrossAttentionApp, type CrossAttentionState } from "./views/cross-attention";

export function renderView({ model, el }: Pick<RenderProps<AttentionViewState>, "model" | "el">): () => void {
  const view = (model as unknown as AnyModel<{ _view?: string }>).get("_view");
  const app =
    view === "cross_attention"
      ? new CrossAttentionApp(model as unknown as AnyModel<CrossAttentionState>)
      : new AttentionApp(model);
  el.classList.add("mmviz-host");
  el.append(app.root);
  return () => app.destroy();
}

export default {
  render(props: RenderProps<AttentionViewState>) {
    return renderView(props);
  },
};
