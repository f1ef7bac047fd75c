/**
 * The FaithfulnessView application (`mmviz/widgets/faithfulness_view.py`): the judged map, drawn by the
 * AttributionView's pane (so it links by position and patch like any attribution), beside the checks that
 * judge it: the deletion and insertion curves against random orders, the rank correlation after each
 * randomised block, and the table of scores, baselines and verdicts. Everything is in the state.
 */
import type { AnyModel } from "@anywidget/types";
import { decodeTensor, type TensorPayload } from "../codecs";
import { createLink, type LinkStore } from "../link";
import { formatValue } from "../render/colormap";
import { AttributionApp, type AttributionState } from "./attribution";
import { h, sizeCanvas, themeColors } from "./dom";
import css from "./faithfulness.css";
import { onChanges } from "./pane";

/** One check, mirroring `faithfulness_view.checks_state`. */
export interface CheckEntry {
  check: string;
  meaning: string;
  score?: number | null;
  baselines?: Record<string, number | null>;
  passed?: boolean | null;
  note?: string;
  labels?: string[];
  x?: TensorPayload;
  curve?: TensorPayload;
  reference?: TensorPayload;
  skipped?: string;
}

/** The synced state: the AttributionView's, plus the checks and the verdict. */
export interface FaithfulnessState extends Omit<AttributionState, "_view"> {
  _view: "faithfulness";
  _checks: CheckEntry[];
  _verdict: string;
}

type Model = AnyModel<FaithfulnessState>;

const COLOURS: Record<string, string> = {
  deletion: "#d62728",
  insertion: "#1f77b4",
  model_randomization: "#2ca02c",
};

/** A series of a plot: points, colour, dashed or not. */
interface Series {
  x: ArrayLike<number>;
  y: ArrayLike<number>;
  colour: string;
  dashed: boolean;
  label: string;
}

function values(payload: TensorPayload | undefined): Float64Array {
  if (!payload) return new Float64Array(0);
  const t = decodeTensor(payload);
  return Float64Array.from({ length: t.data.length }, (_, i) => t.data[i] ?? Number.NaN);
}

/** A line plot of `series` on a canvas, over their x range and [yMin, yMax], with a dotted rule at `rule`. */
export function linePlot(
  series: Series[],
  title: string,
  fg: string,
  rule?: number,
  yRange?: [number, number],
): HTMLCanvasElement {
  const width = 320;
  const height = 150;
  const pad = { l: 34, r: 8, t: 16, b: 18 };
  const canvas = h("canvas", "mmviz-faith-plot");
  canvas.dataset.series = String(series.length);
  const ctx = sizeCanvas(canvas, width, height);
  const xs = series.flatMap((s) => Array.from(s.x));
  const ys = series.flatMap((s) => Array.from(s.y)).filter(Number.isFinite);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = yRange ?? [Math.min(...ys), Math.max(...ys)];
  if (!(y1 > y0)) [y0, y1] = [y0 - 1, y0 + 1];
  const px = (v: number) => pad.l + ((v - x0) / (x1 - x0 || 1)) * (width - pad.l - pad.r);
  const py = (v: number) => height - pad.b - ((v - y0) / (y1 - y0)) * (height - pad.t - pad.b);
  ctx.font = "9px sans-serif";
  ctx.fillStyle = fg;
  ctx.textAlign = "left";
  ctx.fillText(title, pad.l, 10);
  ctx.textAlign = "right";
  ctx.fillText(formatValue(y1), pad.l - 3, py(y1) + 3);
  ctx.fillText(formatValue(y0), pad.l - 3, py(y0) + 3);
  ctx.globalAlpha = 0.3;
  ctx.strokeStyle = fg;
  ctx.strokeRect(pad.l, pad.t, width - pad.l - pad.r, height - pad.t - pad.b);
  ctx.globalAlpha = 1;
  if (rule !== undefined && rule >= y0 && rule <= y1) {
    ctx.setLineDash([2, 2]);
    ctx.globalAlpha = 0.5;
    ctx.beginPath();
    ctx.moveTo(pad.l, py(rule));
    ctx.lineTo(width - pad.r, py(rule));
    ctx.stroke();
    ctx.globalAlpha = 1;
  }
  series.forEach((s, i) => {
    ctx.setLineDash(s.dashed ? [4, 3] : []);
    ctx.strokeStyle = s.colour;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let started = false;
    for (let k = 0; k < s.x.length; k++) {
      const y = s.y[k] ?? Number.NaN;
      if (!Number.isFinite(y)) continue;
      if (started) ctx.lineTo(px(s.x[k] ?? 0), py(y));
      else ctx.moveTo(px(s.x[k] ?? 0), py(y));
      started = true;
    }
    ctx.stroke();
    ctx.fillStyle = fg;
    ctx.fillText(s.label, width - pad.r - 2, pad.t + 10 + 10 * i);
  });
  ctx.setLineDash([]);
  return canvas;
}

