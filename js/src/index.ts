/**
 * anywidget entry (AFM): `export default { render }`. Bundled by esbuild into `mmviz/static/widget.js`,
 * which `mmviz/widgets/attention_view.py` points `_esm` at.
 */
import type { RenderProps } from "@anywidget/types";
import { AttentionApp } from "./app";
import type { AttentionViewState } from "./model";

export function renderView({ model, el }: Pick<RenderProps<AttentionViewState>, "model" | "el">): () => void {
  const app = new AttentionApp(model);
  el.classList.add("mmviz-host");
  el.append(app.root);
  return () => app.destroy();
}

export default {
  render(props: RenderProps<AttentionViewState>) {
    return renderView(props);
  },
};
