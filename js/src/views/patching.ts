/**
 * The PatchingView application (`mmviz/widgets/patching_view.py`): a heat map of activation-patching
 * effects (layers down, positions across), the token strip under it, and each image with one layer's
 * effects on its patch grid: the layer under the pointer, or the selected one (click a row). Effects use the
 * diverging blue–red scale centred at 0 (1: the clean answer restored). Hovering a cell, token or patch
 * writes the position (and patch) and the layer to the link store; what other panes point at is
 * highlighted here. All in the browser.
 */
import type { AnyModel } from "@anywidget/types";
import { decodeTensor, type Tensor, type TensorPayload } from "../codecs";
import { createLink, type LinkState, type LinkStore, linkedPosition, type PatchIndex, paneId } from "../link";
import type { TableState } from "../model";
import { formatValue } from "../render/colormap";
import { decodeTable, gridPositions, tablePatches } from "../table";
import { absMax, scoreColor } from "./attribution";
import { h, labelled, sizeCanvas, slider, themeColors } from "./dom";
import { type ColorOf, ImagePane } from "./image-pane";
import { onChanges, paneHeading } from "./pane";
import css from "./patching.css";
import { paintSpans, SCORE_CSS, tokenStrip } from "./score-panes";

/** The synced state, mirroring `PatchingView`'s traits. */
export interface PatchingState {
  site: number;
  layer: number;
  opacity: number;
  cmap: string;
  _view: "patching";
  _title: string;
  _tokens: TableState;
  _sites: string[];
  _layers: number[];
  _effects: TensorPayload;
  _summary: string;
  _notes: string[];
  _standalone: boolean;
}

type Model = AnyModel<PatchingState>;

const SYNCED = ["site", "layer", "opacity"] as const;
const IMAGE_SIDE = 220;
const ROW_HEIGHT = 16;
const NO_COLOR = new Uint8ClampedArray(0);

/** Colour scale limit of a site's effects: at least 1 (the clean answer), more when effects overshoot. */
export function effectLimit(values: ArrayLike<number>): number {
  return Math.max(1, absMax(values));
}

export class PatchingApp {
  readonly root = h("div", "mmviz-root mmviz-patching");
  private readonly cleanups: (() => void)[] = [];
  private readonly notes = h("ul", "mmviz-notes");
  private readonly siteSelect = h("select", "mmviz-patching-site");
  private readonly opacityInput = h("input", "mmviz-patching-opacity");
  private readonly summary = h("div", "mmviz-patching-summary");
  private readonly status = h("div", "mmviz-patching-status");
  private readonly grid = h("canvas", "mmviz-patching-grid");
  private readonly layerLabels = h("div", "mmviz-patching-layers");
  private readonly strip = h("div", "mmviz-patching-strip");
  private readonly imagesEl = h("div", "mmviz-patching-images");
  private spans: (HTMLSpanElement | null)[] = [];
  private images: ImagePane[] = [];
  private effects: Tensor | null = null;
  private text: string[] = [];
  private layers: number[] = [];
  private site = 0;
  /** Selected layer row (synced); the image panes show it unless the pointer is over another row. */
  private layer = 0;
  private opacity = 0.75;
  /** Position and layer row under the pointer (-1: none), here or in a linked pane. */
  private hover = -1;
  private hoverLayer = -1;
  private patches: PatchIndex | null = null;
  private readonly id = paneId("patching");

  constructor(
    private readonly model: Model,
    private readonly link: LinkStore = createLink(),
  ) {
    paneHeading(this.root, model.get("_title"), SCORE_CSS + css);
    this.root.append(this.notes, this.buildControls(), this.summary, this.status);
    const gridFigure = h("figure", "mmviz-patching-figure");
    const gridRow = h("div", "mmviz-patching-grid-row");
    gridRow.append(this.layerLabels, this.grid);
    gridFigure.append(gridRow, h("figcaption", "mmviz-pane-title", "layers × positions (click a row)"));
    this.root.append(gridFigure, this.strip, this.imagesEl);
    this.grid.addEventListener("mousemove", (e) => this.onGrid(e, false));
    this.grid.addEventListener("mouseleave", () => this.setHover(-1, -1, true));
    this.grid.addEventListener("click", (e) => this.onGrid(e, true));
    this.strip.addEventListener("mouseover", (e) => this.setHover(posOf(e.target), this.hoverLayer, true));
    this.strip.addEventListener("mouseleave", () => this.setHover(-1, -1, true));
    this.load();
    this.cleanups.push(link.subscribe((state, changed) => this.fromLink(state, changed)));
    this.cleanups.push(
      onChanges(model, SYNCED, () => this.fromModel()),
      onChanges(model, ["_tokens", "_effects", "_sites", "_layers", "_notes", "_summary"], () => this.load()),
    );
  }

