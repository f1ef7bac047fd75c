/**
 * The CrossAttentionView application (`mmviz/widgets/cross_attention_view.py`): the generated image with
 * the selected word's map over it, a word strip (hover previews, click selects), a timestep scrubber with
 * play (its last position sums every step, DAAM's map), one toggle per resolution, opacity and colormap,
 * and small multiples of every word at the current step. Everything is computed in the browser from the
 * synced per-resolution maps; only durable selections go back to Python. Hovering a word writes its first
 * prompt position to the link store; a position hovered in another pane (the text encoder's attention
 * over the same prompt) previews the word that holds it. Concept maps (`capture(pipe, concepts=[...])`,
 * ConceptAttention) follow the words on the groups' word axis (index `words.length + i`): they share the
 * scrubber, resolutions and small multiples, shown as dashed chips and thumbnails labelled "concept".
 */
import type { AnyModel } from "@anywidget/types";
import { decodeTensor, type TensorPayload } from "../codecs";
import { createLink, type LinkState, type LinkStore, paneId } from "../link";
import { COLORMAPS, lut } from "../render/colormap";
import css from "./cross-attention.css";
import { decodeGroup, type GroupPayload, heatRGBA, type MapGroup, wordMap } from "./cross-attention-maps";
import { fillSelect, h, labelled, rgbCanvas, sizeCanvas } from "./dom";
import { onChanges, paneHeading } from "./pane";

/** The synced state, mirroring `CrossAttentionView`'s traits. */
export interface CrossAttentionState {
  word: number;
  /** Step shown; -1 sums all steps. */
  step: number;
  /** Resolutions switched on (`"HxW"`). */
  resolutions: string[];
  opacity: number;
  cmap: string;
  batch_index: number;
  _view: "cross_attention";
  _title: string;
  _words: string[];
  /** Prompt positions of each word (what the link store names). */
  _word_positions?: number[][];
  /** Concept words whose maps follow the words' on the groups' word axis (absent or empty: none). */
  _concepts?: string[];
  _timesteps: number[];
  _groups: GroupPayload[];
  _image: TensorPayload | null;
  _image_size: [number, number];
  /** uint8 `[steps, h, w, 3]`: the denoiser's prediction of the image at each step, when captured. */
  _previews: TensorPayload | null;
  _notes: string[];
  _standalone: boolean;
}

type Model = AnyModel<CrossAttentionState>;

const MAIN_SIDE = 320;
const THUMB_SIDE = 96;
const PLAY_MS = 350;
const SYNCED = ["word", "step", "resolutions", "opacity", "cmap"] as const;

interface Local {
  word: number;
  step: number;
  resolutions: Set<string>;
  opacity: number;
  cmap: string;
  /** Word under the pointer (previewed in the main pane), -1 for none. */
  hover: number;
}

export class CrossAttentionApp {
  readonly root = h("div", "mmviz-root mmviz-xattn");
  private groups: MapGroup[] = [];
  private words: string[] = [];
  private concepts: string[] = [];
  private timesteps: number[] = [];
  private image: HTMLCanvasElement | null = null;
  private imageSize: [number, number] = [1, 1];
  private state: Local;
  private timer: ReturnType<typeof setInterval> | null = null;
  private readonly cleanups: (() => void)[] = [];
  private readonly notes = h("ul", "mmviz-notes");
  private readonly playButton = h("button", "mmviz-xattn-play", "▶");
  private readonly slider = h("input", "mmviz-xattn-step");
  private readonly stepLabel = h("span", "mmviz-xattn-step-label");
  private readonly resBox = h("span", "mmviz-control mmviz-xattn-res");
  private readonly opacityInput = h("input", "mmviz-xattn-opacity");
  private readonly cmapSelect = h("select", "mmviz-xattn-cmap");
  private readonly mainCanvas = h("canvas", "mmviz-xattn-canvas");
  private readonly caption = h("figcaption", "mmviz-xattn-caption");
  private readonly previewFigure = h("figure", "mmviz-xattn-main mmviz-xattn-preview");
  private readonly previewCanvas = h("canvas", "mmviz-xattn-preview-canvas");
  private previews: HTMLCanvasElement[] = [];
  private readonly wordStrip = h("div", "mmviz-xattn-words");
  private readonly conceptTitle = h("div", "mmviz-pane-title", "concepts (ConceptAttention)");
  private readonly conceptStrip = h("div", "mmviz-xattn-words mmviz-xattn-concepts");
  private readonly gridTitle = h("div", "mmviz-pane-title", "all words");
  private readonly grid = h("div", "mmviz-xattn-grid");
  private thumbs: HTMLCanvasElement[] = [];
  private wordPositions: number[][] = [];
  private readonly id = paneId("cross_attention");

