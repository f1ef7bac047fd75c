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
import { h, themeColors } from "./dom";
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

const SVG = "http://www.w3.org/2000/svg";
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

/** An SVG line plot of `series` over [0, xMax] × [yMin, yMax], with a horizontal rule at `rule` if given. */
export function linePlot(
  series: Series[],
  title: string,
  fg: string,
  rule?: number,
  yRange?: [number, number],
): SVGSVGElement {
  const width = 320;
  const height = 150;
  const pad = { l: 34, r: 8, t: 16, b: 18 };
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "mmviz-faith-plot");
  const xs = series.flatMap((s) => Array.from(s.x));
  const ys = series.flatMap((s) => Array.from(s.y)).filter(Number.isFinite);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = yRange ?? [Math.min(...ys), Math.max(...ys)];
  if (!(y1 > y0)) [y0, y1] = [y0 - 1, y0 + 1];
  const px = (v: number) => pad.l + ((v - x0) / (x1 - x0 || 1)) * (width - pad.l - pad.r);
  const py = (v: number) => height - pad.b - ((v - y0) / (y1 - y0)) * (height - pad.t - pad.b);
  const text = (x: number, y: number, s: string, anchor = "start") => {
    const el = document.createElementNS(SVG, "text");
    el.setAttribute("x", String(x));
    el.setAttribute("y", String(y));
    el.setAttribute("font-size", "9");
    el.setAttribute("fill", fg);
    el.setAttribute("text-anchor", anchor);
    el.textContent = s;
    svg.append(el);
  };
  text(pad.l, 10, title);
  text(pad.l - 3, py(y1) + 3, formatValue(y1), "end");
  text(pad.l - 3, py(y0) + 3, formatValue(y0), "end");
  const frame = document.createElementNS(SVG, "rect");
  frame.setAttribute("x", String(pad.l));
  frame.setAttribute("y", String(pad.t));
  frame.setAttribute("width", String(width - pad.l - pad.r));
  frame.setAttribute("height", String(height - pad.t - pad.b));
  frame.setAttribute("fill", "none");
  frame.setAttribute("stroke", fg);
  frame.setAttribute("stroke-opacity", "0.3");
  svg.append(frame);
  if (rule !== undefined && rule >= y0 && rule <= y1) {
    const line = document.createElementNS(SVG, "line");
    line.setAttribute("x1", String(pad.l));
    line.setAttribute("x2", String(width - pad.r));
    line.setAttribute("y1", String(py(rule)));
    line.setAttribute("y2", String(py(rule)));
    line.setAttribute("stroke", fg);
    line.setAttribute("stroke-dasharray", "2 2");
    line.setAttribute("stroke-opacity", "0.5");
    svg.append(line);
  }
  series.forEach((s, i) => {
    const points: string[] = [];
    for (let k = 0; k < s.x.length; k++) {
      const y = s.y[k] ?? Number.NaN;
      if (Number.isFinite(y)) points.push(`${px(s.x[k] ?? 0).toFixed(1)},${py(y).toFixed(1)}`);
    }
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", s.colour);
    line.setAttribute("stroke-width", "1.5");
    line.dataset.series = s.label;
    if (s.dashed) line.setAttribute("stroke-dasharray", "4 3");
    svg.append(line);
    text(width - pad.r - 2, pad.t + 10 + 10 * i, s.label, "end");
  });
  return svg;
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