  destroy(): void {
    for (const fn of this.cleanups.splice(0)) fn();
  }

  /** Redraws what reads theme colours (after attaching, on theme changes). */
  themeChanged(): void {
    for (const im of this.images) im.resetTheme();
    this.paint();
  }

  private buildControls(): HTMLElement {
    const controls = h("div", "mmviz-controls");
    this.siteSelect.addEventListener("change", () => this.update({ site: Number(this.siteSelect.value) }));
    slider(this.opacityInput, 0, 1, 0.05, (opacity) => this.update({ opacity }));
    controls.append(labelled("site", this.siteSelect), labelled("opacity", this.opacityInput));
    return controls;
  }

  /** (Re)reads the data traits and rebuilds the panes. */
  private load(): void {
    const m = this.model;
    const tokens = m.get("_tokens");
    const table = decodeTable(tokens);
    this.patches = tablePatches(table);
    this.text = tokens.text;
    this.layers = m.get("_layers");
    this.effects = decodeTensor(m.get("_effects"));
    this.notes.replaceChildren(...m.get("_notes").map((n) => h("li", undefined, n)));
    this.summary.textContent = m.get("_summary");
    this.layerLabels.replaceChildren(
      ...this.layers.map((layer) => {
        const label = h("div", "mmviz-patching-layer", `layer ${layer}`);
        label.style.height = `${ROW_HEIGHT}px`;
        return label;
      }),
    );
    this.siteSelect.replaceChildren(
      ...m.get("_sites").map((name, i) => {
        const option = h("option", undefined, name);
        option.value = String(i);
        return option;
      }),
    );
    const strip = tokenStrip(tokens, table, "mmviz-patching-tok");
    this.spans = strip.spans;
    this.strip.replaceChildren(...strip.children);
    this.images = tokens.images.map(
      (payload, i) =>
        new ImagePane(decodeTensor(payload), table.grids[i] ?? [1, 1], gridPositions(table, i), {
          caption: "",
          figureClass: "mmviz-patching-image",
          canvasClass: "mmviz-patching-image-canvas",
          index: i,
          side: IMAGE_SIDE,
          zoom: 16,
          hover: (pos) => this.setHover(pos, pos !== null && pos >= 0 ? this.hoverLayer : -1, true),
        }),
    );
    this.imagesEl.replaceChildren(...this.images.map((im) => im.el));
    this.fromModel();
  }

  // -- state -----------------------------------------------------------------------------------------
  private fromModel(): void {
    const m = this.model;
    const [sites = 1, layers = 1] = this.effects?.shape ?? [];
    this.site = Math.max(0, Math.min(sites - 1, m.get("site")));
    this.layer = Math.max(0, Math.min(layers - 1, m.get("layer")));
    this.opacity = m.get("opacity");
    this.siteSelect.value = String(this.site);
    this.siteSelect.parentElement?.classList.toggle("mmviz-hidden", sites < 2);
    this.opacityInput.value = String(this.opacity);
    this.root.dataset.site = String(this.site);
    this.root.dataset.layer = String(this.layer);
    this.paint();
  }

  private update(patch: Partial<Pick<PatchingState, "site" | "layer" | "opacity">>): void {
    const m = this.model;
    for (const [key, value] of Object.entries(patch)) m.set(key as keyof PatchingState, value as never);
    m.save_changes();
    this.fromModel();
  }

  /** Points at a position and a layer row; `notify` writes them (and the patch, the block index) to the link. */
  private setHover(position: number | null, layerRow: number, notify: boolean): void {
    const pos = position ?? -1;
    if (pos === this.hover && layerRow === this.hoverLayer) return;
    this.hover = pos;
    this.hoverLayer = layerRow;
    this.root.dataset.hover = String(pos);
    this.root.dataset.hoverLayer = String(layerRow);
    this.paint();
    if (notify) {
      this.link.set({
        position: pos,
        patch: this.patches?.patchOf(pos) ?? null,
        layer: layerRow >= 0 ? (this.layers[layerRow] ?? -1) : -1,
        module: "",
        source: this.id,
      });
    }
  }

