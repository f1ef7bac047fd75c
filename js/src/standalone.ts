/**
 * Host for exported pages (`mmviz.save_html`): a small in-memory model with the AFM surface
 * (`get`/`set`/`on`/`off`/`save_changes`/`send`) built from the embedded state, rendered into a shadow
 * root so the page's styles and the view's styles cannot leak into each other. There is no kernel:
 * `send` is dropped and the view shows only what the export embedded.
 */
import type { AnyModel } from "@anywidget/types";
import { reviveBinary } from "./codecs";
import { renderView } from "./index";
import type { AttentionViewState } from "./model";
import css from "./styles.css";

type Handler = (...args: unknown[]) => void;

/** An in-memory widget model: enough of the AFM host contract for the views. */
export class StandaloneModel<T extends Record<string, unknown>> {
  private readonly handlers = new Map<string, Set<Handler>>();
  readonly sent: unknown[] = [];
  readonly widget_manager = {
    get_model: () => Promise.reject(new Error("mmviz: no widget manager in an exported page")),
  };

  constructor(private readonly state: T) {}

  get<K extends keyof T>(key: K): T[K] {
    return this.state[key];
  }

  set<K extends keyof T>(key: K, value: T[K]): void {
    if (this.state[key] === value) return;
    this.state[key] = value;
    this.emit(`change:${String(key)}`);
  }

  on(event: string, handler: Handler): void {
    let set = this.handlers.get(event);
    if (!set) {
      set = new Set();
      this.handlers.set(event, set);
    }
    set.add(handler);
  }

  off(event?: string | null, handler?: Handler | null): void {
    if (!event) this.handlers.clear();
    else if (!handler) this.handlers.delete(event);
    else this.handlers.get(event)?.delete(handler);
  }

  emit(event: string, ...args: unknown[]): void {
    for (const handler of [...(this.handlers.get(event) ?? [])]) handler(...args);
  }

  save_changes(): void {}

  send(content: unknown): void {
    this.sent.push(content);
  }
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