  constructor(
    private readonly model: Model,
    private readonly link: LinkStore = createLink(),
  ) {
    paneHeading(this.root, model.get("_title"), css);
    this.state = {
      word: model.get("word"),
      step: model.get("step"),
      resolutions: new Set(model.get("resolutions")),
      opacity: model.get("opacity"),
      cmap: model.get("cmap"),
      hover: -1,
    };
    this.root.append(this.notes, this.buildControls());
    const figure = h("figure", "mmviz-xattn-main");
    figure.append(this.mainCanvas, this.caption);
    const side = h("div", "mmviz-xattn-side");
    side.append(
      h("div", "mmviz-pane-title", "prompt"),
      this.wordStrip,
      this.conceptTitle,
      this.conceptStrip,
      this.gridTitle,
      this.grid,
    );
    this.previewFigure.append(
      this.previewCanvas,
      h("figcaption", "mmviz-xattn-preview-caption", "predicted image"),
    );
    const body = h("div", "mmviz-xattn-body");
    body.append(figure, this.previewFigure, side);
    this.root.append(body);
    this.load();
    this.cleanups.push(
      onChanges(model, SYNCED, () => this.fromModel()),
      onChanges(
        model,
        ["_groups", "_image", "_words", "_word_positions", "_concepts", "_timesteps", "_previews"],
        () => this.load(),
      ),
      link.subscribe((state, changed) => this.fromLink(state, changed)),
    );
  }

  destroy(): void {
    this.stop(false);
    for (const fn of this.cleanups.splice(0)) fn();
  }

  // -- building --------------------------------------------------------------------------------------
  private buildControls(): HTMLElement {
    const controls = h("div", "mmviz-controls");
    this.playButton.type = "button";
    this.playButton.title = "play the denoising steps";
    this.playButton.addEventListener("click", () => (this.timer ? this.stop(true) : this.play()));
    this.slider.type = "range";
    this.slider.min = "0";
    this.slider.addEventListener("input", () => {
      this.stop(false);
      const v = Number(this.slider.value);
      this.update({ step: v >= this.timesteps.length ? -1 : v }, true);
    });
    const stepControl = h("label", "mmviz-control");
    stepControl.append(h("span", undefined, "step"), this.slider, this.stepLabel);
    this.opacityInput.type = "range";
    this.opacityInput.min = "0";
    this.opacityInput.max = "1";
    this.opacityInput.step = "0.05";
    this.opacityInput.value = String(this.state.opacity);
    this.opacityInput.addEventListener("input", () =>
      this.update({ opacity: Number(this.opacityInput.value) }, true),
    );
    const opacity = labelled("opacity", this.opacityInput);
    fillSelect(this.cmapSelect, COLORMAPS);
    this.cmapSelect.value = this.state.cmap;
    this.cmapSelect.addEventListener("change", () => this.update({ cmap: this.cmapSelect.value }, true));
    const cmap = h("label", "mmviz-control");
    cmap.append(h("span", undefined, "colormap"), this.cmapSelect);
    controls.append(this.playButton, stepControl, this.resBox, opacity, cmap);
    return controls;
  }

  /** (Re)reads the data traits: groups, words, image; rebuilds the word strip and small multiples. */
  private load(): void {
    const m = this.model;
    this.groups = m.get("_groups").map(decodeGroup);
    this.words = m.get("_words");
    this.concepts = m.get("_concepts") ?? [];
    this.wordPositions = m.get("_word_positions") ?? [];
    this.timesteps = m.get("_timesteps");
    this.imageSize = m.get("_image_size");
    const payload = m.get("_image");
    this.image = payload ? imageCanvas(payload) : null;
    const previews = m.get("_previews");
    this.previews = previews ? frameCanvases(previews) : [];
    this.previewFigure.hidden = this.previews.length === 0;
    this.notes.replaceChildren(...m.get("_notes").map((n) => h("li", undefined, n)));
    this.slider.max = String(this.timesteps.length);
    this.resBox.replaceChildren(h("span", undefined, "resolution"));
    for (const g of this.groups) {
      const box = h("input", "mmviz-xattn-res-toggle");
      box.type = "checkbox";
      box.dataset.key = g.key;
      box.checked = this.state.resolutions.has(g.key);
      box.addEventListener("change", () => {
        const next = new Set(this.state.resolutions);
        if (box.checked) next.add(g.key);
        else next.delete(g.key);
        this.update({ resolutions: next }, true);
      });
      const label = h("label", "mmviz-xattn-res-label");
      label.title = `${g.layers.length} layer(s): ${g.layers.join(", ")}`;
      label.append(box, h("span", undefined, g.key.replace("x", "×")));
      this.resBox.append(label);
    }
    this.wordStrip.replaceChildren();
    this.conceptStrip.replaceChildren();
    this.conceptTitle.hidden = this.conceptStrip.hidden = this.concepts.length === 0;
    this.gridTitle.textContent = this.concepts.length ? "all words and concepts" : "all words";
    this.grid.replaceChildren();
    this.thumbs = [];
    const choices = [...this.words, ...this.concepts];
    for (const [i, word] of choices.entries()) this.addChoice(word, i, i >= this.words.length);
    this.paint();
  }

