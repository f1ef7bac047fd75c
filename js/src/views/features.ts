/**
 * The FeatureView application (`mmviz/widgets/feature_view.py`): text tokens and image patches coloured by
 * one sparse-autoencoder feature; hovering a token or patch lists its top features (as text) and writes the
 * position and patch to the link store; a gallery lists the feature's top-activating positions, with the
 * image region of patches. Clicking a token or patch picks its strongest feature among those offered.
 */
import type { AnyModel } from "@anywidget/types";
import { decodeTensor, type Tensor, type TensorPayload } from "../codecs";
import { createLink, type LinkState, type LinkStore, linkedPosition, type PatchIndex, paneId } from "../link";
import type { TableState } from "../model";
import { COLORMAPS, formatValue, lut, maxOf } from "../render/colormap";
import type { Table, Unit } from "../render/matrix";
import { decodeTable, gridPositions, tablePatches } from "../table";
import { fillSelect, h, sizeCanvas } from "./dom";
import css from "./features.css";
import { attentionColor, ImagePane } from "./image-pane";
import { onChanges, paneHeading } from "./pane";
import { TokenStrip } from "./token-strip";
import { Tooltip } from "./tooltip";

export interface FeatureChoice {
  id: number;
  exact: boolean;
}

/** The synced state, mirroring `FeatureView`'s traits. */
export interface FeatureState {
  feature: number;
  cmap: string;
  _view: "features";
  _title: string;
  _tokens: TableState;
  _features: FeatureChoice[];
  _columns: TensorPayload;
  _top_features: TensorPayload;
  _top_activations: TensorPayload;
  _labels: Record<string, string>;
  _notes: string[];
  _standalone: boolean;
}

type Model = AnyModel<FeatureState>;

const GALLERY = 8;
const CROP_SIDE = 56;
const TOOLTIP_FEATURES = 5;

/** Positions of the `n` largest positive values, largest first. */
export function topPositions(values: ArrayLike<number>, n: number): number[] {
  const order: number[] = [];
  for (let p = 0; p < values.length; p++) if ((values[p] ?? 0) > 0) order.push(p);
  order.sort((a, b) => (values[b] ?? 0) - (values[a] ?? 0) || a - b);
  return order.slice(0, n);
}

export class FeatureApp {
  readonly root = h("div", "mmviz-root mmviz-feat");
  private readonly cleanups: (() => void)[] = [];
  private readonly notes = h("ul", "mmviz-notes");
  private readonly featureSelect = h("select", "mmviz-feat-feature");
  private readonly cmapSelect = h("select", "mmviz-feat-cmap");
  private readonly status = h("div", "mmviz-feat-status");
  private readonly imagesEl = h("div", "mmviz-feat-images");
  private readonly gallery = h("ol", "mmviz-feat-gallery");
  private readonly tooltip: Tooltip;
  private readonly strip: TokenStrip;
  private panes: ImagePane[] = [];
  private table: Table | null = null;
  private patches: PatchIndex | null = null;
  private columns: Tensor | null = null;
  private topFeatures: Tensor | null = null;
  private topActivations: Tensor | null = null;
  private row = 0;
  private hover = -1;
  private readonly id = paneId("features");

  constructor(
    private readonly model: Model,
    private readonly link: LinkStore = createLink(),
  ) {
    paneHeading(this.root, model.get("_title"), css);
    this.tooltip = new Tooltip(this.root);
    this.strip = new TokenStrip("tokens", {
      hover: (unit, e) => this.pointAt(unit, e),
      click: (unit) => this.pickAt(unit),
    });
    const body = h("div", "mmviz-body");
    const galleryBox = h("section", "mmviz-feat-gallery-box");
    galleryBox.append(h("div", "mmviz-pane-title", "top-activating positions"), this.gallery);
    const left = h("div", "mmviz-feat-left");
    left.append(this.strip.el, this.imagesEl);
    body.append(left, galleryBox);
    this.root.append(this.notes, this.buildControls(), this.status, body);
    this.load();
    this.cleanups.push(
      link.subscribe((state, changed) => this.fromLink(state, changed)),
      onChanges(model, ["feature", "cmap"], () => this.fromModel()),
      onChanges(model, ["_tokens", "_features", "_columns", "_top_features", "_labels", "_notes"], () =>
        this.load(),
      ),
    );
  }

