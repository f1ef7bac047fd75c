/**
 * The AttentionView application: decodes the synced state, owns the store and the panes, fetches
 * attention maps it does not have (custom messages to Python; an exported page has no kernel and says
 * so), and repaints the panes when the store changes. Hover never leaves the browser: the token or patch
 * under the pointer goes to the link store (shared with a Dashboard's other panes), and what the other panes
 * point at is shown here as a hover.
 */
import type { AnyModel } from "@anywidget/types";
import { decodeTensor, type Tensor, type TensorPayload } from "./codecs";
import { createLink, type LinkState, type LinkStore, linkedPosition, type PatchIndex, paneId } from "./link";
import type { AttentionViewState, ModuleState, TableState } from "./model";
import { sliceKey } from "./model";
import { formatValue, lut, maxOf, robustMax } from "./render/colormap";
import { buildDisplay, colVector, type Display, rowVector, type Table } from "./render/matrix";
import { type Hover, Store, type ViewState } from "./store";
import { decodeTable, gridPositions, tablePatches } from "./table";
import { Controls } from "./views/controls";
import { h } from "./views/dom";
import { Heatmap } from "./views/heatmap";
import { attentionColor, ImagePane } from "./views/image-pane";
import { onChanges } from "./views/pane";
import { describe, ThumbnailGrid, type ThumbSelection } from "./views/thumbnails";
import { TokenStrip } from "./views/token-strip";
import { Tooltip } from "./views/tooltip";

type Model = AnyModel<AttentionViewState>;

const DURABLE = [
  "module",
  "layer",
  "head",
  "aggregate",
  "token",
  "direction",
  "hide_special",
  "merge_words",
  "cmap",
] as const;

interface SidePanes {
  strip: TokenStrip | null;
  images: ImagePane[];
}

export class AttentionApp {
  readonly root = h("div", "mmviz-root mmviz-attention");
  private readonly store: Store<ViewState>;
  private readonly tables = new Map<string, Table>();
  private readonly patchIndexes = new Map<string, PatchIndex>();
  private readonly slices = new Map<string, Tensor>();
  private readonly pending = new Set<string>();
  private readonly tooltip: Tooltip;
  private readonly controls: Controls;
  private readonly heatmap: Heatmap;
  private readonly thumbs: ThumbnailGrid;
  private readonly notes = h("ul", "mmviz-notes");
  private readonly status = h("div", "mmviz-status");
  private readonly stripsEl = h("div", "mmviz-strips");
  private readonly imagesEl = h("div", "mmviz-images");
  private sides: { query: SidePanes; key: SidePanes } = {
    query: { strip: null, images: [] },
    key: { strip: null, images: [] },
  };
  private display: Display | null = null;
  private displayKey = "";
  private rowToUnit = new Int32Array(0);
  private lastPaint: ReturnType<AttentionApp["painted"]> = null;
  private builtModule = "";
  private thumbKey = "";
  private readonly cleanups: (() => void)[] = [];
  private readonly id = paneId("attention");

  constructor(
    private readonly model: Model,
    private readonly link: LinkStore = createLink(),
  ) {
    const initial = {} as ViewState;
    for (const key of DURABLE) (initial as unknown as Record<string, unknown>)[key] = model.get(key);
    initial.hover = null;
    this.store = new Store(initial);
    this.tooltip = new Tooltip(this.root);
    this.controls = new Controls((patch) => this.store.set(this.valid(patch)));
    this.heatmap = new Heatmap("attention matrix", {
      hover: (row, col, e) => this.onMatrixHover(row, col, e),
      click: (row) => this.pinUnit(this.rowToUnit[row] ?? -1),
    });
    this.thumbs = new ThumbnailGrid({
      select: (sel) => this.store.set(sel),
      hover: (sel, e) => this.onThumbHover(sel, e),
    });
    const title = model.get("_title");
    const header = h("div", "mmviz-header");
    if (title) header.append(h("div", "mmviz-title", title));
    header.append(this.notes);
    const body = h("div", "mmviz-body");
    const left = h("div", "mmviz-col mmviz-col-left");
    left.append(this.stripsEl, this.imagesEl);
    body.append(left, this.heatmap.el, this.thumbs.el);
    this.root.append(header, this.controls.el, this.status, body);
    this.root.append(this.tooltip.el);

    this.cleanups.push(this.store.subscribe((state, changed) => this.onStore(state, changed)));
    this.cleanups.push(link.subscribe((state, changed) => this.fromLink(state, changed)));
    this.bindModel();
    this.controls.setModules(model.get("_modules"));
    this.refreshNotes();
    this.rebuild();
  }

