/**
 * The DecompositionView application (`mmviz/widgets/decomposition_view.py`): a layer × head grid coloured by
 * each head's share of the chosen text's similarity to the image (diverging blue–red around 0), the image with
 * the hovered (or selected) head's per-patch shares over it, and that head's TextSpan texts. Hovering a head
 * writes its layer and head to the link store; hovering a patch writes the position and patch, so the other
 * panes of a Dashboard follow. All in the browser.
 */
import type { AnyModel } from "@anywidget/types";
import { decodeTensor, type Tensor, type TensorPayload } from "../codecs";
import { createLink, type LinkState, type LinkStore, linkedPosition, type PatchIndex, paneId } from "../link";
import type { TableState } from "../model";
import { formatValue, lut } from "../render/colormap";
import { decodeTable, gridPositions, tablePatches } from "../table";
import { scoreColor } from "./attribution";
import css from "./decomposition.css";
import { h, labelled, sizeCanvas, slider, themeColors } from "./dom";
import { ImagePane } from "./image-pane";
import { onChanges, paneHeading } from "./pane";

/** The synced state, mirroring `DecompositionView`'s traits. */
export interface DecompositionState {
  direction: number;
  layer: number;
  head: number;
  opacity: number;
  cmap: string;
  _view: "decomposition";
  _title: string;
  _notes: string[];
  _standalone: boolean;
  _tokens: TableState;
  /** The attention stack of the decomposed tower ("vision_model"): layers and heads on the link refer to it. */
  _module: string;
  /** Direction names: 0 the image embedding, then the texts. */
  _labels: string[];
  /** Cosine similarity of the image and each direction (1 for the embedding itself). */
  _similarity: number[];
  /** `[directions, layers, heads]` each head's share. */
  _shares: TensorPayload;
  /** `[directions, layers, heads, positions]` each (head, source position) share. */
  _maps: TensorPayload;
  /** `[layers · heads]` TextSpan picks `[text, fraction]`. */
  _descriptions: [string, number][][];
}

type Model = AnyModel<DecompositionState>;

/** Grid cells are as big as fits this many pixels across the larger of layers and heads (12–36 each). */
const GRID_SIDE = 300;
const MARGIN = 28;
const IMAGE_SIDE = 260;
const SYNCED = ["direction", "layer", "head", "opacity"] as const;

interface Head {
  layer: number;
  head: number;
}

export class DecompositionApp {
  readonly root = h("div", "mmviz-root mmviz-dec");
  private readonly cleanups: (() => void)[] = [];
  private readonly notes = h("ul", "mmviz-notes");
  private readonly directionSelect = h("select", "mmviz-dec-direction");
  private readonly opacityInput = h("input", "mmviz-dec-opacity");
  private readonly status = h("div", "mmviz-dec-status");
  private readonly gridCanvas = h("canvas", "mmviz-dec-grid-canvas");
  private readonly body = h("div", "mmviz-dec-body");
  private readonly gridFigure = h("figure", "mmviz-dec-grid");
  private readonly texts = h("ol", "mmviz-dec-texts");
  private readonly id = paneId("decomposition");
  private shares: Tensor | null = null;
  private maps: Tensor | null = null;
  /** The (first) image with the shown head's per-patch shares over it; null without an image. */
  private image: ImagePane | null = null;
  private patches: PatchIndex | null = null;
  private length = 0;
  /** Head under the pointer here or in a linked pane (null: none). */
  private hoverHead: Head | null = null;
  /** Position under the pointer (-1: none). */
  private hoverPos = -1;
  /** Side of a grid cell in CSS pixels (set when the grid is painted; exposed as `data-cell`). */
  private cell = 22;

  constructor(
    private readonly model: Model,
    private readonly link: LinkStore = createLink(),
  ) {
    paneHeading(this.root, model.get("_title"), css);
    this.root.append(this.notes, this.buildControls(), this.status);
    this.gridFigure.append(this.gridCanvas, h("figcaption", "mmviz-pane-title", "layer × head"));
    this.root.append(this.body);
    this.gridCanvas.addEventListener("mousemove", (e) => this.setHead(this.headAt(e), true));
    this.gridCanvas.addEventListener("mouseleave", () => this.setHead(null, true));
    this.gridCanvas.addEventListener("click", (e) => this.select(this.headAt(e)));
    this.load();
    this.cleanups.push(link.subscribe((state, changed) => this.fromLink(state, changed)));
    this.cleanups.push(
      onChanges(model, SYNCED, () => this.paint()),
      onChanges(model, ["_tokens", "_shares", "_maps", "_labels", "_descriptions", "_notes"], () =>
        this.load(),
      ),
    );
  }

  destroy(): void {
    for (const fn of this.cleanups.splice(0)) fn();
  }

  themeChanged(): void {
    this.image?.resetTheme();
    this.paint();
  }