  destroy(): void {
    for (const fn of this.cleanups.splice(0)) fn();
    this.strip.destroy();
    this.tooltip.destroy();
  }

  themeChanged(): void {
    for (const pane of this.panes) pane.resetTheme();
    this.paint();
  }

  private buildControls(): HTMLElement {
    const controls = h("div", "mmviz-controls");
    const feature = h("label", "mmviz-control");
    feature.append(h("span", undefined, "feature"), this.featureSelect);
    this.featureSelect.addEventListener("change", () => this.choose(Number(this.featureSelect.value)));
    fillSelect(this.cmapSelect, COLORMAPS);
    this.cmapSelect.addEventListener("change", () => {
      this.model.set("cmap", this.cmapSelect.value);
      this.model.save_changes();
      this.fromModel();
    });
    const cmap = h("label", "mmviz-control");
    cmap.append(h("span", undefined, "colormap"), this.cmapSelect);
    controls.append(feature, cmap);
    return controls;
  }

  private label(feature: number): string {
    const name = this.model.get("_labels")[String(feature)];
    return name ? `#${feature} ${name}` : `#${feature}`;
  }

  /** (Re)reads the data traits and rebuilds the strip, the image panes and the picker. */
  private load(): void {
    const m = this.model;
    const raw = m.get("_tokens");
    const table = decodeTable(raw);
    this.table = table;
    this.patches = tablePatches(table);
    this.notes.replaceChildren(...m.get("_notes").map((n) => h("li", undefined, n)));
    this.columns = decodeTensor(m.get("_columns"));
    this.topFeatures = decodeTensor(m.get("_top_features"));
    this.topActivations = decodeTensor(m.get("_top_activations"));
    const units: Unit[] = table.text.map((text, p) => ({
      positions: [p],
      label: table.kind[p] === "image" ? `img${table.imageIndex[p] ?? 0}` : text,
      kind: table.kind[p] ?? "text",
      generated: Boolean(table.generated[p]),
    }));
    this.strip.setUnits(units, table.grids);
    this.panes = raw.images.map((payload, i) => {
      const grid = table.grids[i] ?? [1, 1];
      return new ImagePane(decodeTensor(payload), grid, gridPositions(table, i), {
        caption: `image ${i} · ${grid[0]}×${grid[1]} patches`,
        shaded: true,
        hover: (pos, e) => this.pointAt(pos === null || pos < 0 ? null : pos, e),
        click: (pos) => this.pickAt(pos),
      });
    });
    this.imagesEl.replaceChildren(...this.panes.map((p) => p.el));
    this.featureSelect.replaceChildren(
      ...m.get("_features").map((f, i) => {
        const option = h("option", undefined, `${this.label(f.id)}${f.exact ? "" : " (top-k)"}`);
        option.value = String(i);
        return option;
      }),
    );
    this.fromModel();
  }

  private fromModel(): void {
    const ids = this.model.get("_features").map((f) => f.id);
    this.row = Math.max(0, ids.indexOf(this.model.get("feature")));
    this.featureSelect.value = String(this.row);
    this.cmapSelect.value = this.model.get("cmap");
    this.root.dataset.feature = String(ids[this.row] ?? -1);
    this.paint();
    this.paintGallery();
  }

  private choose(row: number): void {
    const choice = this.model.get("_features")[row];
    if (!choice) return;
    this.model.set("feature", choice.id);
    this.model.save_changes();
    this.fromModel();
  }

  /** The chosen feature's activation at every position. */
  private column(): Float32Array {
    const cols = this.columns;
    const n = this.table?.text.length ?? 0;
    return cols ? cols.data.subarray(this.row * n, (this.row + 1) * n) : new Float32Array(n);
  }

  /** `(feature, activation)` of a position's top features, strongest first. */
  private topOf(position: number): [number, number][] {
    const feats = this.topFeatures;
    const acts = this.topActivations;
    if (!feats || !acts) return [];
    const k = feats.shape[1] ?? 0;
    const out: [number, number][] = [];
    for (let j = 0; j < k; j++) {
      const f = feats.data[position * k + j] ?? -1;
      const a = acts.data[position * k + j] ?? 0;
      if (f >= 0 && a > 0) out.push([f, a]);
    }
    return out;
  }