  destroy(): void {
    for (const fn of this.cleanups.splice(0)) fn();
    this.sides.query.strip?.destroy();
    this.sides.key.strip?.destroy();
    this.tooltip.destroy();
    this.root.remove();
  }

  /** Redraws what reads theme colours: after the view is attached, and when the theme changes. */
  themeChanged(): void {
    this.heatmap.draw();
    this.thumbs.draw();
    for (const pane of [...this.sides.query.images, ...this.sides.key.images]) pane.resetTheme();
    this.paint();
  }

  // -- model <-> store ---------------------------------------------------------------------------
  private bindModel(): void {
    const model = this.model;
    for (const key of DURABLE) {
      const read = () => this.store.set(this.valid({ [key]: model.get(key) } as Partial<ViewState>));
      this.cleanups.push(onChanges(model, [key], read));
    }
    const onSlices = () => this.reset();
    model.on("change:_slices", onSlices);
    model.on("change:_thumbs", onSlices);
    model.on("change:_tables", onSlices);
    model.on("change:_modules", onSlices);
    const onNotes = () => this.refreshNotes();
    model.on("change:_notes", onNotes);
    const onMsg = (msg: unknown, buffers: DataView[]) => this.onMessage(msg, buffers);
    model.on("msg:custom", onMsg);
    this.cleanups.push(() => {
      model.off("change:_slices", onSlices);
      model.off("change:_thumbs", onSlices);
      model.off("change:_tables", onSlices);
      model.off("change:_modules", onSlices);
      model.off("change:_notes", onNotes);
      model.off("msg:custom", onMsg);
    });
  }

  private onStore(state: ViewState, changed: ReadonlySet<keyof ViewState>): void {
    let dirty = false;
    for (const key of DURABLE) {
      if (changed.has(key) && this.model.get(key) !== state[key]) {
        this.model.set(key, state[key] as never);
        dirty = true;
      }
    }
    if (dirty) this.model.save_changes();
    const structural = [
      "module",
      "layer",
      "head",
      "aggregate",
      "hide_special",
      "merge_words",
      "cmap",
    ] as const;
    if (structural.some((k) => changed.has(k))) this.rebuild();
    else this.paint();
  }

  /** Keeps a selection valid for its module (a module switch resets layer/head when needed). */
  private valid(patch: Partial<ViewState>): Partial<ViewState> {
    const state = { ...this.store.get(), ...patch };
    const module = this.moduleState(state.module);
    if (!module) return patch;
    const out = { ...patch };
    if (!module.layers.includes(state.layer)) out.layer = module.layers[module.layers.length - 1] ?? 0;
    if (state.aggregate === "head" && !module.heads.includes(state.head)) out.head = module.heads[0] ?? 0;
    if (state.aggregate === "rollout" && !module.self_attention) out.aggregate = "mean";
    return out;
  }

  /** Forgets everything decoded from the state (Python replaced the data, e.g. a new batch item). */
  private reset(): void {
    this.slices.clear();
    this.tables.clear();
    this.patchIndexes.clear();
    this.builtModule = "";
    this.thumbKey = "";
    this.displayKey = "";
    this.display = null;
    this.controls.setModules(this.model.get("_modules"));
    this.rebuild();
  }

