/**
 * Pure maths from an attention map to what the panes show: hiding special tokens (with row
 * renormalisation), merging subwords into words, and the vectors that hover linking paints.
 */
import type { Tensor } from "../codecs";

/** One token table, decoded. */
export interface Table {
  text: string[];
  kind: string[];
  /** 1 where `generate` produced the token. */
  generated: Uint8Array;
  wordId: Int32Array;
  imageIndex: Int32Array;
  patchRow: Int32Array;
  patchCol: Int32Array;
  grids: [number, number][];
}

/** A row or column of the displayed matrix: one token, or one word of several tokens. */
export interface Unit {
  positions: number[];
  label: string;
  kind: string;
  generated: boolean;
}

export interface Display {
  rows: number;
  cols: number;
  /** `[rows, cols]` values shown in the matrix. */
  data: Float32Array;
  qUnits: Unit[];
  kUnits: Unit[];
  /** Matrix row of each query unit, matrix column of each key unit. */
  qRow: Int32Array;
  kCol: Int32Array;
  /** Unit of each position, -1 where hidden. */
  qUnitOfPos: Int32Array;
  kUnitOfPos: Int32Array;
}

export interface DisplayOptions {
  hideSpecial: boolean;
  mergeWords: boolean;
  qStep: number;
  kStep: number;
}

const HIDDEN_KINDS = new Set(["special", "pad"]);

/** Display label of a position: its text, or `img0[r,c]` for an image patch. */
export function positionLabel(table: Table, pos: number): string {
  if (table.kind[pos] === "image") {
    return `img${table.imageIndex[pos]}[${table.patchRow[pos]},${table.patchCol[pos]}]`;
  }
  return table.text[pos] ?? "";
}

/** Groups a table's visible positions into units (words when merging; image patches stay single). */
export function buildUnits(
  table: Table,
  hide: boolean,
  merge: boolean,
): { units: Unit[]; unitOfPos: Int32Array } {
  const n = table.text.length;
  const unitOfPos = new Int32Array(n).fill(-1);
  const units: Unit[] = [];
  const byWord = new Map<number, number>();
  for (let p = 0; p < n; p++) {
    const kind = table.kind[p] ?? "text";
    if (hide && HIDDEN_KINDS.has(kind)) continue;
    const word = table.wordId[p] ?? p;
    const existing = merge && kind !== "image" ? byWord.get(word) : undefined;
    if (existing !== undefined) {
      const unit = units[existing];
      if (unit) {
        unit.positions.push(p);
        unit.label += table.text[p] ?? "";
      }
      unitOfPos[p] = existing;
      continue;
    }
    unitOfPos[p] = units.length;
    if (merge && kind !== "image") byWord.set(word, units.length);
    units.push({ positions: [p], label: positionLabel(table, p), kind, generated: table.generated[p] === 1 });
  }
  return { units, unitOfPos };
}

function identity(n: number): Int32Array {
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = i;
  return out;
}

/**
 * Builds what the panes show from one attention map `[query, key]` (or its block-mean downsampling,
 * where `qStep`/`kStep` > 1: hiding and merging then stay off, and positions map to blocks).
 */
export function buildDisplay(slice: Tensor, q: Table, k: Table, opts: DisplayOptions): Display {
  const [rows = 0, cols = 0] = slice.shape;
  const downsampled = opts.qStep > 1 || opts.kStep > 1;
  const hide = opts.hideSpecial && !downsampled;
  const merge = opts.mergeWords && !downsampled;
  const qu = buildUnits(q, hide, merge);
  const ku = buildUnits(k, hide, merge);
  if (downsampled || (!hide && !merge)) {
    const qRow = new Int32Array(qu.units.length);
    qu.units.forEach((u, i) => {
      qRow[i] = Math.floor((u.positions[0] ?? 0) / opts.qStep);
    });
    const kCol = new Int32Array(ku.units.length);
    ku.units.forEach((u, i) => {
      kCol[i] = Math.floor((u.positions[0] ?? 0) / opts.kStep);
    });
    return {
      rows,
      cols,
      data: slice.data,
      qUnits: qu.units,
      kUnits: ku.units,
      qRow,
      kCol,
      qUnitOfPos: qu.unitOfPos,
      kUnitOfPos: ku.unitOfPos,
    };
  }
  const nr = qu.units.length;
  const nc = ku.units.length;
  const out = new Float32Array(nr * nc);
  const visibleKeys: number[] = [];
  for (let p = 0; p < cols; p++) if ((ku.unitOfPos[p] ?? -1) >= 0) visibleKeys.push(p);
  for (let u = 0; u < nr; u++) {
    const unit = qu.units[u];
    if (!unit) continue;
    const weight = 1 / unit.positions.length;
    for (const qp of unit.positions) {
      const base = qp * cols;
      let total = 1;
      if (hide) {
        total = 0;
        for (const kp of visibleKeys) total += slice.data[base + kp] ?? 0;
      }
      const f = total > 0 ? weight / total : 0;
      for (const kp of visibleKeys) {
        const v = ku.unitOfPos[kp] ?? 0;
        out[u * nc + v] = (out[u * nc + v] ?? 0) + (slice.data[base + kp] ?? 0) * f;
      }
    }
  }
  return {
    rows: nr,
    cols: nc,
    data: out,
    qUnits: qu.units,
    kUnits: ku.units,
    qRow: identity(nr),
    kCol: identity(nc),
    qUnitOfPos: qu.unitOfPos,
    kUnitOfPos: ku.unitOfPos,
  };
}

/** Attention from query unit `u` to every key unit. */
export function rowVector(d: Display, u: number): Float32Array {
  const out = new Float32Array(d.kUnits.length);
  const base = (d.qRow[u] ?? 0) * d.cols;
  for (let j = 0; j < out.length; j++) out[j] = d.data[base + (d.kCol[j] ?? 0)] ?? 0;
  return out;
}

/** Attention to key unit `u` from every query unit. */
export function colVector(d: Display, u: number): Float32Array {
  const out = new Float32Array(d.qUnits.length);
  const col = d.kCol[u] ?? 0;
  for (let i = 0; i < out.length; i++) out[i] = d.data[(d.qRow[i] ?? 0) * d.cols + col] ?? 0;
  return out;
}