  private fromLink(state: LinkState, changed: ReadonlySet<keyof LinkState>): void {
    if (state.source === this.id || !this.patches) return;
    if (!(changed.has("position") || changed.has("patch") || changed.has("layer"))) return;
    const row = state.layer >= 0 ? this.layers.indexOf(state.layer) : -1;
    this.setHover(linkedPosition(state, this.patches, this.text.length), row, false);
  }

  private onGrid(e: MouseEvent, click: boolean): void {
    const [, layers = 1, positions = 1] = this.effects?.shape ?? [];
    const box = this.grid.getBoundingClientRect();
    const c = Math.floor(((e.clientX - box.left) / box.width) * positions);
    const r = Math.floor(((e.clientY - box.top) / box.height) * layers);
    if (r < 0 || c < 0 || r >= layers || c >= positions) return;
    if (click) this.update({ layer: r });
    else this.setHover(c, r, true);
  }

  // -- painting --------------------------------------------------------------------------------------
  /** The shown site's effects of one layer row, one value per position. */
  private row(layerRow: number): Float32Array {
    const effects = this.effects;
    if (!effects) return new Float32Array(0);
    const [, layers = 1, positions = 0] = effects.shape;
    const start = (this.site * layers + layerRow) * positions;
    return effects.data.subarray(start, start + positions);
  }

  private paint(): void {
    const effects = this.effects;
    if (!effects) return;
    const [, layers = 1, positions = 0] = effects.shape;
    const site = effects.data.subarray(this.site * layers * positions, (this.site + 1) * layers * positions);
    const vmax = effectLimit(site);
    const shownRow = this.hoverLayer >= 0 ? this.hoverLayer : this.layer;
    const row = this.row(shownRow);
    this.paintGrid(site, layers, positions, vmax);
    const colorOf: ColorOf = (value) => scoreColor(value, vmax, true, NO_COLOR);
    paintSpans(this.spans, row, colorOf, this.hover);
    for (const im of this.images) this.paintImage(im, row, colorOf, shownRow);
    const pos = this.hover;
    if (pos >= 0 && pos < positions) {
      const layerRow = this.hoverLayer >= 0 ? this.hoverLayer : this.layer;
      this.status.textContent = `${this.text[pos] ?? ""} (position ${pos}), layer ${this.layers[layerRow] ?? ""}: effect ${formatValue(this.row(layerRow)[pos] ?? Number.NaN)}`;
    } else {
      this.status.textContent = `image panes: layer ${this.layers[shownRow] ?? ""}`;
    }
  }

  private paintGrid(site: Float32Array, layers: number, positions: number, vmax: number): void {
    const cell = Math.max(3, Math.min(14, Math.floor(720 / Math.max(1, positions))));
    const width = positions * cell;
    const height = layers * ROW_HEIGHT;
    const ctx = sizeCanvas(this.grid, width, height);
    ctx.clearRect(0, 0, width, height);
    for (let r = 0; r < layers; r++) {
      for (let c = 0; c < positions; c++) {
        const [red, g, b, a] = scoreColor(site[r * positions + c] ?? Number.NaN, vmax, true, NO_COLOR);
        if (a <= 0) continue;
        ctx.fillStyle = `rgba(${red},${g},${b},${a.toFixed(3)})`;
        ctx.fillRect(c * cell, r * ROW_HEIGHT, cell, ROW_HEIGHT);
      }
    }
    const { accent, muted } = themeColors(this.root);
    ctx.strokeStyle = muted;
    ctx.lineWidth = 1;
    ctx.strokeRect(0.5, this.layer * ROW_HEIGHT + 0.5, width - 1, ROW_HEIGHT - 1);
    ctx.strokeStyle = accent;
    ctx.lineWidth = 2;
    if (this.hoverLayer >= 0) ctx.strokeRect(1, this.hoverLayer * ROW_HEIGHT + 1, width - 2, ROW_HEIGHT - 2);
    if (this.hover >= 0 && this.hover < positions)
      ctx.strokeRect(this.hover * cell + 1, 1, cell - 2, height - 2);
  }

  private paintImage(im: ImagePane, row: Float32Array, colorOf: ColorOf, shownRow: number): void {
    im.paint(row, colorOf, this.hover, { opacity: this.opacity, painted: "effects" });
    im.caption.textContent = `image ${im.canvas.dataset.image} · layer ${this.layers[shownRow] ?? ""}`;
    im.canvas.dataset.layer = String(this.layers[shownRow] ?? -1);
  }
}

function posOf(target: EventTarget | null): number {
  if (!(target instanceof HTMLElement)) return -1;
  const pos = target.dataset.pos;
  return pos === undefined ? -1 : Number(pos);
}