  // -- data ----------------------------------------------------------------------------------------
  private moduleState(name: string): ModuleState | undefined {
    return this.model.get("_modules").find((m) => m.name === name);
  }

  private table(name: string): Table {
    let t = this.tables.get(name);
    if (!t) {
      const raw: TableState | undefined = this.model.get("_tables")[name];
      if (!raw) throw new Error(`mmviz: token table ${name} missing from the widget state`);
      t = decodeTable(raw);
      this.tables.set(name, t);
    }
    return t;
  }

  private slice(key: string): Tensor | null {
    const hit = this.slices.get(key);
    if (hit) return hit;
    const payload = this.model.get("_slices")?.[key];
    if (!payload) return null;
    const tensor = decodeTensor(payload);
    this.slices.set(key, tensor);
    return tensor;
  }

  private request(key: string, state: ViewState): void {
    if (this.pending.has(key)) return;
    this.pending.add(key);
    this.model.send({
      type: "slice",
      key,
      module: state.module,
      layer: state.layer,
      head: state.head,
      aggregate: state.aggregate,
    });
  }

  private onMessage(msg: unknown, buffers: DataView[]): void {
    const m = msg as { type?: string; key?: string; error?: string } & Partial<TensorPayload>;
    if (m.type !== "slice" || !m.key) return;
    this.pending.delete(m.key);
    if (m.error) {
      this.setStatus("error", m.error);
      return;
    }
    const [data, scale, offset] = buffers;
    if (!data) return;
    const payload: TensorPayload = {
      dtype: m.dtype ?? "uint8",
      shape: m.shape ?? [],
      axes: m.axes ?? 0,
      data,
      scale: scale ?? m.scale ?? 1,
      offset: offset ?? m.offset ?? 0,
    } as TensorPayload;
    this.slices.set(m.key, decodeTensor(payload));
    this.rebuild();
  }

  private setStatus(kind: string, text: string): void {
    this.root.dataset.state = kind;
    this.status.textContent = text;
    this.status.hidden = text === "";
  }

  private refreshNotes(): void {
    const notes = this.model.get("_notes") ?? [];
    this.notes.replaceChildren(...notes.map((n) => h("li", undefined, n)));
    this.notes.hidden = notes.length === 0;
  }

  // -- building ------------------------------------------------------------------------------------
  private rebuild(): void {
    const state = this.store.get();
    const module = this.moduleState(state.module);
    if (!module) {
      this.setStatus("error", `no module ${state.module} in this view`);
      return;
    }
    this.controls.update(state, module);
    const table = lut(state.cmap);
    if (this.thumbKey !== `${module.name}|${state.cmap}`) {
      this.thumbKey = `${module.name}|${state.cmap}`;
      this.buildThumbs(module, table);
    }
    if (this.builtModule !== module.name) this.buildSides(module);
    this.thumbs.select({ layer: state.layer, aggregate: state.aggregate, head: state.head });
    const key = sliceKey(module.name, state.layer, state.aggregate, state.head);
    const tensor = this.slice(key);
    if (!tensor) {
      if (this.model.get("_standalone")) {
        this.setStatus(
          "missing",
          "This attention map was not embedded in the exported page (see the notes above).",
        );
      } else {
        this.setStatus("loading", "loading attention…");
        this.request(key, state);
      }
      return;
    }
    const dkey = `${key}|${state.hide_special}|${state.merge_words}|${state.cmap}`;
    if (dkey !== this.displayKey) {
      const q = this.table(module.query_table);
      const k = this.table(module.key_table);
      const display = buildDisplay(tensor, q, k, {
        hideSpecial: state.hide_special,
        mergeWords: state.merge_words,
        qStep: module.q_step,
        kStep: module.k_step,
      });
      this.display = display;
      this.displayKey = dkey;
      this.rowToUnit = new Int32Array(display.rows).fill(-1);
      display.qRow.forEach((r, u) => {
        if ((this.rowToUnit[r] ?? 0) < 0) this.rowToUnit[r] = u;
      });
      this.heatmap.setMatrix(display.data, display.rows, display.cols, robustMax(display.data), table);
      this.heatmap.setLabels(display.qUnits, display.kUnits, display.qRow, display.kCol);
      this.sides.query.strip?.setUnits(display.qUnits, q.grids);
      this.sides.key.strip?.setUnits(display.kUnits, k.grids);
      for (const pane of this.sides.query.images) pane.setUnits(display.qUnitOfPos);
      for (const pane of this.sides.key.images) pane.setUnits(display.kUnitOfPos);
    }
    this.setStatus("ready", "");
    this.paint();
  }

