/**
 * An in-memory widget model: the AFM host surface (`get`/`set`/`on`/`off`/`save_changes`/`send`) over a
 * plain state object. Exported pages (`standalone.ts`) and the Dashboard's panes (`views/dashboard.ts`)
 * run their views on it; they differ only in where `send` goes.
 */
type Handler = (...args: unknown[]) => void;

export class MemoryModel<T extends Record<string, unknown>> {
  private readonly handlers = new Map<string, Set<Handler>>();
  /** Messages passed to `send`, for hosts (and tests) with no kernel to receive them. */
  readonly sent: unknown[] = [];

  constructor(protected readonly state: T) {}

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