  /** The chip and the small multiple of word (or concept) `i`. */
  private addChoice(word: string, i: number, concept: boolean): void {
    const button = h("button", concept ? "mmviz-xattn-word is-concept" : "mmviz-xattn-word", word);
    button.type = "button";
    button.dataset.index = String(i);
    if (concept) button.title = `concept “${word}” (ConceptAttention; not a prompt word)`;
    button.addEventListener("mouseenter", () => this.pointAt(i));
    button.addEventListener("mouseleave", () => this.pointAt(-1));
    button.addEventListener("click", () => this.update({ word: i }, true));
    (concept ? this.conceptStrip : this.wordStrip).append(button);
    const cell = h("figure", concept ? "mmviz-xattn-cell is-concept" : "mmviz-xattn-cell");
    const canvas = h("canvas", "mmviz-xattn-thumb");
    canvas.dataset.index = String(i);
    canvas.addEventListener("click", () => this.update({ word: i }, true));
    canvas.addEventListener("mouseenter", () => this.pointAt(i));
    canvas.addEventListener("mouseleave", () => this.pointAt(-1));
    const caption = h("figcaption", undefined, word);
    if (concept) caption.prepend(h("span", "mmviz-xattn-concept-tag", "concept"), " ");
    cell.append(canvas, caption);
    this.grid.append(cell);
    this.thumbs.push(canvas);
  }

  // -- linking ---------------------------------------------------------------------------------------
  /** The user points at word `i` (-1: none): preview it here, and tell the other panes its position. */
  private pointAt(i: number): void {
    this.update({ hover: i }, false);
    const position = i >= 0 ? (this.wordPositions[i]?.[0] ?? -1) : -1;
    this.link.set({ position, patch: null, source: this.id });
  }

  /** Another pane points at a prompt position: preview the word that holds it. */
  private fromLink(state: LinkState, changed: ReadonlySet<keyof LinkState>): void {
    if (state.source === this.id || !changed.has("position")) return;
    const word = state.position < 0 ? -1 : this.wordPositions.findIndex((ps) => ps.includes(state.position));
    if (word !== this.state.hover) this.update({ hover: word }, false);
  }

  // -- state -----------------------------------------------------------------------------------------
  private fromModel(): void {
    const m = this.model;
    this.state = {
      ...this.state,
      word: m.get("word"),
      step: m.get("step"),
      resolutions: new Set(m.get("resolutions")),
      opacity: m.get("opacity"),
      cmap: m.get("cmap"),
    };
    this.paint();
  }

  private update(patch: Partial<Local>, durable: boolean): void {
    this.state = { ...this.state, ...patch };
    if (patch.step !== undefined) this.link.set({ timestep: patch.step, source: this.id });
    if (durable && !this.model.get("_standalone")) {
      if (patch.word !== undefined) this.model.set("word", patch.word);
      if (patch.step !== undefined) this.model.set("step", patch.step);
      if (patch.resolutions !== undefined) this.model.set("resolutions", [...patch.resolutions]);
      if (patch.opacity !== undefined) this.model.set("opacity", patch.opacity);
      if (patch.cmap !== undefined) this.model.set("cmap", patch.cmap);
      if (!this.timer) this.model.save_changes();
    }
    this.paint();
  }

  private play(): void {
    if (this.timesteps.length === 0) return;
    this.playButton.textContent = "❚❚";
    this.root.dataset.playing = "1";
    this.timer = setInterval(() => {
      const n = this.timesteps.length;
      const next = this.state.step < 0 || this.state.step >= n - 1 ? 0 : this.state.step + 1;
      this.update({ step: next }, false);
    }, PLAY_MS);
  }

  private stop(sync: boolean): void {
    if (!this.timer) return;
    clearInterval(this.timer);
    this.timer = null;
    this.playButton.textContent = "▶";
    delete this.root.dataset.playing;
    if (sync) this.update({ step: this.state.step }, true);
  }

