/**
 * The Dashboard application (`mmviz/widgets/dashboard.py`): attention and attribution panes of one input
 * in one widget. Each pane runs its own application (AttentionApp, AttributionApp) on a small in-memory
 * model holding that pane's state; the attention pane's map requests go to Python through the real
 * model, tagged with the pane index. Linking stays in the browser: a position hovered in an attribution
 * pane is hovered in the attention panes (their token strips and image panes receive the pointer event
 * they would get from the user), and a token or patch hovered in an attention pane is highlighted in the
 * attribution panes.
 */
import type { AnyModel } from "@anywidget/types";
import { AttentionApp } from "../app";
import { MemoryModel } from "../memory-model";
import type { AttentionViewState } from "../model";
import { AttributionApp, type AttributionState } from "./attribution";
import { h } from "./dom";

export interface DashboardPane {
  kind: "attention" | "attribution";
  state: Record<string, unknown>;
}

export interface DashboardState {
  _view: "dashboard";
  _title: string;
  _panes: DashboardPane[];
  _standalone: boolean;
}

type Model = AnyModel<DashboardState>;

/** A pane's model: its own state in memory; `send` goes to Python through the dashboard's model. */
class PaneModel extends MemoryModel<Record<string, unknown>> {
  constructor(
    state: Record<string, unknown>,
    private readonly parent: Model,
    readonly index: number,
  ) {
    super(state);
  }

  override send(content: unknown): void {
    this.parent.send({ pane: this.index, content });
  }
}

export class DashboardApp {
  readonly root = h("div", "mmviz-root mmviz-dashboard");
  private readonly attention: { app: AttentionApp; model: PaneModel }[] = [];
  private readonly attribution: AttributionApp[] = [];
  private readonly cleanups: (() => void)[] = [];
  private linking = false;

  constructor(model: Model) {
    const title = model.get("_title");
    if (title) this.root.append(h("div", "mmviz-title", title));
    const body = h("div", "mmviz-dashboard-body");
    body.style.display = "flex";
    body.style.flexDirection = "column";
    body.style.gap = "18px";
    this.root.append(body);
    model.get("_panes").forEach((pane, index) => {
      const paneModel = new PaneModel({ ...pane.state }, model, index);
      const box = h("section", `mmviz-dashboard-pane mmviz-dashboard-${pane.kind}`);
      box.dataset.pane = String(index);
      if (pane.kind === "attention") {
        const app = new AttentionApp(paneModel as unknown as AnyModel<AttentionViewState>);
        this.attention.push({ app, model: paneModel });
        box.append(app.root);
        this.listenAttention(app.root);
      } else {
        const app = new AttributionApp(paneModel as unknown as AnyModel<AttributionState>);
        app.onHover = (pos) => this.fromAttribution(app, pos);
        this.attribution.push(app);
        box.append(app.root);
      }
      body.append(box);
    });
    const onMsg = (msg: unknown, buffers: DataView[]) => {
      const m = msg as { pane?: number; content?: unknown };
      const target = this.attention.find((a) => a.model.index === m.pane);
      target?.model.emit("msg:custom", m.content, buffers);
    };
    model.on("msg:custom", onMsg);
    this.cleanups.push(() => model.off("msg:custom", onMsg));
  }

  destroy(): void {
    for (const fn of this.cleanups.splice(0)) fn();
    for (const a of this.attention) a.app.destroy();
    for (const a of this.attribution) a.destroy();
  }

  themeChanged(): void {
    for (const a of this.attention) a.app.themeChanged();
    for (const a of this.attribution) a.themeChanged();
  }

  /** Position hovered in an attribution pane → the other attribution panes and the attention panes. */
  private fromAttribution(source: AttributionApp, pos: number): void {
    if (this.linking) return;
    this.linking = true;
    try {
      for (const other of this.attribution) if (other !== source) other.setHover(pos, false);
      for (const { app } of this.attention) hoverAttention(app.root, pos, source.imageCell(pos));
      this.root.dataset.hover = String(pos);
    } finally {
      this.linking = false;
    }
  }

  /** Tokens and patches the user hovers in an attention pane → the attribution panes. */
  private listenAttention(root: HTMLElement): void {
    const set = (pos: number) => {
      if (this.linking) return;
      this.linking = true;
      try {
        for (const a of this.attribution) a.setHover(pos, false);
        this.root.dataset.hover = String(pos);
      } finally {
        this.linking = false;
      }
    };
    root.addEventListener("mouseover", (e) => {
      if (!e.isTrusted) return;
      const el = e.target instanceof HTMLElement ? e.target.closest<HTMLElement>("[data-pos]") : null;
      if (el?.dataset.pos !== undefined) set(Number(el.dataset.pos));
    });
    root.addEventListener("mousemove", (e) => {
      if (!e.isTrusted || !(e.target instanceof HTMLCanvasElement)) return;
      if (!e.target.classList.contains("mmviz-image-canvas")) return;
      const canvases = [...root.querySelectorAll(".mmviz-image-canvas")];
      const image = canvases.indexOf(e.target);
      const box = e.target.getBoundingClientRect();
      const fx = (e.clientX - box.left) / box.width;
      const fy = (e.clientY - box.top) / box.height;
      const pos = this.attribution[0]?.positionAt(image, fx, fy) ?? -1;
      if (pos >= 0) set(pos);
    });
    root.addEventListener("mouseleave", (e) => {
      if (e.isTrusted) set(-1);
    });
  }
}

/**
 * Hovers `pos` in an attention pane the way the pointer would: a `mouseover` on its token span, or a
 * `mousemove` over its patch of the first image pane; -1 leaves the strip.
 */
function hoverAttention(root: HTMLElement, pos: number, cell: [number, number, number, number] | null): void {
  const strip = root.querySelector<HTMLElement>(".mmviz-strip-body");
  if (pos < 0) {
    strip?.dispatchEvent(new MouseEvent("mouseleave"));
    for (const c of root.querySelectorAll(".mmviz-image-canvas"))
      c.dispatchEvent(new MouseEvent("mouseleave"));
    return;
  }
  const span = root.querySelector<HTMLElement>(`.mmviz-tok[data-pos="${pos}"]`);
  if (span) {
    const box = span.getBoundingClientRect();
    span.dispatchEvent(
      new MouseEvent("mouseover", { bubbles: true, clientX: box.right, clientY: box.bottom }),
    );
    return;
  }
  if (!cell) return;
  const [image, fx, fy] = cell;
  const canvas = root.querySelectorAll<HTMLCanvasElement>(".mmviz-image-canvas")[image];
  if (!canvas) return;
  const box = canvas.getBoundingClientRect();
  canvas.dispatchEvent(
    new MouseEvent("mousemove", { clientX: box.left + fx * box.width, clientY: box.top + fy * box.height }),
  );
}