  private buildThumbs(module: ModuleState, table: Uint8ClampedArray): void {
    const thumbs = this.model.get("_thumbs")?.[module.name];
    this.thumbs.el.hidden = !thumbs;
    if (!thumbs) return;
    this.thumbs.setThumbs(
      module.layers,
      module.heads,
      decodeTensor(thumbs.heads),
      decodeTensor(thumbs.mean),
      decodeTensor(thumbs.max),
      table,
    );
  }

  private buildSides(module: ModuleState): void {
    this.builtModule = module.name;
    this.sides.query.strip?.destroy();
    this.sides.key.strip?.destroy();
    this.displayKey = "";
    const cross = !module.self_attention;
    const makeStrip = (side: "query" | "key", title: string) =>
      new TokenStrip(title, {
        hover: (unit, e) => this.onUnitHover(side, unit, e),
        click: (unit) => (side === "query" || !cross ? this.pinUnit(unit) : undefined),
      });
    const q = this.table(module.query_table);
    const k = this.table(module.key_table);
    const hasText = (t: Table) => t.kind.some((kind) => kind !== "image");
    this.sides = {
      query: {
        strip: hasText(q) ? makeStrip("query", cross ? `queries (${module.query_table})` : "tokens") : null,
        images: [],
      },
      key: { strip: cross && hasText(k) ? makeStrip("key", `keys (${module.key_table})`) : null, images: [] },
    };
    this.stripsEl.replaceChildren(
      ...[this.sides.query.strip?.el, this.sides.key.strip?.el].filter((x): x is HTMLElement => !!x),
    );
    const images: HTMLElement[] = [];
    const sideList: ["query" | "key", string][] = cross
      ? [
          ["query", module.query_table],
          ["key", module.key_table],
        ]
      : [["query", module.query_table]];
    for (const [side, tableName] of sideList) {
      const raw = this.model.get("_tables")[tableName];
      const t = side === "query" ? q : k;
      raw?.images.forEach((img, i) => {
        const grid = t.grids[i] ?? [1, 1];
        const positions = gridPositions(t, i);
        if (!positions.some((p) => p >= 0)) return;
        const pane = new ImagePane(decodeTensor(img), grid, positions, {
          caption: `image ${i} · ${grid[0]}×${grid[1]} patches`,
          shaded: true,
          hover: (pos, e) => {
            const d = this.display;
            const unitOf = side === "query" || !cross ? d?.qUnitOfPos : d?.kUnitOfPos;
            this.onUnitHover(side, pos === null || pos < 0 || !unitOf ? null : (unitOf[pos] ?? -1), e);
          },
          click: (pos) => {
            if (side === "query" || !cross) this.pinUnit(this.display?.qUnitOfPos[pos] ?? -1);
          },
        });
        this.sides[side].images.push(pane);
        images.push(pane.el);
      });
    }
    this.imagesEl.replaceChildren(...images);
    this.imagesEl.hidden = images.length === 0;
  }

  // -- interaction ---------------------------------------------------------------------------------
  private pinUnit(unit: number): void {
    const d = this.display;
    if (!d || unit < 0) return;
    const pos = d.qUnits[unit]?.positions[0] ?? -1;
    this.store.set({ token: this.store.get().token === pos ? -1 : pos });
  }

