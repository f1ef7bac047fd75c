/**
 * The browser-side store that links the panes: one state object, shallow updates, and listeners that
 * learn which keys changed. Hover lives here only (no kernel round trip); durable keys are mirrored to
 * the widget model by `app.ts`.
 */
import type { AttentionViewState, Side } from "./model";

/** A hovered unit: a token, word or patch on one side of the attention matrix. */
export interface Hover {
  side: Side;
  unit: number;
}

/** The AttentionView's selection (its durable traits) and the unit under the pointer. */
export type ViewState = Pick<
  AttentionViewState,
  "module" | "layer" | "head" | "aggregate" | "token" | "direction" | "hide_special" | "merge_words" | "cmap"
> & {
  hover: Hover | null;
};

export type Listener<S> = (state: S, changed: ReadonlySet<keyof S>) => void;

export class Store<S extends object> {
  private state: S;
  private readonly listeners = new Set<Listener<S>>();

  constructor(initial: S) {
    this.state = { ...initial };
  }

  get(): Readonly<S> {
    return this.state;
  }

  /** Applies a partial update; listeners run once, with the keys whose values changed. */
  set(patch: Partial<S>): void {
    const changed = new Set<keyof S>();
    for (const key of Object.keys(patch) as (keyof S)[]) {
      const value = patch[key] as S[keyof S];
      if (!sameValue(this.state[key], value)) changed.add(key);
    }
    if (changed.size === 0) return;
    this.state = { ...this.state, ...patch };
    for (const listener of [...this.listeners]) listener(this.state, changed);
  }

  /** Registers a listener; returns the function that removes it. */
  subscribe(listener: Listener<S>): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}

function sameValue(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (a && b && typeof a === "object" && typeof b === "object") {
    const ka = Object.keys(a);
    const kb = Object.keys(b);
    if (ka.length !== kb.length) return false;
    return ka.every((k) => (a as Record<string, unknown>)[k] === (b as Record<string, unknown>)[k]);
  }
  return false;
}