  private buildControls(): HTMLElement {
    const controls = h("div", "mmviz-controls");
    this.directionSelect.addEventListener("change", () =>
      this.update({ direction: Number(this.directionSelect.value) }),
    );
    slider(this.opacityInput, 0, 1, 0.05, (opacity) => this.update({ opacity }));
    controls.append(labelled("score against", this.directionSelect), labelled("opacity", this.opacityInput));
    return controls;
  }

  private load(): void {
    const m = this.model;
    const tokens = m.get("_tokens");
    const table = decodeTable(tokens);
    this.patches = tablePatches(table);
    this.length = tokens.text.length;
    this.shares = decodeTensor(m.get("_shares"));
    this.maps = decodeTensor(m.get("_maps"));
    this.notes.replaceChildren(...m.get("_notes").map((n) => h("li", undefined, n)));
    this.directionSelect.replaceChildren(
      ...m.get("_labels").map((label, i) => {
        const option = h("option", undefined, label);
        option.value = String(i);
        return option;
      }),
    );
    const payload = tokens.images[0];
    this.image = payload
      ? new ImagePane(decodeTensor(payload), table.grids[0] ?? [1, 1], gridPositions(table, 0), {
          caption: "per patch",
          figureClass: "mmviz-dec-image",
          canvasClass: "mmviz-dec-image-canvas",
          side: IMAGE_SIDE,
          zoom: 16,
          hover: (pos) => this.setPosition(pos ?? -1, true),
        })
      : null;
    const imageFigure = this.image?.el ?? h("figure", "mmviz-dec-image");
    imageFigure.append(this.texts);
    this.body.replaceChildren(this.gridFigure, imageFigure);
    this.paint();
  }

  private update(patch: Partial<Pick<DecompositionState, "direction" | "layer" | "head" | "opacity">>): void {
    for (const [key, value] of Object.entries(patch))
      this.model.set(key as keyof DecompositionState, value as never);
    this.model.save_changes();
    this.paint();
  }

  // -- pointer ---------------------------------------------------------------------------------------
  private dims(): [number, number] {
    const [, layers = 1, heads = 1] = this.shares?.shape ?? [];
    return [layers, heads];
  }

  private headAt(e: MouseEvent): Head | null {
    const [layers, heads] = this.dims();
    const box = this.gridCanvas.getBoundingClientRect();
    const x = e.clientX - box.left - MARGIN;
    const y = e.clientY - box.top - MARGIN;
    const head = Math.floor(x / this.cell);
    const layer = Math.floor(y / this.cell);
    return layer >= 0 && head >= 0 && layer < layers && head < heads ? { layer, head } : null;
  }

  private setHead(head: Head | null, notify: boolean): void {
    if (head?.layer === this.hoverHead?.layer && head?.head === this.hoverHead?.head) return;
    this.hoverHead = head;
    this.paint();
    if (notify)
      this.link.set({
        layer: head?.layer ?? -1,
        head: head?.head ?? -1,
        module: this.model.get("_module") ?? "",
        source: this.id,
      });
  }

  private select(head: Head | null): void {
    const m = this.model;
    const same = head && m.get("layer") === head.layer && m.get("head") === head.head;
    this.update(same || !head ? { layer: -1, head: -1 } : { layer: head.layer, head: head.head });
  }

  private setPosition(position: number, notify: boolean): void {
    if (position === this.hoverPos) return;
    this.hoverPos = position;
    this.paint();
    if (notify) {
      this.link.set({ position, patch: this.patches?.patchOf(position) ?? null, source: this.id });
    }
  }

  private fromLink(state: LinkState, changed: ReadonlySet<keyof LinkState>): void {
    if (state.source === this.id) return;
    if (changed.has("layer") || changed.has("head") || changed.has("module")) {
      const [layers, heads] = this.dims();
      const own = state.module === "" || state.module === (this.model.get("_module") ?? "");
      const inside = own && state.layer >= 0 && state.head >= 0 && state.layer < layers && state.head < heads;
      this.setHead(inside ? { layer: state.layer, head: state.head } : null, false);
    }
    if ((changed.has("position") || changed.has("patch")) && this.patches) {
      this.setPosition(linkedPosition(state, this.patches, this.length), false);
    }
  }

  // -- painting --------------------------------------------------------------------------------------
  /** The head whose map is shown: the hovered one, else the selected one (null: every head summed). */
  private shownHead(): Head | null {
    if (this.hoverHead) return this.hoverHead;
    const layer = this.model.get("layer");
    const head = this.model.get("head");
    return layer >= 0 && head >= 0 ? { layer, head } : null;
  }