  private onUnitHover(side: "query" | "key", unit: number | null, e: MouseEvent): void {
    const d = this.display;
    if (unit === null || unit < 0 || !d) {
      this.store.set({ hover: null });
      this.toLink(side, -1);
      this.tooltip.hide();
      return;
    }
    this.store.set({ hover: { side, unit } });
    this.toLink(side, (side === "query" ? d.qUnits : d.kUnits)[unit]?.positions[0] ?? -1);
    const units = side === "query" ? d.qUnits : d.kUnits;
    const u = units[unit];
    if (!u) return;
    const lines = [`${JSON.stringify(u.label)}  #${u.positions.join(",")}`];
    const paint = this.lastPaint; // computed by paint() while the store applied the hover
    if (paint && paint.source.unit !== unit) {
      const value = paint.values[unit] ?? 0;
      lines.push(`attention ${paint.arrow} this: ${formatValue(value)}`);
    } else if (paint) {
      const best = argmax(paint.values);
      const other = (paint.side === "query" ? d.qUnits : d.kUnits)[best];
      if (other)
        lines.push(`strongest: ${JSON.stringify(other.label)} ${formatValue(paint.values[best] ?? 0)}`);
    }
    if (this.store.get().token < 0) lines.push("click to pin");
    this.tooltip.show(lines, e);
  }

  private onMatrixHover(row: number | null, col: number | null, e: MouseEvent): void {
    const d = this.display;
    if (row === null || col === null || !d) {
      this.store.set({ hover: null });
      this.tooltip.hide();
      return;
    }
    const unit = this.rowToUnit[row] ?? -1;
    this.store.set({ hover: unit >= 0 ? { side: "query", unit } : null });
    this.toLink("query", unit >= 0 ? (d.qUnits[unit]?.positions[0] ?? -1) : -1);
    const rowLabel = d.qUnits[unit]?.label ?? `row ${row}`;
    const keyUnit = d.kCol.indexOf(col);
    const colLabel = d.kUnits[keyUnit]?.label ?? `col ${col}`;
    const value = d.data[row * d.cols + col] ?? 0;
    this.tooltip.show(
      [`${JSON.stringify(rowLabel)} → ${JSON.stringify(colLabel)}`, `attention ${formatValue(value)}`],
      e,
    );
  }

  // -- linking -------------------------------------------------------------------------------------
  /** Tells the other panes the position (and patch) of `side`'s table under the pointer (-1: none). */
  private toLink(side: "query" | "key", pos: number): void {
    const module = this.moduleState(this.store.get().module);
    if (!module) return;
    const patch =
      pos >= 0 ? this.patches(side === "query" ? module.query_table : module.key_table).patchOf(pos) : null;
    const shared = side === "query" || module.self_attention;
    this.link.set({ position: shared ? pos : -1, patch, source: this.id });
  }

  private patches(name: string): PatchIndex {
    let index = this.patchIndexes.get(name);
    if (!index) {
      index = tablePatches(this.table(name));
      this.patchIndexes.set(name, index);
    }
    return index;
  }

  /** Another pane points at a position or patch: hover the unit that holds it (queries first). */
  /** A hovered thumbnail: its tooltip, and its layer and head written to the link for the other panes. */
  private onThumbHover(sel: ThumbSelection | null, e: MouseEvent): void {
    if (sel) this.tooltip.show([describe(sel), "click to select"], e);
    else this.tooltip.hide();
    const head = sel?.aggregate === "head" ? sel.head : -1;
    this.link.set({ layer: sel?.layer ?? -1, head, module: this.store.get().module, source: this.id });
  }

  /** Marks the layer and head another pane points at, when they belong to the stack shown. */
  private markLinkedHead(state: LinkState): void {
    const own = state.module === "" || state.module === this.store.get().module;
    this.thumbs.mark(own ? state.layer : -1, own ? state.head : -1);
  }

