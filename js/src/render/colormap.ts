/**
 * Colormaps as 256-entry RGB lookup tables, plus the scaling helpers the panes share.
 * The default, viridis, is perceptually uniform and readable with the common colour-vision deficiencies;
 * cividis is optimised for them. The stops live in `mmviz/colormaps.json`, shared with the matplotlib
 * export (`mmviz/export/figures.py`), which interpolates them the same way.
 */

import SHARED_STOPS from "../../../mmviz/colormaps.json";

/** Hex stops per colormap, evenly spaced; `mmviz/colormaps.json` is the one definition (matplotlib reads it too). */
const STOPS: Record<string, string[]> = SHARED_STOPS;

/** Names of the available colormaps, the default first. */
export const COLORMAPS = Object.keys(STOPS);
export const DEFAULT_COLORMAP = "viridis";

const cache = new Map<string, Uint8ClampedArray>();

/** RGB lookup table `[256 * 3]` of a colormap (unknown names fall back to the default). */
export function lut(name: string): Uint8ClampedArray {
  const key = name in STOPS ? name : DEFAULT_COLORMAP;
  const hit = cache.get(key);
  if (hit) return hit;
  const stops = (STOPS[key] ?? []).map((hex) =>
    [0, 2, 4].map((i) => Number.parseInt(hex.slice(i, i + 2), 16)),
  );
  const table = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const x = (i / 255) * (stops.length - 1);
    const lo = Math.min(Math.floor(x), stops.length - 2);
    const f = x - lo;
    const a = stops[lo] ?? [0, 0, 0];
    const b = stops[lo + 1] ?? a;
    for (let c = 0; c < 3; c++) table[i * 3 + c] = (a[c] ?? 0) * (1 - f) + (b[c] ?? 0) * f;
  }
  cache.set(key, table);
  return table;
}

/** Index into a LUT of `value / vmax`, clamped to 0..255. */
export function lutIndex(value: number, vmax: number): number {
  if (!(vmax > 0) || !(value > 0)) return 0;
  return Math.min(255, Math.round((value / vmax) * 255));
}

/** Relative luminance (0..1) of a LUT entry, to pick readable text over it. */
export function luminance(table: Uint8ClampedArray, index: number): number {
  const r = table[index * 3] ?? 0;
  const g = table[index * 3 + 1] ?? 0;
  const b = table[index * 3 + 2] ?? 0;
  return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255;
}

/** Largest value of an array (0 for an empty one); ignores NaN. */
export function maxOf(values: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i] ?? 0;
    if (v > m) m = v;
  }
  return m;
}

/**
 * A robust colour-scale maximum: the `q` quantile of the positive values (sampled when large), so one
 * attention sink does not wash out the rest of a matrix.
 */
export function robustMax(values: Float32Array, q = 0.995): number {
  const stride = Math.max(1, Math.floor(values.length / 200_000));
  const sample: number[] = [];
  for (let i = 0; i < values.length; i += stride) {
    const v = values[i] ?? 0;
    if (v > 0) sample.push(v);
  }
  if (sample.length === 0) return 0;
  sample.sort((a, b) => a - b);
  const at = sample[Math.min(sample.length - 1, Math.floor(q * (sample.length - 1)))] ?? 0;
  return at > 0 ? at : maxOf(sample);
}

/** Short display of a probability: 3 significant digits, or scientific below 1e-3. */
export function formatValue(v: number): string {
  if (!Number.isFinite(v)) return "–";
  if (v === 0) return "0";
  if (Math.abs(v) < 1e-3) return v.toExponential(1);
  return v.toPrecision(3);
}
