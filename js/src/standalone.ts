/**
 * Host for exported pages (`mmviz.save_html`): a small in-memory model with the AFM surface
 * (`get`/`set`/`on`/`off`/`save_changes`/`send`) built from the embedded state, rendered into a shadow
 * root so the page's styles and the view's styles cannot leak into each other. There is no kernel:
 * `send` is dropped and the view shows only what the export embedded.
 */
import type { AnyModel } from "@anywidget/types";
import { reviveBinary } from "./codecs";
import { renderView } from "./index";
import { MemoryModel } from "./memory-model";
import type { AttentionViewState } from "./model";
import css from "./styles.css";

/** The model of an exported page: in memory, `send` dropped (kept in `sent`), no widget manager. */
export class StandaloneModel<T extends Record<string, unknown>> extends MemoryModel<T> {
  readonly widget_manager = {
    get_model: () => Promise.reject(new Error("mmviz: no widget manager in an exported page")),
  };
}

/** Parses the embedded JSON state; its `{"__b64__"}` leaves become DataViews. */
export function decodeState(json: string): Record<string, unknown> {
  return reviveBinary(JSON.parse(json)) as Record<string, unknown>;
}

/** Mounts one view into `host` (inside a shadow root) from its embedded JSON state. */
export function mount(host: HTMLElement, jsonState: string): () => void {
  const state = decodeState(jsonState) as unknown as AttentionViewState;
  state._standalone = true;
  const model = new StandaloneModel(state as unknown as Record<string, unknown>);
  const shadow = host.shadowRoot ?? host.attachShadow({ mode: "open" });
  const style = document.createElement("style");
  style.textContent = css;
  const el = document.createElement("div");
  el.className = "mmviz-standalone";
  shadow.replaceChildren(style, el);
  const started = performance.now();
  const cleanup = renderView({ model: model as unknown as AnyModel<AttentionViewState>, el });
  host.dataset.mmvizRendered = (performance.now() - started).toFixed(1);
  return cleanup;
}