  /** Pointer over a position of this pane (null: off): highlight, tooltip, link. */
  private pointAt(position: number | null, event: MouseEvent): void {
    const pos = position ?? -1;
    if (pos >= 0) {
      const text = this.table?.text[pos] ?? "";
      const lines = [
        `${text} (position ${pos})`,
        `${this.label(this.model.get("feature"))}: ${formatValue(this.column()[pos] ?? 0)}`,
      ];
      for (const [f, a] of this.topOf(pos).slice(0, TOOLTIP_FEATURES))
        lines.push(`${this.label(f)}: ${formatValue(a)}`);
      this.tooltip.show(lines, event);
    } else {
      this.tooltip.hide();
    }
    this.setHover(pos, true);
  }

  /** Click on a position: colour by its strongest feature among those the view offers. */
  private pickAt(position: number): void {
    const ids = this.model.get("_features").map((f) => f.id);
    for (const [f] of this.topOf(position)) {
      const row = ids.indexOf(f);
      if (row >= 0) {
        this.choose(row);
        return;
      }
    }
  }

  private setHover(position: number, notify: boolean): void {
    if (position === this.hover) return;
    this.hover = position;
    this.root.dataset.hover = String(position);
    this.paint();
    if (notify) {
      this.link.set({ position, patch: this.patches?.patchOf(position) ?? null, source: this.id });
    }
  }

  private fromLink(state: LinkState, changed: ReadonlySet<keyof LinkState>): void {
    if (state.source === this.id || !(changed.has("position") || changed.has("patch"))) return;
    if (this.patches && this.table)
      this.setHover(linkedPosition(state, this.patches, this.table.text.length), false);
  }

  private paint(): void {
    const values = this.column();
    const vmax = maxOf(values);
    const table = lut(this.model.get("cmap"));
    this.strip.paint(values, vmax, table, this.hover, -1);
    const color = attentionColor(vmax, table);
    for (const pane of this.panes) pane.paint(values, color, this.hover, { painted: "attention" });
    const feature = this.label(this.model.get("feature"));
    const pos = this.hover;
    this.status.textContent =
      pos >= 0
        ? `${this.table?.text[pos] ?? ""} (position ${pos}): ${feature} = ${formatValue(values[pos] ?? 0)}`
        : `${feature}: max ${formatValue(vmax)}`;
  }

  private paintGallery(): void {
    const values = this.column();
    const table = this.table;
    if (!table) return;
    const items = topPositions(values, GALLERY).map((pos) => {
      const item = h("li", "mmviz-feat-item");
      item.dataset.pos = String(pos);
      const image = table.kind[pos] === "image" ? (table.imageIndex[pos] ?? -1) : -1;
      const base = this.panes[image]?.base;
      if (base)
        item.append(
          this.crop(base, table.grids[image] ?? [1, 1], table.patchRow[pos] ?? 0, table.patchCol[pos] ?? 0),
        );
      item.append(
        h("span", "mmviz-feat-item-text", table.text[pos] ?? ""),
        h("span", "mmviz-feat-item-value", formatValue(values[pos] ?? 0)),
      );
      item.addEventListener("mouseenter", () => this.setHover(pos, true));
      item.addEventListener("mouseleave", () => this.setHover(-1, true));
      return item;
    });
    this.gallery.replaceChildren(...items);
    this.gallery.dataset.count = String(items.length);
  }

  /** The patch at (row, col) with one patch of context around it, as a small canvas. */
  private crop(base: HTMLCanvasElement, grid: [number, number], r: number, c: number): HTMLCanvasElement {
    const [rows, cols] = grid;
    const ph = base.height / rows;
    const pw = base.width / cols;
    const r0 = Math.max(0, r - 1);
    const c0 = Math.max(0, c - 1);
    const r1 = Math.min(rows, r + 2);
    const c1 = Math.min(cols, c + 2);
    const canvas = h("canvas", "mmviz-feat-crop");
    const ctx = sizeCanvas(canvas, CROP_SIDE, CROP_SIDE);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(base, c0 * pw, r0 * ph, (c1 - c0) * pw, (r1 - r0) * ph, 0, 0, CROP_SIDE, CROP_SIDE);
    return canvas;
  }
}