  private fromLink(state: LinkState, changed: ReadonlySet<keyof LinkState>): void {
    if (state.source === this.id) return;
    if (changed.has("layer") || changed.has("head") || changed.has("module")) this.markLinkedHead(state);
    if (!(changed.has("position") || changed.has("patch"))) return;
    const d = this.display;
    const module = this.moduleState(this.store.get().module);
    if (!d || !module) return;
    const sides: ["query" | "key", string, Int32Array][] = [["query", module.query_table, d.qUnitOfPos]];
    if (!module.self_attention) sides.push(["key", module.key_table, d.kUnitOfPos]);
    for (const [side, name, unitOf] of sides) {
      const pos = linkedPosition(state, this.patches(name), this.table(name).kind.length);
      const unit = pos >= 0 ? (unitOf[pos] ?? -1) : -1;
      if (unit >= 0) {
        this.store.set({ hover: { side, unit } });
        return;
      }
    }
    this.store.set({ hover: null });
  }

  /** The vector the panes show: from the pinned token, else from the hovered unit. */
  private painted(): { source: Hover; side: "query" | "key"; values: Float32Array; arrow: string } | null {
    const d = this.display;
    const state = this.store.get();
    const module = this.moduleState(state.module);
    if (!d || !module) return null;
    let source: Hover | null = null;
    const pinned = state.token >= 0 ? (d.qUnitOfPos[state.token] ?? -1) : -1;
    if (pinned >= 0) source = { side: "query", unit: pinned };
    else if (state.hover) source = state.hover;
    if (!source) return null;
    if (module.self_attention) {
      const from = state.direction === "from";
      return {
        source: { side: "query", unit: source.unit },
        side: "query",
        values: from ? rowVector(d, source.unit) : colVector(d, source.unit),
        arrow: from ? "from pinned to" : "to pinned from",
      };
    }
    if (source.side === "query")
      return { source, side: "key", values: rowVector(d, source.unit), arrow: "paid to" };
    return { source, side: "query", values: colVector(d, source.unit), arrow: "received from" };
  }

  private paint(): void {
    const d = this.display;
    if (!d) return;
    const state = this.store.get();
    const module = this.moduleState(state.module);
    const table = lut(state.cmap);
    const p = this.painted();
    this.lastPaint = p;
    const pinned = state.token >= 0 ? (d.qUnitOfPos[state.token] ?? -1) : -1;
    const hover = state.hover;
    for (const side of ["query", "key"] as const) {
      const panes = this.sides[side];
      const self = module?.self_attention ?? true;
      const values = p && (p.side === side || self) ? p.values : null;
      const vmax = values ? maxOf(values) : 0;
      const active = p?.source.side === side || (self && p) ? (p?.source.unit ?? -1) : -1;
      const hovered = hover && (hover.side === side || self) ? hover.unit : -1;
      panes.strip?.paint(values, vmax, table, active >= 0 ? active : hovered, side === "query" ? pinned : -1);
      const color = attentionColor(vmax, table);
      for (const pane of panes.images)
        pane.paint(values, color, active >= 0 ? active : hovered, { painted: "attention" });
    }
    const rows: number[] = [];
    const cols: number[] = [];
    if (p) {
      const u = p.source.unit;
      if (p.source.side === "key") cols.push(d.kCol[u] ?? 0);
      else if (module?.self_attention && state.direction === "to") cols.push(d.kCol[u] ?? 0);
      else rows.push(d.qRow[u] ?? 0);
    }
    this.heatmap.setHighlight({ rows, cols });
    this.root.dataset.source = p ? String(d.qUnits[p.source.unit]?.positions[0] ?? -1) : "";
  }
}

function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if ((values[i] ?? 0) > (values[best] ?? 0)) best = i;
  return best;
}
