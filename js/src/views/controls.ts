/** The option bar: module, layer, head (or reduction), direction, hiding, word merge, colormap. */

import type { ModuleState } from "../model";
import { COLORMAPS } from "../render/colormap";
import type { ViewState } from "../store";
import { h } from "./dom";

export type ControlPatch = Partial<
  Pick<
    ViewState,
    "module" | "layer" | "head" | "aggregate" | "direction" | "hide_special" | "merge_words" | "cmap"
  >
>;

function select(
  label: string,
  cls: string,
  onChange: (value: string) => void,
): [HTMLLabelElement, HTMLSelectElement] {
  const wrap = h("label", `mmviz-control ${cls}`, label);
  const el = h("select");
  el.addEventListener("change", () => onChange(el.value));
  wrap.append(el);
  return [wrap, el];
}

function options(el: HTMLSelectElement, items: [string, string][]): void {
  const current = el.value;
  el.replaceChildren(
    ...items.map(([value, text]) => {
      const opt = h("option", undefined, text);
      opt.value = value;
      return opt;
    }),
  );
  if (items.some(([v]) => v === current)) el.value = current;
}

function checkbox(
  label: string,
  cls: string,
  onChange: (on: boolean) => void,
): [HTMLLabelElement, HTMLInputElement] {
  const wrap = h("label", `mmviz-control ${cls}`);
  const el = h("input");
  el.type = "checkbox";
  el.addEventListener("change", () => onChange(el.checked));
  wrap.append(el, document.createTextNode(` ${label}`));
  return [wrap, el];
}

export class Controls {
  readonly el = h("div", "mmviz-controls");
  private readonly module: HTMLSelectElement;
  private readonly moduleWrap: HTMLElement;
  private readonly layer: HTMLSelectElement;
  private readonly head: HTMLSelectElement;
  private readonly direction: HTMLSelectElement;
  private readonly directionWrap: HTMLElement;
  private readonly hide: HTMLInputElement;
  private readonly merge: HTMLInputElement;
  private readonly cmap: HTMLSelectElement;
  private forModule = "";

  constructor(private readonly change: (patch: ControlPatch) => void) {
    [this.moduleWrap, this.module] = select("module", "mmviz-c-module", (v) => this.change({ module: v }));
    const [layerWrap, layer] = select("layer", "mmviz-c-layer", (v) => this.change({ layer: Number(v) }));
    this.layer = layer;
    const [headWrap, head] = select("head", "mmviz-c-head", (v) => {
      if (v === "mean" || v === "max" || v === "rollout") this.change({ aggregate: v });
      else this.change({ aggregate: "head", head: Number(v) });
    });
    this.head = head;
    [this.directionWrap, this.direction] = select("colour tokens by", "mmviz-c-direction", (v) =>
      this.change({ direction: v === "to" ? "to" : "from" }),
    );
    options(this.direction, [
      ["from", "attention paid (from)"],
      ["to", "attention received (to)"],
    ]);
    const [hideWrap, hide] = checkbox("hide special tokens", "mmviz-c-hide", (on) =>
      this.change({ hide_special: on }),
    );
    this.hide = hide;
    const [mergeWrap, merge] = checkbox("merge words", "mmviz-c-merge", (on) =>
      this.change({ merge_words: on }),
    );
    this.merge = merge;
    const [cmapWrap, cmap] = select("colormap", "mmviz-c-cmap", (v) => this.change({ cmap: v }));
    this.cmap = cmap;
    options(
      this.cmap,
      COLORMAPS.map((c) => [c, c]),
    );
    this.el.append(this.moduleWrap, layerWrap, headWrap, this.directionWrap, hideWrap, mergeWrap, cmapWrap);
  }

  setModules(modules: ModuleState[]): void {
    options(
      this.module,
      modules.map((m) => [
        m.name,
        `${m.name} (${m.layers.length}×${m.heads.length}, ${m.n_query}×${m.n_key})`,
      ]),
    );
    this.moduleWrap.hidden = modules.length < 2;
  }

  update(state: ViewState, module: ModuleState | undefined): void {
    if (module && module.name !== this.forModule) {
      this.forModule = module.name;
      options(
        this.layer,
        module.layers.map((l) => [String(l), String(l)]),
      );
      const heads: [string, string][] = module.heads.map((hd) => [String(hd), String(hd)]);
      heads.push(["mean", "mean of heads"], ["max", "max of heads"]);
      if (module.self_attention) heads.push(["rollout", "rollout (to this layer)"]);
      options(this.head, heads);
      this.directionWrap.hidden = !module.self_attention;
    }
    this.module.value = state.module;
    this.layer.value = String(state.layer);
    this.head.value = state.aggregate === "head" ? String(state.head) : state.aggregate;
    this.direction.value = state.direction;
    this.hide.checked = state.hide_special;
    this.merge.checked = state.merge_words;
    this.cmap.value = state.cmap;
  }
}