  private paint(): void {
    const shares = this.shares;
    const maps = this.maps;
    if (!shares || !maps) return;
    const m = this.model;
    const [directions = 1, layers = 1, heads = 1] = shares.shape;
    const direction = Math.max(0, Math.min(directions - 1, m.get("direction")));
    this.directionSelect.value = String(direction);
    this.opacityInput.value = String(m.get("opacity"));
    const plane = shares.data.subarray(direction * layers * heads, (direction + 1) * layers * heads);
    this.paintGrid(plane, layers, heads);
    const shown = this.shownHead();
    const positions = maps.shape[3] ?? 0;
    const values = new Float32Array(positions);
    const first = direction * layers * heads;
    for (let l = 0; l < layers; l++) {
      for (let k = 0; k < heads; k++) {
        if (shown && (shown.layer !== l || shown.head !== k)) continue;
        const offset = (first + l * heads + k) * positions;
        for (let p = 0; p < positions; p++) values[p] = (values[p] ?? 0) + (maps.data[offset + p] ?? 0);
      }
    }
    this.paintImage(values);
    const label = m.get("_labels")[direction] ?? "";
    const similarity = m.get("_similarity")[direction] ?? 0;
    const picks = shown ? (m.get("_descriptions")[shown.layer * heads + shown.head] ?? []) : [];
    this.texts.replaceChildren(
      ...picks.map(([text, fraction]) => h("li", undefined, `${text} (${(fraction * 100).toFixed(0)}%)`)),
    );
    const where = shown ? `layer ${shown.layer}, head ${shown.head}` : "all heads";
    const share = shown ? ` share ${formatValue(plane[shown.layer * heads + shown.head] ?? 0)}` : "";
    const at =
      this.hoverPos >= 0
        ? `; patch ${m.get("_tokens").text[this.hoverPos] ?? ""}: ${formatValue(values[this.hoverPos] ?? 0)}`
        : "";
    this.status.textContent = `${label} (similarity ${formatValue(similarity)}) — ${where}${share}${at}`;
    this.root.dataset.layer = String(shown?.layer ?? -1);
    this.root.dataset.head = String(shown?.head ?? -1);
    this.root.dataset.direction = String(direction);
  }

  private paintGrid(plane: Float32Array, layers: number, heads: number): void {
    this.cell = Math.max(12, Math.min(36, Math.floor(GRID_SIDE / Math.max(layers, heads))));
    this.gridCanvas.dataset.cell = String(this.cell);
    const width = MARGIN + heads * this.cell + 4;
    const height = MARGIN + layers * this.cell + 4;
    const ctx = sizeCanvas(this.gridCanvas, width, height);
    const colors = themeColors(this.root);
    ctx.clearRect(0, 0, width, height);
    let vmax = 0;
    for (const v of plane) vmax = Math.max(vmax, Math.abs(v));
    const table = lut("viridis");
    for (let l = 0; l < layers; l++) {
      for (let k = 0; k < heads; k++) {
        const [r, g, b, a] = scoreColor(plane[l * heads + k] ?? 0, vmax, true, table);
        ctx.fillStyle = `rgba(${r},${g},${b},${a.toFixed(3)})`;
        ctx.fillRect(MARGIN + k * this.cell + 1, MARGIN + l * this.cell + 1, this.cell - 2, this.cell - 2);
      }
    }
    ctx.fillStyle = colors.muted;
    ctx.font = "10px sans-serif";
    ctx.textAlign = "center";
    for (let k = 0; k < heads; k++)
      ctx.fillText(String(k), MARGIN + k * this.cell + this.cell / 2, MARGIN - 6);
    ctx.textAlign = "right";
    for (let l = 0; l < layers; l++)
      ctx.fillText(String(l), MARGIN - 6, MARGIN + l * this.cell + this.cell / 2 + 3);
    ctx.strokeStyle = colors.accent;
    ctx.lineWidth = 2;
    const selected = this.model.get("layer");
    if (selected >= 0) {
      const k = this.model.get("head");
      ctx.strokeRect(
        MARGIN + k * this.cell + 1,
        MARGIN + selected * this.cell + 1,
        this.cell - 2,
        this.cell - 2,
      );
    }
    if (this.hoverHead) {
      ctx.setLineDash([3, 2]);
      ctx.strokeRect(
        MARGIN + this.hoverHead.head * this.cell,
        MARGIN + this.hoverHead.layer * this.cell,
        this.cell,
        this.cell,
      );
      ctx.setLineDash([]);
    }
  }

  private paintImage(values: Float32Array): void {
    const image = this.image;
    if (!image) return;
    let vmax = 0;
    for (const p of image.positions) if (p >= 0) vmax = Math.max(vmax, Math.abs(values[p] ?? 0));
    const table = lut("viridis");
    image.paint(values, (v) => scoreColor(v, vmax, true, table), this.hoverPos, {
      opacity: this.model.get("opacity"),
      painted: this.shownHead() ? "head" : "all",
    });
  }
}