export class FaithfulnessApp {
  readonly root = h("div", "mmviz-root mmviz-faith");
  private readonly map: AttributionApp;
  private readonly side = h("div", "mmviz-faith-side");
  private readonly cleanups: (() => void)[] = [];

  constructor(
    private readonly model: Model,
    link: LinkStore = createLink(),
  ) {
    const style = h("style");
    style.textContent = css;
    this.map = new AttributionApp(model as unknown as AnyModel<AttributionState>, link);
    this.root.append(style, this.map.root, this.side);
    this.render();
    this.cleanups.push(onChanges(model, ["_checks", "_verdict"], () => this.render()));
  }

  destroy(): void {
    this.map.destroy();
    for (const fn of this.cleanups.splice(0)) fn();
  }

  themeChanged(): void {
    this.map.themeChanged();
    this.render();
  }

  private render(): void {
    const checks = this.model.get("_checks");
    const verdict = this.model.get("_verdict");
    const fg = themeColors(this.root).fg;
    const badge = h("div", "mmviz-faith-verdict", `verdict: ${verdict}`);
    badge.dataset.verdict = verdict;
    this.root.dataset.verdict = verdict;
    const parts: Element[] = [badge];
    const curves: Series[] = [];
    for (const c of checks) {
      if (c.check !== "deletion" && c.check !== "insertion") continue;
      const x = values(c.x);
      if (!x.length) continue;
      const colour = COLOURS[c.check] ?? fg;
      curves.push({ x, y: values(c.curve), colour, dashed: false, label: `${c.check} (map)` });
      const ref = values(c.reference);
      if (ref.length) curves.push({ x, y: ref, colour, dashed: true, label: `${c.check} (random)` });
    }
    if (curves.length) parts.push(linePlot(curves, "target vs fraction removed / revealed", fg));
    const random = checks.find((c) => c.check === "model_randomization");
    if (random?.x) {
      const x = values(random.x);
      if (x.length) {
        const series = [
          {
            x,
            y: values(random.curve),
            colour: COLOURS.model_randomization ?? fg,
            dashed: false,
            label: "rank correlation",
          },
        ];
        const rule = random.baselines?.threshold ?? undefined;
        parts.push(
          linePlot(series, "randomised blocks, top down", fg, rule === null ? undefined : rule, [-1, 1]),
        );
      }
    }
    parts.push(this.table(checks));
    this.side.replaceChildren(...parts);
  }

  private table(checks: CheckEntry[]): HTMLTableElement {
    const table = h("table", "mmviz-faith-table");
    const head = h("tr");
    for (const name of ["check", "score", "baselines", "verdict"]) head.append(h("th", undefined, name));
    table.append(head);
    for (const c of checks) {
      const row = h("tr");
      row.title = c.meaning;
      row.dataset.check = c.check;
      if (c.skipped !== undefined) {
        row.append(
          h("td", undefined, c.check),
          h("td", undefined, ""),
          h("td", "mmviz-faith-note", c.skipped),
          h("td", undefined, "skipped"),
        );
      } else {
        const bases = Object.entries(c.baselines ?? {})
          .map(([k, v]) => `${k} ${formatValue(v ?? Number.NaN)}`)
          .join(", ");
        const verdict = c.passed === true ? "pass" : c.passed === false ? "FAIL" : "–";
        row.dataset.passed = String(c.passed);
        row.append(
          h("td", undefined, c.check),
          h("td", undefined, formatValue(c.score ?? Number.NaN)),
          h("td", undefined, bases),
          h("td", undefined, verdict),
        );
      }
      table.append(row);
      if (c.note) {
        const note = h("tr");
        const cell = h("td", "mmviz-faith-note", c.note);
        cell.colSpan = 4;
        note.append(cell);
        table.append(note);
      }
    }
    return table;
  }
}