  // -- painting --------------------------------------------------------------------------------------
  private paint(): void {
    const s = this.state;
    const n = this.timesteps.length;
    this.slider.value = String(s.step < 0 ? n : s.step);
    const t = s.step >= 0 ? this.timesteps[s.step] : undefined;
    this.stepLabel.textContent =
      s.step < 0 ? `all ${n} steps (sum)` : `${s.step + 1}/${n} · t=${formatTimestep(t ?? 0)}`;
    this.opacityInput.value = String(s.opacity);
    this.cmapSelect.value = s.cmap;
    for (const box of this.resBox.querySelectorAll("input"))
      box.checked = s.resolutions.has(box.dataset.key ?? "");
    const shown = s.hover >= 0 ? s.hover : s.word;
    for (const b of [...this.wordStrip.children, ...this.conceptStrip.children]) {
      const i = Number((b as HTMLElement).dataset.index);
      b.classList.toggle("is-selected", i === s.word);
      b.classList.toggle("is-hover", i === s.hover);
    }
    const table = lut(s.cmap);
    this.drawMap(this.mainCanvas, MAIN_SIDE, shown, table, 128);
    this.root.dataset.word = String(shown);
    this.root.dataset.step = String(s.step);
    const nWords = this.words.length;
    const what =
      shown >= 0 && shown < nWords
        ? `“${this.words[shown]}”`
        : shown >= nWords && shown < nWords + this.concepts.length
          ? `concept “${this.concepts[shown - nWords]}”`
          : "";
    this.caption.textContent = `${what} · ${s.step < 0 ? "all steps" : `step ${s.step + 1}`} · ${
      [...s.resolutions].map((r) => r.replace("x", "×")).join(", ") || "no resolution"
    }`;
    this.thumbs.forEach((canvas, i) => {
      this.drawMap(canvas, THUMB_SIDE, i, table, 48);
      canvas.classList.toggle("is-selected", i === s.word);
    });
    this.paintPreview();
  }

  /** The predicted image of the current step (the last one when all steps are summed). */
  private paintPreview(): void {
    const frame = this.previews[this.state.step < 0 ? this.previews.length - 1 : this.state.step];
    if (!frame) return;
    const [ih, iw] = this.imageSize;
    const f = (MAIN_SIDE * 0.6) / Math.max(ih, iw, 1);
    const width = Math.max(16, Math.round(iw * f));
    const height = Math.max(16, Math.round(ih * f));
    const ctx = sizeCanvas(this.previewCanvas, width, height);
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(frame, 0, 0, width, height);
    this.previewCanvas.dataset.step = String(this.state.step);
  }

  /** Draws the image with word `word`'s map (at most `res` cells per side) over it. */
  private drawMap(
    canvas: HTMLCanvasElement,
    side: number,
    word: number,
    table: Uint8ClampedArray,
    res: number,
  ): void {
    const [ih, iw] = this.imageSize;
    const f = side / Math.max(ih, iw, 1);
    const width = Math.max(16, Math.round(iw * f));
    const height = Math.max(16, Math.round(ih * f));
    if (canvas.dataset.size !== `${width}x${height}`) {
      sizeCanvas(canvas, width, height);
      canvas.dataset.size = `${width}x${height}`;
    }
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    ctx.clearRect(0, 0, width, height);
    ctx.imageSmoothingEnabled = true;
    if (this.image) ctx.drawImage(this.image, 0, 0, width, height);
    else {
      ctx.fillStyle = "#808080";
      ctx.fillRect(0, 0, width, height);
    }
    const g = Math.max(ih, iw, 1);
    const mh = Math.max(1, Math.round((ih / g) * Math.min(res, g)));
    const mw = Math.max(1, Math.round((iw / g) * Math.min(res, g)));
    const values = wordMap(this.groups, this.state.resolutions, word, this.state.step, mh, mw);
    const off = document.createElement("canvas");
    off.width = mw;
    off.height = mh;
    const octx = off.getContext("2d");
    if (!octx) return;
    const rgba = octx.createImageData(mw, mh);
    rgba.data.set(heatRGBA(values, table, this.state.opacity));
    octx.putImageData(rgba, 0, 0);
    ctx.drawImage(off, 0, 0, width, height);
    canvas.dataset.painted = word >= 0 ? "map" : "image";
  }
}

function formatTimestep(t: number): string {
  return Number.isInteger(t) ? String(t) : t.toPrecision(3);
}

/** One canvas per frame of a uint8 `[frames, H, W, 3]` payload. */
function frameCanvases(payload: TensorPayload): HTMLCanvasElement[] {
  const t = decodeTensor(payload);
  const [frames = 0, ih = 1, iw = 1] = t.shape;
  const per = ih * iw * 3;
  const out = [];
  for (let f = 0; f < frames; f++) out.push(rgbCanvas(t.data.subarray(f * per, (f + 1) * per), ih, iw));
  return out;
}

/** A canvas holding a uint8 `[H, W, 3]` image at its own size. */
function imageCanvas(payload: TensorPayload): HTMLCanvasElement {
  const t = decodeTensor(payload);
  const [ih = 1, iw = 1] = t.shape;
  return rgbCanvas(t.data, ih, iw);
}
