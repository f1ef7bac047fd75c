/**
 * The Dashboard application (`mmviz/widgets/dashboard.py`): views of one input in one widget. It creates
 * one link store and makes every pane through the view registry with it, so panes link by what the user
 * points at (a position, an image patch, a timestep) and never touch each other's DOM. Each pane runs on a
 * small in-memory model holding its state; a pane's requests go to Python through the Dashboard's model,
 * tagged with the pane's index, and the answers come back to that pane.
 */
import type { AnyModel } from "@anywidget/types";
import { createLink } from "../link";
import { MemoryModel } from "../memory-model";
import { h } from "./dom";
import { createPane, type PaneApp } from "./registry";

export interface DashboardPane {
  kind: string;
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
  /** Shared by every pane: what the user points at. */
  readonly link = createLink();
  private readonly panes: { app: PaneApp; model: PaneModel }[] = [];
  private readonly cleanups: (() => void)[] = [];

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
      const app = createPane(pane.kind, paneModel as unknown as AnyModel<never>, this.link);
      this.panes.push({ app, model: paneModel });
      const box = h("section", `mmviz-dashboard-pane mmviz-dashboard-${pane.kind}`);
      box.dataset.pane = String(index);
      box.append(app.root);
      body.append(box);
    });
    const onMsg = (msg: unknown, buffers: DataView[]) => {
      const m = msg as { pane?: number; content?: unknown };
      this.panes[m.pane ?? -1]?.model.emit("msg:custom", m.content, buffers);
    };
    model.on("msg:custom", onMsg);
    this.cleanups.push(() => model.off("msg:custom", onMsg));
    this.cleanups.push(
      this.link.subscribe((state) => {
        this.root.dataset.hover = String(state.position);
      }),
    );
  }

  destroy(): void {
    for (const fn of this.cleanups.splice(0)) fn();
    for (const pane of this.panes) pane.app.destroy();
  }

  themeChanged(): void {
    for (const pane of this.panes) pane.app.themeChanged?.();
  }
}
